"""Three training steps of a tiny model on a fixed global batch, over all visible devices.

    JAX_NUM_CPU_DEVICES=8 python tests/dp_step.py OUT.npz

Used by test_training.py to compare 8 data-parallel CPU devices with 1, and to count the
compiled step's collectives: data parallelism needs only all-reduces of the gradients, none
inside a loop body (one per iteration: on 8 CPU devices of a 2-core machine those rendezvous
starved each other past XLA's timeout).
"""

import re
import sys

import jax
import numpy as np
from flax import nnx

import train_config
from s4fusion_jax.training import build


def main(out):
  config = train_config.two_scales(train_config.get_config())
  config.batch_size = 8  # one example per device
  run = build.build(config, mesh=build.make_mesh())
  rng = np.random.default_rng(0)
  batch = {k: rng.random((8, 37, 37, 1), np.float32) for k in ("ir", "vi")}
  state = run.state
  compiled = run.train_step.lower(state, batch, None).compile()
  for _ in range(3):
    state, metrics = compiled(state, batch, None)
  flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.traversals.flatten_mapping(
      jax.device_get(state.params)).items()}
  np.savez(out, devices=len(jax.devices()), loss=float(metrics["loss"]),
           collectives=collective_counts(compiled.as_text()), **flat)


def collective_counts(hlo):
  """(collectives inside while-loop bodies, collectives other than all-reduce) in HLO text."""
  bodies = set(re.findall(r"body=%?([\w.-]+)", hlo))
  in_loops, not_all_reduce, computation = 0, 0, None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      computation = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      continue
    op = re.search(
        r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\(", line)
    if op:
      in_loops += computation in bodies
      not_all_reduce += op[1] != "all-reduce"
  return in_loops, not_all_reduce


if __name__ == "__main__":
  main(sys.argv[1])
