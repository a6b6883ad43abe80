"""SS2D (VMamba's 2-D selective scan) and the VSS block, as thin NNX modules.

    VSSBlock(x) = x + SS2D(LN(x))
    SS2D(x):  u, z = split(in_proj(x));  u = SiLU(DWConv3x3(u))
              y = merge_4(S6(flatten_4(u)))            (four scan directions)
              out = out_proj(out_norm(y) * SiLU(z))

Feature maps are channels-last (batch, H, W, C); ``d_inner = int(expand * C)``,
``dt_rank = ceil(C / 16)``. The numerics live in ``scan`` and ``directions``.

A ``mask`` (batch, H, W) marks the valid positions of a smaller map at the top-left (a size
bucket, ``sizes``): the depthwise convolution's input is zeroed outside it and the scans step
over the positions outside it, so every valid output equals the smaller map's; outputs
outside the mask are meaningless.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from s4fusion_jax.network import layers
from s4fusion_jax.numerics import directions
from s4fusion_jax.numerics import scan

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4


def inner_width(d_model, expand):
  """The reference's ``d_inner = int(expand * d_model)``."""
  return int(expand * d_model)


def default_dt_rank(d_model):
  """The reference's ``dt_rank = ceil(d_model / 16)``."""
  return math.ceil(d_model / 16)


def project_dbc(u, weight, dt_rank, d_state):
  """The per-direction projection x -> (dt, B, C) of the four paths of the map ``u``.

  Args:
    u: (batch, H, W, D) the map whose paths are scanned (``directions.flatten_directions``).
    weight: (G, D, dt_rank + 2 N), G = 4 directions.

  Returns:
    dt_low (batch, L, G, dt_rank), B (batch, L, G, N), C (batch, L, G, N).

  The projection is position-wise, so it is one matmul over the map's positions, flattened
  afterwards (the same products as projecting each path, without transposed copies).
  """
  dbc = jnp.einsum("bhwd,gdc->bhwgc", u, weight.astype(u.dtype))
  return jnp.split(directions.flatten_each_direction(dbc), [dt_rank, dt_rank + d_state], axis=-1)


def _dt_bias_init(key, shape, dtype):
  """softplus^-1 of dt, dt log-uniform in [DT_MIN, DT_MAX] (floored), as Mamba does."""
  log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(DT_MIN), math.log(DT_MAX))
  dt = jnp.maximum(jnp.exp(log_dt), DT_FLOOR)
  return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


class DirectionalSSM(nnx.Module):
  """The context-independent SSM parameters of G scan directions, and the scan.

  dt_proj (G, dt_rank, D), dt_bias (G, D), A_log (G, D, N) with A = -exp(A_log), D (G, D).
  """

  def __init__(self, channels, d_state, dt_rank, *, rngs, backend="sequential", chunk=None,
               platform=None, groups=directions.NUM_DIRECTIONS, param_dtype=jnp.float32):
    self.backend, self.chunk, self.platform = scan.ScanBackend(backend).value, chunk, platform
    std = dt_rank**-0.5
    self.dt_proj = nnx.Param(jax.random.uniform(
        rngs.params(), (groups, dt_rank, channels), param_dtype, -std, std))
    self.dt_bias = nnx.Param(_dt_bias_init(rngs.params(), (groups, channels), param_dtype))
    log_a = jnp.log(jnp.arange(1, d_state + 1, dtype=param_dtype))
    self.A_log = nnx.Param(jnp.broadcast_to(log_a, (groups, channels, d_state)))
    self.D = nnx.Param(jnp.ones((groups, channels), param_dtype))

  def __call__(self, u, dt_low, B, C, mask=None):
    """u (batch, L, G, D), dt_low (batch, L, G, dt_rank), B, C (batch, L, G, N) -> y like u.

    ``mask``: None or (batch, L, G, 1) booleans, the steps to scan. Under ``nnx.capture``
    the step sizes Delta = dt_low dt_proj (before the bias and softplus), B and C are kept
    as the intermediates ``delta``, ``B`` and ``C``.
    """
    delta = jnp.einsum("blgr,grd->blgd", dt_low, self.dt_proj[...].astype(dt_low.dtype))
    for name, value in (("delta", delta), ("B", B), ("C", C)):
      layers.record(self, name, value)
    A = -jnp.exp(self.A_log[...])
    return scan.selective_scan(u, delta, A, B, C, self.D[...], self.dt_bias[...],
                               backend=self.backend, chunk=self.chunk, platform=self.platform,
                               mask=mask)


