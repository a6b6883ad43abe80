"""Validation during training and sample grids: fixed pairs fused, measured and drawn.

The validation pairs are the first ``config.eval_pairs`` (by name) of ``config.data.val``,
centre-cropped to ``config.eval_size``. Each validation writes
``WORKDIR/samples/step_NNNNNN.png`` and returns the means of ``metrics.VALIDATION_COLUMNS``;
the best model by ``config.best_metric`` is kept in ``WORKDIR/best-STEP`` (named by
``WORKDIR/best.json``). Every process validates; process 0 alone writes all but checkpoints.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from s4fusion_jax.data import datasets
from s4fusion_jax.data import image_files
from s4fusion_jax.data import image_grid
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.numerics import color
from s4fusion_jax.objectives import metrics
from s4fusion_jax.runtime import atomic_files


def centre_crop(x, size):
  height, width = x.shape[:2]
  top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
  return x[top:top + size, left:left + size]


class Validation:
  """Fuses fixed validation pairs every ``eval_every`` steps; keeps the best model."""

  def __init__(self, config, workdir, fuse, dataset_dir):
    """``fuse(model, ir, vi)``: (batch, H, W, 1) in [0, 1] -> fused (``build.Run.fuse``);
    ``dataset_dir``: ``config.data.val`` prepared (``trainer.prepare``)."""
    self.workdir, self.config, self.fuse = workdir, config, fuse
    split = config.data.val["split"]
    names = datasets.source(dataset_dir, split, decode_images=False)
    first = sorted(range(len(names)), key=lambda i: names[i]["name"])[:config.eval_pairs]
    src = datasets.source(dataset_dir, split)
    examples = [src[i] for i in first]
    self.ir = np.stack([centre_crop(e["ir"], config.eval_size) for e in examples])
    self.vi_rgb = np.stack([centre_crop(e["vi"], config.eval_size) for e in examples])
    self.vi = color.rgb_to_y(self.vi_rgb / 255.0).astype(np.float32)
    self.writer = jax.process_index() == 0  # every process validates, process 0 writes
    best_path = os.path.join(workdir, "best.json")
    self.best = json.load(open(best_path)) if os.path.exists(best_path) else None

  def run(self, model, step):
    """Fuses, writes the grid, measures.

    Returns:
      ({"val/<metric>": mean}, the grid: uint8 (H, W, 3) on process 0, None on the others).
    """
    fused = image_files.to_uint8(self.fuse(model, jnp.asarray(self.ir / np.float32(255)),
                                           jnp.asarray(self.vi)))
    vi_y = image_files.to_uint8(self.vi)
    grid = None
    if self.writer:
      grid = image_grid.image_rows(list(zip(self.ir, self.vi_rgb, fused)), self.config.eval_size)
      image_files.write_png(os.path.join(self.workdir, "samples", f"step_{step:06d}.png"), grid)
    scores = [metrics.compute(f[..., 0], a[..., 0], b[..., 0])
              for f, a, b in zip(fused, self.ir, vi_y)]
    record = {f"val/{k}": float(np.mean([s[k] for s in scores]))
              for k in metrics.VALIDATION_COLUMNS}
    self._keep_best(model, step, record[f"val/{self.config.best_metric}"])
    return record, grid

  def _keep_best(self, model, step, value):
    if self.best is not None and value <= self.best["value"]:
      return
    path = os.path.join(self.workdir, f"best-{step}")
    checkpoint.save_model(path, model, force=True)  # every process takes part (orbax)
    previous = self.best
    self.best = {"step": step, "metric": self.config.best_metric, "value": value, "path": path}
    if not self.writer:
      return
    atomic_files.write_text(os.path.join(self.workdir, "best.json"), json.dumps(self.best))
    if previous is not None and previous["path"] != path:
      shutil.rmtree(previous["path"], ignore_errors=True)

