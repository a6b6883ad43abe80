"""A GPU's or TPU's measurements: parity, fuse and train step per scan backend, with compiling.

    python -m bench.device_check --golden ../shared/golden/golden_s4fusion_61x73.npz
    python -m bench.device_check --golden ../shared/golden/golden_s4fusion_tiny_37x49.npz \\
        --backends chunked --fuse_size 37 49 --config configs/smoke.py --train_batch 2 \\
        --crop 25 --steps 1                                   # a CPU smoke run

Needs JAX, flax, optax, einops and ml_collections: no dataset, TFDS, grain or orbax. Prints the
machine, then one markdown table, a row as each is measured (so a run stopped by a time limit
still shows what it measured); per backend:
  parity       max |ours - golden| / max |golden| of the fused golden pair, float32, at JAX's
               default matmul precision (TF32 on NVIDIA GPUs) and at "highest" (not with
               --golden ""); the model is the fixture's (61 x 73: the released one), else the
               bundled one
  fuse         seconds of ``model.fuse`` on --fuse_batches random pairs of --fuse_size
  train step   seconds of ``build.build(--config)``'s step at --train_batch x --crop^2 (the
               default config: the full loss, random ResNet50 weights, remat), and images/s
               (--steps 0: none)
with the seconds compiling took and the device's peak memory so far (``memory_stats``; on the
CPU the process's peak resident memory).
"""

import argparse
import os

import jax
import numpy as np
from flax import nnx

from bench import common
from s4fusion_jax.evaluation import inference
from s4fusion_jax.interop import checkpoint, reference

GOLDEN = os.path.join(common.REPO, "..", "shared", "golden", "golden_s4fusion_61x73.npz")
BACKENDS = ("auto", "sequential", "associative", "chunked")


def parity(model, golden, precision=None):
  """max |ours - PyTorch's| / max |PyTorch's| of the fused golden pair (float32), at JAX's
  default matmul and convolution precision set to ``precision`` (None: as configured)."""
  ir, vi = (np.asarray(golden[f"input/{m}"], np.float32).transpose(0, 2, 3, 1)
            for m in ("ir", "vi"))
  with jax.default_matmul_precision(precision):
    ours = np.asarray(nnx.jit(lambda m, a, b: m(a, b))(model, ir, vi), np.float64)
  ref = golden["float32/output"].transpose(0, 2, 3, 1).astype(np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def check(table, backend, golden, args):
  """The rows of one scan backend."""
  row = lambda what, value, compile_s=None, images=None: table.row(
      backend, what, value, compile_s, images, common.peak_memory_gb())
  if golden:
    params = {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}
    model = reference.from_torch_state_dict(params, scan_backend=backend)
    row("parity, default precision", parity(model, golden))
    row("parity, highest precision", parity(model, golden, "highest"))
  else:
    model = checkpoint.load_model(inference.BUNDLED_MODEL, scan_backend=backend)
  height, width = args.fuse_size
  for batch in args.fuse_batches:
    compile_s, seconds = common.fuse_seconds(model, height, width, batch)
    row(f"fuse {batch} x {height}x{width} (s)", seconds, compile_s, batch / seconds)
  if args.steps:
    config = common.load_config(args.config)
    config.model.scan_backend = backend
    config.batch_size, config.crop_size = args.train_batch, args.crop
    compile_s, seconds = common.train_seconds(config, args.steps)
    row(f"train step {args.train_batch} x {args.crop}^2 (s)", seconds, compile_s,
        args.train_batch / seconds)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--golden", default=GOLDEN,
                      help='an S4Fusion golden fixture (.npz); "": no parity, the bundled model')
  parser.add_argument("--backends", nargs="+", default=BACKENDS[1:], choices=BACKENDS)
  parser.add_argument("--fuse_size", nargs=2, type=int, default=(481, 637), metavar=("H", "W"))
  parser.add_argument("--fuse_batches", nargs="+", type=int, default=(1,),
                      help="pairs per fuse call, one row each")
  parser.add_argument("--config", default="configs/default.py",
                      help="the train step's config, path[:argument] as train.py takes it")
  parser.add_argument("--train_batch", type=int, default=20)
  parser.add_argument("--crop", type=int, default=229, help="training crop (size rule: 12k+1)")
  parser.add_argument("--steps", type=int, default=3,
                      help="timed train steps (median); 0: no train step")
  args = parser.parse_args()
  golden = None
  if args.golden:
    if not os.path.isfile(args.golden):
      raise SystemExit(f"no golden fixture at {args.golden}: pass --golden PATH (or \"\")")
    with np.load(args.golden) as f:
      golden = {k: f[k] for k in f.files}
  print(common.machine() + "\n")
  table = common.Table(("backend", "{}"), ("measurement", "{}"), ("value", "{:.3g}"),
                       ("compile (s)", "{:.1f}"), ("images/s", "{:.2f}"),
                       ("peak memory (GB)", "{:.2f}"))
  for backend in args.backends:
    check(table, backend, golden, args)


if __name__ == "__main__":
  main()
