"""The size rule of the S4Fusion U-Net, and padding to it, as pure functions.

With a k x k patch embedding at stride s and ``levels - 1`` 2x merges, a side of
length n is valid when (n - k) is a multiple of s and the patch count
(n - k) / s + 1 is a multiple of 2^(levels - 1). For the reference (k = 4, s = 3,
three levels) that is (n - 1) % 12 == 0. The reference's test script zero-pads
both sides up to the next valid length, ``rest // 2`` before and the remainder
after, and crops the output back; ``pad_to_valid`` / ``crop`` do the same.
"""

import math

import jax.numpy as jnp


def is_valid_length(n, kernel=4, stride=3, levels=3):
  """Whether a side of length n passes the size rule."""
  return n >= kernel and (n - kernel) % stride == 0 and (
      ((n - kernel) // stride + 1) % 2**(levels - 1) == 0)


def valid_length(n, kernel=4, stride=3, levels=3):
  """The smallest valid side length >= n."""
  step = 2**(levels - 1)
  patches = max(math.ceil((n - kernel) / stride) + 1, 1)
  patches = math.ceil(patches / step) * step
  return stride * (patches - 1) + kernel


def pad_to_valid(images, kernel=4, stride=3, levels=3):
  """Zero-pads (batch, H, W, C) images to the next valid size, as the reference does.

  Returns:
    The padded images and the crop box ``(top, left, H, W)`` that ``crop`` undoes.
  """
  _, height, width, _ = images.shape
  rest_h = valid_length(height, kernel, stride, levels) - height
  rest_w = valid_length(width, kernel, stride, levels) - width
  top, left = rest_h // 2, rest_w // 2
  padded = jnp.pad(images, ((0, 0), (top, rest_h - top), (left, rest_w - left), (0, 0)))
  return padded, (top, left, height, width)


def crop(images, box):
  """Crops (batch, H', W', C) images to ``box = (top, left, H, W)``."""
  top, left, height, width = box
  return images[:, top:top + height, left:left + width]
