"""The selective scan (Mamba's S6 recurrence) as pure functions.

Notation follows the Mamba paper and the S4Fusion paper's Eq. (1):

    delta_t = softplus(delta_t + delta_bias)
    h_t     = exp(delta_t A) h_{t-1} + delta_t B_t u_t,      h_0 = 0
    y_t     = C_t . h_t + D u_t

Layout is channels-last, with the scan directions as a group axis ``G``: the
``D`` channels of group ``g`` share that group's ``B_t`` and ``C_t`` (Mamba's
"grouped" B/C; in SS2D a group is one of the four scan directions).

Shapes:
    u, delta:          (batch, L, G, D)
    A:                 (G, D, N)      (negative real; A = -exp(A_log))
    B, C:              (batch, L, G, N)
    D, delta_bias:     (G, D)
    returns y:         (batch, L, G, D), in the state dtype

The state h (batch, G, D, N) is float32 for float32 / bfloat16 inputs and
float64 for float64 inputs; the output is returned in that dtype, as the
reference's CUDA kernel returns float32.

Backends (one enum, one entry point, as in recurrentgemma's scan module):
    ``sequential``  ``lax.scan`` over L: O(batch G D N) live state, fast on CPU.
    ``associative`` ``lax.associative_scan`` over L: O(log L) depth, the form
                    for accelerators; materialises (batch, L, G, D, N).
"""

import enum

import jax
import jax.numpy as jnp


class ScanBackend(str, enum.Enum):
  SEQUENTIAL = "sequential"
  ASSOCIATIVE = "associative"


def state_dtype(dtype) -> jnp.dtype:
  """The dtype of the scan state for inputs of ``dtype``: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def _recurrence_sequential(u, delta, A, B, C):
  """y_t = C_t . h_t without the D skip, by a ``lax.scan`` over L."""
  batch, _, groups, channels = u.shape
  h0 = jnp.zeros((batch, groups, channels, A.shape[-1]), u.dtype)

  def step(h, inputs):
    u_t, delta_t, B_t, C_t = inputs  # (b, G, D), (b, G, D), (b, G, N), (b, G, N)
    h = jnp.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t[:, :, None, :]
    return h, jnp.einsum("bgdn,bgn->bgd", h, C_t)

  time_major = [jnp.moveaxis(x, 1, 0) for x in (u, delta, B, C)]
  _, y = jax.lax.scan(step, h0, time_major)
  return jnp.moveaxis(y, 0, 1)


def _combine(left, right):
  """Composes two affine maps h -> a h + b (left applied first)."""
  a_left, b_left = left
  a_right, b_right = right
  return a_right * a_left, a_right * b_left + b_right


def _recurrence_associative(u, delta, A, B, C):
  """y_t = C_t . h_t without the D skip, by ``lax.associative_scan`` over L."""
  decay = jnp.exp(delta[..., None] * A)  # (b, L, G, D, N)
  drive = (delta * u)[..., None] * B[:, :, :, None, :]
  _, h = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
  return jnp.einsum("blgdn,blgn->blgd", h, C)


_RECURRENCES = {
    ScanBackend.SEQUENTIAL: _recurrence_sequential,
    ScanBackend.ASSOCIATIVE: _recurrence_associative,
}


def selective_scan(u, delta, A, B, C, D, delta_bias, *, backend="sequential"):
  """Runs the selective scan; see the module docstring for the shapes.

  Args:
    u: (batch, L, G, D) scan input.
    delta: (batch, L, G, D) step sizes before the bias and softplus.
    A: (G, D, N) state matrix diagonal (negative).
    B: (batch, L, G, N) input projection, shared by a group's channels.
    C: (batch, L, G, N) output projection, shared by a group's channels.
    D: (G, D) skip weights.
    delta_bias: (G, D) added to delta before the softplus.
    backend: a ``ScanBackend`` or its string value.

  Returns:
    y: (batch, L, G, D) in ``state_dtype(u.dtype)``.
  """
  recurrence = _RECURRENCES[ScanBackend(backend)]
  dtype = state_dtype(u.dtype)
  u, delta, A, B, C, D, delta_bias = (
      x.astype(dtype) for x in (u, delta, A, B, C, D, delta_bias))
  delta = jax.nn.softplus(delta + delta_bias)
  return recurrence(u, delta, A, B, C) + D * u
