"""The S4Fusion U-Net (the reference's ``MambaNet`` / ``VSSM``).

    I_0 = Embed_I(ir), V_0 = Embed_V(vi)                    (k x k patches, stride s)
    encoder stage s:  I_{s+1} = Merge(VSS^n(I_s)) (no merge at the last stage), same for V
    fusion:           R_s = FusionLayer_s(I_s, V_s)         (skips are stage inputs)
    decoder:          X_0 = VSS^n(I_S + V_S)
                      X_j = VSS^n(Expand(X_{j-1} + R_{S-j})),  j = 1 .. S-1
    output:           Conv1x1(Fold(Linear(X_{S-1})))

R_0 (the finest-scale fusion) is computed, as in the reference, but never used:
its parameters exist so checkpoints load, and jit removes the dead computation.
Images are channels-last (batch, H, W, 1) in [0, 1]; ``fuse`` takes any H x W.

Size buckets (``sizes``): given ``valid``, each image's valid rectangle at the top-left of a
larger input, every block masks the positions outside it (the depthwise convolutions' input,
the scans' steps, the fold head's patches), so the rectangle's output is the output at its
own size. The CMSA model and the ``fusion_variants.MASKED`` ablations take masks.
"""

import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from s4fusion_jax.network import cmsa
from s4fusion_jax.network import fusion_variants
from s4fusion_jax.network import layers
from s4fusion_jax.network import patches
from s4fusion_jax.network import ss2d
from s4fusion_jax.numerics import scan
from s4fusion_jax.numerics import sizes


