"""Result tables as text: GitHub markdown and CSV from one header and its rows.

A CSV keeps values exact (floats to 8 significant digits); a markdown table shows them as
the job formats them.
"""

import csv
import io
import numbers
import os

from s4fusion_jax.runtime import atomic_files


def _checked(head, rows):
  """``rows`` as lists of strings, each as long as ``head``."""
  rows = [[str(cell) for cell in row] for row in rows]
  for row in rows:
    if len(row) != len(head):
      raise ValueError(f"a row of {len(row)} cells under a header of {len(head)}: {row}")
  return rows


def markdown(head, rows):
  """A GitHub markdown table: the first column left-aligned (labels), the rest right-aligned.

  ``head``: [str] column names; ``rows``: [[cell]] as many cells as ``head`` each, shown as
  ``str(cell)`` (``|`` escaped). Returns the lines, each ending in a newline.
  """
  line = lambda cells: "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"
  lines = [line(head), "|---|" + "---:|" * (len(head) - 1)]
  lines += [line(row) for row in _checked(head, rows)]
  return "\n".join(lines) + "\n"


def _exact(value):
  real = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
  return f"{value:.8g}" if real else str(value)


def csv_text(head, rows):
  """The same table as CSV text (``csv`` module's quoting): floats with 8 significant digits,
  other cells as ``str(cell)``."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(head)
  writer.writerows(_checked(head, [[_exact(cell) for cell in row] for row in rows]))
  return out.getvalue()


def write(folder, name, head, rows, shown, note=""):
  """Writes the values ``rows`` under ``head`` as ``folder/name.csv`` (``csv_text``) and
  ``folder/name.md`` (cells ``shown(column name, value)``, then ``note``), atomically; returns
  the markdown."""
  md = markdown(head, [[shown(h, v) for h, v in zip(head, row)] for row in rows]) + note
  atomic_files.write_text(os.path.join(folder, f"{name}.md"), md)
  atomic_files.write_text(os.path.join(folder, f"{name}.csv"), csv_text(head, rows))
  return md
