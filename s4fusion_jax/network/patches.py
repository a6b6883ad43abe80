"""Patch embedding, merging, expanding and the fold head of the S4Fusion U-Net.

All maps are channels-last (batch, H, W, C).
"""

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from s4fusion_jax.network import layers


def fold_overlap_add(patches, kernel, stride, out_hw):
  """``torch.nn.functional.fold`` for channels-last patch grids: overlaps are summed.

  Args:
    patches: (batch, h, w, C, kernel, kernel); patch (i, j) covers output rows
      ``stride*i .. stride*i + kernel - 1`` and the same for columns.
    out_hw: (H, W) with ``(H - kernel) / stride + 1 == h`` (and the same for W).

  Returns:
    (batch, H, W, C).
  """
  batch, h, w, channels, _, _ = patches.shape
  height, width = out_hw
  if (height - kernel) // stride + 1 != h or (width - kernel) // stride + 1 != w:
    raise ValueError(f"a {h}x{w} grid of {kernel}x{kernel} patches at stride {stride} "
                     f"does not cover {height}x{width}")
  zero = jnp.zeros((), patches.dtype)
  out = jnp.zeros((batch, height, width, channels), patches.dtype)
  span_h, span_w = stride * (h - 1) + 1, stride * (w - 1) + 1
  for ki in range(kernel):
    for kj in range(kernel):
      out = out + jax.lax.pad(patches[..., ki, kj], zero, [
          (0, 0, 0),
          (ki, height - ki - span_h, stride - 1),
          (kj, width - kj - span_w, stride - 1),
          (0, 0, 0)])
  return out


class PatchEmbed(nnx.Module):
  """Overlapping patch embedding: Conv(k x k, stride s, bias) then LayerNorm.

  (batch, H, W, in_channels) -> (batch, (H - k) / s + 1, (W - k) / s + 1, dim).
  """

  def __init__(self, in_channels, dim, *, rngs, kernel=4, stride=3, dtype=None,
               param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.proj = layers.conv(in_channels, dim, kernel, stride=stride, **kw)
    self.norm = layers.layer_norm(dim, **kw)

  def __call__(self, x):
    return self.norm(self.proj(x))


class PatchMerge(nnx.Module):
  """2x downsampling: the 2x2 neighbours concatenated, LayerNorm(4C), Linear(4C -> 2C).

  Concatenation order is (0, 0), (1, 0), (0, 1), (1, 1) as (row, column) offsets.
  An odd trailing row or column is dropped, as in the reference.
  (batch, H, W, C) -> (batch, H // 2, W // 2, 2C).
  """

  def __init__(self, dim, *, rngs, dtype=None, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = layers.layer_norm(4 * dim, **kw)
    self.reduction = layers.linear(4 * dim, 2 * dim, **kw)

  def __call__(self, x):
    batch, height, width, channels = x.shape
    h, w = height // 2, width // 2
    x = x[:, :2 * h, :2 * w].reshape(batch, h, 2, w, 2, channels)
    x = x.transpose(0, 1, 3, 4, 2, 5).reshape(batch, h, w, 4 * channels)
    return self.reduction(self.norm(x))


class PatchExpand(nnx.Module):
  """2x upsampling: Linear(2d -> 4d), depth-to-space (p1 p2 c), LayerNorm(d).

  (batch, H, W, 2d) -> (batch, 2H, 2W, d).
  """

  def __init__(self, dim, *, rngs, dtype=None, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.proj = layers.linear(2 * dim, 4 * dim, **kw)
    self.norm = layers.layer_norm(dim, **kw)

  def __call__(self, x):
    x = einops.rearrange(self.proj(x), "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=2, p2=2)
    return self.norm(x)


class FoldHead(nnx.Module):
  """The output head: Linear(d -> C k^2), fold the k x k patches (summing overlaps), 1x1 conv.

  Channel ``c k^2 + ki k + kj`` of the expansion goes to channel c at offset (ki, kj);
  C = d / 4 for k = 4 as in the reference. No activation and no clamp.
  (batch, h, w, d) -> (batch, H, W, out_channels) with H = s (h - 1) + k.
  """

  def __init__(self, dim, out_channels, *, rngs, kernel=4, stride=3, dtype=None,
               param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.kernel, self.stride = kernel, stride
    self.fold_channels = dim // 4
    self.expand = layers.linear(dim, self.fold_channels * kernel * kernel, **kw)
    self.conv = layers.conv(self.fold_channels, out_channels, 1, **kw)

  def unpatch(self, expanded, mask=None):
    """The expansion (batch, h, w, C k^2) -> folded and projected (batch, H, W, out_channels).

    With a ``mask`` (batch, h, w), the patches outside it are zeroed before the overlap-add:
    at stride s < k the first patch past a valid rectangle overlaps its last k - s rows.
    """
    _, h, w, _ = expanded.shape
    k, s = self.kernel, self.stride
    if mask is not None:
      expanded = jnp.where(mask[..., None], expanded, 0)
    patches = einops.rearrange(expanded, "b h w (c ki kj) -> b h w c ki kj", ki=k, kj=k)
    return self.conv(fold_overlap_add(patches, k, s, (s * (h - 1) + k, s * (w - 1) + k)))

  def __call__(self, x, mask=None):
    return self.unpatch(self.expand(x), mask)
