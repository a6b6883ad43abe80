"""Where the train step's and the fuse's compile time goes, component by component.

    python bench/compile_time.py                 # about 6 minutes on 2 CPU cores
    python bench/compile_time.py --config smoke  # one config only

Each component is traced, lowered and compiled on its own (no persistent cache), at the
shapes the train step sees (configs/smoke.py: batch 8 x 61^2; configs/default.py: batch
4 x 229^2 with the full loss, a random ResNet50):
  model forward        the S4Fusion forward of the batch
  model fwd + bwd      the gradient of the mean fused image with respect to the parameters
  loss fwd + bwd       the config's loss (``losses.objective``) and its gradient with respect to
                       the fused image (the ResNet50 passes where the loss has them)
  optimizer + norms    ``tx.update``, ``apply_updates`` and the three logged norms
  train step           all of it, as ``train.py`` compiles it
and, for the default config, the fuse of one 481 x 637 pair (the bundled model's bucket
program). Columns: seconds to trace and lower, seconds to compile, the instructions of the
optimised HLO (XLA's program after its passes; loop bodies counted once).
"""

import argparse
import re
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import common  # pylint: disable=wrong-import-order
import throughput  # pylint: disable=wrong-import-order
from s4fusion_jax.evaluation import inference  # pylint: disable=wrong-import-order
from s4fusion_jax.network import layers  # pylint: disable=wrong-import-order
from s4fusion_jax.network import model as model_lib  # pylint: disable=wrong-import-order
from s4fusion_jax.network import resnet as resnet_lib  # pylint: disable=wrong-import-order
from s4fusion_jax.objectives import losses  # pylint: disable=wrong-import-order
from s4fusion_jax.training import train_step  # pylint: disable=wrong-import-order


def measure(fn, *args):
  """{lower_s, compile_s, instructions} of ``jax.jit(fn)`` at ``args``."""
  start = time.perf_counter()
  lowered = jax.jit(fn).trace(*args).lower()
  middle = time.perf_counter()
  compiled = lowered.compile()
  end = time.perf_counter()
  instructions = len(re.findall(r"^\s*(?:ROOT )?%?[\w.\-]+ = ", compiled.as_text(), re.M))
  return {"lower_s": middle - start, "compile_s": end - middle, "instructions": instructions}


def components(name):
  """The rows of one config: each component's ``measure``."""
  config = throughput.CONFIG_STEPS[name][0].get_config()
  step, (state, images, resnet_state) = throughput.config_step(name)
  graphdef, params, model_state = train_step.split_model(
      model_lib.create(model_lib.ModelConfig(**config.model)))
  forward = lambda p, a, b: nnx.merge(graphdef, p, model_state)(a, b)
  model_grad = jax.grad(lambda p, a, b: jnp.mean(forward(p, a, b)))
  resnet_graph = nnx.graphdef(layers.abstract(resnet_lib.ResNet50)) if resnet_state else None
  loss = lambda f, net: losses.objective(
      images["ir"], images["vi"], f, config.loss,
      nnx.merge(resnet_graph, net) if resnet_graph is not None else None)[0]
  tx, _ = train_step.make_optimizer(config)

  def optimizer(grads, opt_state, p):
    updates, opt_state = tx.update(grads, opt_state, p)
    new = optax.apply_updates(p, updates)
    return new, opt_state, [optax.tree.norm(t) for t in (grads, new, updates)]

  cases = {
      "model forward": (forward, params, images["ir"], images["vi"]),
      "model fwd + bwd": (model_grad, params, images["ir"], images["vi"]),
      "loss fwd + bwd": (jax.grad(loss), images["ir"], resnet_state),
      "optimizer + norms": (optimizer, state.params, state.opt_state, state.params),
      "train step": (step, state, images, resnet_state),
  }
  rows = []
  for case, (fn, *args) in cases.items():
    rows.append({"case": f"{name}: {case}", **measure(fn, *args)})
  return rows


def fuse_row():
  """The bundled model's bucket program for one 481 x 637 pair."""
  fuser = inference.Fuser.from_flags()
  ir, vi = common.random_pair()
  start = time.perf_counter()
  fuser.fuse(ir, vi)  # trace, lower, compile, run
  first = time.perf_counter() - start
  start = time.perf_counter()
  fuser.fuse(ir, vi)
  return {"case": "bundled model: fuse 481 x 637 (first call minus a warm one)",
          "lower_s": float("nan"), "compile_s": first - (time.perf_counter() - start),
          "instructions": float("nan")}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", choices=list(throughput.CONFIG_STEPS), nargs="+",
                      default=list(throughput.CONFIG_STEPS))
  args = parser.parse_args()
  rows = [row for name in args.config for row in components(name)]
  rows.append(fuse_row())
  print(f"float32, no persistent cache, {common.machine()}; commit {common.commit()}\n")
  common.print_table(rows, [("case", "component", "{}"), ("lower_s", "trace + lower s", "{:.1f}"),
                            ("compile_s", "compile s", "{:.1f}"),
                            ("instructions", "HLO instructions", "{:.0f}")])


if __name__ == "__main__":
  main()
