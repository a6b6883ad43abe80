"""One command for a GPU or TPU machine: parity, fusing, training and memory per scan backend.

    python bench/device_check.py                 # on a GPU / TPU (see bench/device_session.sh)
    python bench/device_check.py --golden ../shared/golden/golden_s4fusion_tiny_37x49.npz \\
        --fuse_size 37 49 --batch 2 --crop 25 --backends chunked     # a CPU smoke run

Copy the golden fixture (16 MB) to the machine. It needs JAX, flax, optax, einops and
ml_collections (for configs/default.py), and runs with the JAX it finds: no dataset, TFDS,
grain or orbax. Each backend runs in its own process (so the peak memory is its own) and
prints one row of one markdown table:
  parity       max |ours - golden| / max |golden| of the fused golden pair, float32, at JAX's
               default matmul / convolution precision (on an NVIDIA GPU that allows TF32) and
               at "highest" (full float32)
  fuse         seconds for ``model.fuse`` on one random --fuse_size pair (median of 3), and
               the seconds compiling it took
  train step   seconds per step at --batch x --crop^2, configs/default.py's full loss
               (ResNet50 entropy and weights, random ResNet50 weights), remat on, and the
               seconds compiling it took (--steps 0: not measured, "-")
  images/s     --batch / train step
  peak memory  the device's peak_bytes_in_use after both (``device.memory_stats()``); on CPU,
               where JAX keeps no such count, the process's peak resident memory
The model has the golden fixture's sizes (the 61 x 73 fixture: the released model). Each
child's progress is echoed as it comes (``# BACKEND, N s in: ...``), so a run stopped by a time
limit still shows what it measured and what it was compiling.
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from flax import nnx

import common  # pylint: disable=wrong-import-order
from configs import default  # pylint: disable=wrong-import-order
from s4fusion_jax.interop import reference  # pylint: disable=wrong-import-order
from s4fusion_jax.network import resnet  # pylint: disable=wrong-import-order
from s4fusion_jax.training import train_step  # pylint: disable=wrong-import-order

GOLDEN = os.path.join(common.REPO, "..", "shared", "golden", "golden_s4fusion_61x73.npz")
BACKENDS = ("sequential", "associative", "chunked")


def parity(model, golden, precision=None):
  """max |ours - PyTorch's| / max |PyTorch's| of the fused golden pair, float32, with JAX's
  default matmul / convolution precision set to ``precision`` (None: as configured)."""
  ir, vi = (np.asarray(golden[f"input/{m}"], np.float32).transpose(0, 2, 3, 1)
            for m in ("ir", "vi"))
  with jax.default_matmul_precision(precision):
    ours = np.asarray(nnx.jit(lambda m, a, b: m(a, b))(model, ir, vi), np.float64)
  ref = golden["float32/output"].transpose(0, 2, 3, 1).astype(np.float64)  # PyTorch, float32
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def train_seconds(model, backend, batch, crop, steps):
  config = default.get_config()
  config.model.scan_backend = backend
  tx, schedule = train_step.make_optimizer(config)
  graphdef, state = train_step.init_state(model, tx, config.seed)
  net_graph, net_state = nnx.split(resnet.create(0))
  images = {k: jax.random.uniform(jax.random.key(i), (batch, crop, crop, 1))
            for i, k in enumerate(("ir", "vi"))}
  step = train_step.make_train_step(graphdef, net_graph, tx, schedule, config.loss)
  compile_s, compiled = common.compile_timed(step, state, images, net_state)
  return compile_s, common.time_run(compiled, state, images, net_state, repeats=steps)


def peak_memory_gb():
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 1e9
  return common.peak_rss_gb()


def run_case(args):
  start = time.perf_counter()

  def report(what):
    common.progress(f"{args.case}, {time.perf_counter() - start:.0f} s in: {what}")

  golden = dict(np.load(args.golden))
  state_dict = {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}
  model = reference.from_torch_state_dict(state_dict, scan_backend=args.case)
  report("model loaded; fusing the golden pair")
  row = {"case": args.case, "parity": parity(model, golden),
         "parity_highest": parity(model, golden, "highest")}
  report(f"parity {row['parity']:.1e} (default precision), {row['parity_highest']:.1e} "
         f"(highest); compiling the {args.fuse_size[0]} x {args.fuse_size[1]} fuse")
  pair = jax.random.uniform(jax.random.key(0), (1, *args.fuse_size, 1))
  row["fuse_compile_s"], row["fuse_s"] = common.fuse_seconds(model, pair)
  report(f"fuse {row['fuse_s']:.3f} s (compiled in {row['fuse_compile_s']:.1f} s)"
         + (f"; compiling the train step, {args.batch} x {args.crop}^2" if args.steps else ""))
  if args.steps:
    model.train()
    row["step_compile_s"], row["step_s"] = train_seconds(model, args.case, args.batch,
                                                         args.crop, args.steps)
    row["images_per_s"] = args.batch / row["step_s"]
    report(f"train step {row['step_s']:.3f} s (compiled in {row['step_compile_s']:.1f} s)")
  row["peak_gb"] = peak_memory_gb()
  print(json.dumps(row))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--golden", default=GOLDEN, help="an S4Fusion golden fixture (.npz)")
  parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
  parser.add_argument("--fuse_size", nargs=2, type=int, default=(481, 637), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=20)
  parser.add_argument("--crop", type=int, default=229, help="training crop (size rule: 12k+1)")
  parser.add_argument("--steps", type=int, default=3,
                      help="timed train steps (median); 0: no train step")
  parser.add_argument("--case", help=argparse.SUPPRESS)  # one backend, in a child process
  args = parser.parse_args()
  if args.case:
    run_case(args)
    return
  if not os.path.isfile(args.golden):
    raise SystemExit(f"no golden fixture at {args.golden}: copy golden_s4fusion_61x73.npz "
                     "there or pass --golden")
  extra = ["--golden", args.golden, "--fuse_size", *map(str, args.fuse_size), "--batch",
           str(args.batch), "--crop", str(args.crop), "--steps", str(args.steps)]
  rows = common.run_cases(__file__, args.backends, extra)
  step = f", train step {args.batch} x {args.crop}^2 (full loss)" if args.steps else ""
  print(f"{common.machine()}, jax {jax.__version__}; fuse {args.fuse_size[0]} x "
        f"{args.fuse_size[1]}{step}\n")
  common.print_table(rows, [
      ("case", "backend", "{}"), ("parity", "parity (max rel. err.)", "{:.1e}"),
      ("parity_highest", "at precision highest", "{:.1e}"),
      ("fuse_s", "fuse (s)", "{:.3f}"), ("fuse_compile_s", "its compile (s)", "{:.1f}"),
      ("step_s", "train step (s)", "{:.3f}"), ("step_compile_s", "its compile (s)", "{:.1f}"),
      ("images_per_s", "images/s", "{:.2f}"), ("peak_gb", "peak memory (GB)", "{:.2f}")])


if __name__ == "__main__":
  main()
