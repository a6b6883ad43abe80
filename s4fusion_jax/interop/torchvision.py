"""torchvision's ResNet50 state dict -> ``network.resnet.ResNet50``, with name and shape checks.

    net = from_torchvision_state_dict(weights_io.read_state_dict("resnet50-11ad3fa6.pth"))

Names map one to one (``layer1.0.conv1.weight`` <-> ``layer1/0/conv1/kernel``; ``downsample.0``
/ ``.1`` are ``downsample_conv`` / ``_bn``); kernels go from (out, in, kh, kw) to
(kh, kw, in, out), the classifier's from (out, in) to (in, out).
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from s4fusion_jax.interop import weights_io
from s4fusion_jax.network import layers
from s4fusion_jax.network.resnet import ResNet50


def _torch_name(path):
  """Our flat state path -> (torchvision name, layout function)."""
  *module, leaf = [str(p) for p in path]
  name = ".".join(module).replace("downsample_conv", "downsample.0").replace(
      "downsample_bn", "downsample.1")
  if leaf == "kernel":
    return f"{name}.weight", (lambda w: w.T) if module == ["fc"] else (
        lambda w: w.transpose(2, 3, 1, 0))
  torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}[leaf]
  return f"{name}.{torch_leaf}", lambda w: w


def from_torchvision_state_dict(state_dict, dtype=jnp.float32) -> ResNet50:
  """A ``ResNet50`` holding a torchvision ``resnet50().state_dict()`` (numpy or torch values).

  ``num_batches_tracked`` entries are ignored; float16 weights are cast to ``dtype``.
  Raises one ``ValueError`` listing every unknown, missing and mis-shaped name.
  """
  dtype = jnp.dtype(dtype)
  weights_io.check_x64(dtype)
  sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  num_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else 1000
  model = layers.abstract(ResNet50, num_classes=num_classes, param_dtype=dtype)
  table = [(path, *_torch_name(path)) for path, _ in nnx.to_flat_state(nnx.state(model))]
  return weights_io.load_into(model, table, sd, dtype, what="ResNet50")
