"""The depthwise convolution (a shifted sum, its custom kernel gradient) against XLA's grouped
convolution and autodiff of it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from s4fusion_jax.network import layers
from s4fusion_jax.numerics import depthwise_conv


def grouped_conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=depthwise_conv.CHANNELS_LAST,
                                      feature_group_count=x.shape[-1])


def gradients(conv, x, kernel, padding):
  """Gradients of sum(sin(conv)) with respect to x and the kernel."""
  return jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k, padding))), argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("size,padding", [(3, ((1, 1), (1, 1))), (5, ((2, 1), (0, 2)))])
def test_gradients_match_autodiff_float64(size, padding):
  with jax.enable_x64(True):
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (3, 9, 11, 6), jnp.float64)
    kernel = jax.random.normal(kk, (size, size, 1, 6), jnp.float64)
    y = depthwise_conv.depthwise_conv(x, kernel, padding)
    # The same sum in another order: float64 rounding apart.
    np.testing.assert_allclose(y, grouped_conv(x, kernel, padding), rtol=1e-13, atol=1e-13)
    ours = gradients(depthwise_conv.depthwise_conv, x, kernel, padding)
    theirs = gradients(grouped_conv, x, kernel, padding)
    for a, b in zip(ours, theirs):
      assert a.shape == b.shape and a.dtype == b.dtype
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bfloat16_kernel_gradient_is_summed_in_float32():
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 8))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 1, 8))
  padding = ((1, 1), (1, 1))
  reference = gradients(grouped_conv, x, kernel, padding)[1]
  ours = gradients(depthwise_conv.depthwise_conv, x.astype(jnp.bfloat16),
                   kernel.astype(jnp.bfloat16), padding)[1]
  assert ours.dtype == jnp.bfloat16
  error = jnp.max(jnp.abs(ours.astype(jnp.float32) - reference)) / jnp.max(jnp.abs(reference))
  assert error < 2e-2, error


def test_layers_conv_uses_it_for_depthwise_only():
  channels = 8
  depthwise = layers.conv(channels, channels, 3, padding=((1, 1), (1, 1)), groups=channels,
                          rngs=nnx.Rngs(0))
  dense = layers.conv(channels, channels, 3, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (2, 6, 6, channels))

  def kernel_grad_jaxpr(conv):
    graphdef, params = nnx.split(conv)
    loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x)))
    return str(jax.make_jaxpr(jax.grad(loss))(params))

  # JAX's transpose of a grouped conv is a batch-grouped conv, which XLA:CPU runs densely.
  assert f"batch_group_count={channels}" not in kernel_grad_jaxpr(depthwise)
  assert dense.conv_general_dilated is jax.lax.conv_general_dilated
  assert f"batch_group_count={channels}" in str(jax.make_jaxpr(jax.grad(
      lambda k: jnp.sum(grouped_conv(x, k, ((1, 1), (1, 1))))))(depthwise.kernel[...]))


def test_inside_a_scan_no_dense_kernel_gradient_is_compiled():
  """Micro-batches run in a lax.scan, where XLA:CPU computed the dense (3, 3, C, C) conv slowly."""
  channels, padding = 16, ((1, 1), (1, 1))
  xs = jax.random.normal(jax.random.key(4), (2, 2, 8, 8, channels))
  kernel = jax.random.normal(jax.random.key(5), (3, 3, 1, channels))

  def accumulated(conv):
    grad = jax.grad(lambda k, x: jnp.sum(jnp.sin(conv(x, k, padding))))
    return jax.lax.scan(lambda total, x: (total + grad(kernel, x), None),
                        jnp.zeros_like(kernel), xs)[0]

  dense = f"f32[3,3,{channels},{channels}]"
  assert dense in jax.jit(lambda: accumulated(grouped_conv)).lower().compile().as_text()
  ours = jax.jit(lambda: accumulated(depthwise_conv.depthwise_conv))
  assert dense not in ours.lower().compile().as_text()
  np.testing.assert_allclose(ours(), accumulated(grouped_conv), rtol=1e-5, atol=1e-5)


def test_other_convolutions_are_refused():
  x, kernel = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 1, 4))
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, depthwise_conv.CHANNELS_LAST)
  with pytest.raises(ValueError, match="strides"):
    depthwise_conv.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=numbers, feature_group_count=4)
  with pytest.raises(ValueError, match="groups 1"):
    depthwise_conv.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=numbers, feature_group_count=1)