class GatedScanMixer(nnx.Module):
  """The frame SS2D and the CMSA block share: in_proj, depthwise conv, gate, out_proj."""

  def __init__(self, d_model, d_inner, *, rngs, dtype=None, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.d_inner = d_inner
    self.in_proj = layers.linear(d_model, 2 * d_inner, **kw)
    self.conv = layers.conv(d_inner, d_inner, 3, padding=((1, 1), (1, 1)), groups=d_inner, **kw)
    self.out_norm = layers.layer_norm(d_inner, **kw)
    self.out_proj = layers.linear(d_inner, d_model, **kw)

  def enter(self, x, mask=None):
    """(batch, H, W, C) -> the scan input u = SiLU(DWConv(x_in)) and the gate z, (batch, H, W, d_inner).

    With a ``mask`` (batch, H, W), x_in is zeroed outside it before the convolution.
    """
    u, z = jnp.split(self.in_proj(x), 2, axis=-1)
    if mask is not None:
      u = jnp.where(mask[..., None], u, 0)
    return jax.nn.silu(self.conv(u)), z

  def leave(self, y, z):
    """The merged scan output y and gate z (batch, H, W, d_inner) -> (batch, H, W, C)."""
    return self.out_proj(self.out_norm(y) * jax.nn.silu(z))


class SS2D(GatedScanMixer):
  """VMamba's SS2D: one selective scan along each of four directions, merged by summing."""

  def __init__(self, d_model, d_state, *, rngs, expand=1.5, backend="sequential", chunk=None,
               platform=None, dtype=None, param_dtype=jnp.float32):
    d_inner = inner_width(d_model, expand)
    super().__init__(d_model, d_inner, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.dt_rank, self.d_state = default_dt_rank(d_model), d_state
    self.x_proj = nnx.Param(layers.fan_in_uniform(d_inner)(
        rngs.params(), (directions.NUM_DIRECTIONS, d_inner, self.dt_rank + 2 * d_state),
        param_dtype))
    self.ssm = DirectionalSSM(d_inner, d_state, self.dt_rank, rngs=rngs, backend=backend,
                              chunk=chunk, platform=platform, param_dtype=param_dtype)

  def __call__(self, x, mask=None):
    """(batch, H, W, C) and an optional mask (batch, H, W) -> (batch, H, W, C)."""
    _, height, width, _ = x.shape
    u, z = self.enter(x, mask)
    y = self.ssm(directions.flatten_directions(u),
                 *project_dbc(u, self.x_proj[...], self.dt_rank, self.d_state),
                 mask=directions.sequence_mask(mask))
    return self.leave(directions.merge_directions(y, height, width), z)


class VSSBlock(nnx.Module):
  """x + SS2D(LN(x)) on (batch, H, W, C)."""

  def __init__(self, d_model, d_state, *, rngs, expand=1.5, backend="sequential", chunk=None,
               platform=None, dtype=None, param_dtype=jnp.float32):
    self.norm = layers.layer_norm(d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.mixer = SS2D(d_model, d_state, rngs=rngs, expand=expand, backend=backend, chunk=chunk,
                      platform=platform, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x, mask=None):
    """(batch, H, W, C) and an optional mask (batch, H, W) -> (batch, H, W, C)."""
    return x + self.mixer(self.norm(x), mask)
