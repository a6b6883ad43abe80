"""Cost of the full S4Fusion loss (ResNet50 on F, I, V; every term) at the paper's batch.

    python bench/loss.py [--batch 20] [--size 229]

Forward, and forward + backward with respect to the fused image, float32, with a
random-weight ResNet50 (the same work as ImageNet weights). One process per case.
"""

import argparse
import json

import jax
import ml_collections
from flax import nnx

import common  # pylint: disable=wrong-import-order
from s4fusion_jax.network import resnet  # pylint: disable=wrong-import-order
from s4fusion_jax.objectives import losses  # pylint: disable=wrong-import-order

CONFIG = ml_collections.ConfigDict(dict(
    weights=dict(loss_per=1.0, loss_l1=15.0, loss_ssim=15.0, loss_grad=15.0),
    temperature=20.0, perceptual=True, weight_source="resnet50"))


def run_case(case, batch, size):
  net = resnet.create(0)
  graphdef, state = nnx.split(net)
  images = [jax.random.uniform(k, (batch, size, size, 1)) for k in jax.random.split(
      jax.random.key(0), 3)]

  def loss(state, ir, vi, fused):
    return losses.objective(ir, vi, fused, CONFIG, nnx.merge(graphdef, state))[0]

  fn = loss if case == "forward" else jax.grad(loss, argnums=3)
  compile_s, compiled = common.compile_timed(fn, state, *images)
  run_s = common.time_run(compiled, state, *images)
  return {"case": case, "compile_s": compile_s, "run_s": run_s,
          "peak_rss_gb": common.peak_rss_gb(), **common.xla_stats(compiled)}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--case")
  parser.add_argument("--batch", type=int, default=20)
  parser.add_argument("--size", type=int, default=229)
  args = parser.parse_args()
  if args.case:
    print(json.dumps(run_case(args.case, args.batch, args.size)))
    return
  extra = ["--batch", str(args.batch), "--size", str(args.size)]
  rows = common.run_cases(__file__, ["forward", "forward+backward"], extra)
  print(f"Full loss, batch {args.batch} x {args.size}^2, float32 ({common.machine()})\n")
  common.print_table(rows, [
      ("case", "case", "{}"), ("run_s", "seconds", "{:.2f}"),
      ("compile_s", "compile s", "{:.1f}"), ("peak_rss_gb", "peak RSS GB", "{:.2f}"),
      ("temp_gb", "XLA temp GB", "{:.2f}"), ("gflops", "GFLOP", "{:.0f}"),
      ("gbytes_accessed", "GB accessed", "{:.1f}")])


if __name__ == "__main__":
  main()
