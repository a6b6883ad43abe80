"""Three training steps of a tiny model on a fixed global batch, over all visible devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/dp_step.py OUT.npz

Used by test_training.py to compare 8 data-parallel CPU devices with 1.
"""

import sys

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import smoke
from s4fusion_jax import train_step
from s4fusion_jax import training


def main(out):
  config = smoke.get_config()
  config.batch_size, config.crop_size = 8, 37
  mesh = training.make_mesh()
  training.check_batch(config.batch_size, mesh)
  tx, schedule = train_step.make_optimizer(config)
  graphdef, state = training.create_train_state(config, tx)
  step = jax.jit(train_step.make_train_step(graphdef, None, tx, schedule, config.loss),
                 in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data")), None),
                 out_shardings=NamedSharding(mesh, P()))
  rng = np.random.default_rng(0)
  batch = {k: rng.random((8, 37, 37, 1), np.float32) for k in ("ir", "vi")}
  for _ in range(3):
    state, metrics = step(state, batch, None)
  flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.traversals.flatten_mapping(
      jax.device_get(state.params)).items()}
  np.savez(out, devices=len(jax.devices()), loss=float(metrics["loss"]), **flat)


if __name__ == "__main__":
  main(sys.argv[1])
