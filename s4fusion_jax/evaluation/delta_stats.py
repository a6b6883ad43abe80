"""The paper's Table 5: the mean step size Delta of each modality in each CMSA layer.

    python -m s4fusion_jax delta-stats --data DIR [--checkpoint CKPT] [--out OUT]

In a CMSA block the scan steps through [I_1, V_1, I_2, V_2, ...] with a step Delta_t at every
position; the paper compares the mean Delta of the infrared positions (Delta_I) with that of
the visible ones (Delta_V) in each CMSA layer.

Delta has three forms here (``functional.cross_scan_terms``): ``delta_proj`` = dt_low
dt_proj (the projection), ``delta_biased`` = that + dt_bias, ``delta`` = softplus of that,
the step the scan takes. The reference's Python code holds only the projection (the CUDA
kernel adds the bias and applies the softplus), and the paper's values are negative, so they
are ``delta_proj`` (``PAPER_FORM``).

"Layer l" is the reference's ``fusion_layers[l - 1]`` (Layer1 the finest scale): the mean
over its CMSA blocks, each also reported.

Means: per image over the valid positions (the reference-padded rectangle), the four
directions and the channels; then over the images.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from s4fusion_jax.evaluation import charts
from s4fusion_jax.evaluation import evaluator
from s4fusion_jax.evaluation import result_tables
from s4fusion_jax.interop import functional
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import color
from s4fusion_jax.numerics import directions
from s4fusion_jax.numerics import sizes
from s4fusion_jax.runtime import atomic_files

FORMS = ("delta_proj", "delta_biased", "delta")
PAPER_FORM = "delta_proj"
MODALITIES = ("ir", "vi")


def masked_means(terms, valid, height, width, rule):
  """Per image, the mean of each Delta form of each modality over the valid positions.

  Args:
    terms: ``functional.cross_scan_terms``'s result, each array (batch, L_s, 4, D).
    valid: (batch, 2) valid rectangles (H_v, W_v) in pixels (``sizes.placement``).
    height, width: the model input's size in pixels (the bucket).
    rule: ``(kernel, stride, levels)`` of the model (``ModelConfig.size_rule``).

  Returns:
    ``{block: {form: {modality: (batch,)}}}`` for the blocks of ``terms``.
  """
  kernel, stride, _ = rule
  h, w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
  means = {}
  for block, forms in terms.items():
    scale = int(block.split("/")[0].rpartition("_")[2])
    mask = directions.sequence_mask(sizes.grid_mask(valid, h >> scale, w >> scale, kernel,
                                                    stride, scale))
    count = mask.sum(axis=(1, 2, 3))  # (batch,) valid steps of the four paths
    means[block] = {}
    for form in FORMS:
      means[block][form] = {}
      for modality, x in forms[form].items():
        total = jnp.where(mask, x, 0).sum(axis=(1, 2, 3))
        means[block][form][modality] = total / (count * x.shape[-1])
  return means


@functools.partial(jax.jit, static_argnums=(0, 1))
def _image_means(net, rule, variables, ir, vi, valid):
  """(1, H, W, 1) images in [0, 1] placed in a bucket -> ``masked_means`` of their pass."""
  _, scans = net.intermediates(variables, ir, vi, valid)
  return masked_means(functional.cross_scan_terms(variables, scans), valid, *ir.shape[1:3], rule)


def compute(net, variables, data, progress=True):
  """Table 5 for a model (``functional.Network`` and its variables) on a folder of pairs.

  Args:
    data: a folder with ir/ and vi/ (or a prepared dataset), uint8 pairs; the visible
      image's Y is fused, as in ``inference``.

  Returns:
    ``{"pairs": n, "blocks": {block: {form: {modality: mean}}},
    "layers": {"Layer<l>": {form: {modality: mean}}}}``, floats.
  """
  config = net.module(variables).config
  if config.fusion != "cmsa":
    raise ValueError(f"delta-stats reads CMSA blocks; this model's fusion is {config.fusion!r}")
  per_image = []
  for name, ir, vi in evaluator.pairs(data):
    means, _ = model_lib.run_placed(
        config, functools.partial(_image_means, net, config.size_rule(), variables),
        ir[None] / 255.0, color.rgb_to_y(vi[None] / 255.0))
    per_image.append(jax.tree.map(lambda x: float(np.asarray(x, np.float64)[0]), means))
    if progress:
      print(f"delta-stats: {name} ({len(per_image)})", flush=True)
  if not per_image:
    raise ValueError(f"no image pairs in {data}")
  blocks = jax.tree.map(lambda *xs: float(np.mean(xs)), *per_image)
  layers = {f"Layer{scale + 1}": jax.tree.map(lambda *xs: float(np.mean(xs)), *(
      v for k, v in blocks.items() if k.startswith(f"fusion_{scale}/")))
            for scale in range(config.levels)}
  return {"pairs": len(per_image), "blocks": blocks, "layers": layers}


def observations(stats, form=PAPER_FORM):
  """The paper's two observations checked on ``stats``: {statement: holds}."""
  layers = stats["layers"]
  names = list(layers)
  falls = {m: all(layers[a][form][m] > layers[b][form][m] for a, b in zip(names, names[1:]))
           for m in MODALITIES}
  return {"Delta_I > Delta_V in every layer":
              all(layers[n][form]["ir"] > layers[n][form]["vi"] for n in names),
          "Delta_I falls with depth": falls["ir"],
          "Delta_V falls with depth": falls["vi"]}


def write(stats, out):
  """Writes delta_stats.{json,md,csv,png} into ``out``: a row per layer and per block, Delta_I
  and Delta_V per form; returns the markdown path."""
  head = ["layer", *(f"{f} {m}" for f in FORMS for m in ("I", "V"))]
  rows = [[name, *(values[f][m] for f in FORMS for m in MODALITIES)]
          for name, values in [*stats["layers"].items(), *stats["blocks"].items()]]
  checks = observations(stats)
  note = (f"\n{stats['pairs']} pairs. The paper's form is {PAPER_FORM} (see "
          "s4fusion_jax/evaluation/delta_stats.py). On it:\n\n"
          + "".join(f"- {claim}: {'yes' if holds else 'no'}\n" for claim, holds in checks.items()))
  result_tables.write(out, "delta_stats", head, rows,
                      lambda column, value: value if column == "layer" else f"{value:.4f}", note)
  atomic_files.write_text(os.path.join(out, "delta_stats.json"), json.dumps(stats, indent=1))
  charts.save(charts.delta_figure(stats["layers"], FORMS), os.path.join(out, "delta_stats.png"))
  return os.path.join(out, "delta_stats.md")
