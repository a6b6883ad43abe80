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
    ``sequential``  ``lax.scan`` over L: O(batch G D N) live state, fast on CPU;
                    under ``grad`` it keeps per-step residuals, O(L batch G D N).
    ``associative`` ``lax.associative_scan`` over L: O(log L) depth, the form
                    for accelerators; materialises (batch, L, G, D, N).
    ``chunked``     L cut into chunks, the state carried across them and each chunk
                    recomputed in the backward pass: under ``grad`` it keeps the
                    L / chunk boundary states plus one chunk's residuals. Inside a
                    chunk: ``sequential`` on CPU, ``associative`` elsewhere.
    ``auto``        the measured best for the platform, forward-only or trained
                    (``AUTO_BACKEND``, ``resolve_backend``).
"""

import enum

import jax
import jax.numpy as jnp


class ScanBackend(str, enum.Enum):
  SEQUENTIAL = "sequential"
  ASSOCIATIVE = "associative"
  CHUNKED = "chunked"
  AUTO = "auto"


# ``auto``: the measured best per (platform, differentiated?) (bench/benchmark.py; README
# "Performance"). On CPU the plain lax.scan is fastest forward; under grad the chunked scan
# is as fast and keeps a fraction of the memory. Unmeasured platforms get the chunked scan,
# whose chunks are associative scans there.
AUTO_BACKEND = {("cpu", False): ScanBackend.SEQUENTIAL, ("cpu", True): ScanBackend.CHUNKED}
AUTO_DEFAULT = ScanBackend.CHUNKED
# Inside a chunk, the faster form on the platform.
CHUNK_INNER = {"cpu": ScanBackend.SEQUENTIAL}
CHUNK_INNER_DEFAULT = ScanBackend.ASSOCIATIVE
DEFAULT_CHUNK = 128


def resolve_backend(backend, platform=None, differentiated=False) -> ScanBackend:
  """The concrete backend for ``backend``.

  "auto" picks by ``platform`` (default: JAX's) and by whether the scan will be
  differentiated (training resolves it with ``differentiated=True``; left as "auto"
  in a model, it means inference).
  """
  backend = ScanBackend(backend)
  if backend != ScanBackend.AUTO:
    return backend
  return AUTO_BACKEND.get((platform or jax.default_backend(), differentiated), AUTO_DEFAULT)


def state_dtype(dtype) -> jnp.dtype:
  """The dtype of the scan state for inputs of ``dtype``: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def _recurrence_sequential(h0, u, delta, A, B, C):
  """(h_L, y) with y_t = C_t . h_t (no D skip), by a ``lax.scan`` over L; h0 (b, G, D, N)."""

  def step(h, inputs):
    u_t, delta_t, B_t, C_t = inputs  # (b, G, D), (b, G, D), (b, G, N), (b, G, N)
    h = jnp.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t[:, :, None, :]
    return h, jnp.einsum("bgdn,bgn->bgd", h, C_t)

  time_major = [jnp.moveaxis(x, 1, 0) for x in (u, delta, B, C)]
  h_last, y = jax.lax.scan(step, h0, time_major)
  return h_last, jnp.moveaxis(y, 0, 1)


def _combine(left, right):
  """Composes two affine maps h -> a h + b (left applied first)."""
  a_left, b_left = left
  a_right, b_right = right
  return a_right * a_left, a_right * b_left + b_right


def _recurrence_associative(h0, u, delta, A, B, C):
  """(h_L, y) with y_t = C_t . h_t (no D skip), by ``lax.associative_scan`` over L."""
  decay = jnp.exp(delta[..., None] * A)  # (b, L, G, D, N)
  drive = (delta * u)[..., None] * B[:, :, :, None, :]
  decay, h = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
  h = h + decay * h0[:, None]
  return h[:, -1], jnp.einsum("blgdn,blgn->blgd", h, C)


def _recurrence_chunked(h0, u, delta, A, B, C, chunk, inner):
  """(h_L, y) over chunks of ``chunk`` steps, each rematerialised in the backward pass.

  The outer ``lax.scan`` carries the state across chunks, so under ``grad`` only the
  chunk-boundary states (L / chunk of them) are kept; a chunk's inner residuals live
  only while that chunk's gradient is computed. The sequence is padded with steps of
  delta = 0 (decay 1, no input), which leave the state unchanged.
  """
  batch, length, groups, channels = u.shape
  chunks = -(-length // chunk)
  pad = chunks * chunk - length

  def split(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(batch, chunks, chunk, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def body(h, xs):
    return _RECURRENCES[inner](h, *xs[:2], A, *xs[2:])

  h_last, y = jax.lax.scan(body, h0, [split(x) for x in (u, delta, B, C)])
  y = jnp.moveaxis(y, 0, 1).reshape(batch, chunks * chunk, groups, channels)
  return h_last, y[:, :length]


_RECURRENCES = {
    ScanBackend.SEQUENTIAL: _recurrence_sequential,
    ScanBackend.ASSOCIATIVE: _recurrence_associative,
}


def selective_scan(u, delta, A, B, C, D, delta_bias, *, backend="sequential", chunk=None):
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
    chunk: steps per chunk for the ``chunked`` backend (default ``DEFAULT_CHUNK``).

  Returns:
    y: (batch, L, G, D) in ``state_dtype(u.dtype)``.
  """
  backend = resolve_backend(backend)
  dtype = state_dtype(u.dtype)
  u, delta, A, B, C, D, delta_bias = (
      x.astype(dtype) for x in (u, delta, A, B, C, D, delta_bias))
  delta = jax.nn.softplus(delta + delta_bias)
  h0 = jnp.zeros((u.shape[0], *A.shape), dtype)
  if backend == ScanBackend.CHUNKED:
    inner = CHUNK_INNER.get(jax.default_backend(), CHUNK_INNER_DEFAULT)
    _, y = _recurrence_chunked(h0, u, delta, A, B, C, chunk or DEFAULT_CHUNK, inner)
  else:
    _, y = _RECURRENCES[backend](h0, u, delta, A, B, C)
  return y + D * u
