"""Fusing image pairs of any size with a model or a baseline, in the reference's colour handling.

A pair is uint8 infrared (H, W, 1) and visible (H, W, 3). The network fuses the infrared
image with the visible image's Y; a colour visible image is recoloured with its own Cr
and Cb (the reference's YCrCb formulas), a grey one (equal channels) gives a grey result.
Output pixels are rounded as torchvision's ``save_image`` does (clamp, x255, round).

The model runs on images zero-padded to the size rule (as the reference pads) and placed in
their size bucket (``sizes``), the padded size passed at run time, so one compiled program
serves a bucket. ``exact_sizes=True``, and the ablations that take no masks, compile each
padded size. A Fuser runs on the first local device.
"""

import dataclasses
import functools
import hashlib
import os

import jax
import numpy as np
from flax import nnx

from s4fusion_jax.data import image_files
from s4fusion_jax.evaluation import baselines
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import color
from s4fusion_jax.numerics import sizes

METHODS = tuple(baselines.METHODS)
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # s4fusion_jax/
BUNDLED_MODEL = os.path.join(PACKAGE, "weights", "s4fusion")


class Fuser:
  """Fuses uint8 pairs with an S4Fusion model or a baseline (one of ``METHODS``)."""

  def __init__(self, model=None, method=None, exact_sizes=False):
    """``exact_sizes``: one program per padded size instead of one per size bucket.

    The model's parameters are taken here; later changes to ``model`` do not reach it.
    """
    if (model is None) == (method is None):
      raise ValueError("give exactly one of a model and a method")
    if method is not None and method not in METHODS:
      raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    self.model, self.method = model, method
    self.bucketed = model is not None and model.takes_buckets and not exact_sizes
    if model is None:
      return
    self._state = nnx.state(model)  # the parameters (and any statistics) as of now
    graphdef = nnx.graphdef(model)
    self._apply = jax.jit(lambda s, a, b, valid: nnx.merge(graphdef, s)(a, b, valid))

  @classmethod
  def from_flags(cls, checkpoint_dir=None, method=None, scan_backend="auto", exact_sizes=False):
    """A model from ``checkpoint_dir`` (default: the bundled model) or a baseline ``method``."""
    if method:
      return cls(method=method)
    path = checkpoint_dir or BUNDLED_MODEL
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"no model at {path}: pass --checkpoint (a converted or trained S4Fusion checkpoint) "
          f"or --method {'|'.join(METHODS)}")
    return cls(model=checkpoint.load_model(path, scan_backend=scan_backend),
               exact_sizes=exact_sizes)

  def signature(self):
    """What decides the fused images, as JSON-able values: the baseline; or the model's config,
    a hash of its parameters and state (e.g. BatchNorm statistics) and the size handling."""
    if self.method is not None:
      return {"method": self.method}
    digest = hashlib.sha256()
    for path, leaf in jax.tree.leaves_with_path(self._state):
      leaf = np.asarray(leaf)
      digest.update(f"{jax.tree_util.keystr(path)} {leaf.dtype} {leaf.shape}".encode())
      digest.update(leaf.tobytes())
    return {"config": dataclasses.asdict(self.model.config), "state": digest.hexdigest(),
            "exact_sizes": not self.bucketed}

  def fuse_y(self, ir, vi_y):
    """ir, vi_y: float32 (H, W, 1) in [0, 1] -> fused Y, float32 (H, W, 1), unclamped."""
    if self.method is not None:
      return baselines.METHODS[self.method](ir, vi_y)
    fused, box = model_lib.run_placed(self.model.config, functools.partial(
        self._apply, self._state), ir[None], vi_y[None], bucket=self.bucketed)
    return sizes.crop(np.asarray(fused, np.float32), box)[0]  # on the host: no program

  def fuse(self, ir, vi):
    """uint8 ir (H, W, 1) and vi (H, W, 3) -> uint8 fused (H, W, 1) or, for colour vi, (H, W, 3)."""
    if ir.shape[:2] != vi.shape[:2]:
      raise ValueError(f"infrared {ir.shape[:2]} and visible {vi.shape[:2]} sizes differ")
    vi_f = vi.astype(np.float32) / 255
    y, cr, cb = color.rgb_to_ycrcb(vi_f)
    fused_y = self.fuse_y(ir.astype(np.float32) / 255, y.astype(np.float32))
    grey = np.array_equal(vi[..., 0], vi[..., 1]) and np.array_equal(vi[..., 1], vi[..., 2])
    if grey:
      return image_files.to_uint8(fused_y)
    return image_files.to_uint8(color.ycrcb_to_rgb(np.clip(fused_y, 0, 1), cr, cb))
