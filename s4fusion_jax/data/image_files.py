"""Reading and writing infrared / visible image files, with errors that name the file.

Reading rule (documented for users' own images):
  * 8-bit images are used as they are;
  * 16-bit images (PIL modes I;16*, I) are mapped to 8 bits by round(v / 257), so that
    0..65535 spans 0..255 (full-range scaling; no per-image contrast stretch);
  * infrared images become one channel (PIL's ``convert('L')``); visible images become RGB
    (a grey one replicated to three channels).
Writing is atomic.
"""

import os

import numpy as np
from PIL import Image

from s4fusion_jax.runtime import atomic_files

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path):
  try:
    image = Image.open(path)
    image.load()
    return image
  except FileNotFoundError:
    raise FileNotFoundError(f"image not found: {path}") from None
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def _to_8bit(image):
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    values = np.asarray(image, dtype=np.float64)
    if values.min() < 0 or values.max() > 65535:
      raise ValueError(f"{image.filename}: values outside 0..65535 for a 16-bit image")
    return Image.fromarray(np.round(values / 257.0).astype(np.uint8), "L")
  if image.mode == "F":
    raise ValueError(f"{image.filename}: floating-point images are not supported; save 8- or "
                     "16-bit images")
  return image


def read_ir(path):
  """An infrared image file -> uint8 (H, W, 1)."""
  image = _to_8bit(_open(path))
  return np.asarray(image.convert("L"))[..., None]


def read_vi(path):
  """A visible image file -> uint8 (H, W, 3)."""
  image = _to_8bit(_open(path))
  return np.asarray(image.convert("RGB"))


def list_images(folder):
  """Sorted image file names (by extension) in ``folder``."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"folder not found: {folder}")
  return sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))


def to_uint8(x):
  """[0, 1] floats -> uint8 as ``save_image``: clamp to [0, 1], x255, round half to even."""
  return np.round(np.clip(np.asarray(x, np.float32), 0, 1) * 255).astype(np.uint8)


def write_png(path, array):
  """Writes uint8 (H, W), (H, W, 1) or (H, W, 3) to ``path`` atomically."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  atomic_files.write(path, lambda f: Image.fromarray(array).save(f, format="PNG"), ".png")
