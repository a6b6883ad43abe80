"""The PyTorch reference's weights (``MambaNet.state_dict()``) into ``S4Fusion`` and back.

    from s4fusion_jax.interop.reference import from_torch_state_dict, to_torch_state_dict
    model = from_torch_state_dict(state_dict, dtype=jnp.float32)
    state_dict = to_torch_state_dict(model)      # names -> numpy arrays, the reference's layouts

``state_dict`` maps the reference's names (``vmunet.`` prefix) to arrays, or is the
checkpoint dict the reference saves (``{'model': state_dict, ...}``); sizes are inferred
from the shapes. The unused ``final_up.norm`` is dropped, and exported at its initial values.

Layouts: Linear weights (out, in) become kernels (in, out); Conv2d (out, in, kh, kw)
becomes (kh, kw, in, out); SS2D's stacked per-direction tensors become
(direction, ...) arrays: ``x_proj_weight`` (4, R+2N, D) -> (4, D, R+2N),
``dt_projs_weight`` (4, D, R) -> (4, R, D), ``A_logs`` (4D, N) -> (4, D, N),
``Ds`` and ``dt_projs_bias`` -> (4, D).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from s4fusion_jax.interop import weights_io
from s4fusion_jax.network import layers
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import directions

PREFIX = "vmunet."
IGNORED = ("final_up.norm.weight", "final_up.norm.bias")


def _linear(w):
  return w.T


def _conv(w):
  return w.transpose(2, 3, 1, 0)


def _same(w):
  return w


def _per_direction_transposed(w):
  return w.transpose(0, 2, 1)


def _per_direction_rows(w):
  return w.reshape(directions.NUM_DIRECTIONS, w.shape[0] // directions.NUM_DIRECTIONS,
                   *w.shape[1:])


def _stacked_rows(w):
  return w.reshape(w.shape[0] * w.shape[1], *w.shape[2:])


# Each layout's inverse: our arrays -> the reference's layout.
_TO_REFERENCE = {
    _linear: _linear,
    _conv: lambda w: w.transpose(3, 2, 0, 1),
    _same: _same,
    _per_direction_transposed: _per_direction_transposed,
    _per_direction_rows: _stacked_rows,
}


def _layer_norm(ours, theirs):
  return [(ours + ("scale",), theirs + ".weight", _same),
          (ours + ("bias",), theirs + ".bias", _same)]


def _conv_entries(ours, theirs):
  return [(ours + ("kernel",), theirs + ".weight", _conv),
          (ours + ("bias",), theirs + ".bias", _same)]


def _mixer_entries(ours, theirs):
  """The frame and SSM parameters shared by SS2D and CMSA."""
  return [
      (ours + ("in_proj", "kernel"), theirs + ".in_proj.weight", _linear),
      *_conv_entries(ours + ("conv",), theirs + ".conv2d"),
      *_layer_norm(ours + ("out_norm",), theirs + ".out_norm"),
      (ours + ("out_proj", "kernel"), theirs + ".out_proj.weight", _linear),
      (ours + ("ssm", "dt_proj"), theirs + ".dt_projs_weight", _per_direction_transposed),
      (ours + ("ssm", "dt_bias"), theirs + ".dt_projs_bias", _same),
      (ours + ("ssm", "A_log"), theirs + ".A_logs", _per_direction_rows),
      (ours + ("ssm", "D"), theirs + ".Ds", _per_direction_rows),
  ]


def _vss_blocks(ours, theirs, depth):
  entries = []
  for j in range(depth):
    o, t = ours + ("blocks", j), f"{theirs}.blocks.{j}"
    entries += _layer_norm(o + ("norm",), t + ".ln_1")
    entries += _mixer_entries(o + ("mixer",), t + ".self_attention")
    entries.append((o + ("mixer", "x_proj"), t + ".self_attention.x_proj_weight",
                    _per_direction_transposed))
  return entries


def name_table(config: model_lib.ModelConfig):
  """(our parameter path, reference name, reference -> ours layout function) for every parameter."""
  entries = []
  for ours, theirs in (("embed_ir", "patch_embed_x"), ("embed_vi", "patch_embed_y")):
    entries += _conv_entries((ours, "proj"), theirs + ".proj")
    entries += _layer_norm((ours, "norm"), theirs + ".norm")
  levels = config.levels
  for i in range(levels):
    for ours, theirs in (("encoder_ir", "layers_x"), ("encoder_vi", "layers_y")):
      entries += _vss_blocks((ours, i), f"{theirs}.{i}", config.depths[i])
      if i < levels - 1:
        entries += _layer_norm((ours, i, "merge", "norm"), f"{theirs}.{i}.downsample.norm")
        entries.append(((ours, i, "merge", "reduction", "kernel"),
                        f"{theirs}.{i}.downsample.reduction.weight", _linear))
    for j in range(config.fusion_blocks):
      o, t = ("fusion", i, "blocks", j), f"fusion_layers.{i}.layers.{j}"
      entries += _mixer_entries(o, t)
      entries += [(o + ("x_proj_ir",), t + ".x_proj_weight", _per_direction_transposed),
                  (o + ("x_proj_vi",), t + ".y_proj_weight", _per_direction_transposed),
                  (o + ("mark_proj",), t + ".mark_proj", _linear)]
    entries += _vss_blocks(("decoder", i), f"layers_up.{i}", config.depths_decoder[i])
    if i > 0:
      entries.append((("decoder", i, "expand", "proj", "kernel"),
                      f"layers_up.{i}.upsample.expand.weight", _linear))
      entries += _layer_norm(("decoder", i, "expand", "norm"), f"layers_up.{i}.upsample.norm")
  entries.append((("head", "expand", "kernel"), "final_up.expand.weight", _linear))
  entries += _conv_entries(("head", "conv"), "final_conv")
  return [(ours, PREFIX + theirs, fn) for ours, theirs, fn in entries]


def _unwrap(state_dict):
  if "model" in state_dict and not isinstance(state_dict["model"], (np.ndarray, jax.Array)):
    state_dict = state_dict["model"]
  return {k: np.asarray(v) for k, v in state_dict.items()}


def _count(names, pattern):
  indices = {int(m.group(1)) for m in map(re.compile(pattern).fullmatch, names) if m}
  return max(indices) + 1 if indices else 0


def infer_config(state_dict, **overrides) -> model_lib.ModelConfig:
  """The ``ModelConfig`` whose parameters have the shapes in ``state_dict``."""
  sd = _unwrap(state_dict)
  names = [n[len(PREFIX):] for n in sd if n.startswith(PREFIX)]
  try:
    levels = _count(names, r"layers_x\.(\d+)\..*")
    d0 = sd[PREFIX + "patch_embed_x.proj.weight"].shape[0]
    first = sd[PREFIX + "layers_x.0.blocks.0.self_attention.A_logs"]
    fusion_a = sd[PREFIX + "fusion_layers.0.layers.0.A_logs"]
  except KeyError as e:
    raise ValueError(f"not an S4Fusion reference state dict: no parameter {e}") from None
  d_inner = first.shape[0] // directions.NUM_DIRECTIONS
  fields = dict(
      dims=tuple(d0 * 2**i for i in range(levels)),
      depths=tuple(_count(names, rf"layers_x\.{i}\.blocks\.(\d+)\..*") for i in range(levels)),
      depths_decoder=tuple(
          _count(names, rf"layers_up\.{i}\.blocks\.(\d+)\..*") for i in range(levels)),
      d_state=first.shape[1],
      fusion_d_state=fusion_a.shape[1],
      fusion_blocks=_count(names, r"fusion_layers\.0\.layers\.(\d+)\..*"),
      expand=d_inner / d0,
  )
  fields.update(overrides)
  return model_lib.ModelConfig(**fields)


def from_torch_state_dict(state_dict, dtype=jnp.float32, **config_overrides) -> model_lib.S4Fusion:
  """Builds an ``S4Fusion`` holding the reference weights in ``state_dict``.

  Args:
    state_dict: reference names -> arrays (numpy, or anything ``np.asarray`` reads,
      such as CPU torch tensors), or ``{'model': state_dict}``.
    dtype: the parameter and computation dtype (float64 needs ``jax_enable_x64``).
    **config_overrides: non-size ``ModelConfig`` fields, e.g. ``scan_backend``.

  Raises:
    ValueError: listing every unknown, missing and mis-shaped parameter.
  """
  dtype = jnp.dtype(dtype)
  weights_io.check_x64(dtype)
  sd = _unwrap(state_dict)
  config = infer_config(sd, dtype=dtype.name, param_dtype=dtype.name, **config_overrides)
  model = layers.abstract(model_lib.S4Fusion, config=config)
  return weights_io.load_into(model, name_table(config), sd, dtype, what="S4Fusion",
                              ignored=[PREFIX + n for n in IGNORED])


def to_torch_state_dict(model: model_lib.S4Fusion, dtype=np.float32) -> dict:
  """The reference's ``MambaNet.state_dict()`` holding ``model``'s weights.

  Args:
    model: an ``S4Fusion`` of any sizes (the names and shapes carry them).
    dtype: the arrays' dtype (the reference's parameters are float32).

  Returns:
    reference names -> numpy arrays in the reference's layouts, with ``final_up.norm`` (unused
    by the reference's forward pass) at its initial values.

  Raises:
    ValueError: ``model`` is an ablation variant, or has parameters the reference's
      ``MambaNet`` has no place for.
  """
  if model.config.fusion != "cmsa" or not model.config.patch_mark:
    raise ValueError(f"only S4Fusion itself exports to the reference's MambaNet; this model is "
                     f"the ablation fusion={model.config.fusion!r}, patch_mark="
                     f"{model.config.patch_mark}, which the reference keeps in other classes")
  flat = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model))}
  table = name_table(model.config)
  unplaced = sorted(set(flat) - {ours for ours, _, _ in table})
  if unplaced:
    raise ValueError(f"the reference's MambaNet has no parameter for {len(unplaced)} of this "
                     f"model's: {['.'.join(map(str, p)) for p in unplaced[:5]]}; it is not an "
                     f"S4Fusion the reference can run")
  state_dict = {theirs: np.asarray(_TO_REFERENCE[to_ours](np.asarray(flat[ours])), dtype)
                for ours, theirs, to_ours in table}
  channels = model.head.fold_channels
  weight, bias = (PREFIX + name for name in IGNORED)
  state_dict[weight], state_dict[bias] = np.ones(channels, dtype), np.zeros(channels, dtype)
  return state_dict
