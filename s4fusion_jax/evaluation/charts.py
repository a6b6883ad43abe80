"""Charts with matplotlib, from records only: a training run's curves, bar charts of results,
and the paper's Table 5 (``delta_stats``).

    python -m s4fusion_jax plot WORKDIR      # -> WORKDIR/curves.png
    python -m s4fusion_jax plot LOG.jsonl    # a kept log -> LOG.png

Each chart is a matplotlib ``Figure`` (no pyplot), written atomically by ``save``.
"""

import json
import math
import os

import numpy as np
from matplotlib.figure import Figure

from s4fusion_jax.runtime import atomic_files

COLUMNS = 3
PANEL_INCHES = (4.2, 2.8)
SMOOTHING = 0.8  # the weight of TensorBoard's debiased exponential moving average
DECADES_FOR_LOG = 2  # a positive series spanning more orders of magnitude gets a log axis
LOSS_TERMS = "loss_"  # loss terms share one panel
VALIDATION = "val/"


def _log_path(run):
  """WORKDIR/metrics.jsonl, or ``run`` itself when it is a .jsonl file (a kept log)."""
  return run if run.endswith(".jsonl") else os.path.join(run, "metrics.jsonl")


def read_log(run):
  """{series name: (steps, values)} from a run's metrics.jsonl (finite numbers only).

  ``run``: the run's workdir, or a metrics .jsonl file.
  """
  path = _log_path(run)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no metrics.jsonl in {run}" if path != run else f"no file {run}")
  series = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          steps, values = series.setdefault(key, ([], []))
          steps.append(record["step"])
          values.append(value)
  return series


def smooth(values, weight=SMOOTHING):
  """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
  out, average = [], 0.0
  for i, value in enumerate(values):
    average = weight * average + (1 - weight) * value
    out.append(average / (1 - weight**(i + 1)))
  return np.array(out)


def _spans_decades(values):
  values = np.asarray(values, np.float64)
  return bool(values.size and (values > 0).all()
              and np.log10(values.max() / values.min()) > DECADES_FOR_LOG)


def _panels(names, title=None):
  """A figure with one axes per name, COLUMNS to a row; returns (figure, {name: axes})."""
  rows = -(-len(names) // COLUMNS)
  columns = min(COLUMNS, len(names))
  figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows),
                  layout="constrained")
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for extra in axes[len(names):]:
    extra.remove()
  if title:
    figure.suptitle(title)
  return figure, dict(zip(names, axes))


def curves_figure(series):
  """The curves of ``series`` ({name: (steps, values)}, as ``read_log`` gives).

  Panels: the loss, its terms (``loss_*``, sharing one panel), the other training scalars,
  then the validation metrics. Training scalars: the raw values faint and their smoothed line
  (``smooth``). Validation metrics (``val/*``): a line with markers. A panel
  whose values are positive and span more than ``DECADES_FOR_LOG`` decades has a log axis.
  """
  if not series:
    raise ValueError("no numeric series to draw")
  def order(name):  # the loss, its terms, the other training scalars, then validation
    return (name.startswith(VALIDATION), name != "loss", not name.startswith(LOSS_TERMS), name)

  panels = {}
  for name in sorted(series, key=order):
    if name.startswith(LOSS_TERMS):
      panels.setdefault("loss terms", []).append(name)
    else:
      panels[name] = [name]
  figure, axes = _panels(list(panels))
  for panel, names in panels.items():
    ax = axes[panel]
    for i, name in enumerate(names):
      steps, values = series[name]
      colour = f"C{i}"
      if name.startswith(VALIDATION):
        ax.plot(steps, values, "o-", color=colour, markersize=4, label=name)
      else:
        prefix = f"{name} " if len(names) > 1 else ""
        ax.plot(steps, values, color=colour, alpha=0.3, linewidth=1, label=f"{prefix}raw")
        ax.plot(steps, smooth(values), color=colour, linewidth=1.8, label=f"{prefix}smoothed")
    if _spans_decades(np.concatenate([series[n][1] for n in names])):
      ax.set_yscale("log")
    ax.set_title(panel)
    ax.set_xlabel("step")
    ax.set_ylabel(names[0] if len(names) == 1 else "loss term")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  return figure


def bars_figure(results, title=None):
  """One panel of bars per metric of ``results`` ({label: {metric: value}}), a bar per label,
  each bar's value above it, and one legend of the labels for the figure."""
  if not results:
    raise ValueError("no results to draw")
  labels = list(results)
  metrics = list(results[labels[0]])
  figure, axes = _panels(metrics, title)
  for metric, ax in axes.items():
    values = [results[label][metric] for label in labels]
    bars = ax.bar(range(len(labels)), values, color=[f"C{i}" for i in range(len(labels))],
                  label=labels)
    ax.bar_label(bars, fmt="%.3g", fontsize="small")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    ax.set_title(metric)
    ax.set_xlabel("variant")
    ax.set_ylabel(metric)
    ax.margins(y=0.15)
  figure.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
  return figure


def delta_figure(layers, forms):
  """Table 5 as grouped bars: a panel per Delta form, Delta_I beside Delta_V per layer.

  Args:
    layers: {"Layer<l>": {form: {"ir": mean, "vi": mean}}} (``delta_stats.compute``).
    forms: the forms to draw, a panel each.
  """
  names = list(layers)
  figure, axes = _panels(list(forms), "mean step size Delta per CMSA layer")
  x = np.arange(len(names))
  for form, ax in axes.items():
    for offset, modality, label in ((-0.2, "ir", "infrared (Delta_I)"),
                                    (0.2, "vi", "visible (Delta_V)")):
      bars = ax.bar(x + offset, [layers[n][form][modality] for n in names], 0.4, label=label)
      ax.bar_label(bars, fmt="%.2g", fontsize="x-small", rotation=90, padding=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, names)
    ax.set_title(form)
    ax.set_xlabel("CMSA layer (Layer1: finest scale)")
    ax.set_ylabel(f"mean {form}")
    ax.margins(y=0.35)
  figure.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
  return figure


def save(figure, out):
  """Writes ``figure`` as a PNG to ``out`` atomically; returns ``out``."""
  atomic_files.write(out, lambda f: figure.savefig(f, format="png", dpi=100), ".png")
  return out


def plot(run, out=None):
  """Draws every logged series of ``run`` (a workdir or a metrics .jsonl file) into ``out``
  (default: WORKDIR/curves.png, or the .jsonl file's name with .png)."""
  series = read_log(run)
  if not series:
    raise ValueError(f"{_log_path(run)} has no numeric series")
  default = run[:-len(".jsonl")] + ".png" if run.endswith(".jsonl") else os.path.join(
      run, "curves.png")
  return save(curves_figure(series), out or default)
