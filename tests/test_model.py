"""The S4Fusion module: gradients, jit, batching, any-size fusion, conversion errors, checkpoints."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import reference_state_dict
from s4fusion_jax import __main__ as cli
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.interop import reference
from s4fusion_jax.network import layers
from s4fusion_jax.network import model as model_lib

TINY = model_lib.ModelConfig(dims=(8, 16, 32), depths=(1, 1, 1), depths_decoder=(1, 1, 1),
                             d_state=4, fusion_d_state=6)


apply = nnx.jit(lambda m, a, b: m(a, b))


@pytest.fixture(scope="module")
def tiny(tiny_golden):
  return reference.from_torch_state_dict(reference_state_dict(tiny_golden))


def golden_inputs(golden):
  return [jnp.asarray(golden[f"input/{m}"].transpose(0, 2, 3, 1)) for m in ("ir", "vi")]


def test_default_config_builds_the_released_sizes():
  import configs.default  # pylint: disable=import-outside-toplevel
  config = model_lib.ModelConfig(**configs.default.get_config().model)
  assert config == model_lib.ModelConfig()
  model = layers.abstract(model_lib.S4Fusion, config=config)  # load_model's abstract model
  assert model_lib.count_params(model) == 3_562_957
  assert nnx.graphdef(model) == nnx.graphdef(nnx.eval_shape(
      lambda: model_lib.S4Fusion(config, rngs=nnx.Rngs(0))))


def test_create_initialises_as_the_constructor_does():
  # Two scales and one CMSA block: every kind of parameter, half of TINY's eager compiles.
  config = dataclasses.replace(TINY, dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1),
                               fusion_blocks=1)
  eager = nnx.state(model_lib.S4Fusion(config, rngs=nnx.Rngs(7)))
  compiled = nnx.state(model_lib.create(config, 7))
  flat_eager, flat_compiled = (dict(nnx.to_flat_state(x)) for x in (eager, compiled))
  assert flat_eager.keys() == flat_compiled.keys()
  for path, value in flat_eager.items():
    ours, ref = np.asarray(flat_compiled[path].get_value()), np.asarray(value.get_value())
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, path
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7, err_msg=str(path))
  other = nnx.state(model_lib.create(config, 8), nnx.Param)
  assert not np.allclose(other["embed_ir"]["proj"]["kernel"][...],
                         compiled["embed_ir"]["proj"]["kernel"][...])


class _ConvNormHead(nnx.Module):
  def __init__(self, width, *, rngs):
    self.conv = nnx.Conv(3, width, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, 2, rngs=rngs)


def test_compiled_constructor_builds_what_eager_construction_builds():
  eager = _ConvNormHead(4, rngs=nnx.Rngs(5))
  build = layers.compiled_constructor(_ConvNormHead, width=4)
  compiled = build(jax.random.key(5))
  assert nnx.graphdef(compiled) == nnx.graphdef(eager)
  flat_eager, flat_compiled = (dict(nnx.to_flat_state(nnx.state(m))) for m in (eager, compiled))
  assert flat_eager.keys() == flat_compiled.keys()
  for path, value in flat_eager.items():
    ours, ref = np.asarray(flat_compiled[path].get_value()), np.asarray(value.get_value())
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, path
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7, err_msg=str(path))
  assert not np.allclose(build(jax.random.key(6)).head.kernel[...], compiled.head.kernel[...])
  traced = jax.eval_shape(lambda: nnx.state(build(jax.random.key(5))))  # a traced key
  assert jax.tree.map(lambda x: (x.shape, x.dtype), traced) == jax.tree.map(
      lambda x: (x.shape, x.dtype), nnx.state(eager))


def test_gradients_reach_every_parameter_but_the_unused_fusion_scale(tiny_golden):
  model = model_lib.create(TINY)
  ir, vi = golden_inputs(tiny_golden)
  grads = nnx.jit(nnx.grad(lambda m: jnp.mean((m(ir, vi) - ir) ** 2)))(model)
  for path, g in nnx.to_flat_state(grads):
    g = np.asarray(g.get_value())
    assert np.all(np.isfinite(g)), path
    if path[:2] == ("fusion", 0):
      assert not np.any(g), path
    else:
      assert np.any(g), f"zero gradient for {path}"


def count_whiles(model, key, ir, vi):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, a, b: nnx.merge(graphdef, s).stages(a, b)[key])
  return len(re.findall(r"\bwhile\(", fn.lower(state, ir, vi).compile().as_text()))


def test_jit_drops_the_unused_finest_fusion(tiny_golden):
  model = model_lib.create(dataclasses.replace(TINY, scan_backend="sequential"))
  ir, vi = golden_inputs(tiny_golden)
  scans = {
      "encoders": 2 * sum(TINY.depths),
      "fusion": TINY.levels * TINY.fusion_blocks,
      "decoder": sum(TINY.depths_decoder),
  }
  # One while loop per sequential scan; the output needs all but R_0's blocks.
  assert count_whiles(model, "output", ir, vi) == sum(scans.values()) - TINY.fusion_blocks
  assert count_whiles(model, "fusion_0", ir, vi) == TINY.fusion_blocks


def test_batch_equals_one_at_a_time(tiny, tiny_golden):
  ir, vi = golden_inputs(tiny_golden)
  batch_ir, batch_vi = jnp.concatenate([ir, vi[:, ::-1]]), jnp.concatenate([vi, ir[:, ::-1]])
  fused = apply(tiny, batch_ir, batch_vi)
  np.testing.assert_allclose(fused[:1], apply(tiny, ir, vi), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fused[1:], apply(tiny, vi[:, ::-1], ir[:, ::-1]), rtol=1e-5,
                             atol=1e-6)


def test_fuse_pads_and_crops_any_size(tiny):
  rng = np.random.default_rng(0)
  ir, vi = (jnp.asarray(rng.random((1, 30, 44, 1), np.float32)) for _ in range(2))
  fused = nnx.jit(model_lib.fuse)(tiny, ir, vi)
  assert fused.shape == (1, 30, 44, 1)
  # 30 -> 37 (3 before, 4 after); 44 -> 49 (2 before, 3 after), as the reference pads.
  pad = ((0, 0), (3, 4), (2, 3), (0, 0))
  direct = apply(tiny, jnp.pad(ir, pad), jnp.pad(vi, pad))[:, 3:33, 2:46]
  np.testing.assert_allclose(fused, direct, rtol=1e-6, atol=1e-6)


def test_call_rejects_bad_shapes(tiny):
  ok = jnp.zeros((1, 37, 49, 1))
  with pytest.raises(ValueError, match="size rule"):
    tiny(jnp.zeros((1, 36, 49, 1)), jnp.zeros((1, 36, 49, 1)))
  with pytest.raises(ValueError, match="differ in shape"):
    tiny(ok, jnp.zeros((1, 49, 49, 1)))
  with pytest.raises(ValueError, match=r"expected \(batch, H, W, 1\)"):
    tiny(jnp.zeros((1, 37, 49, 3)), jnp.zeros((1, 37, 49, 3)))


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="must double"):
    model_lib.ModelConfig(dims=(48, 90, 192))
  with pytest.raises(ValueError, match="scan_backend 'fast' is not one of"):
    model_lib.ModelConfig(scan_backend="fast")


def test_converter_lists_every_problem(tiny_golden):
  sd = reference_state_dict(tiny_golden)
  sd["vmunet.layers_x.0.blocks.0.self_attention.typo_weight"] = np.zeros(3, np.float32)
  sd["vmunet.fusion_layers.1.layers.2.mark_proj"] = np.zeros((5, 5), np.float32)
  del sd["vmunet.final_conv.bias"]
  with pytest.raises(ValueError) as info:
    reference.from_torch_state_dict({"model": sd})
  message = str(info.value)
  assert "3 problem(s)" in message
  assert "unknown parameter 'vmunet.layers_x.0.blocks.0.self_attention.typo_weight'" in message
  assert "missing parameter 'vmunet.final_conv.bias'" in message
  assert "'vmunet.fusion_layers.1.layers.2.mark_proj' has shape (5, 5)" in message


def test_converter_rejects_float64_without_x64(tiny_golden):
  with pytest.raises(ValueError, match="jax_enable_x64"):
    reference.from_torch_state_dict(reference_state_dict(tiny_golden), dtype=jnp.float64)


def test_convert_command_writes_a_loadable_checkpoint(tmp_path, tiny, tiny_golden):
  weights = tmp_path / "model.npz"
  np.savez(weights, **reference_state_dict(tiny_golden))
  out = tmp_path / "ckpt"
  assert cli.main(["convert-reference", str(weights), str(out)]) == 0
  loaded = checkpoint.load_model(out, scan_backend="associative")
  assert loaded.config.scan_backend == "associative" and loaded.config.dims == (8, 16, 32)
  ir, vi = golden_inputs(tiny_golden)
  expected = apply(tiny, ir, vi)
  np.testing.assert_allclose(apply(loaded, ir, vi), expected, rtol=1e-5, atol=1e-6)
  # A second conversion to the same place refuses and leaves the checkpoint intact.
  assert cli.main(["convert-reference", str(weights), str(out)]) == 2
  np.testing.assert_allclose(apply(checkpoint.load_model(out), ir, vi), expected, rtol=1e-6)


def test_convert_command_reports_bad_files(tmp_path, capsys):
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"not a zip archive")
  assert cli.main(["convert-reference", str(corrupt), str(tmp_path / "a")]) == 2
  assert "cannot read weights" in capsys.readouterr().err
  assert cli.main(["convert-reference", str(tmp_path / "missing.pkl"), str(tmp_path / "b")]) == 2
  assert "not found" in capsys.readouterr().err
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
  with pytest.raises(FileNotFoundError, match="not an s4fusion_jax checkpoint"):
    checkpoint.load_model(tmp_path)
