"""The fusion modules the paper's ablations put in place of CMSA (Table 3).

Each has the fusion layer's call signature: two (batch, H, W, C) maps I, V and an optional
size-bucket mask (batch, H, W) in, one (batch, H, W, C) map R out (only ``MASKED`` take a
mask), as the reference's compiled ``modules/ablation.py`` defines them:

``add``              R = I + V, no parameters.
``cnn``              R = Conv1x1(Block^n(Conv1x1([I; V]))), c = int(2C // 1.4) channels
                     inside, Block a ResNet basic block (conv, BN, ReLU, conv, BN, + x, ReLU).
``cross_attention``  n layers of linear cross-attention, not residual:
                     (K_X, V_X) = X W_X per modality, head h of X' is
                     X_h softmax_rows(K_Y,h^T V_Y,h / sqrt(d_h)) (the other modality's
                     context); R = I_n + V_n.
``fssm``             FusionMamba's FSSM: n blocks with residuals, R = I_n + V_n; a block is
                     the CMSA block's frame around two scans: I's sequence driven by V's
                     (dt, B, C) and SSM parameters, and the reverse.

The reference's FSSM block also allocates a ``mark_proj`` it never uses; it is left out.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from s4fusion_jax.network import cmsa
from s4fusion_jax.network import layers
from s4fusion_jax.network import ss2d
from s4fusion_jax.numerics import directions

NAMES = ("add", "cnn", "cross_attention", "fssm")
# The variants that take a size bucket's ``mask``; the others fuse at exact sizes.
MASKED = ("add", "fssm")


def _exact_sizes_only(name, mask):
  if mask is not None:
    raise ValueError(f"the {name!r} fusion mixes all positions and takes no size-bucket mask; "
                     "fuse it at exact sizes")


class AddFusion(nnx.Module):
  """R = I + V (the "ADD" ablation)."""

  def __call__(self, ir, vi, mask=None):
    del mask  # pointwise: positions outside a mask cannot reach the valid ones
    return ir + vi


class BasicBlock(nnx.Module):
  """ResNet-18's basic block at stride 1 on (batch, H, W, C).

  relu(x + BN(conv(relu(BN(conv(x)))))), 3x3 convolutions without bias.
  """

  def __init__(self, channels, *, rngs, dtype=None, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    conv = lambda: layers.conv(channels, channels, 3, padding=((1, 1), (1, 1)), use_bias=False,
                               **kw)
    self.conv1, self.bn1 = conv(), layers.batch_norm(channels, **kw)
    self.conv2, self.bn2 = conv(), layers.batch_norm(channels, **kw)

  def __call__(self, x):
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    return jax.nn.relu(x + self.bn2(self.conv2(out)))


class CNNFusion(nnx.Module):
  """The "CNN" ablation: [I; V] -> 1x1 conv -> ``num_blocks`` basic blocks -> 1x1 conv."""

  def __init__(self, d_model, num_blocks, *, rngs, dtype=None, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    width = int(2 * d_model // 1.4)
    self.in_proj = layers.conv(2 * d_model, width, 1, **kw)
    self.blocks = nnx.List([BasicBlock(width, **kw) for _ in range(num_blocks)])
    self.out_proj = layers.conv(width, d_model, 1, **kw)

  def __call__(self, ir, vi, mask=None):
    _exact_sizes_only("cnn", mask)
    x = self.in_proj(jnp.concatenate([ir, vi], axis=-1))
    for block in self.blocks:
      x = block(x)
    return self.out_proj(x)


def _linear_context(x, kv_weight, heads):
  """The per-head context softmax_rows(K^T V / sqrt(d_h)) of (batch, N, C) tokens.

  Returns:
    (batch, heads, d_h, d_h); row i holds key channel i, softmax runs over i.
  """
  batch, n, channels = x.shape
  kv = (x @ kv_weight.astype(x.dtype)).reshape(batch, n, 2, heads, channels // heads)
  context = jnp.einsum("bnhi,bnhj->bhij", kv[:, :, 0], kv[:, :, 1])
  return jax.nn.softmax(context * (channels // heads)**-0.5, axis=-2)


class CrossAttentionLayer(nnx.Module):
  """One linear cross-attention layer: each modality's tokens read the other's context."""

  def __init__(self, d_model, heads, *, rngs, param_dtype=jnp.float32):
    if d_model % heads:
      raise ValueError(f"cross-attention width {d_model} is not divisible by {heads} heads")
    self.heads = heads
    init = layers.fan_in_uniform(d_model)
    self.kv_ir = nnx.Param(init(rngs.params(), (d_model, 2 * d_model), param_dtype))
    self.kv_vi = nnx.Param(init(rngs.params(), (d_model, 2 * d_model), param_dtype))

  def __call__(self, ir, vi):
    """Two (batch, N, C) token sets -> the two updated sets."""
    batch, n, channels = ir.shape
    heads = lambda x: x.reshape(batch, n, self.heads, channels // self.heads)
    read = lambda q, context: jnp.einsum("bnhi,bhij->bnhj", heads(q), context).reshape(ir.shape)
    context_ir = _linear_context(ir, self.kv_ir[...], self.heads)
    context_vi = _linear_context(vi, self.kv_vi[...], self.heads)
    return read(ir, context_vi), read(vi, context_ir)


class CrossAttentionFusion(nnx.Module):
  """The "CA" ablation: ``num_blocks`` cross-attention layers, then R = I + V."""

  def __init__(self, d_model, num_blocks, heads, *, rngs, remat=False, param_dtype=jnp.float32):
    self.remat = remat
    self.layers = nnx.List([CrossAttentionLayer(d_model, heads, rngs=rngs, param_dtype=param_dtype)
                            for _ in range(num_blocks)])

  def __call__(self, ir, vi, mask=None):
    _exact_sizes_only("cross_attention", mask)
    shape = ir.shape
    ir, vi = (x.reshape(shape[0], -1, shape[-1]) for x in (ir, vi))
    for layer in self.layers:
      ir, vi = layers.call(layer, ir, vi, remat=self.remat)
    return (ir + vi).reshape(shape)


class FSSMBlock(cmsa.PairedScanMixer):
  """FusionMamba's FSSM block: each modality scanned with the other's (dt, B, C) and SSM."""

  def __init__(self, d_model, d_state, *, rngs, expand=1.5, backend="sequential", chunk=None,
               platform=None, dtype=None, param_dtype=jnp.float32):
    super().__init__(d_model, d_state, rngs=rngs, expand=expand, dtype=dtype,
                     param_dtype=param_dtype)
    ssm = lambda: ss2d.DirectionalSSM(self.d_inner, d_state, self.dt_rank, rngs=rngs,
                                      backend=backend, chunk=chunk, platform=platform,
                                      param_dtype=param_dtype)
    self.ssm_ir, self.ssm_vi = ssm(), ssm()

  def __call__(self, ir, vi, mask=None):
    """Two (batch, H, W, C) maps and an optional mask (batch, H, W) -> two (batch, H, W, C)."""
    _, height, width, _ = ir.shape
    (_, xs_ir, dbc_ir, z_ir), (_, xs_vi, dbc_vi, z_vi) = self.enter_pair(ir, vi, mask)
    steps = directions.sequence_mask(mask)
    ys = self.ssm_vi(xs_ir, *dbc_vi, mask=steps), self.ssm_ir(xs_vi, *dbc_ir, mask=steps)
    return self.leave_pair(ys, (z_ir, z_vi), height, width)


class FSSMFusion(cmsa.FusionLayer):
  """The "FSSM" ablation: ``num_blocks`` FSSM blocks with residuals; R = I + V."""

  def __init__(self, d_model, d_state, num_blocks, *, rngs, expand=1.5, backend="sequential",
               chunk=None, platform=None, remat=False, dtype=None, param_dtype=jnp.float32):
    self.remat = remat
    self.blocks = nnx.List([
        FSSMBlock(d_model, d_state, rngs=rngs, expand=expand, backend=backend, chunk=chunk,
                  platform=platform, dtype=dtype, param_dtype=param_dtype)
        for _ in range(num_blocks)])


def build(name, d_model, *, d_state, num_blocks, heads, rngs, expand, backend, chunk, platform,
          remat, dtype, param_dtype):
  """The fusion module ``name`` (one of ``NAMES``) for maps of width ``d_model``."""
  dtypes = dict(dtype=dtype, param_dtype=param_dtype)
  if name == "add":
    return AddFusion()
  if name == "cnn":
    return CNNFusion(d_model, num_blocks, rngs=rngs, **dtypes)
  if name == "cross_attention":
    return CrossAttentionFusion(d_model, num_blocks, heads, rngs=rngs, remat=remat,
                                param_dtype=param_dtype)
  if name == "fssm":
    return FSSMFusion(d_model, d_state, num_blocks, rngs=rngs, expand=expand, backend=backend,
                      chunk=chunk, platform=platform, remat=remat, **dtypes)
  raise ValueError(f"unknown fusion {name!r}; expected one of {NAMES}")
