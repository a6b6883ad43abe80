"""The evaluation job: fuse every pair of a dataset, save, measure, tabulate, draw.

Outputs in OUT: ``fused/NAME.png`` (uint8, grey or recoloured RGB), ``metrics.csv`` (one
row per image), ``metrics.json`` (``{"mean": {...}, "per_image": {name: {...}}}``),
``progress.jsonl`` (below), ``metrics.md`` (the number of pairs and the means) and
``samples.png`` (IR | VI | fused for a few pairs). Metrics are computed on the saved files
re-read as the CDDFuse/EMMA Evaluator reads them (``metrics.evaluator_gray``).

Resuming: ``progress.jsonl`` starts with the run's identity (the fuser's ``signature``, the
data and split) and gains a line per pair once its image is saved and measured. A rerun with
the same OUT and identity fuses only the pairs not recorded with their image on disk; any
other identity starts afresh. A line cut short by a kill is ignored.
"""

import json
import os

import numpy as np

from s4fusion_jax.data import datasets
from s4fusion_jax.data import image_files
from s4fusion_jax.data import image_grid
from s4fusion_jax.evaluation import published
from s4fusion_jax.evaluation import result_tables
from s4fusion_jax.objectives import metrics
from s4fusion_jax.runtime import atomic_files

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


def tables(per_image):
  """(csv text, markdown mean table, mean dict) of ``{name: {metric: value}}``."""
  names = list(metrics.NAMES)
  mean = {k: float(np.mean([m[k] for m in per_image.values()])) for k in names}
  csv_text = result_tables.csv_text(
      ["name", *names], [[name, *(m[k] for k in names)] for name, m in per_image.items()])
  md = result_tables.markdown(["pairs", *names],
                              [[len(per_image), *(f"{mean[k]:.4f}" for k in names)]])
  return csv_text, md, mean


def _resume(record, identity):
  """The pairs ``record`` (progress.jsonl) holds for a run of ``identity``, {name: metrics}."""
  if not os.path.isfile(record):
    return {}
  with open(record) as f:
    lines = f.read().split("\n")
  try:
    if json.loads(lines[0]) != {"run": identity}:
      return {}
  except json.JSONDecodeError:
    return {}
  done = {}
  for line in lines[1:]:
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      continue  # the line a kill cut short (or the empty one after the last newline)
    done[entry["name"]] = entry["metrics"]
  return done


def evaluate(fuser, data, out, *, split="test", num_samples=4, progress=True, on_pair=None):
  """Fuses, saves and measures every pair of ``data``; returns the mean metrics.

  Resumes a run of the same fuser and data in ``out`` (see the module docstring).
  ``on_pair(count)``, if given, is called after each pair this call fused, with their number.
  """
  os.makedirs(os.path.join(out, "fused"), exist_ok=True)
  items = list(pairs(data, split))
  if not items:
    raise ValueError(f"no image pairs in {data}")
  identity = json.loads(json.dumps(  # as it reads back from the record (lists, not tuples)
      {"fuser": fuser.signature(), "data": os.path.abspath(data), "split": split}))
  record = os.path.join(out, "progress.jsonl")
  fused_path = lambda name: os.path.join(out, "fused", os.path.splitext(name)[0] + ".png")
  done = {name: m for name, m in _resume(record, identity).items()
          if os.path.isfile(fused_path(name))}
  atomic_files.write_text(record, "".join(json.dumps(x) + "\n" for x in [{"run": identity}] + [
      {"name": name, "metrics": m} for name, m in done.items()]))
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    items = tqdm(items, desc="fuse + measure", dynamic_ncols=True)
  per_image, rows, count = {}, [], 0
  with open(record, "a") as log:
    for name, ir, vi in items:
      path = fused_path(name)
      if name in done:
        per_image[name] = done[name]
        fused = image_files.read_vi(path) if len(rows) < num_samples else None
      else:
        fused = fuser.fuse(ir, vi)
        image_files.write_png(path, fused)
        saved = image_files.read_vi(path)
        per_image[name] = metrics.compute(metrics.evaluator_gray(saved),
                                          metrics.evaluator_gray(ir), metrics.evaluator_gray(vi))
        log.write(json.dumps({"name": name, "metrics": per_image[name]}) + "\n")
        log.flush()
        os.fsync(log.fileno())
        count += 1
        if on_pair:
          on_pair(count)
      if len(rows) < num_samples:
        rows.append([ir, vi, fused])
  csv_text, md, mean = tables(per_image)
  atomic_files.write_text(os.path.join(out, "metrics.csv"), csv_text)
  atomic_files.write_text(os.path.join(out, "metrics.json"),
              json.dumps({"mean": mean, "per_image": per_image}, indent=1))
  atomic_files.write_text(os.path.join(out, "metrics.md"), md)
  if rows:
    image_files.write_png(os.path.join(out, "samples.png"),
                          image_grid.image_rows(rows, SAMPLE_HEIGHT))
  return mean


