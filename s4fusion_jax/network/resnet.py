"""torchvision's ResNet50 (Bottleneck v1.5: stride on the 3x3 conv) in Flax NNX, inference mode.

    from s4fusion_jax.interop.torchvision import from_torchvision_state_dict
    net = from_torchvision_state_dict(state_dict, dtype=jnp.float32)
    logits, features = net(x)   # x (batch, H, W, 3) normalised as torchvision expects

``features`` are the four stage outputs (layer1..layer4), channels-last. BatchNorm uses
its running statistics; in S4Fusion training the network is frozen.

Weights: torchvision's ImageNet ResNet50 (``IMAGENET1K_V1`` ``resnet50-0676ba61.pth`` or
``V2`` ``resnet50-11ad3fa6.pth``), downloaded by the user, as ``.pth``, ``.npz`` or
``.safetensors``.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from s4fusion_jax.network import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-5
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)
EXPANSION = 4


def imagenet_input(gray):
  """A one-channel image (batch, H, W, 1) in [0, 1] -> the network input (batch, H, W, 3).

  The channel is repeated to RGB and normalised with the ImageNet mean and std (the
  reference's choice is not released).
  """
  rgb = jnp.repeat(gray, 3, axis=-1)
  mean = jnp.asarray(IMAGENET_MEAN, gray.dtype)
  std = jnp.asarray(IMAGENET_STD, gray.dtype)
  return (rgb - mean) / std


def _conv(in_ch, out_ch, k, stride, *, rngs, dtype, param_dtype):
  return nnx.Conv(in_ch, out_ch, (k, k), strides=stride, padding=[(k // 2, k // 2)] * 2,
                  use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _bn(ch, *, rngs, dtype, param_dtype):
  return nnx.BatchNorm(ch, use_running_average=True, epsilon=BN_EPS, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)


def _max_pool_3x3_s2(x):
  """torch MaxPool2d(3, stride 2, padding 1): padding never wins the max."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BatchNorm after each, residual, ReLU."""

  def __init__(self, in_ch, planes, stride, *, rngs, dtype=None, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    out_ch = planes * EXPANSION
    self.conv1, self.bn1 = _conv(in_ch, planes, 1, 1, **kw), _bn(planes, **kw)
    self.conv2, self.bn2 = _conv(planes, planes, 3, stride, **kw), _bn(planes, **kw)
    self.conv3, self.bn3 = _conv(planes, out_ch, 1, 1, **kw), _bn(out_ch, **kw)
    needs_projection = stride != 1 or in_ch != out_ch
    self.downsample_conv = _conv(in_ch, out_ch, 1, stride, **kw) if needs_projection else None
    self.downsample_bn = _bn(out_ch, **kw) if needs_projection else None

  def __call__(self, x):
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
    return jax.nn.relu(out + identity)


class ResNet50(nnx.Module):
  """(batch, H, W, 3) -> (logits (batch, classes), [layer1..layer4 outputs, channels-last])."""

  def __init__(self, *, rngs, num_classes=1000, dtype=None, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.conv1, self.bn1 = _conv(3, 64, 7, 2, **kw), _bn(64, **kw)
    in_ch = 64
    stages = []
    for planes, blocks, stride in STAGES:
      stage = []
      for i in range(blocks):
        stage.append(Bottleneck(in_ch, planes, stride if i == 0 else 1, **kw))
        in_ch = planes * EXPANSION
      stages.append(nnx.List(stage))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.fc = nnx.Linear(in_ch, num_classes, **kw)

  def __call__(self, x):
    x = _max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))
    features = []
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
      features.append(x)
    return self.fc(jnp.mean(x, axis=(1, 2))), features


def create(seed=0, **kwargs) -> ResNet50:
  """A random ``ResNet50(rngs=nnx.Rngs(seed), **kwargs)`` (benchmarks and tests: the loss uses
  pretrained weights, ``checkpoint.load_resnet``), built in one compiled program."""
  return _constructor(tuple(sorted(kwargs.items())))(jax.random.key(seed))


@functools.lru_cache(maxsize=8)
def _constructor(kwargs):
  return layers.compiled_constructor(ResNet50, **dict(kwargs))
