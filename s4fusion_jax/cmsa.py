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

The fusion layer runs ``num_blocks`` CMSA blocks with residuals,
``I, V = I + I', V + V'``, and returns R = I + V. Maps are (batch, H, W, C).
"""

import jax.numpy as jnp
from flax import nnx

from s4fusion_jax import directions
from s4fusion_jax import layers
from s4fusion_jax import ss2d


class CMSABlock(ss2d.GatedScanMixer):
  """One Cross SS2D block: both modalities in one scan of length 2L per direction."""

  def __init__(self, d_model, d_state, *, rngs, expand=1.5, backend="sequential", chunk=None,
               dtype=None, param_dtype=jnp.float32):
    d_inner = ss2d.inner_width(d_model, expand)
    super().__init__(d_model, d_inner, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.dt_rank, self.d_state = ss2d.default_dt_rank(d_model), d_state
    proj_shape = (directions.NUM_DIRECTIONS, d_inner, self.dt_rank + 2 * d_state)
    init = layers.fan_in_uniform(d_inner)
    self.x_proj_ir = nnx.Param(init(rngs.params(), proj_shape, param_dtype))
    self.x_proj_vi = nnx.Param(init(rngs.params(), proj_shape, param_dtype))
    self.mark_proj = nnx.Param(
        layers.fan_in_uniform(2 * d_inner)(rngs.params(), (2 * d_inner, d_inner), param_dtype))
    self.ssm = ss2d.DirectionalSSM(d_inner, d_state, self.dt_rank, rngs=rngs, backend=backend,
                                   chunk=chunk, param_dtype=param_dtype)

  def __call__(self, ir, vi):
    """Two (batch, H, W, C) maps -> their two CMSA outputs, each (batch, H, W, C)."""
    _, height, width, _ = ir.shape
    u_ir, z_ir = self.enter(ir)
    u_vi, z_vi = self.enter(vi)
    # The mark is pointwise, so it is computed once on the map, then flattened.
    mark = jnp.concatenate([u_ir, u_vi], axis=-1) @ self.mark_proj[...].astype(u_ir.dtype)
    xs_ir, xs_vi, mark = (directions.flatten_directions(m) for m in (u_ir, u_vi, mark))
    dbc_ir = ss2d.project_dbc(xs_ir, self.x_proj_ir[...], self.dt_rank, self.d_state)
    dbc_vi = ss2d.project_dbc(xs_vi, self.x_proj_vi[...], self.dt_rank, self.d_state)
    u = directions.interleave(xs_ir + mark, xs_vi + mark)
    y = self.ssm(u, *(directions.interleave(a, b) for a, b in zip(dbc_ir, dbc_vi)))
    y_ir, y_vi = directions.deinterleave(y)
    return (self.leave(directions.merge_directions(y_ir, height, width), z_ir),
            self.leave(directions.merge_directions(y_vi, height, width), z_vi))


class FusionLayer(nnx.Module):
  """``num_blocks`` CMSA blocks with residuals; returns R = I + V (batch, H, W, C).

  With ``remat`` each block is recomputed in the backward pass.
  """

  def __init__(self, d_model, d_state, num_blocks, *, rngs, expand=1.5, backend="sequential",
               chunk=None, remat=False, dtype=None, param_dtype=jnp.float32):
    self.remat = remat
    self.blocks = nnx.List([
        CMSABlock(d_model, d_state, rngs=rngs, expand=expand, backend=backend, chunk=chunk,
                  dtype=dtype, param_dtype=param_dtype) for _ in range(num_blocks)])

  def __call__(self, ir, vi):
    for block in self.blocks:
      d_ir, d_vi = layers.call(block, ir, vi, remat=self.remat)
      ir, vi = ir + d_ir, vi + d_vi
    return ir + vi
