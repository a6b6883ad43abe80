"""The depthwise convolution of SS2D and CMSA, as a sum of shifted products.

    y[b, h, w, c] = sum_{i, j} x_pad[b, h + i, w + j, c] K[i, j, 0, c]

channels-last x (batch, H, W, C), kernel K (k, k, 1, C) (one k x k filter per channel), stride
1, zero padding. The forward is that sum as written: k^2 shifted windows of x_pad times their
tap, added in the order (i, j) = (0, 0), (0, 1), ..., one fused elementwise loop (XLA:CPU's
grouped convolution is much slower; the two differ by float rounding). The input gradient is
autodiff's transpose of the sum. The kernel gradient is the same sum read the other way,

    dK[i, j, 0, c] = sum_{b, h, w} x_pad[b, h + i, w + j, c] dy[b, h, w, c],

one tap at a time in a ``lax.scan`` (so only one product is alive), summed over the batch
once after the loop (so a batch sharded over devices needs one all-reduce, not one a tap).

Products and sums are in at least float32 (bfloat16 inputs are summed in float32, as a
convolution accumulates), the result in the input's dtype.
"""

import functools
import operator

import jax
import jax.numpy as jnp

CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")


def _shifted_sum(x, kernel, padding):
  """The forward sum (module docstring), in at least float32, returned in x's dtype."""
  size_h, size_w = kernel.shape[:2]
  total_dtype = jnp.promote_types(x.dtype, jnp.float32)
  x_pad = jnp.pad(x, ((0, 0), *padding, (0, 0))).astype(total_dtype)
  kernel = kernel.astype(total_dtype)
  height, width = x_pad.shape[1] - size_h + 1, x_pad.shape[2] - size_w + 1
  terms = (x_pad[:, i:i + height, j:j + width] * kernel[i, j, 0]
           for i in range(size_h) for j in range(size_w))
  return functools.reduce(operator.add, terms).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x, kernel, padding, precision=None):
  """x (batch, H, W, C), kernel (k, k, 1, C), padding ((top, bottom), (left, right)).

  Returns y (batch, H + top + bottom - k + 1, W + left + right - k + 1, C). ``precision`` (a
  convolution's) is accepted and unused: the sum is elementwise, in at least float32.
  """
  del precision
  return _shifted_sum(x, kernel, padding)


def _depthwise_conv_fwd(x, kernel, padding, precision):
  return depthwise_conv(x, kernel, padding, precision), (x, kernel)


def _depthwise_conv_bwd(padding, precision, residuals, dy):
  del precision
  x, kernel = residuals
  dx = jax.vjp(lambda x: _shifted_sum(x, kernel, padding), x)[1](dy)[0]
  size_h, size_w = kernel.shape[:2]
  x_pad = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  taps = jnp.array([(i, j) for i in range(size_h) for j in range(size_w)])
  total_dtype = jnp.promote_types(dy.dtype, jnp.float32)

  def tap(_, offset):  # dK[i, j] per example: the window of x_pad at (i, j) against dy
    window = jax.lax.dynamic_slice(x_pad, (0, offset[0], offset[1], 0), dy.shape)
    return None, jnp.sum(window * dy, axis=(1, 2), dtype=total_dtype)

  dkernel = jnp.sum(jax.lax.scan(tap, None, taps)[1], axis=1)
  return dx, dkernel.reshape(size_h, size_w, 1, -1).astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_conv_fwd, _depthwise_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, out_sharding=None):
  """``jax.lax.conv_general_dilated``'s signature, as ``nnx.Conv`` calls it, for the one case
  ``depthwise_conv`` computes (channels-last, stride 1, no dilation, one filter per channel).

  Anything else raises ``ValueError``: ``layers.conv`` passes this only for that case.
  """
  expected = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, CHANNELS_LAST)
  undilated = all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
  if (tuple(window_strides) != (1, 1) or not undilated or dimension_numbers != expected
      or feature_group_count != lhs.shape[-1] or rhs.shape[2:] != (1, lhs.shape[-1])
      or isinstance(padding, str) or out_sharding is not None):
    raise ValueError(
        "depthwise_conv computes channels-last, stride-1, undilated, explicitly padded "
        f"convolutions with one filter per channel; got input {lhs.shape}, kernel {rhs.shape}, "
        f"strides {window_strides}, padding {padding}, groups {feature_group_count}")
  return depthwise_conv(lhs, rhs, tuple(tuple(p) for p in padding), precision)