def compare(results, names=metrics.PAPER_COLUMNS, bold=True, key=lambda metric, value: value,
            formats=None):
  """A markdown table of mean metrics, one row per method; the best of each column in bold.

  Args:
    results: {method: {metric: mean}}; a metric a row lacks is shown as "-".
    bold: whether to mark each column's best value.
    key: what is compared for the bold, ``key(metric, value)`` (e.g. a rounding; ties are
      all bold).
    formats: {method: ``format(metric, value) -> str``} for rows not shown with four decimals.
  """
  formats = formats or {}
  best = {k: max((key(k, r[k]) for r in results.values() if k in r), default=None)
          for k in names}
  rows = []
  for method, r in results.items():
    shown = formats.get(method, lambda metric, value: f"{value:.4f}")
    cells = ["-" if k not in r else f"**{shown(k, r[k])}**" if bold and key(k, r[k]) == best[k]
             else shown(k, r[k]) for k in names]
    rows.append([method, *cells])
  return result_tables.markdown(["method", *names], rows)


def figure(data, fused_dirs, names, out, height=SAMPLE_HEIGHT):
  """Draws IR | VI | each method's fused image for the pairs ``names`` of ``data``.

  Args:
    data: a folder of pairs or a prepared dataset (as ``pairs`` reads it).
    fused_dirs: {column label: a folder of NAME.png fused images, or an ``evaluate`` output
      folder (its ``fused/``)}.
    names: the pairs' file names, one row each, in order.
    out: the PNG to write.
  """
  sources = {name: (ir, vi) for name, ir, vi in pairs(data)}
  absent = [n for n in names if n not in sources]
  if absent:
    raise ValueError(f"pairs {absent} are not in {data}")
  rows = []
  for name in names:
    row = list(sources[name])
    for label, folder in fused_dirs.items():
      inner = os.path.join(folder, "fused")
      path = os.path.join(inner if os.path.isdir(inner) else folder,
                          os.path.splitext(name)[0] + ".png")
      if not os.path.isfile(path):
        raise FileNotFoundError(f"no fused image of {name} for {label!r}: {path}")
      row.append(image_files.read_vi(path))
    rows.append(row)
  image_files.write_png(out, image_grid.image_rows(rows, height, ["infrared", "visible",
                                                                *fused_dirs]))
  return out


CONTEXT = ("Context, not fusion networks: simple baselines. MI and VIF measure how much of each "
           "source's signal the fused image reproduces exactly, so copying a source or taking "
           "the pixel-wise max scores high on them.")


def report(ours, baselines, data, num_pairs, on_tno):
  """The demo's markdown: our means beside the published rows (on the 25 TNO pairs only).

  Args:
    ours: {metric: mean} of the model; baselines: {method: {metric: mean}}.
    data: where the pairs came from (for the title); num_pairs: how many.
    on_tno: whether they are the 25 pairs of ``published.TNO_PAIRS`` (``is_tno_set``).
  """
  rows = {"S4Fusion (this model)": ours}
  if on_tno:
    head = (f"Means over all 25 TNO pairs of {data}, beside the means published for them "
            "(CDDFuse, CVPR 2023, Table 1; AG is not published). Bold: the best of each "
            "column among the fusion networks at the published two decimals (SSIM as the "
            "sum), so rows that tie there are all bold.")
    table = published.tno_results()
    rows.update(table)
    of = len(metrics.PUBLISHED_COLUMNS)
    counts = [f"{method} on {len(w)} of {of} ({', '.join(w) or 'none'})"
              for method, w in ((m, published.wins(ours, r)) for m, r in table.items())]
    head_to_head = ("\nS4Fusion beats (at the table's two decimals, SSIM as the sum): "
                    + "; ".join(counts) + ".\n")
  else:
    head = (f"Means over a sample of {num_pairs} pairs ({data}). The published means are over "
            "all 25 TNO pairs, so they are not shown: run on ../shared/data/tno to see them.")
    head_to_head = ""
  formats = {method: published.as_published for method in rows if method in published.tno_results()}
  columns = metrics.VALIDATION_COLUMNS
  return (head + "\n\n" + compare(rows, columns, bold=len(rows) > 1, key=published.rounded,
                                  formats=formats)
          + head_to_head + "\n" + CONTEXT + "\n\n" + compare(baselines, columns, bold=False))


def demo(out, data=None, checkpoint_dir=None, progress=True, exact_sizes=False):
  """Fuses TNO with the model and every baseline of ``METHODS``; writes OUT/comparison.md.

  ``data`` defaults to ../shared/data/tno beside the checkout, else demo_data/tno. Returns
  the report (``report``).
  """
  from s4fusion_jax.evaluation import inference  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(inference.PACKAGE)
  shared = os.path.join(repo, "..", "shared", "data", "tno")
  data = data or (shared if os.path.isdir(shared) else os.path.join(repo, "demo_data", "tno"))
  infrared = {name: ir for name, ir, _ in pairs(data)}
  fuser = inference.Fuser.from_flags(checkpoint_dir, exact_sizes=exact_sizes)
  ours = evaluate(fuser, data, os.path.join(out, "S4Fusion"), progress=progress)
  baselines = {method: evaluate(inference.Fuser(method=method), data, os.path.join(out, method),
                                progress=progress) for method in inference.METHODS}
  text = report(ours, baselines, os.path.abspath(data), len(infrared),
                published.is_tno_set(infrared))
  atomic_files.write_text(os.path.join(out, "comparison.md"), text)
  return text
