"""Training and fusing throughput in ResNet50 units, and the scan's backward cost, in one process.

    python bench/throughput.py                   # about 10 minutes on 2 CPU cores

The machine is noisy, so every case is timed in the same process and reported as a multiple of
one unit: the ResNet50 forward on a batch of 4 x 229^2 x 3 images (random weights, the same
work as ImageNet's), timed before the first case and after every case (the unit is the median
of those runs). Cases (float32, seconds are medians after compilation):
  small step   the train step at batch 8 x 97^2, image-gradient loss, remat off
               (how the bundled model trains: configs/bundled.py stages 2-3)
  full step    the train step at batch 4 x 229^2 with configs/default.py's full loss
               (ResNet50 weights and the perceptual term) and remat
  fuse         ``model.fuse`` on one 481 x 637 pair (the default model, scan ``auto``)
  scan         for each shape of benchmark.py's scan table: the gradient of sum(sin(y)) with
               respect to every input with the training backend (``chunked``), as a multiple
               of the plain ``sequential`` forward at the same shape
"""

import argparse
import statistics

import jax
from flax import nnx

import benchmark  # pylint: disable=wrong-import-order
import common  # pylint: disable=wrong-import-order
from configs import default  # pylint: disable=wrong-import-order
from configs import smoke  # pylint: disable=wrong-import-order
from s4fusion_jax.network import model as model_lib  # pylint: disable=wrong-import-order
from s4fusion_jax.network import resnet  # pylint: disable=wrong-import-order
from s4fusion_jax.training import build  # pylint: disable=wrong-import-order


def uniform(key, shape):
  return jax.random.uniform(jax.random.key(key), shape)


def resnet_case():
  graphdef, state = nnx.split(resnet.create(0))
  return (lambda s, x: nnx.merge(graphdef, s)(x)), (state, uniform(0, (4, 229, 229, 3)))


# The train steps of the shipped configs that the compile benches time: (config module, batch,
# crop side); the default config's at batch 4 (its compile time hardly depends on the batch).
CONFIG_STEPS = {"smoke": (smoke, 8, 61), "default": (default, 4, 229)}


def config_step(name):
  """(step, args) of ``CONFIG_STEPS[name]``'s train step, its config as shipped."""
  module, batch, size = CONFIG_STEPS[name]
  return train_case(batch, size, True, module.get_config())


def train_case(batch, size, full_loss, config=None):
  """(step, args) of ``config``'s train step (default: the default config; without
  ``full_loss`` its image-gradient loss with remat off); a random ResNet50 where the loss
  uses one."""
  if config is None:
    config = default.get_config()
    if not full_loss:
      config.loss.update(perceptual=False, weight_source="image_gradient")
      config.model.remat = False
  config.microbatches = 1
  run = build.build(config, resnet="random")
  images = {"ir": uniform(1, (batch, size, size, 1)), "vi": uniform(2, (batch, size, size, 1))}
  return run.train_step, (run.state, images, run.resnet_state)


def fuse_case():
  config = model_lib.ModelConfig(**default.get_config().model)
  return common.fuse_program(model_lib.S4Fusion(config, rngs=nnx.Rngs(0)),
                             uniform(3, (1, 481, 637, 1)))


CASES = {
    "small step 8x97^2, image-gradient loss, remat off": lambda: train_case(8, 97, False),
    "full step 4x229^2, full loss, remat on": lambda: train_case(4, 229, True),
    "fuse one 481x637 pair": fuse_case,
}


def timed(make, repeats):
  fn, fn_args = make()
  compile_s, compiled = common.compile_timed(fn, *fn_args)
  return {"run_s": common.time_run(compiled, *fn_args, repeats=repeats), "compile_s": compile_s,
          **common.xla_stats(compiled)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  unit_fn, unit_args = resnet_case()
  unit_compiled = jax.jit(unit_fn).lower(*unit_args).compile()
  unit_runs = [common.time_run(unit_compiled, *unit_args, repeats=args.repeats)]
  rows = []
  for name, make in CASES.items():
    rows.append({"case": name, **timed(make, args.repeats)})
    unit_runs.append(common.time_run(unit_compiled, *unit_args, repeats=args.repeats))
  unit = statistics.median(unit_runs)
  for row in rows:
    row["units"] = row["run_s"] / unit
  scan_rows = []
  for name, shape in benchmark.SCAN_SHAPES.items():
    forward = timed(lambda: benchmark.scan_case("sequential", shape, "fwd"), args.repeats)
    backward = timed(lambda: benchmark.scan_case("chunked", shape, "fwd+bwd"), args.repeats)
    scan_rows.append({"case": f"{name} (batch, L, G, D, N) = {shape}",
                      "forward_s": forward["run_s"], "grad_s": backward["run_s"],
                      "ratio": backward["run_s"] / forward["run_s"],
                      "temp_gb": backward["temp_gb"]})
  print(f"float32 on {common.machine()}; unit = ResNet50 forward 4x229^2x3 = {unit:.3f} s "
        f"(median of {len(unit_runs)}: {', '.join(f'{t:.3f}' for t in unit_runs)}); peak RSS "
        f"of the process {common.peak_rss_gb():.2f} GB\n")
  common.print_table(rows, [
      ("case", "case", "{}"), ("run_s", "seconds", "{:.3f}"), ("units", "ResNet50 units", "{:.1f}"),
      ("temp_gb", "XLA temp GB", "{:.2f}"), ("compile_s", "compile s", "{:.1f}")])
  print()
  common.print_table(scan_rows, [
      ("case", "scan shape", "{}"), ("forward_s", "sequential fwd s", "{:.3f}"),
      ("grad_s", "chunked fwd+bwd s", "{:.3f}"), ("ratio", "fwd+bwd / fwd", "{:.1f}x"),
      ("temp_gb", "fwd+bwd XLA temp GB", "{:.2f}")])


if __name__ == "__main__":
  main()
