"""One way to build a training run from a config: model, optimizer, state, step, fusing.

Data parallelism is ``jax.jit`` over a 1-D device mesh with axis ``data``: the batch is sharded
along it, the rest replicated; XLA's SPMD partitioner inserts the gradient all-reduce.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from s4fusion_jax.interop import checkpoint
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.network import resnet as resnet_lib
from s4fusion_jax.numerics import scan
from s4fusion_jax.objectives import losses
from s4fusion_jax.training import train_step as train_step_lib

_fuse = nnx.jit(model_lib.fuse)


class Run(NamedTuple):
  """What ``build`` makes: a run's model and step, ready to train or to fuse."""
  graphdef: nnx.GraphDef  # S4Fusion's structure; ``state.params`` its values
  state: train_step_lib.TrainState  # step 0, replicated over the mesh when there is one
  resnet_graphdef: Any  # the frozen ResNet50 of the loss, or None when the loss needs none
  resnet_state: Any
  schedule: Callable  # the learning rate of the update count
  train_step: Callable  # jit-compiled ``(state, batch, resnet_state) -> (state, metrics)``

  def fuse(self, state_or_model, ir, vi):
    """Fuses (batch, H, W, 1) images in [0, 1] of any size with a ``TrainState``'s model (in
    inference mode) or a model -> (batch, H, W, 1), unclamped (``model.fuse``, jit-compiled)."""
    model = (state_or_model if isinstance(state_or_model, nnx.Module)
             else train_step_lib.model_of(self.graphdef, state_or_model))
    return _fuse(model, ir, vi)


def make_mesh():
  """A 1-D mesh named 'data' over every device of every host."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch(global_batch, mesh, microbatches=1):
  """Raises ``ValueError`` unless the batch splits over the devices, micro-batches and hosts."""
  devices, hosts = mesh.devices.size, jax.process_count()
  step = math.lcm(devices * microbatches, hosts)
  if global_batch % step:
    raise ValueError(f"the global batch {global_batch} does not split into {microbatches} "
                     f"micro-batches over {devices} devices and {hosts} hosts; use a multiple "
                     f"of {step} (--config.batch_size={max(step, global_batch // step * step)})")


def train_model_config(config) -> model_lib.ModelConfig:
  """The ``ModelConfig`` of a training config, with an "auto" scan resolved for training."""
  model_config = model_lib.ModelConfig(**config.model)
  return dataclasses.replace(model_config, scan_backend=scan.resolve_backend(
      model_config.scan_backend, model_config.scan_platform, differentiated=True).value)


def initial_model(config, init_from=None):
  """A new model of ``config`` in training mode, or ``init_from``'s weights (same sizes)."""
  model_config = train_model_config(config)
  if not init_from:
    return model_lib.create(model_config, config.seed)
  stored = checkpoint.read_model_config(init_from)
  sizes = lambda c: (c.dims, c.depths, c.depths_decoder, c.d_state, c.fusion_d_state,
                     c.fusion_blocks, c.expand, c.fusion, c.patch_mark, c.fusion_heads)
  if sizes(stored) != sizes(model_config):
    raise ValueError(f"--init_from {init_from} holds a model of other sizes ({stored}) than "
                     f"the config ({model_config})")
  model = checkpoint.load_model(init_from, **dataclasses.asdict(model_config))
  model.train()
  return model


def build(config, *, init_from=None, mesh=None, resnet=None) -> Run:
  """The run of a training config: a step-0 state, its optimizer and the compiled step.

  Args:
    config: a training config (``configs/``): ``model``, ``optimizer``, ``loss``, ``seed``,
      ``num_steps``, ``microbatches``.
    init_from: a model checkpoint whose weights start the run (of the config's sizes).
    mesh: a 1-D ``data`` mesh (``make_mesh``; the old state is donated); None: plain ``jit``.
    resnet: the ResNet50 of the loss, if it needs one: a module, "random"
      (``resnet.create``) or None, which reads ``config.loss.resnet_weights``.
  """
  tx, schedule = train_step_lib.make_optimizer(config)
  graphdef, state = train_step_lib.init_state(initial_model(config, init_from), tx, config.seed)
  resnet_graphdef = resnet_state = None
  if losses.needs_resnet(config.loss):
    if resnet is None:
      resnet = checkpoint.load_resnet(config.loss.resnet_weights)
    elif resnet == "random":
      resnet = resnet_lib.create(config.seed)
    resnet_graphdef, resnet_state = nnx.split(resnet)
  step = train_step_lib.make_train_step(graphdef, resnet_graphdef, tx, schedule, config.loss,
                                        config.microbatches)
  sharded = {}
  if mesh is not None:
    check_batch(config.batch_size, mesh, config.microbatches)
    replicated = NamedSharding(mesh, P())
    state, resnet_state = jax.device_put((state, resnet_state), replicated)
    sharded = dict(in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  return Run(graphdef, state, resnet_graphdef, resnet_state, schedule, jax.jit(step, **sharded))
