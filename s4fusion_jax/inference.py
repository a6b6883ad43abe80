"""Fusing image pairs of any size with a model or a baseline, in the reference's colour handling.

A pair is uint8 infrared (H, W, 1) and visible (H, W, 3). The network fuses the infrared
image with the visible image's Y; a colour visible image is recoloured with its own Cr
and Cb (the reference's YCrCb formulas), a grey one (equal channels) gives a grey result.
Output pixels are rounded as torchvision's ``save_image`` does (clamp, x255, round).

Compilation: the model runs on images zero-padded to the size rule (as the reference
pads), so every image whose padded size is the same shares one compiled program; sizes
are not padded further, because extra padding would change the numbers at the borders.
Within a process each padded shape compiles once (jit's cache).
"""

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from s4fusion_jax import baselines
from s4fusion_jax import checkpoint
from s4fusion_jax import color
from s4fusion_jax import sizes

METHODS = tuple(baselines.METHODS)
BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "s4fusion")


def to_uint8(x):
  """[0, 1] floats -> uint8 as ``save_image``: clamp to [0, 1], x255, round half to even."""
  return np.round(np.clip(np.asarray(x, np.float32), 0, 1) * 255).astype(np.uint8)


class Fuser:
  """Fuses uint8 pairs with an S4Fusion model or a baseline (one of ``METHODS``)."""

  def __init__(self, model=None, method=None):
    if (model is None) == (method is None):
      raise ValueError("give exactly one of a model and a method")
    if method is not None and method not in METHODS:
      raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    self.model, self.method = model, method
    self._apply = nnx.jit(lambda m, a, b: m(a, b)) if model is not None else None

  @classmethod
  def from_flags(cls, checkpoint_dir=None, method=None, scan_backend="auto"):
    """A model from ``checkpoint_dir`` (default: the bundled model) or a baseline ``method``."""
    if method:
      return cls(method=method)
    path = checkpoint_dir or BUNDLED_MODEL
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"no model at {path}: pass --checkpoint (a converted or trained S4Fusion checkpoint) "
          f"or --method {'|'.join(METHODS)}")
    return cls(model=checkpoint.load_model(path, scan_backend=scan_backend))

  def fuse_y(self, ir, vi_y):
    """ir, vi_y: float32 (H, W, 1) in [0, 1] -> fused Y, float32 (H, W, 1), unclamped."""
    if self.method is not None:
      return baselines.METHODS[self.method](ir, vi_y)
    rule = self.model.config.size_rule()
    (ir_p, box), (vi_p, _) = (sizes.pad_to_valid(x[None], *rule) for x in (ir, vi_y))
    dtype = jnp.dtype(self.model.config.dtype)
    fused = self._apply(self.model, jnp.asarray(ir_p, dtype), jnp.asarray(vi_p, dtype))
    return np.asarray(sizes.crop(fused, box)[0], np.float32)

  def fuse(self, ir, vi):
    """uint8 ir (H, W, 1) and vi (H, W, 3) -> uint8 fused (H, W, 1) or, for colour vi, (H, W, 3)."""
    if ir.shape[:2] != vi.shape[:2]:
      raise ValueError(f"infrared {ir.shape[:2]} and visible {vi.shape[:2]} sizes differ")
    vi_f = vi.astype(np.float32) / 255
    y, cr, cb = color.rgb_to_ycrcb(vi_f)
    fused_y = self.fuse_y(ir.astype(np.float32) / 255, y.astype(np.float32))
    grey = np.array_equal(vi[..., 0], vi[..., 1]) and np.array_equal(vi[..., 1], vi[..., 2])
    if grey:
      return to_uint8(fused_y)
    return to_uint8(color.ycrcb_to_rgb(np.clip(fused_y, 0, 1), cr, cb))
