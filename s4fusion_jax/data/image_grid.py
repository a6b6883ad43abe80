"""Image grids with PIL: rows of images side by side (samples, validation, figures).

Charts (curves, bars) are matplotlib figures in ``charts``.
"""

import numpy as np
from PIL import Image, ImageDraw


def image_rows(rows, height=192, header=None):
  """Rows of images side by side, each row scaled to one width: no padding bands.

  Args:
    rows: lists of uint8 images (H, W, 1|3), scaled to ``height`` pixels high, then every
      row to the widest row's width.
    header: optional column labels, in a white strip above the first row's columns.

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
