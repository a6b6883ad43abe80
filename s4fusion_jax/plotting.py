"""Plots with PIL only: a training run's logged curves, and bar charts of results.

    python -m s4fusion_jax plot WORKDIR      # -> WORKDIR/curves.png
"""

import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from s4fusion_jax import image_files

PANEL_W, PANEL_H, MARGIN, COLUMNS = 360, 220, 36, 3


def read_log(workdir):
  """{series name: (steps, values)} from WORKDIR/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no metrics.jsonl in {workdir}")
  series = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          series.setdefault(key, ([], []))
          series[key][0].append(record["step"])
          series[key][1].append(value)
  return series


def _panel(name, steps, values):
  image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
  draw = ImageDraw.Draw(image)
  lo, hi = min(values), max(values)
  span = (hi - lo) or 1.0
  s_lo, s_hi = min(steps), max(steps)
  s_span = (s_hi - s_lo) or 1
  box = (MARGIN, 20, PANEL_W - 10, PANEL_H - MARGIN)
  draw.rectangle(box, outline="black")
  points = [(box[0] + (s - s_lo) / s_span * (box[2] - box[0]),
             box[3] - (v - lo) / span * (box[3] - box[1])) for s, v in zip(steps, values)]
  if len(points) > 1:
    draw.line(points, fill=(31, 119, 180), width=2)
  else:
    draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2],
                 fill=(31, 119, 180))
  draw.text((box[0], 4), name, fill="black")
  draw.text((2, box[1]), f"{hi:.3g}", fill="gray")
  draw.text((2, box[3] - 10), f"{lo:.3g}", fill="gray")
  draw.text((box[0], box[3] + 6), f"step {s_lo}", fill="gray")
  draw.text((box[2] - 70, box[3] + 6), f"step {s_hi}", fill="gray")
  return np.asarray(image)


def _write_grid(panels, out):
  """Writes equal-sized panels, COLUMNS to a row, as one PNG; returns ``out``."""
  blank = np.full_like(panels[0], 255)
  panels = panels + [blank] * (-len(panels) % COLUMNS)
  rows = [np.concatenate(panels[i:i + COLUMNS], axis=1) for i in range(0, len(panels), COLUMNS)]
  image_files.write_png(out, np.concatenate(rows, axis=0))
  return out


def plot(workdir, out=None):
  """Draws every logged series of ``workdir`` into ``out`` (default WORKDIR/curves.png)."""
  series = read_log(workdir)
  if not series:
    raise ValueError(f"{workdir}/metrics.jsonl has no numeric series")
  out = out or os.path.join(workdir, "curves.png")
  return _write_grid([_panel(name, *series[name]) for name in sorted(series)], out)


BAR_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def _bar_panel(metric, values):
  """One metric's bars, one per entry of ``values`` ({label: value}), axis from 0."""
  image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
  draw = ImageDraw.Draw(image)
  box = (MARGIN, 20, PANEL_W - 10, PANEL_H - MARGIN)
  draw.rectangle(box, outline="black")
  top = max(max(values.values()), 1e-12) * 1.15
  slot = (box[2] - box[0]) / len(values)
  for i, (label, value) in enumerate(values.items()):
    left = box[0] + i * slot + slot * 0.15
    height = max(value, 0) / top * (box[3] - box[1])
    draw.rectangle([left, box[3] - height, left + slot * 0.7, box[3]],
                   fill=BAR_COLOURS[i % len(BAR_COLOURS)])
    draw.text((left, box[3] - height - 11), f"{value:.3g}", fill="black")
    draw.text((left, box[3] + 4 + 10 * (i % 2)), label[:8], fill="black")
  draw.text((box[0], 4), metric, fill="black")
  draw.text((2, box[1]), f"{top:.3g}", fill="gray")
  draw.text((2, box[3] - 10), "0", fill="gray")
  return np.asarray(image)


def bar_chart(results, out):
  """Draws ``results`` ({label: {metric: value}}) as one bar panel per metric into ``out``."""
  if not results:
    raise ValueError("no results to draw")
  metrics = list(next(iter(results.values())))
  return _write_grid(
      [_bar_panel(m, {label: r[m] for label, r in results.items()}) for m in metrics], out)


def image_rows(rows, height=192, header=None):
  """Rows of images side by side, each row scaled to one width: no padding bands.

  Args:
    rows: lists of uint8 images (H, W, 1|3); a row's images are scaled to ``height`` pixels
      high, then every row to the widest row's width (its height follows its aspect ratio).
    header: optional column labels, drawn in a white strip above the first row at the
      first row's column positions.

  Returns:
    One RGB uint8 image.
  """
  def scaled(x, size):
    rgb = np.repeat(x, 3, -1) if x.shape[-1] == 1 else x
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))

  lines = []
  for row in rows:
    widths = [max(1, round(x.shape[1] * height / x.shape[0])) for x in row]
    lines.append(np.concatenate([scaled(x, (w, height)) for x, w in zip(row, widths)], axis=1))
    if len(lines) == 1:
      first_edges, first_width = np.cumsum([0] + widths[:-1]), sum(widths)
  width = max(line.shape[1] for line in lines)
  lines = [line if line.shape[1] == width else scaled(
      line, (width, max(1, round(height * width / line.shape[1])))) for line in lines]
  if header:
    strip = Image.new("RGB", (width, 18), "white")
    draw = ImageDraw.Draw(strip)
    for left, label in zip(first_edges, header):
      draw.text((left * width / first_width + 4, 3), label, fill="black")
    lines.insert(0, np.asarray(strip))
  return np.concatenate(lines, axis=0)
