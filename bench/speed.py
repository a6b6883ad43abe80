"""Speed and memory on this machine: the scan backends, the bundled model's fuse, a train step.

    python -m bench.speed                                      # everything
    python -m bench.speed --parts fuse --size 61 73 --repeats 1  # a quick look

Prints the machine, then one markdown table, a row as each case is measured (float32; seconds
are medians of --repeats runs after a warm-up run; peak memory is the process's so far):
  scan   ``selective_scan`` per backend at the bundled model's scan shapes when it fuses
         --batch pairs of --size (SS2D at scale 0, Cross SS2D at scales 1 and 2, in the size
         bucket); forward, and forward + backward (the gradient of sum(sin(y)))
  fuse   the bundled model's ``fuse`` of --batch random pairs of --size
  train  the train step of --config (``build.build``; a random ResNet50 where the loss needs
         one) at its batch_size x crop_size^2, and images per second
"""

import argparse

import jax
import jax.numpy as jnp

from bench import common
from s4fusion_jax.evaluation import inference
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import scan, sizes
from s4fusion_jax.training import build

BACKENDS = ("sequential", "associative", "chunked")


def scan_shapes(height, width, batch):
  """{name: (batch, L, G, D, N)} of the released model's scans when it fuses H x W pairs."""
  config = model_lib.ModelConfig()
  rows, cols = ((sizes.bucket_length(n) - 4) // 3 + 1 for n in (height, width))
  shapes = {"SS2D s0": (batch, rows * cols, 4, int(config.expand * config.dims[0]),
                        config.d_state)}
  for scale in (1, 2):  # Cross SS2D scans both modalities' patches in one sequence
    length = 2 * (rows >> scale) * (cols >> scale)
    shapes[f"Cross s{scale}"] = (batch, length, 4, int(config.expand * config.dims[scale]),
                                 config.fusion_d_state)
  return shapes


def scan_inputs(shape):
  """The seven inputs of ``scan.selective_scan`` at ``shape`` (batch, L, G, D, N)."""
  batch, length, groups, channels, state = shape
  ks = jax.random.split(jax.random.key(0), 5)
  return (jax.random.normal(ks[0], (batch, length, groups, channels)),
          jax.random.normal(ks[1], (batch, length, groups, channels)),
          -jnp.exp(jax.random.normal(ks[2], (groups, channels, state))),
          jax.random.normal(ks[3], (batch, length, groups, state)),
          jax.random.normal(ks[4], (batch, length, groups, state)),
          jnp.ones((groups, channels)), jnp.zeros((groups, channels)))


def scan_rows(table, args):
  for name, shape in scan_shapes(*args.size, args.batch).items():
    inputs = scan_inputs(shape)
    for backend in BACKENDS:
      forward = lambda *a, b=backend: scan.selective_scan(*a, backend=b)
      both = jax.grad(lambda *a, f=forward: jnp.sum(jnp.sin(f(*a))), argnums=tuple(range(7)))
      for mode, fn in (("fwd", forward), ("fwd+bwd", both)):
        compile_s, compiled = common.compile_timed(fn, *inputs)
        seconds = common.time_run(compiled, *inputs, repeats=args.repeats)
        table.row(f"scan {name} {shape} {mode}", backend, compile_s, seconds,
                  common.peak_memory_gb(), None)


def fuse_row(table, args):
  model = checkpoint.load_model(inference.BUNDLED_MODEL)
  compile_s, seconds = common.fuse_seconds(model, *args.size, args.batch, args.repeats)
  table.row(f"fuse {args.batch} x {args.size[0]}x{args.size[1]}", model.config.scan_backend,
            compile_s, seconds, common.peak_memory_gb(), None)


def train_row(table, args):
  config = common.load_config(args.config)
  compile_s, seconds = common.train_seconds(config, args.repeats)
  table.row(f"train step {args.config}, {config.batch_size} x {config.crop_size}^2",
            build.train_model_config(config).scan_backend, compile_s, seconds,
            common.peak_memory_gb(), config.batch_size / seconds)


PARTS = {"scan": scan_rows, "fuse": fuse_row, "train": train_row}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--parts", default="scan,fuse,train", help="a comma list of: scan,fuse,train")
  parser.add_argument("--size", nargs=2, type=int, default=(481, 637), metavar=("H", "W"),
                      help="the pairs' size for scan and fuse")
  parser.add_argument("--batch", type=int, default=1, help="pairs per fuse call")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs per case")
  parser.add_argument("--config", default="configs/smoke.py",
                      help="the train step's config, path[:argument] as train.py takes it")
  args = parser.parse_args()
  parts = args.parts.split(",")
  unknown = set(parts) - set(PARTS)
  if unknown:
    parser.error(f"--parts: unknown {sorted(unknown)}; choose from {','.join(PARTS)}")
  print(common.machine() + "\n")
  table = common.Table(("case", "{}"), ("backend", "{}"), ("compile (s)", "{:.1f}"),
                       ("run (s)", "{:.3f}"), ("peak memory (GB)", "{:.2f}"),
                       ("images/s", "{:.2f}"))
  for part in PARTS:
    if part in parts:
      PARTS[part](table, args)


if __name__ == "__main__":
  main()
