"""Linear, convolution, LayerNorm and BatchNorm layers initialised as the reference initialises them.

The reference (``VSSM._init_weights``) gives every ``nn.Linear`` a normal(0, 0.02)
weight (timm's ``trunc_normal_`` with bounds at +-2, i.e. +-100 sigma) and a zero
bias; ``nn.Conv2d`` keeps PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
weight and bias; every LayerNorm has eps 1e-5, starts at (1, 0) and computes the variance
in two passes, as PyTorch does.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from s4fusion_jax.numerics import depthwise_conv

NORM_EPS = 1e-5  # PyTorch's default for LayerNorm and BatchNorm
linear_init = nnx.initializers.normal(stddev=0.02)


class ParamKeys:
  """The ``params`` keys of ``nnx.Rngs(key)``, for a constructor run under a trace.

  ``params()`` returns fold_in(key, 0), fold_in(key, 1), ... as ``nnx.Rngs(key).params()``
  does, so a constructor given ``ParamKeys(key)`` draws the same parameters; the count is a
  Python int, as ``nnx.Rngs``'s Variable count is slow to update under a trace.
  """

  def __init__(self, key):
    self.key, self.count = key, 0

  def params(self):
    key = jax.random.fold_in(self.key, self.count)
    self.count += 1
    return key


# A constructor's program runs once but is a threefry loop per parameter array, whose LLVM
# optimisation dominates its compile on the CPU; so there it is compiled without.
CPU_CONSTRUCTOR_OPTIONS = {"xla_backend_optimization_level": 0}


def compiled_constructor(build, **kwargs):
  """``key -> build(rngs=ParamKeys(key), **kwargs)``, the module built in one compiled program.

  The same random keys as ``nnx.Rngs(key)``, so the same parameters as eager construction up
  to XLA fusing the initialisers' arithmetic differently (within a few float32 ulps). The
  program is compiled once per call of this function (every seed shares it). Under a trace
  (a traced key) it is traced into the caller's program, whose compiler options apply.
  """
  graphdef = nnx.graphdef(abstract(build, **kwargs))
  state = lambda key: nnx.state(build(rngs=ParamKeys(key), **kwargs))
  options = CPU_CONSTRUCTOR_OPTIONS if jax.default_backend() == "cpu" else None
  nested, top = jax.jit(state), jax.jit(state, compiler_options=options)
  return lambda key: nnx.merge(graphdef, (nested if isinstance(key, jax.core.Tracer) else top)(key))


def abstract(build, **kwargs):
  """``nnx.eval_shape`` of ``build(rngs=ParamKeys(key 0), **kwargs)``: shapes, no values."""
  return nnx.eval_shape(lambda: build(rngs=ParamKeys(jax.random.key(0)), **kwargs))


def fan_in_uniform(fan_in):
  """PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) initializer."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def linear(in_features, out_features, *, rngs, dtype=None, param_dtype=jnp.float32,
           use_bias=False):
  """``nn.Linear`` as the reference uses it: kernel (in, out), bias-free by default."""
  return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=linear_init,
                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def conv(in_features, out_features, kernel_size, *, rngs, stride=1, padding="VALID",
         groups=1, use_bias=True, dtype=None, param_dtype=jnp.float32):
  """``nn.Conv2d`` with PyTorch's default initialisation; kernel (kh, kw, in/groups, out).

  A depthwise convolution (stride 1, explicit padding) runs through ``depthwise_conv``.
  """
  fan_in = (in_features // groups) * kernel_size * kernel_size
  depthwise = (groups == in_features == out_features and stride == 1
               and not isinstance(padding, str))
  extra = {"conv_general_dilated": depthwise_conv.conv_general_dilated} if depthwise else {}
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=stride,
                  padding=padding, feature_group_count=groups, use_bias=use_bias,
                  kernel_init=fan_in_uniform(fan_in), bias_init=fan_in_uniform(fan_in),
                  dtype=dtype, param_dtype=param_dtype, rngs=rngs, **extra)


def batch_norm(num_features, *, rngs, dtype=None, param_dtype=jnp.float32):
  """``nn.BatchNorm2d(num_features)``, starting in training mode (batch statistics).

  PyTorch's momentum 0.1 is flax's 0.9. The running variance is updated with the biased
  batch variance (PyTorch uses the unbiased one: a factor n / (n - 1), n = batch x H x W).
  ``module.eval()`` switches to the running statistics.
  """
  return nnx.BatchNorm(num_features, use_running_average=False, momentum=0.9, epsilon=NORM_EPS,
                       use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def layer_norm(num_features, *, rngs, dtype=None, param_dtype=jnp.float32):
  """``nn.LayerNorm(num_features)`` (eps 1e-5, two-pass variance)."""
  return nnx.LayerNorm(num_features, epsilon=NORM_EPS, use_fast_variance=False,
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def record(module, name, value):
  """Keeps ``value`` as the ``nnx.Intermediate`` ``name`` of ``module`` when the forward pass
  runs under ``nnx.capture`` (``functional.Network.intermediates``); otherwise does nothing
  (flax's ``sow`` outside a capture would store it on the module itself)."""
  if getattr(module, "__captures__", None) is not None:
    module.sow(nnx.Intermediate, name, value)


def call(module, *args, remat=False):
  """``module(*args)``; with ``remat``, its activations are recomputed in the backward pass."""
  if not remat:
    return module(*args)
  return nnx.remat(lambda m, *a: m(*a))(module, *args)
