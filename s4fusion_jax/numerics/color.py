"""The reference's RGB <-> YCrCb conversion (its ``RGB2YCrCb`` / ``YCrCb2RGB``).

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cr = (R - Y) 0.713 + 0.5          Cb = (B - Y) 0.564 + 0.5        (each clipped to [0, 1])
    R  = Y + 1.403 (Cr - 0.5)
    G  = Y - 0.714 (Cr - 0.5) - 0.344 (Cb - 0.5)
    B  = Y + 1.773 (Cb - 0.5)                                         (clipped to [0, 1])

Arrays are channels-last NumPy arrays, (..., 3) RGB and (..., 1) per component, in [0, 1].
"""

import numpy as np


def _clip01(x):
  return x.clip(0.0, 1.0)


def rgb_to_ycrcb(rgb):
  """(..., 3) RGB -> Y, Cr, Cb, each (..., 1), clipped to [0, 1]."""
  r, g, b = rgb[..., 0:1], rgb[..., 1:2], rgb[..., 2:3]
  y = 0.299 * r + 0.587 * g + 0.114 * b
  return _clip01(y), _clip01((r - y) * 0.713 + 0.5), _clip01((b - y) * 0.564 + 0.5)


def rgb_to_y(rgb):
  """(..., 3) RGB -> Y (..., 1), clipped to [0, 1]."""
  return rgb_to_ycrcb(rgb)[0]


def ycrcb_to_rgb(y, cr, cb):
  """Y, Cr, Cb, each (..., 1) -> (..., 3) RGB clipped to [0, 1]; the last axis joins them."""
  r = y + 1.403 * (cr - 0.5)
  g = y - 0.714 * (cr - 0.5) - 0.344 * (cb - 0.5)
  b = y + 1.773 * (cb - 0.5)
  return _clip01(np.concatenate([r, g, b], axis=-1))
