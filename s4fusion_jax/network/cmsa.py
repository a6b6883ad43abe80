"""The Cross-Modal Spatial Awareness block (CMSA) and the fusion layer.

CMSA(I, V), with in_proj, the depthwise conv, out_norm and out_proj shared by the
two modalities (the reference applies one set of weights to each; there is no
LayerNorm at the block input, whatever the paper's figure shows):

    u_I, z_I = enter(I);  u_V, z_V = enter(V)
    x_I = flatten_4(u_I), x_V = flatten_4(u_V)                   (four directions)
    (dt, B, C)_I = x_proj_ir(x_I);  (dt, B, C)_V = x_proj_vi(x_V)  (unmarked inputs)
    M = mark_proj [x_I; x_V]                                     (Patch Mark)
    y = S6(interleave(x_I + M, x_V + M), interleave(dt), interleave(B), interleave(C))

    y_I, y_V = deinterleave(y);  out_X = leave(merge_4(y_X), z_X)

With ``patch_mark=False`` (the paper's "w/o PM") there is no ``mark_proj`` and M = 0.

The fusion layer runs ``num_blocks`` CMSA blocks with residuals,
``I, V = I + I', V + V'``, and returns R = I + V. Maps are (batch, H, W, C); an optional
``mask`` (batch, H, W) marks a size bucket's valid positions, as in ``ss2d``.
"""

import jax.numpy as jnp
from flax import nnx

from s4fusion_jax.network import layers
from s4fusion_jax.network import ss2d
from s4fusion_jax.numerics import directions


class PairedScanMixer(ss2d.GatedScanMixer):
  """The frame of a two-modality block (CMSA, and the FSSM ablation).

  One ``GatedScanMixer`` (in_proj, depthwise conv, gate, out_norm, out_proj) serves both
  modalities; each modality has its own per-direction projection x -> (dt, B, C).
  """

  def __init__(self, d_model, d_state, *, rngs, expand=1.5, dtype=None, param_dtype=jnp.float32):
    d_inner = ss2d.inner_width(d_model, expand)
    super().__init__(d_model, d_inner, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.dt_rank, self.d_state = ss2d.default_dt_rank(d_model), d_state
    proj_shape = (directions.NUM_DIRECTIONS, d_inner, self.dt_rank + 2 * d_state)
    init = layers.fan_in_uniform(d_inner)
    self.x_proj_ir = nnx.Param(init(rngs.params(), proj_shape, param_dtype))
    self.x_proj_vi = nnx.Param(init(rngs.params(), proj_shape, param_dtype))

  def enter_pair(self, ir, vi, mask=None):
    """Two (batch, H, W, C) maps -> per modality (u map, sequences xs, (dt, B, C), gate z).

    u and z are (batch, H, W, d_inner); xs is (batch, L, 4, d_inner), its four directions.
    ``mask``: None or (batch, H, W), zeroing the convolutions' input outside it.
    """
    out = []
    for x, x_proj in ((ir, self.x_proj_ir), (vi, self.x_proj_vi)):
      u, z = self.enter(x, mask)
      out.append((u, directions.flatten_directions(u),
                  ss2d.project_dbc(u, x_proj[...], self.dt_rank, self.d_state), z))
    return out

  def leave_pair(self, ys, zs, height, width):
    """Each modality's scan output (batch, L, 4, d_inner) and gate -> (batch, H, W, C) maps."""
    return tuple(self.leave(directions.merge_directions(y, height, width), z)
                 for y, z in zip(ys, zs))


class CMSABlock(PairedScanMixer):
  """One Cross SS2D block: both modalities in one scan of length 2L per direction."""

  def __init__(self, d_model, d_state, *, rngs, expand=1.5, backend="sequential", chunk=None,
               platform=None, patch_mark=True, dtype=None, param_dtype=jnp.float32):
    super().__init__(d_model, d_state, rngs=rngs, expand=expand, dtype=dtype,
                     param_dtype=param_dtype)
    d_inner = self.d_inner
    self.mark_proj = nnx.Param(layers.fan_in_uniform(2 * d_inner)(
        rngs.params(), (2 * d_inner, d_inner), param_dtype)) if patch_mark else None
    self.ssm = ss2d.DirectionalSSM(d_inner, d_state, self.dt_rank, rngs=rngs, backend=backend,
                                   chunk=chunk, platform=platform, param_dtype=param_dtype)

  def __call__(self, ir, vi, mask=None):
    """Two (batch, H, W, C) maps and an optional mask (batch, H, W) -> two (batch, H, W, C)."""
    _, height, width, _ = ir.shape
    (u_ir, xs_ir, dbc_ir, z_ir), (u_vi, xs_vi, dbc_vi, z_vi) = self.enter_pair(ir, vi, mask)
    if self.mark_proj is not None:
      # The mark is pointwise, so it is computed once on the map, then flattened.
      mark = directions.flatten_directions(
          jnp.concatenate([u_ir, u_vi], axis=-1) @ self.mark_proj[...].astype(u_ir.dtype))
      xs_ir, xs_vi = xs_ir + mark, xs_vi + mark
    u = directions.interleave(xs_ir, xs_vi)
    steps = directions.sequence_mask(mask)
    y = self.ssm(u, *(directions.interleave(a, b) for a, b in zip(dbc_ir, dbc_vi)),
                 mask=None if steps is None else directions.interleave(steps, steps))
    return self.leave_pair(directions.deinterleave(y), (z_ir, z_vi), height, width)


class FusionLayer(nnx.Module):
  """``num_blocks`` CMSA blocks with residuals (``remat``: recomputed in the backward pass);
  returns R = I + V (batch, H, W, C)."""

  def __init__(self, d_model, d_state, num_blocks, *, rngs, expand=1.5, backend="sequential",
               chunk=None, platform=None, remat=False, patch_mark=True, dtype=None,
               param_dtype=jnp.float32):
    self.remat = remat
    self.blocks = nnx.List([
        CMSABlock(d_model, d_state, rngs=rngs, expand=expand, backend=backend, chunk=chunk,
                  platform=platform, patch_mark=patch_mark, dtype=dtype, param_dtype=param_dtype)
        for _ in range(num_blocks)])

  def __call__(self, ir, vi, mask=None):
    """I, V (batch, H, W, C) and an optional mask (batch, H, W) -> R (batch, H, W, C)."""
    for block in self.blocks:
      d_ir, d_vi = layers.call(block, ir, vi, mask, remat=self.remat)
      ir, vi = ir + d_ir, vi + d_vi
    return ir + vi
