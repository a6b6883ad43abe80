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

The state h (N values per channel, held as (N, batch, G, D): see below) is float32
for float32 / bfloat16 inputs and float64 for float64 inputs; the output is returned
in that dtype, as the reference's CUDA kernel returns float32.

Backends:
    ``sequential``  ``lax.scan`` over L; under ``grad`` it keeps per-step residuals.
    ``associative`` ``lax.associative_scan`` over L; materialises (batch, L, G, D, N).
    ``chunked``     L cut into chunks, the state carried across them, with a custom VJP
                    (Mamba's backward) that keeps only the chunk-start states and
                    recomputes each chunk's states in reverse time.
    ``auto``        per platform, forward and under ``grad`` (``AUTO_BACKEND``); where
                    they differ one custom VJP serves both. ``jvp`` then needs an
                    explicit backend.
"""

import enum
import functools
import operator

import jax
import jax.numpy as jnp


class ScanBackend(str, enum.Enum):
  SEQUENTIAL = "sequential"
  ASSOCIATIVE = "associative"
  CHUNKED = "chunked"
  AUTO = "auto"


# ``auto``: the best per (platform, differentiated?) as measured by ``python -m bench.speed``:
# on the CPU the plain lax.scan forward, the chunked scan under grad; other platforms chunked.
AUTO_BACKEND = {("cpu", False): ScanBackend.SEQUENTIAL, ("cpu", True): ScanBackend.CHUNKED}
AUTO_DEFAULT = ScanBackend.CHUNKED
# Inside a chunk, the faster form on the platform.
CHUNK_INNER = {"cpu": ScanBackend.SEQUENTIAL}
CHUNK_INNER_DEFAULT = ScanBackend.ASSOCIATIVE
DEFAULT_CHUNK = 128


def resolve_backend(backend, platform=None, differentiated=False) -> ScanBackend:
  """The concrete backend for ``backend``; "auto" by ``platform`` and ``differentiated``."""
  backend = ScanBackend(backend)
  if backend != ScanBackend.AUTO:
    return backend
  return AUTO_BACKEND.get((platform or jax.default_backend(), differentiated), AUTO_DEFAULT)


def state_dtype(dtype) -> jnp.dtype:
  """The dtype of the scan state for inputs of ``dtype``: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


# Inside the module time leads and n comes next: h (N, b, G, D), a chunk of states
# (T, N, b, G, D), A (N, G, D), B and C (T, N, b, G); sums over n add (b, G, D) slabs.


def _sum_over_n(x, axis):
  """x summed over its n ``axis`` as a chain of slice adds, which XLA:CPU fuses."""
  slices = [jax.lax.index_in_dim(x, n, axis, keepdims=False) for n in range(x.shape[axis])]
  return functools.reduce(operator.add, slices)


def _decay(dt, A):
  """exp(dt A): dt (..., b, G, D) and A (N, G, D) -> (..., N, b, G, D)."""
  return jnp.exp(dt[..., None, :, :, :] * A[:, None])


def _step(h, dt_t, A, p_t, q_t):
  """One step h -> exp(dt_t A) h + q_t p_t: h (N, b, G, D), dt_t, p_t (b, G, D), q_t (N, b, G)."""
  return _decay(dt_t, A) * h + p_t * q_t[..., None]


def _outputs_sequential(h0, dt, A, u, B, C):
  """(h_T, y) with y_t = C_t . h_t, by a ``lax.scan``; shapes as ``_states``'s, with u
  (T, b, G, D) in place of p (p_t = dt_t u_t is formed inside the loop).

  C_t reaches step t through the carry, sliced one step ahead, so that XLA:CPU vectorises
  the write of y_t.
  """

  def step(carry, inputs):
    h, C_t = carry
    dt_t, u_t, B_t, C_next = inputs  # (b, G, D), (b, G, D), (N, b, G), (N, b, G)
    h = _step(h, dt_t, A, dt_t * u_t, B_t)
    return (h, C_next), _sum_over_n(h * C_t[..., None], 0)

  C_next = jnp.concatenate([C[1:], C[:1]])
  (h, _), y = jax.lax.scan(step, (h0, C[0]), (dt, u, B, C_next))
  return h, y


def _combine(left, right):
  """Composes two affine maps h -> a h + b (left applied first)."""
  a_left, b_left = left
  a_right, b_right = right
  return a_right * a_left, a_right * b_left + b_right


def _states(h0, dt, A, p, q, inner, reverse=False):
  """Every state of h_t = exp(dt_t A) h_{t-1} + q_t p_t over a time-major sequence.

  Args:
    h0: (N, b, G, D) the state before the first step (after the last, if ``reverse``).
    dt: (T, b, G, D) step sizes; A: (N, G, D).
    p: (T, b, G, D) and q: (T, N, b, G), whose outer product drives the state.
    inner: ``SEQUENTIAL`` (a ``lax.scan``) or ``ASSOCIATIVE`` (``lax.associative_scan``).
    reverse: run from t = T down to 1 (the adjoint recurrence).

  Returns:
    (T, N, b, G, D) the states h_1 .. h_T.
  """
  if inner == ScanBackend.SEQUENTIAL:

    def step(h, inputs):
      dt_t, p_t, q_t = inputs
      h = _step(h, dt_t, A, p_t, q_t)
      return h, h

    return jax.lax.scan(step, h0, (dt, p, q), reverse=reverse)[1]
  drive = p[:, None] * q[..., None]
  decay, h = jax.lax.associative_scan(_combine, (_decay(dt, A), drive), axis=0,
                                      reverse=reverse)
  return h + decay * h0


def _outputs_associative(h0, dt, A, u, B, C):
  """(h_T, y) with y_t = C_t . h_t, by ``lax.associative_scan``; arguments as the sequential's."""
  h = _states(h0, dt, A, dt * u, B, ScanBackend.ASSOCIATIVE)
  return h[-1], _sum_over_n(h * C[..., None], 1)


_OUTPUTS = {
    ScanBackend.SEQUENTIAL: _outputs_sequential,
    ScanBackend.ASSOCIATIVE: _outputs_associative,
}


def _dot_over_d(x, v):
  """sum_d x v, batched: x (T, N, b, G, D), v (T, b, G, D) -> (T, N, b, G), as a dot."""
  out = jax.lax.dot_general(x, v, (((4,), (3,)), ((0, 2, 3), (0, 1, 2))))  # (T, b, G, N)
  return jnp.moveaxis(out, -1, 1)


LANES = 8


def _sum_over_d(x):
  """x summed over its trailing d axis, inside a loop body: (..., D) -> (...).

  The D / 8 slices of 8 consecutive d are added, then the 8 lanes (no ``reduce``, which
  XLA:CPU makes a library call inside a loop).
  """
  lanes = LANES if x.shape[-1] % LANES == 0 else 1
  x = x.reshape(*x.shape[:-1], x.shape[-1] // lanes, lanes)
  return _sum_over_n(_sum_over_n(x, x.ndim - 2), x.ndim - 2)


def _softplus_slope(dt):
  """softplus'(x) = sigmoid(x) from dt = softplus(x): 1 - exp(-dt)."""
  return -jnp.expm1(-dt)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _chunked(u, delta, A, B, C, D, delta_bias, inner):
  """y_t = C_t . h_t + D u_t over K chunks of T steps, time-major.

  u, delta (K, T, b, G, D); A (N, G, D); B, C (K, T, N, b, G); D, delta_bias (G, D). Each
  chunk runs ``inner``; the backward (``_chunked_bwd``) starts from the chunk-start states.
  """
  return _chunked_fwd(u, delta, A, B, C, D, delta_bias, inner)[0]


def _chunked_fwd(u, delta, A, B, C, D, delta_bias, inner):
  """y and the residuals: the inputs, dt and the state at the start of every chunk."""
  dt = jax.nn.softplus(delta + delta_bias)

  def chunk(h, inputs):
    u_k, dt_k, B_k, C_k = inputs
    h_last, y_k = _OUTPUTS[inner](h, dt_k, A, u_k, B_k, C_k)
    return h_last, (y_k + D * u_k, h)

  h0 = jnp.zeros((A.shape[0], *u.shape[2:]), u.dtype)
  _, (y, starts) = jax.lax.scan(chunk, h0, (u, dt, B, C))
  return y, (u, dt, A, B, C, D, starts)


def _adjoint_terms(lam, h, p, B, dt, A, axis):
  """The per-step gradient terms from the states h and adjoints lam, n at ``axis``.

  One step (``axis`` 0): lam, h (N, b, G, D), p, dt (b, G, D), B (N, b, G); a chunk
  (``axis`` 1): the same with a leading T. With w = lam a_t h_{t-1} = lam (h - B p), returns
  (dt w, to be summed into dA; dp = sum_n B lam; sum_n A w, dt's share through the decay).
  """
  spread = lambda x: jnp.expand_dims(x, axis)  # (..., b, G, D) -> (..., 1, b, G, D)
  B = B[..., None]
  w = lam * (h - spread(p) * B)
  return w * spread(dt), _sum_over_n(lam * B, axis), _sum_over_n(w * A[:, None], axis)


def _chunked_bwd(inner, residuals, dy):
  """Gradients of every input from dy (K, T, b, G, D), chunk by chunk in reverse time.

  With a_t = exp(dt_t A), dt_t = softplus(delta_t + delta_bias) and p_t = dt_t u_t, the
  adjoint state
      lam_t = dL/dh_t = a_{t+1} lam_{t+1} + C_t dy_t
  is the same recurrence run backwards. Per chunk, the states h_t are recomputed from the
  chunk's start and lam_t run back from the next chunk's first lam; then, with
  w_t = lam_t a_t h_{t-1} = lam_t (h_t - B_t p_t):
      dp_t = sum_n B_t lam_t      du_t = dt_t dp_t + D dy_t   ddt_t = u_t dp_t + sum_n A w_t
      ddelta_t = softplus'(.) ddt_t                            d delta_bias = sum_{t, b} ddelta_t
      dB_t = sum_d p_t lam_t      dC_t = sum_d dy_t h_t       dA = sum_{t, b} dt_t w_t
      dD = sum_{t, b} u_t dy_t
  On CPU (``inner`` sequential) the per-step terms and the sums over t are formed inside the
  reverse loop while lam_t is in cache; an associative ``inner`` forms them over whole chunks.
  """
  u, dt, A, B, C, D, starts = residuals
  num_chunks, length = dt.shape[:2]
  # dt_{t+1} for every t, with dt = 0 (decay 1, multiplying lam = 0) after the last step.
  dt_next = jnp.concatenate([dt.reshape(num_chunks * length, *dt.shape[2:])[1:],
                             jnp.zeros_like(dt[0, :1])]).reshape(dt.shape)

  def chunk(carry, inputs):
    lam_next, dA, dD, dbias = carry  # dA (N, b, G, D), dD, dbias (b, G, D): summed over b last
    u_k, dt_k, dt_next_k, B_k, C_k, dy_k, h_start = inputs
    p_k = dt_k * u_k
    h = _states(h_start, dt_k, A, p_k, B_k, inner)
    if inner == ScanBackend.SEQUENTIAL:

      def step(carry, inputs):
        lam, dA, dD, dbias = carry
        dt_next_t, dy_t, C_t, h_t, p_t, B_t, dt_t, u_t = inputs
        lam = _step(lam, dt_next_t, A, dy_t, C_t)
        dA_t, dp_t, decay_t = _adjoint_terms(lam, h_t, p_t, B_t, dt_t, A, 0)
        ddelta_t = (u_t * dp_t + decay_t) * _softplus_slope(dt_t)
        grads = (dt_t * dp_t + D * dy_t, ddelta_t, _sum_over_d(lam * p_t),
                 _sum_over_d(h_t * dy_t))
        return (lam, dA + dA_t, dD + u_t * dy_t, dbias + ddelta_t), grads

      (lam_first, dA, dD, dbias), grads = jax.lax.scan(
          step, (lam_next, dA, dD, dbias), (dt_next_k, dy_k, C_k, h, p_k, B_k, dt_k, u_k),
          reverse=True)
    else:
      lam = _states(lam_next, dt_next_k, A, dy_k, C_k, inner, reverse=True)
      dA_k, dp, decay = _adjoint_terms(lam, h, p_k, B_k, dt_k, A, 1)
      ddelta = (u_k * dp + decay) * _softplus_slope(dt_k)
      grads = (dt_k * dp + D * dy_k, ddelta, _dot_over_d(lam, p_k), _dot_over_d(h, dy_k))
      lam_first, dA = lam[0], dA + jnp.sum(dA_k, axis=0)
      dD, dbias = dD + jnp.sum(u_k * dy_k, axis=0), dbias + jnp.sum(ddelta, axis=0)
    return (lam_first, dA, dD, dbias), grads

  zeros, sums = jnp.zeros_like(starts[0]), jnp.zeros_like(dt[0, 0])
  (_, dA, dD, dbias), (du, ddelta, dB, dC) = jax.lax.scan(
      chunk, (zeros, zeros, sums, sums), (u, dt, dt_next, B, C, dy, starts), reverse=True)
  # Over b as one reduce: a chain of slices of a batch sharded over devices moves every
  # device's slice to one device (a collective-permute each); a reduce is one all-reduce.
  dA, dD, dbias = (jnp.sum(x, axis=-3) for x in (dA, dD, dbias))
  return du, ddelta, dA, dB, dC, dD, dbias


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def _split(x, chunk):
  """(L, ...) -> (chunks, chunk, ...), padded at the end with zeros (no input, no output)."""
  chunks = -(-x.shape[0] // chunk)
  x = jnp.pad(x, [(0, chunks * chunk - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(chunks, chunk, *x.shape[1:])


def _unsplit(x, length):
  """(chunks, chunk, ...) -> (length, ...), the padding dropped."""
  return x.reshape(-1, *x.shape[2:])[:length]


def _forward(u, delta, A, B, C, D, delta_bias, forward):
  """y over a whole time-major sequence (L, ...) by the ``forward`` backend."""
  dt = jax.nn.softplus(delta + delta_bias)
  h0 = jnp.zeros((A.shape[0], *u.shape[1:]), u.dtype)
  return _OUTPUTS[forward](h0, dt, A, u, B, C)[1] + D * u


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _fast_forward(u, delta, A, B, C, D, delta_bias, forward, inner, chunk):
  """``_forward`` by the ``forward`` backend; under ``grad``, the chunked scan's passes."""
  return _forward(u, delta, A, B, C, D, delta_bias, forward)


def _fast_forward_fwd(u, delta, A, B, C, D, delta_bias, forward, inner, chunk):
  del forward
  split = lambda x: _split(x, chunk)
  y, residuals = _chunked_fwd(split(u), split(delta), A, split(B), split(C), D, delta_bias,
                              inner)
  return _unsplit(y, u.shape[0]), residuals


def _fast_forward_bwd(forward, inner, chunk, residuals, dy):
  del forward
  du, ddelta, dA, dB, dC, dD, dbias = _chunked_bwd(inner, residuals, _split(dy, chunk))
  length = dy.shape[0]
  return (_unsplit(du, length), _unsplit(ddelta, length), dA, _unsplit(dB, length),
          _unsplit(dC, length), dD, dbias)


_fast_forward.defvjp(_fast_forward_fwd, _fast_forward_bwd)


def selective_scan(u, delta, A, B, C, D, delta_bias, *, backend="sequential", chunk=None,
                   platform=None, mask=None):
  """Runs the selective scan; see the module docstring for the shapes.

  With ``mask``, the masked-out steps leave the state as it is (delta -inf, so dt = 0 and
  softplus' = 0) and read no input (u, B, C zeroed with ``where``): every other step gives
  what the scan over the unmasked steps alone gives; the masked steps' outputs are 0.

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
    platform: the platform compiled for (default: JAX's), e.g. "cuda" to lower for a GPU.
    mask: None, or booleans broadcastable to (batch, L, G, 1): the steps to scan.

  Returns:
    y: (batch, L, G, D) in ``state_dtype(u.dtype)``.
  """
  dtype = state_dtype(u.dtype)
  u, delta, A, B, C, D, delta_bias = (
      x.astype(dtype) for x in (u, delta, A, B, C, D, delta_bias))
  if mask is not None:
    delta = jnp.where(mask, delta, -jnp.inf)
    u, B, C = (jnp.where(mask, x, 0) for x in (u, B, C))
  return _scan(u, delta, A, B, C, D, delta_bias, backend=backend, chunk=chunk,
               platform=platform or jax.default_backend())


def _scan(u, delta, A, B, C, D, delta_bias, *, backend, chunk, platform):
  """``selective_scan`` of inputs already cast to the state dtype and masked."""
  forward = resolve_backend(backend, platform)
  trained = resolve_backend(backend, platform, differentiated=True)
  length = u.shape[1]
  u_t, delta_t = (jnp.moveaxis(x, 1, 0) for x in (u, delta))     # (L, b, G, D)
  B_t, C_t = (jnp.transpose(x, (1, 3, 0, 2)) for x in (B, C))    # (L, N, b, G)
  A = jnp.moveaxis(A, -1, 0)                                     # (N, G, D)
  chunk = min(chunk or DEFAULT_CHUNK, length)
  inner = CHUNK_INNER.get(platform, CHUNK_INNER_DEFAULT)
  if forward == ScanBackend.CHUNKED:
    split = lambda x: _split(x, chunk)
    y = _chunked(split(u_t), split(delta_t), A, split(B_t), split(C_t), D, delta_bias, inner)
    return jnp.moveaxis(_unsplit(y, length), 0, 1)
  if trained == ScanBackend.CHUNKED:
    y = _fast_forward(u_t, delta_t, A, B_t, C_t, D, delta_bias, forward, inner, chunk)
    return jnp.moveaxis(y, 0, 1)
  return jnp.moveaxis(_forward(u_t, delta_t, A, B_t, C_t, D, delta_bias, forward), 0, 1)

