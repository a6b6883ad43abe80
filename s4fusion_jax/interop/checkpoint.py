"""Saving and loading NNX modules (S4Fusion, ResNet50) as orbax checkpoint directories.

A module checkpoint holds two orbax items: ``params`` (the module's state as a pure
pytree: parameters, and BatchNorm statistics for the ResNet50) and ``metadata``
(JSON: for S4Fusion the ``ModelConfig``), so it loads without knowing its sizes; a training
step directory has the same items. An interrupted save leaves no half-written checkpoint.
"""

import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from s4fusion_jax.interop import torchvision
from s4fusion_jax.interop import weights_io
from s4fusion_jax.network import layers
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.network import resnet as resnet_lib

PARAMS, METADATA = "params", "metadata"


def _checkpointer():
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_module(path, module: nnx.Module, metadata: dict, *, force=False):
  """Writes ``module``'s state and the JSON-able ``metadata`` to the directory ``path``."""
  path = os.path.abspath(os.fspath(path))
  _checkpointer().save(path, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(module))),
      METADATA: ocp.args.JsonSave(metadata),
  }), force=force)


def read_metadata(path) -> dict:
  """The metadata stored with a checkpoint; FileNotFoundError if ``path`` is none."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(os.path.join(path, METADATA)):
    raise FileNotFoundError(f"{path} is not an s4fusion_jax checkpoint (no '{METADATA}' inside)")
  return _checkpointer().restore(
      path, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))[METADATA]


def restore_module(path, abstract: nnx.Module) -> nnx.Module:
  """Fills ``abstract`` (from ``nnx.eval_shape``) with the state saved at ``path``.

  Values are cast to the dtypes of ``abstract`` and placed on this process's first device.
  """
  path = os.path.abspath(os.fspath(path))
  graphdef, state = nnx.split(abstract)
  # On this process's first device, whatever the topology that saved it (e.g. a multi-host run).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        nnx.to_pure_dict(state))
  restored = _checkpointer().restore(path, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda x, t: x.astype(t.dtype), restored, target))
  return nnx.merge(graphdef, state)


def save_model(path, model: model_lib.S4Fusion, *, force=False):
  """Writes an S4Fusion model (parameters and ``ModelConfig``) to the directory ``path``."""
  save_module(path, model, dataclasses.asdict(model.config), force=force)


def read_model_config(path, **overrides) -> model_lib.ModelConfig:
  """The ``ModelConfig`` stored in the checkpoint directory ``path``, with ``overrides``."""
  return model_lib.ModelConfig(**{**read_metadata(path), **overrides})


def load_model(path, **overrides) -> model_lib.S4Fusion:
  """Loads a model saved by ``save_model`` (or a training step directory), in eval mode.

  Args:
    path: the checkpoint directory.
    **overrides: ``ModelConfig`` fields to change, e.g. ``scan_backend`` or ``dtype``;
      parameters are cast to ``param_dtype``.
  """
  config = read_model_config(path, **overrides)
  abstract = layers.abstract(model_lib.S4Fusion, config=config)
  model = restore_module(path, abstract)
  model.eval()  # BatchNorm (the "cnn" ablation) on its running statistics; model.train() undoes
  return model


RESNET_HELP = (
    "the perceptual loss and the 'resnet50' adaptive weights need torchvision's ImageNet "
    "ResNet50 weights, which are never downloaded here. Download resnet50-11ad3fa6.pth "
    "(ResNet50_Weights.IMAGENET1K_V2) or resnet50-0676ba61.pth (IMAGENET1K_V1) from "
    "torchvision's model release, convert it once with "
    "'python -m s4fusion_jax convert-resnet resnet50-11ad3fa6.pth checkpoints/resnet50' "
    "and pass --config.loss.resnet_weights=checkpoints/resnet50; or train without it: "
    "--config.loss.weight_source=image_gradient --config.loss.perceptual=False")


def save_resnet(path, net: resnet_lib.ResNet50, *, force=False):
  """Writes a ResNet50 (weights and BatchNorm statistics) to the directory ``path``."""
  save_module(path, net, {"architecture": "resnet50", "num_classes": net.fc.out_features},
              force=force)


def load_resnet(path, dtype="float32") -> resnet_lib.ResNet50:
  """A ResNet50 from a checkpoint directory (``save_resnet``) or a weights file.

  Files are torchvision state dicts (``.pth``, ``.npz``, ``.safetensors``); an empty, missing
  or unreadable ``path`` raises an error saying how to get the weights.
  """
  if not path:
    raise FileNotFoundError(f"no ResNet50 weights given: {RESNET_HELP}")
  path = os.fspath(path)
  try:
    if os.path.isdir(path):
      meta = read_metadata(path)
      if meta.get("architecture") != "resnet50":
        raise ValueError(f"{path} holds {meta.get('architecture', 'an S4Fusion model')}, "
                         "not a ResNet50")
      abstract = layers.abstract(resnet_lib.ResNet50, num_classes=meta["num_classes"],
                                 param_dtype=dtype)
      return restore_module(path, abstract)
    return torchvision.from_torchvision_state_dict(weights_io.read_state_dict(path), dtype)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"{e}\n({RESNET_HELP})") from e
