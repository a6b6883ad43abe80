"""Per-stage agreement with the PyTorch reference's golden fixtures, as a table.

    python bench/parity.py [--shared ../shared]

Prints max |ours - ref| / max |ref| for every stage, in float64 and float32,
for each golden S4Fusion fixture and each scan backend.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from s4fusion_jax.interop import reference  # pylint: disable=wrong-import-position
from s4fusion_jax.numerics import scan  # pylint: disable=wrong-import-position

FIXTURES = ("golden_s4fusion_tiny_37x49.npz", "golden_s4fusion_61x73.npz")


def stage_errors(golden, dtype, backend):
  sd = {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}
  model = reference.from_torch_state_dict(sd, dtype=dtype, scan_backend=backend)
  ir, vi = (jnp.asarray(golden[f"input/{m}"].transpose(0, 2, 3, 1), dtype) for m in ("ir", "vi"))
  stages = nnx.jit(lambda m, a, b: m.stages(a, b))(model, ir, vi)
  errors = {}
  for name, ours in stages.items():
    ref = golden[f"{dtype}/{name}"]
    ref = ref.transpose(0, 2, 3, 1) if name == "output" else ref
    errors[name] = float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())
  return errors


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared"))
  args = parser.parse_args()
  for fixture in FIXTURES:
    with np.load(os.path.join(args.shared, "golden", fixture)) as f:
      golden = {k: f[k] for k in f.files}
    columns = {}
    for dtype in ("float64", "float32"):
      for backend in scan.ScanBackend:
        with jax.enable_x64(dtype == "float64"):
          columns[f"{dtype} {backend.value}"] = stage_errors(golden, dtype, backend)
    names = list(next(iter(columns.values())))
    print(f"\n{fixture}: max |ours - ref| / max |ref|\n")
    print("| stage | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in names:
      print(f"| {name} | " + " | ".join(f"{c[name]:.1e}" for c in columns.values()) + " |")


if __name__ == "__main__":
  main()
