"""S4Fusion (Ma et al., saliency-aware selective state space infrared-visible image fusion) in
JAX / Flax NNX.

    from s4fusion_jax import S4Fusion, ModelConfig, create, fuse, load_model, Fuser, functional

The package by layer, bottom to top (a layer imports only from layers below it, and the two job
packages from each other; ``tests/test_layers.py`` checks it):

    runtime      atomic file writes, the compilation cache, the multi-host cluster, host memory
    numerics     pure functions of arrays: the selective scan, scan paths, sizes, colour, Sobel
    network      NNX modules: SS2D, CMSA, patches, the S4Fusion U-Net and its ablations, ResNet50
    objectives   the loss terms and the fusion metrics
    interop      the reference's / torchvision's state dicts, weight files, checkpoints, functional
    data         image files, the TFDS builders, the grain pipeline
    training     the train step and job, validation, the run's logs
    evaluation   fusing, evaluating folders, the demo, charts, the ablation study, Table 5

The names above are imported on first use, so ``import s4fusion_jax`` does not import JAX.
"""

import importlib

_API = {
    "S4Fusion": ("s4fusion_jax.network.model", "S4Fusion"),
    "ModelConfig": ("s4fusion_jax.network.model", "ModelConfig"),
    "create": ("s4fusion_jax.network.model", "create"),
    "fuse": ("s4fusion_jax.network.model", "fuse"),
    "load_model": ("s4fusion_jax.interop.checkpoint", "load_model"),
    "Fuser": ("s4fusion_jax.evaluation.inference", "Fuser"),
    "functional": ("s4fusion_jax.interop.functional", None),
}
__all__ = sorted(_API)


def __getattr__(name):
  if name not in _API:
    raise AttributeError(f"module 's4fusion_jax' has no attribute {name!r}")
  module_name, attribute = _API[name]
  module = importlib.import_module(module_name)
  return module if attribute is None else getattr(module, attribute)


def __dir__():
  return sorted(set(globals()) | set(_API))
