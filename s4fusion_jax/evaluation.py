"""The evaluation job: fuse every pair of a dataset, save, measure, tabulate, draw.

Outputs in OUT: ``fused/NAME.png`` (uint8, grey or recoloured RGB), ``metrics.csv`` (one
row per image), ``metrics.json`` (``{"mean": {...}, "per_image": {name: {...}}}``),
``metrics.md`` (the mean table) and ``samples.png`` (IR | VI | fused for a few pairs).
Metrics are computed on the saved files re-read as grey the way the CDDFuse/EMMA
Evaluator reads them (``metrics.evaluator_gray``); every file is written atomically.
"""

import csv
import io
import json
import os

import numpy as np
from PIL import Image

from s4fusion_jax import datasets
from s4fusion_jax import image_files
from s4fusion_jax import metrics
from s4fusion_jax import samples

SAMPLE_HEIGHT = 192


def pairs(data, split="test"):
  """(name, ir uint8 (H, W, 1), vi uint8 (H, W, 3)) for a folder of pairs or a prepared dataset."""
  if os.path.isfile(os.path.join(data, "dataset_info.json")):
    src = datasets.source(data, split)
    for i in range(len(src)):
      example = src[i]
      name = example["name"]
      yield (name.decode() if isinstance(name, bytes) else name), example["ir"], example["vi"]
    return
  good, _ = datasets.collect_pairs(data)
  for pair in good:
    yield pair.name, image_files.read_ir(pair.ir_path), image_files.read_vi(pair.vi_path)


def _write_text(path, text):
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _row_image(ir, vi, fused):
  """IR | VI | fused at SAMPLE_HEIGHT pixels high, RGB uint8."""
  parts = []
  for x in (ir, vi, fused):
    rgb = np.repeat(x, 3, -1) if x.shape[-1] == 1 else x
    width = max(1, round(rgb.shape[1] * SAMPLE_HEIGHT / rgb.shape[0]))
    parts.append(np.asarray(Image.fromarray(rgb).resize((width, SAMPLE_HEIGHT), Image.BILINEAR)))
  return np.concatenate(parts, axis=1)


def tables(per_image):
  """(csv text, markdown mean table, mean dict) of ``{name: {metric: value}}``."""
  names = list(metrics.NAMES)
  mean = {k: float(np.mean([m[k] for m in per_image.values()])) for k in names}
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["name", *names])
  for name, m in per_image.items():
    writer.writerow([name, *(f"{m[k]:.6g}" for k in names)])
  md = ("| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n| "
        + " | ".join(f"{mean[k]:.4f}" for k in names) + " |\n")
  return out.getvalue(), md, mean


def evaluate(fuser, data, out, *, split="test", num_samples=4, progress=True):
  """Fuses, saves and measures every pair of ``data``; returns the mean metrics."""
  os.makedirs(os.path.join(out, "fused"), exist_ok=True)
  items = list(pairs(data, split))
  if not items:
    raise ValueError(f"no image pairs in {data}")
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    items = tqdm(items, desc="fuse + measure", dynamic_ncols=True)
  per_image, rows = {}, []
  for name, ir, vi in items:
    fused = fuser.fuse(ir, vi)
    path = os.path.join(out, "fused", os.path.splitext(name)[0] + ".png")
    image_files.write_png(path, fused)
    saved = np.asarray(Image.open(path).convert("RGB"))
    per_image[name] = metrics.compute(metrics.evaluator_gray(saved), metrics.evaluator_gray(ir),
                                      metrics.evaluator_gray(vi))
    if len(rows) < num_samples:
      rows.append(_row_image(ir, vi, fused))
  csv_text, md, mean = tables(per_image)
  _write_text(os.path.join(out, "metrics.csv"), csv_text)
  _write_text(os.path.join(out, "metrics.json"),
              json.dumps({"mean": mean, "per_image": per_image}, indent=1))
  _write_text(os.path.join(out, "metrics.md"), md)
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
  image_files.write_png(os.path.join(out, "samples.png"), np.concatenate(rows, axis=0))
  return mean


def compare(results, names=samples.PAPER_METRICS):
  """A markdown table of mean metrics, one row per method; the best of each column in bold.

  Args:
    results: {method: {metric: mean}}.
  """
  lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  best = {k: max(r[k] for r in results.values()) for k in names}
  for method, r in results.items():
    cells = [f"**{r[k]:.4f}**" if r[k] == best[k] else f"{r[k]:.4f}" for k in names]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def demo(out, data=None, checkpoint_dir=None, progress=True):
  """Fuses TNO with the model and every baseline of ``METHODS``; writes OUT/comparison.md.

  ``data`` defaults to ../shared/data/tno beside the checkout, else the pairs bundled in
  demo_data/tno. Returns the comparison table.
  """
  from s4fusion_jax import inference  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  shared = os.path.join(repo, "..", "shared", "data", "tno")
  data = data or (shared if os.path.isdir(shared) else os.path.join(repo, "demo_data", "tno"))
  results = {}
  fusers = [("S4Fusion", inference.Fuser.from_flags(checkpoint_dir))]
  fusers += [(method, inference.Fuser(method=method)) for method in inference.METHODS]
  for label, fuser in fusers:
    results[label] = evaluate(fuser, data, os.path.join(out, label), progress=progress)
  table = compare(results)
  _write_text(os.path.join(out, "comparison.md"), f"Mean metrics on {os.path.abspath(data)}\n\n"
              + table)
  return table
