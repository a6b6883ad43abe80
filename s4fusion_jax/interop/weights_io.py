"""Reading and writing PyTorch-layout weight files as ``{name: numpy array}``.

Formats, by file suffix:
  ``.npz``                 numpy archive, names as keys (no extra dependency);
  ``.safetensors``         read directly (a JSON header and raw little-endian buffers);
  ``.pth`` ``.pt`` ``.pkl`` ``torch.load(..., weights_only=True)`` when torch is installed;
                           written as ``{'model': state_dict}``, the dict the reference saves.
Files are written atomically. Nothing is ever downloaded.
"""

import json
import os
import struct
import zipfile

import numpy as np

from s4fusion_jax.runtime import atomic_files

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


def _import_torch(path, doing):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(
        f"{doing} {path} needs PyTorch (pip install torch); or use .npz, which needs no torch "
        "(np.savez(out, **{k: v.numpy() for k, v in sd.items()}) on a machine that has it)"
    ) from None
  return torch


def _read_torch(path):
  torch = _import_torch(path, "reading")
  loaded = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
    loaded = loaded["model"]
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy()
          for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _write_npz(file, state_dict, _):
  np.savez(file, **state_dict)


def _write_torch(file, state_dict, path):
  torch = _import_torch(path, "writing")
  torch.save({"model": {k: torch.from_numpy(np.array(v))
                        for k, v in state_dict.items()}}, file)


_WRITERS = {".npz": _write_npz, ".pth": _write_torch, ".pt": _write_torch, ".pkl": _write_torch}
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


def check_x64(dtype):
  """Raises when ``dtype`` is float64 and JAX's x64 mode is off (arrays would be float32)."""
  import jax  # pylint: disable=import-outside-toplevel
  if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True) first")


def load_into(abstract, table, state_dict, dtype, *, what, ignored=()):
  """Fills an abstract NNX module from a PyTorch-layout state dict.

  Args:
    abstract: the module from ``nnx.eval_shape``.
    table: (our flat state path, their name, their layout -> ours) for every variable.
    state_dict: their names -> numpy arrays.
    dtype: the dtype of the filled variables.
    what: the network's name, for the error message.
    ignored: their names accepted and dropped.

  Raises:
    ValueError listing every unknown, missing and mis-shaped name.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  if {ours for ours, _, _ in table} != set(flat):
    raise AssertionError(f"the {what} name table does not cover the module")
  known = {theirs for _, theirs, _ in table} | set(ignored)
  problems = [f"unknown parameter {n!r}" for n in sorted(set(state_dict) - known)]
  for ours, theirs, to_ours in table:
    if theirs not in state_dict:
      problems.append(f"missing parameter {theirs!r}")
      continue
    value = to_ours(state_dict[theirs])
    want = flat[ours].get_value().shape
    if value.shape != want:
      problems.append(f"{theirs!r} has shape {state_dict[theirs].shape}; converted to "
                      f"{value.shape}, the model needs {want}")
    else:
      flat[ours].set_value(jnp.asarray(value, dtype))
  if problems:
    raise ValueError(f"{len(problems)} problem(s) in the {what} state dict:\n  "
                     + "\n  ".join(problems))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def check_target(path, *, force=False):
  """The absolute ``path`` if weights can be written there (a known suffix; no file, or ``force``).

  Raises ValueError for an unknown suffix, FileExistsError for an existing file without ``force``.
  """
  path = os.path.abspath(os.fspath(path))
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in _WRITERS:
    raise ValueError(f"{path}: cannot write weights as {suffix!r}; use one of {sorted(_WRITERS)}")
  if os.path.exists(path) and not force:
    raise FileExistsError(f"{path} exists (use --force to replace it)")
  return path


def write_state_dict(path, state_dict, *, force=False):
  """Writes ``{name: numpy array}`` to ``path`` (by suffix, see the module docstring).

  Raises as ``check_target``; an existing file is only replaced once the new one is complete.
  """
  path = check_target(path, force=force)
  suffix = os.path.splitext(path)[1].lower()
  atomic_files.write(path, lambda f: _WRITERS[suffix](f, state_dict, path), suffix)
