"""Reading PyTorch-layout weight files into ``{name: numpy array}``.

Formats, by file suffix:
  ``.npz``                 numpy archive, names as keys (no extra dependency);
  ``.safetensors``         read directly (a JSON header and raw little-endian buffers);
  ``.pth`` ``.pt`` ``.pkl`` ``torch.load(..., weights_only=True)`` when torch is installed.
Nothing is ever downloaded.
"""

import json
import os
import struct
import zipfile

import numpy as np

_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?",
}


def _read_npz(path):
  with np.load(path, allow_pickle=False) as archive:
    return {k: archive[k] for k in archive.files}


def _read_safetensors(path):
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
    buffer = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which is not supported")
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(buffer[start:end], _SAFETENSORS_DTYPES[info["dtype"]]).reshape(
        info["shape"]).copy()
  return out


def _read_torch(path):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(
        f"reading {path} needs PyTorch (pip install torch); or convert it to .npz on a "
        "machine that has torch: np.savez(out, **{k: v.numpy() for k, v in sd.items()})"
    ) from None
  loaded = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
    loaded = loaded["model"]
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy()
          for k, v in loaded.items() if isinstance(v, torch.Tensor)}


_READERS = {".npz": _read_npz, ".safetensors": _read_safetensors, ".pth": _read_torch,
            ".pt": _read_torch, ".pkl": _read_torch}


def read_state_dict(path):
  """Reads a weight file into ``{name: numpy array}``; errors name the file and the problem."""
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in _READERS:
    raise ValueError(f"{path}: unknown weight file type {suffix!r}; expected one of "
                     f"{sorted(_READERS)}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weight file not found: {path}")
  try:
    return _READERS[suffix](path)
  except ImportError:
    raise
  except (OSError, ValueError, KeyError, EOFError, struct.error, zipfile.BadZipFile,
          RuntimeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
