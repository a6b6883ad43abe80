"""The speed and memory table: selective scan backends at the real shapes, and the whole model.

    python bench/benchmark.py                 # everything (about 15 minutes on 2 CPU cores)
    python bench/benchmark.py --only scan     # or: model

Rows (float32, each in a fresh process so peak RSS is its own):
  scan   SS2D at scale 0 and Cross SS2D at scales 1 and 2, for one 481x637 pair
         (batch 1) and for the paper's training batch (20 x 229^2); forward and
         forward + backward (gradient of sum(sin(y)) with respect to every input); and,
         sequential at the pair's shapes, two independent forward scans in one program
         ("2 x fwd": whether XLA:CPU runs them side by side, one per core).
  model  fusing one 481x637 pair; the training step (forward, backward, AdamW) at batch
         20 x 229^2 with the full loss (ResNet50 with random weights, the same work as
         ImageNet's), whole and as 4 accumulated micro-batches of 5.
Cases whose XLA temporary buffers exceed --max_temp_gb (default 20, for a 24 GB machine) are
compiled but not run.
"""

import argparse
import json

import jax
import jax.numpy as jnp
from flax import nnx

import common  # pylint: disable=wrong-import-order
from configs import default  # pylint: disable=wrong-import-order
from s4fusion_jax.network import model as model_lib  # pylint: disable=wrong-import-order
from s4fusion_jax.numerics import scan  # pylint: disable=wrong-import-order
from s4fusion_jax.training import build  # pylint: disable=wrong-import-order

BACKENDS = ("sequential", "associative", "chunked")
# name: (batch, L, G, D, N). 481x637 -> 160x212 patches; 229^2 -> 76^2; Cross SS2D doubles L.
SCAN_SHAPES = {
    "481x637 SS2D s0": (1, 160 * 212, 4, 72, 12),
    "481x637 Cross s1": (1, 2 * 80 * 106, 4, 144, 18),
    "481x637 Cross s2": (1, 2 * 40 * 53, 4, 288, 18),
    "20x229^2 SS2D s0": (20, 76 * 76, 4, 72, 12),
    "20x229^2 Cross s1": (20, 2 * 38 * 38, 4, 144, 18),
    "20x229^2 Cross s2": (20, 2 * 19 * 19, 4, 288, 18),
}


def scan_inputs(shape, seed):
  """The seven inputs of ``scan.selective_scan`` at ``shape`` (batch, L, G, D, N)."""
  batch, length, groups, channels, state = shape
  ks = jax.random.split(jax.random.key(seed), 7)
  return (jax.random.normal(ks[0], (batch, length, groups, channels)),
          jax.random.normal(ks[1], (batch, length, groups, channels)),
          -jnp.exp(jax.random.normal(ks[2], (groups, channels, state))),
          jax.random.normal(ks[3], (batch, length, groups, state)),
          jax.random.normal(ks[4], (batch, length, groups, state)),
          jnp.ones((groups, channels)), jnp.zeros((groups, channels)))


def scan_case(backend, shape, mode):
  args = scan_inputs(shape, 0)
  fn = lambda *a: scan.selective_scan(*a, backend=backend)
  if mode == "2 x fwd":  # two independent scans in one program, as the two encoders' are
    fn = lambda *a: (scan.selective_scan(*a[:7], backend=backend),
                     scan.selective_scan(*a[7:], backend=backend))
    args = args + scan_inputs(shape, 1)
  if mode == "fwd+bwd":
    fn = jax.grad(lambda *a: jnp.sum(jnp.sin(scan.selective_scan(*a, backend=backend))),
                  argnums=tuple(range(7)))
  return fn, args


def model_case(backend, what):
  if what == "fuse 481x637":
    config = model_lib.ModelConfig(scan_backend=backend)
    x = jax.random.uniform(jax.random.key(1), (1, 481, 637, 1))
    return common.fuse_program(model_lib.S4Fusion(config, rngs=nnx.Rngs(0)), x)
  config = default.get_config()
  config.model.scan_backend = backend
  config.microbatches = 4 if "micro" in what else 1
  run = build.build(config, resnet="random")
  batch = {k: jax.random.uniform(key, (20, 229, 229, 1))
           for k, key in zip(("ir", "vi"), jax.random.split(jax.random.key(2)))}
  return run.train_step, (run.state, batch, run.resnet_state)


def run_case(case, max_temp_gb):
  kind, backend, name, mode = case.split("|")
  if kind == "scan":
    fn, args = scan_case(backend, SCAN_SHAPES[name], mode)
    repeats = 3
  else:
    fn, args = model_case(backend, name)
    repeats = 2 if "train" in name else 3
  compile_s, compiled = common.compile_timed(fn, *args)
  row = {"case": f"{kind}: {name} {mode}".strip(), "backend": backend, "compile_s": compile_s,
         **common.xla_stats(compiled)}
  if row["temp_gb"] > max_temp_gb:
    return {**row, "run_s": float("nan"), "peak_rss_gb": float("nan")}
  run_s = common.time_run(compiled, *args, repeats=repeats)
  return {**row, "run_s": run_s, "peak_rss_gb": common.peak_rss_gb()}


def all_cases(only):
  cases = []
  if only in (None, "scan"):
    cases += [f"scan|{b}|{s}|{m}" for s in SCAN_SHAPES for m in ("fwd", "fwd+bwd")
              for b in BACKENDS]
    cases += [f"scan|sequential|{s}|2 x fwd" for s in SCAN_SHAPES if s.startswith("481")]
  if only in (None, "model"):
    cases += [f"model|{b}|fuse 481x637|" for b in BACKENDS]
    cases += [f"model|{b}|train step 20x229^2 {how}|" for how in ("whole", "4 micro-batches")
              for b in BACKENDS]
  return cases


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case")
  parser.add_argument("--only", choices=("scan", "model"))
  parser.add_argument("--max_temp_gb", type=float, default=20.0)
  args = parser.parse_args()
  if args.case:
    print(json.dumps(run_case(args.case, args.max_temp_gb)))
    return
  rows = common.run_cases(__file__, all_cases(args.only), ["--max_temp_gb", str(args.max_temp_gb)])
  print(f"float32 on {common.machine()}; seconds are medians after compilation; "
        f"nan: not run, XLA temp above {args.max_temp_gb} GB\n")
  common.print_table(rows, [
      ("case", "case", "{}"), ("backend", "backend", "{}"), ("run_s", "seconds", "{:.3f}"),
      ("peak_rss_gb", "peak RSS GB", "{:.2f}"), ("temp_gb", "XLA temp GB", "{:.2f}"),
      ("gflops", "GFLOP", "{:.1f}"), ("gbytes_accessed", "GB accessed", "{:.1f}"),
      ("compile_s", "compile s", "{:.1f}")])


if __name__ == "__main__":
  main()