FUSIONS = ("cmsa",) + fusion_variants.NAMES
MASKED_FUSIONS = ("cmsa",) + fusion_variants.MASKED


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every size of the network. Defaults are the released model (3,562,957 parameters)."""
  dims: Tuple[int, ...] = (48, 96, 192)
  depths: Tuple[int, ...] = (1, 2, 1)
  depths_decoder: Tuple[int, ...] = (1, 2, 1)
  d_state: int = 12
  fusion_d_state: int = 18
  fusion_blocks: int = 3
  # The fusion module: "cmsa" (S4Fusion) or one of the paper's ablations (fusion_variants).
  fusion: str = "cmsa"
  patch_mark: bool = True  # CMSA's Patch Mark; False is the paper's "w/o PM" ablation
  fusion_heads: int = 8  # heads of the "cross_attention" ablation
  expand: float = 1.5
  patch_kernel: int = 4
  patch_stride: int = 3
  scan_backend: str = "auto"
  scan_chunk: int = 128
  # The platform the scan is compiled for ("cpu", "cuda", ...; None: JAX's default backend).
  scan_platform: Optional[str] = None
  remat: bool = True  # recompute each VSS / CMSA block in the backward pass (less memory)
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "dims", tuple(self.dims))
    object.__setattr__(self, "depths", tuple(self.depths))
    object.__setattr__(self, "depths_decoder", tuple(self.depths_decoder))
    problems = []
    if any(b != 2 * a for a, b in zip(self.dims, self.dims[1:])):
      problems.append(f"dims {self.dims} must double at every stage (patch merging maps C to 2C)")
    if not len(self.dims) == len(self.depths) == len(self.depths_decoder):
      problems.append(f"dims {self.dims}, depths {self.depths} and depths_decoder "
                      f"{self.depths_decoder} must have one entry per stage")
    if self.dims and self.dims[0] % 4:
      problems.append(f"dims[0] = {self.dims[0]} must be a multiple of 4 (the fold head)")
    if self.scan_backend not in {b.value for b in scan.ScanBackend}:
      problems.append(f"scan_backend {self.scan_backend!r} is not one of "
                      f"{[b.value for b in scan.ScanBackend]}")
    if self.fusion_blocks < 1 or self.d_state < 1 or self.fusion_d_state < 1:
      problems.append("fusion_blocks, d_state and fusion_d_state must be positive")
    if self.fusion not in FUSIONS:
      problems.append(f"fusion {self.fusion!r} is not one of {list(FUSIONS)}")
    if not self.patch_mark and self.fusion != "cmsa":
      problems.append(f"patch_mark=False is a CMSA option; fusion {self.fusion!r} has no mark")
    if self.fusion == "cross_attention" and any(d % self.fusion_heads for d in self.dims):
      problems.append(f"dims {self.dims} must be multiples of fusion_heads {self.fusion_heads}")
    if problems:
      raise ValueError("invalid S4Fusion config: " + "; ".join(problems))

  @property
  def levels(self):
    return len(self.dims)

  def size_rule(self):
    """(kernel, stride, levels) for the functions of ``sizes``."""
    return self.patch_kernel, self.patch_stride, self.levels


def _fusion_layer(config, dim, *, rngs, **kw):
  """The fusion module of ``config.fusion`` for one scale (maps of width ``dim``)."""
  if config.fusion == "cmsa":
    return cmsa.FusionLayer(dim, config.fusion_d_state, config.fusion_blocks, rngs=rngs,
                            patch_mark=config.patch_mark, **kw)
  return fusion_variants.build(config.fusion, dim, d_state=config.fusion_d_state,
                               num_blocks=config.fusion_blocks, heads=config.fusion_heads,
                               rngs=rngs, **kw)


class EncoderStage(nnx.Module):
  """``depth`` VSS blocks, then (except at the last stage) a 2x patch merge."""

  def __init__(self, dim, depth, d_state, downsample, *, rngs, remat, dtype, param_dtype,
               **block_kw):
    self.remat = remat
    self.blocks = nnx.List([
        ss2d.VSSBlock(dim, d_state, rngs=rngs, dtype=dtype, param_dtype=param_dtype, **block_kw)
        for _ in range(depth)])
    self.merge = patches.PatchMerge(
        dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype) if downsample else None

  def __call__(self, x, mask=None):
    """(batch, H, W, C) and an optional mask (batch, H, W) of the valid positions."""
    for block in self.blocks:
      x = layers.call(block, x, mask, remat=self.remat)
    return x if self.merge is None else self.merge(x)


class DecoderStage(nnx.Module):
  """(Except at the first stage) a 2x patch expand, then ``depth`` VSS blocks."""

  def __init__(self, dim, depth, d_state, upsample, *, rngs, remat, dtype, param_dtype,
               **block_kw):
    self.remat = remat
    self.expand = patches.PatchExpand(
        dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype) if upsample else None
    self.blocks = nnx.List([
        ss2d.VSSBlock(dim, d_state, rngs=rngs, dtype=dtype, param_dtype=param_dtype, **block_kw)
        for _ in range(depth)])

  def __call__(self, x, mask=None):
    """(batch, H, W, C) -> expanded, then the blocks; ``mask`` is at the expanded size."""
    if self.expand is not None:
      x = self.expand(x)
    for block in self.blocks:
      x = layers.call(block, x, mask, remat=self.remat)
    return x


class S4Fusion(nnx.Module):
  """S4Fusion: two VMamba encoders, CMSA fusion of the skips, one VMamba decoder.

  ``rngs``: an ``nnx.Rngs``, or anything whose ``params()`` returns a new key
  (``layers.ParamKeys``: the same keys, cheaper under a trace).
  """

  def __init__(self, config: ModelConfig, *, rngs):
    self.config = config
    dtypes = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
    kw = dict(expand=config.expand, backend=config.scan_backend, chunk=config.scan_chunk,
              platform=config.scan_platform, remat=config.remat, **dtypes)
    k, s = config.patch_kernel, config.patch_stride
    dims, levels = config.dims, config.levels
    self.embed_ir = patches.PatchEmbed(1, dims[0], kernel=k, stride=s, rngs=rngs, **dtypes)
    self.embed_vi = patches.PatchEmbed(1, dims[0], kernel=k, stride=s, rngs=rngs, **dtypes)
    self.encoder_ir, self.encoder_vi = (nnx.List([
        EncoderStage(dims[i], config.depths[i], config.d_state, i < levels - 1, rngs=rngs, **kw)
        for i in range(levels)]) for _ in range(2))
    self.fusion = nnx.List([_fusion_layer(config, dims[i], rngs=rngs, **kw) for i in range(levels)])
    self.decoder = nnx.List([
        DecoderStage(dims[levels - 1 - j], config.depths_decoder[j], config.d_state, j > 0,
                     rngs=rngs, **kw) for j in range(levels)])
    self.head = patches.FoldHead(dims[0], 1, kernel=k, stride=s, rngs=rngs, **dtypes)

  @property
  def takes_buckets(self):
    """Whether ``valid`` (size buckets) is supported: the fusion masks its positions."""
    return self.config.fusion in MASKED_FUSIONS

  def _check_inputs(self, ir, vi, valid):
    problems = []
    if valid is not None:
      if not self.takes_buckets:
        problems.append(f"fusion {self.config.fusion!r} does not take size buckets (valid); "
                        f"fuse it at exact sizes (those that do: {list(MASKED_FUSIONS)})")
      if getattr(valid, "shape", None) != (ir.shape[0], 2):
        problems.append(f"valid has shape {getattr(valid, 'shape', None)}; "
                        f"expected (batch, 2) = ({ir.shape[0]}, 2)")
    for name, x in (("ir", ir), ("vi", vi)):
      if x.ndim != 4 or x.shape[-1] != 1:
        problems.append(f"{name} has shape {x.shape}; expected (batch, H, W, 1)")
    if ir.shape != vi.shape:
      problems.append(f"ir {ir.shape} and vi {vi.shape} differ in shape")
    if not problems:
      bad = [n for n in ir.shape[1:3] if not sizes.is_valid_length(n, *self.config.size_rule())]
      if bad:
        problems.append(
            f"H x W = {ir.shape[1]} x {ir.shape[2]} breaks the size rule (side lengths "
            f"{[sizes.valid_length(n, *self.config.size_rule()) for n in ir.shape[1:3]]} "
            "would pass); use s4fusion_jax.network.model.fuse, which pads and crops")
    if problems:
      raise ValueError("; ".join(problems))

  def _masks(self, valid, height, width):
    """Per level l, the (batch, h_l, w_l) mask of the patches inside ``valid`` (or Nones)."""
    levels = self.config.levels
    if valid is None:
      return [None] * levels
    k, s = self.config.patch_kernel, self.config.patch_stride
    h, w = (height - k) // s + 1, (width - k) // s + 1
    return [sizes.grid_mask(valid, h >> l, w >> l, k, s, l) for l in range(levels)]

  def stages(self, ir, vi, valid=None):
    """Every intermediate of the forward pass, named as the golden fixtures name them.

    Args:
      ir, vi: (batch, H, W, 1) in [0, 1], H and W satisfying the size rule.
      valid: None, or (batch, 2) integers: each image's valid rectangle (H_v, W_v) at the
        top-left of the input, sides satisfying the size rule (a size bucket, ``sizes``).
        Every output inside the rectangle is then the output at H_v x W_v; outside it they
        are meaningless.

    Returns:
      A dict of channels-last arrays: ``patch_embed_{ir,vi}``, ``encoder_{ir,vi}_s``
      (each stage's output, after its merge), ``fusion_s`` (R_s), ``decoder_j``,
      ``final_expand`` (before the fold) and ``output`` (batch, H, W, 1).
    """
    self._check_inputs(ir, vi, valid)
    out = {}
    masks = self._masks(valid, *ir.shape[1:3])
    x_ir, x_vi = self.embed_ir(ir), self.embed_vi(vi)
    out["patch_embed_ir"], out["patch_embed_vi"] = x_ir, x_vi
    skips = []
    for i, (stage_ir, stage_vi) in enumerate(zip(self.encoder_ir, self.encoder_vi)):
      skips.append((x_ir, x_vi))
      x_ir, x_vi = stage_ir(x_ir, masks[i]), stage_vi(x_vi, masks[i])
      out[f"encoder_ir_{i}"], out[f"encoder_vi_{i}"] = x_ir, x_vi
    fused = [layer(a, b, m) for layer, (a, b), m in zip(self.fusion, skips, masks)]
    out.update({f"fusion_{i}": r for i, r in enumerate(fused)})
    x = x_ir + x_vi
    for j, stage in enumerate(self.decoder):
      x = stage(x if j == 0 else x + fused[-j], masks[-1 - j])
      out[f"decoder_{j}"] = x
    out["final_expand"] = self.head.expand(x)
    out["output"] = self.head.unpatch(out["final_expand"], masks[0])
    return out

  def __call__(self, ir, vi, valid=None):
    """Fuses (batch, H, W, 1) images in [0, 1] satisfying the size rule -> (batch, H, W, 1).

    ``valid``: None, or (batch, 2) valid rectangles of a size bucket (see ``stages``).
    The output is not clamped (the reference clamps only when saving). Call it under
    ``nnx.jit`` so the unused finest-scale fusion is compiled away.
    """
    return self.stages(ir, vi, valid)["output"]


def run_placed(config: ModelConfig, apply, ir, vi, *, bucket=True):
  """(``apply(ir, vi, valid)``, box) for (batch, H, W, 1) images of any H x W, placed as the
  model takes them: zero-padded to the size rule as the reference pads them (numpy images on
  the host) and, with ``bucket``, at the top-left of their size bucket (``sizes.placement``),
  in ``config.dtype``; ``valid``: (batch, 2) int32 valid rectangles (H_v, W_v), or None
  without ``bucket``; ``box``: (top, left, H, W), the images in the output (``sizes.crop``)."""
  pads, valid, box = sizes.placement(*ir.shape[1:3], *config.size_rule(), bucket=bucket)
  pad = np.pad if isinstance(ir, np.ndarray) else jnp.pad
  ir, vi = (jnp.asarray(pad(x, ((0, 0), *pads, (0, 0))), config.dtype) for x in (ir, vi))
  valid = np.broadcast_to(np.array(valid, np.int32), (ir.shape[0], 2)) if bucket else None
  return apply(ir, vi, valid), box


def fuse(model: S4Fusion, ir, vi, *, exact_sizes=False):
  """Fuses (batch, H, W, 1) images in [0, 1] of any H x W -> (batch, H, W, 1), unclamped.

  ``run_placed`` places them in their size bucket (not with ``exact_sizes`` or a fusion that
  takes no buckets: the same numbers); under ``jit`` the bucket's rectangle is a constant.
  """
  fused, box = run_placed(model.config, model, ir, vi,
                          bucket=model.takes_buckets and not exact_sizes)
  return sizes.crop(fused, box)


def create(config: ModelConfig, seed=0) -> S4Fusion:
  """A fresh model, as ``S4Fusion(config, rngs=nnx.Rngs(seed))`` makes it, in one compiled
  program (``layers.compiled_constructor``; in one process, each config compiles once)."""
  return _constructor(config)(jax.random.key(seed))


@functools.lru_cache(maxsize=16)
def _constructor(config: ModelConfig):
  return layers.compiled_constructor(S4Fusion, config=config)


def count_params(model: S4Fusion) -> int:
  """The number of parameter scalars in ``model``."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
