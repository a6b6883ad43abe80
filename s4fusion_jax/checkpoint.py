"""Saving and loading an ``S4Fusion`` as an orbax checkpoint directory.

A model checkpoint holds two orbax items: ``params`` (the parameter pytree) and
``model_config`` (the ``ModelConfig`` as JSON), so it can be loaded without
knowing its sizes. Training checkpoints use the same two item names, so any
training step directory loads here too. Orbax writes to a temporary directory
and renames it when complete: an interrupted save leaves no half-written model.
"""

import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from s4fusion_jax import model as model_lib

PARAMS, CONFIG = "params", "model_config"


def _checkpointer():
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_model(path, model: model_lib.S4Fusion, *, force=False):
  """Writes ``model``'s parameters and config to the directory ``path``."""
  path = os.path.abspath(os.fspath(path))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  _checkpointer().save(path, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardSave(params),
      CONFIG: ocp.args.JsonSave(dataclasses.asdict(model.config)),
  }), force=force)


def read_model_config(path, **overrides) -> model_lib.ModelConfig:
  """The ``ModelConfig`` stored in the checkpoint directory ``path``."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(os.path.join(path, CONFIG)):
    raise FileNotFoundError(f"{path} is not an S4Fusion checkpoint (no '{CONFIG}' inside)")
  stored = _checkpointer().restore(
      path, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
  return model_lib.ModelConfig(**{**stored, **overrides})


def load_model(path, **overrides) -> model_lib.S4Fusion:
  """Loads a model saved by ``save_model`` (or a training checkpoint step directory).

  Args:
    path: the checkpoint directory.
    **overrides: ``ModelConfig`` fields to change, e.g. ``scan_backend`` or ``dtype``;
      parameters are cast to ``param_dtype``.
  """
  path = os.path.abspath(os.fspath(path))
  config = read_model_config(path, **overrides)
  abstract = nnx.eval_shape(lambda: model_lib.S4Fusion(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  target = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  restored = _checkpointer().restore(path, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
  nnx.replace_by_pure_dict(state, jax.tree.map(
      lambda x, t: x.astype(t.dtype), restored, target))
  return nnx.merge(graphdef, state)
