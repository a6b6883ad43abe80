"""The functional interface: pure apply / loss over pytrees, against the NNX model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import reference_state_dict, rel_err
from configs import smoke
from s4fusion_jax.interop import functional
from s4fusion_jax.interop import reference
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.objectives import losses

# Two scales, one CMSA block per scale: every kind of block at the least compile time.
SMALL = model_lib.ModelConfig(dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1), d_state=4,
                              fusion_d_state=6, fusion_blocks=1)


def golden_inputs(golden, dtype):
  return tuple(jnp.asarray(golden[f"input/{m}"].transpose(0, 2, 3, 1), dtype)
               for m in ("ir", "vi"))


def test_apply_under_jit_is_the_model_and_the_reference(tiny_golden):
  with jax.enable_x64(True):
    model = reference.from_torch_state_dict(reference_state_dict(tiny_golden), dtype=jnp.float64)
    net, variables = functional.from_model(model)
    assert not jax.tree.leaves(variables["state"])  # S4Fusion has parameters only
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(variables))
    ir, vi = golden_inputs(tiny_golden, jnp.float64)
    ours = jax.jit(net.apply)(variables, ir, vi)
    theirs = nnx.jit(lambda m, a, b: m(a, b))(model, ir, vi)
    assert ours.dtype == jnp.float64
    assert rel_err(ours, theirs) <= 1e-12
    assert rel_err(ours, tiny_golden["float64/output"].transpose(0, 2, 3, 1)) <= 1e-9
    stages = jax.jit(net.stages)(variables, ir, vi)
    assert rel_err(stages["fusion_1"], tiny_golden["float64/fusion_1"]) <= 1e-9


def test_vmap_over_two_parameter_sets_is_two_calls():
  net, first = functional.from_config(SMALL, seed=0)
  _, second = functional.from_config(SMALL, seed=1)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), first, second)
  ir, vi = (jax.random.uniform(jax.random.key(i), (2, 25, 37, 1)) for i in (0, 1))
  both = jax.jit(jax.vmap(net.apply, in_axes=(0, None, None)))(stacked, ir, vi)
  apart = [jax.jit(net.apply)(v, ir, vi) for v in (first, second)]
  assert both.shape == (2, 2, 25, 37, 1)
  assert float(jnp.abs(apart[0] - apart[1]).max()) > 1e-3  # two different models
  for k in range(2):
    assert rel_err(both[k], apart[k]) <= 1e-6


def test_input_saliency_is_the_finite_difference_gradient(tiny_golden):
  """d(sum of a 3x3 neighbourhood of the fused image) / d(ir, vi), float64, at 3 pixels."""
  with jax.enable_x64(True):
    net, variables = functional.from_reference(reference_state_dict(tiny_golden),
                                               dtype=jnp.float64)
    ir, vi = golden_inputs(tiny_golden, jnp.float64)

    neighbourhood = lambda ir, vi: jnp.sum(net.apply(variables, ir, vi)[0, 17:20, 23:26, 0])
    grads = jax.jit(jax.grad(neighbourhood, argnums=(0, 1)))(ir, vi)
    neighbourhood = jax.jit(neighbourhood)
    eps = 1e-5
    for which, (x, g) in enumerate(zip((ir, vi), grads)):
      for pixel in ((0, 18, 24, 0), (0, 16, 22, 0), (0, 20, 27, 0)):
        step = jnp.zeros_like(x).at[pixel].set(eps)
        args = lambda d: (x + d, vi) if which == 0 else (ir, x + d)
        numeric = (neighbourhood(*args(step)) - neighbourhood(*args(-step))) / (2 * eps)
        assert abs(float(g[pixel]) - float(numeric)) <= 1e-6 * max(1.0, abs(float(numeric))), (
            which, pixel, float(g[pixel]), float(numeric))
    assert float(jnp.abs(grads[0]).max()) > 0 and float(jnp.abs(grads[1]).max()) > 0


def test_a_gradient_through_apply_takes_the_chunked_scan():
  """At scan backend "auto", a differentiated ``apply`` takes the chunked custom VJP's
  gradient, bit for bit (test_scan: and not autodiff of the sequential loop)."""
  ir, vi = (jax.random.uniform(jax.random.key(i), (1, 25, 37, 1)) for i in (3, 4))
  grads = {}
  for backend in ("auto", "chunked"):
    net, variables = functional.from_config(dataclasses.replace(SMALL, scan_backend=backend),
                                            seed=2)
    fn = lambda p, net=net, variables=variables: jnp.sum(
        net.apply({**variables, "params": p}, ir, vi) ** 2)
    grads[backend] = jax.jit(jax.grad(fn))(variables["params"])
  leaves = [jax.tree.leaves(grads[b]) for b in ("auto", "chunked")]
  assert len(leaves[0]) == len(leaves[1]) > 50
  for a, c in zip(*leaves):
    np.testing.assert_array_equal(a, c)


def test_variables_to_reference_names_and_back_is_the_identity(tiny_golden):
  fixture = reference_state_dict(tiny_golden)
  net, variables = functional.from_reference(fixture)
  exported = net.to_reference(variables)
  assert set(exported) == set(fixture)
  for name in set(fixture) - {reference.PREFIX + n for n in reference.IGNORED}:
    np.testing.assert_array_equal(exported[name], np.asarray(fixture[name], np.float32), name)
  _, back = functional.from_reference(exported)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(variables) == jax.tree.structure(back)
  model = net.module(back)
  assert isinstance(model, model_lib.S4Fusion) and model.config == net.module(variables).config


def test_loss_and_train_mode_over_pytrees():
  """The "cnn" ablation (BatchNorm): train mode updates the statistics, eval mode reads
  them; ``loss`` is the model's objective and differentiates with ``jax.grad``."""
  net, variables = functional.from_config(dataclasses.replace(SMALL, fusion="cnn"), seed=5)
  assert jax.tree.leaves(variables["state"])  # the running statistics
  batch = {k: jax.random.uniform(jax.random.key(i), (2, 25, 25, 1))
           for i, k in enumerate(("ir", "vi"))}
  loss_config = smoke.get_config().loss
  (loss, (terms, updated)), grads = jax.jit(jax.value_and_grad(
      lambda p: net.loss({**variables, "params": p}, batch, loss_config), has_aux=True))(
          variables["params"])
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  assert float(optax.tree.norm(grads)) > 0
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(updated["state"]), jax.tree.leaves(variables["state"])))
  # The same numbers from the NNX model in train mode.
  def by_hand(model, batch):
    fused = model(batch["ir"], batch["vi"])
    return (fused, *losses.objective(batch["ir"], batch["vi"], fused, loss_config))

  fused_train, expected, expected_terms = nnx.jit(by_hand)(net.module(variables, train=True),
                                                           batch)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  for name, value in expected_terms.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, atol=1e-7)
  # Eval mode reads the running statistics: it differs from train mode's batch statistics.
  fused_eval = jax.jit(net.apply)(variables, batch["ir"], batch["vi"])
  assert float(jnp.abs(fused_eval - fused_train).max()) > 1e-6
  perceptual = loss_config.copy_and_resolve_references()
  perceptual.perceptual = True
  with pytest.raises(ValueError, match="needs a ResNet50"):
    net.loss(variables, batch, perceptual)


def test_intermediates_come_from_the_forward_pass():
  net, variables = functional.from_config(SMALL, seed=4)
  ir, vi = (jax.random.uniform(jax.random.key(i), (2, 25, 37, 1)) for i in (5, 6))
  stages, scans = jax.jit(net.intermediates)(variables, ir, vi)
  np.testing.assert_array_equal(stages["output"], jax.jit(net.apply)(variables, ir, vi))
  ss2d = 2 * sum(SMALL.depths) + sum(SMALL.depths_decoder)
  assert len(scans) == ss2d + SMALL.levels * SMALL.fusion_blocks
  terms = functional.cross_scan_terms(variables, scans)
  assert sorted(terms) == ["fusion_0/block_0", "fusion_1/block_0"]
  length = 8 * 12  # the finest grid of 25 x 37: (25 - 4) / 3 + 1 by (37 - 4) / 3 + 1
  assert scans["fusion/0/blocks/0/ssm"]["delta"].shape == (2, 2 * length, 4, 12)
  assert terms["fusion_0/block_0"]["delta"]["vi"].shape == (2, length, 4, 12)
  # Outside a capture the model keeps nothing (flax's sow would store the values on it).
  model = net.module(variables)
  nnx.jit(lambda m, a, b: m(a, b))(model, ir, vi)
  assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))


def numpy_directions(x):
  """(batch, H, W, C) -> (batch, H W, 4, C): row-major, column-major, and both reversed."""
  batch, height, width, channels = x.shape
  rows = x.reshape(batch, height * width, channels)
  cols = x.transpose(0, 2, 1, 3).reshape(batch, height * width, channels)
  return np.stack([rows, cols, rows[:, ::-1], cols[:, ::-1]], axis=2)


def numpy_scan_input(block, x):
  """The four paths of SiLU(DWConv(in_proj(x)_u)) of one modality's map x (batch, H, W, C)
  in a CMSA block, from the block's parameters (pure dicts), in float64 NumPy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), block)
  u = (x @ p["in_proj"]["kernel"])[..., :p["conv"]["kernel"].shape[-1]]
  padded = np.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = x.shape[1:3]
  conv = sum(padded[:, i:i + height, j:j + width] * p["conv"]["kernel"][i, j, 0]
             for i in range(3) for j in range(3)) + p["conv"]["bias"]
  return numpy_directions(conv / (1 + np.exp(-conv)))  # SiLU


def test_captured_cross_scan_terms_are_the_blocks_own(paper_golden):
  """The first CMSA block of the golden 61x73 model: Delta in its three forms, B and C of
  each modality equal a NumPy recomputation from the block's parameters and its inputs (the
  patch embeddings, from the fixture), not from the captured values."""
  with jax.enable_x64(True):
    net, variables = functional.from_reference(reference_state_dict(paper_golden),
                                               dtype=jnp.float64)
    ir, vi = golden_inputs(paper_golden, jnp.float64)
    stages, scans = jax.jit(net.intermediates)(variables, ir, vi)
    stages, terms = jax.tree.map(np.asarray, (
        stages, functional.cross_scan_terms(variables, scans)["fusion_0/block_0"]))
  block = variables["params"]["fusion"][0]["blocks"][0]
  ssm = jax.tree.map(lambda a: np.asarray(a, np.float64), block["ssm"])
  rank = ssm["dt_proj"].shape[1]
  state = terms["B"]["ir"].shape[-1]
  for modality in ("ir", "vi"):
    x = paper_golden[f"float64/patch_embed_{modality}"]
    np.testing.assert_allclose(stages[f"patch_embed_{modality}"], x, rtol=1e-9, atol=1e-12)
    xs = numpy_scan_input(block, x)
    dbc = np.einsum("blgd,gdc->blgc", xs, np.asarray(block[f"x_proj_{modality}"], np.float64))
    proj = np.einsum("blgr,grd->blgd", dbc[..., :rank], ssm["dt_proj"])
    expected = {"delta_proj": proj, "delta_biased": proj + ssm["dt_bias"],
                "delta": np.log1p(np.exp(proj + ssm["dt_bias"])),
                "B": dbc[..., rank:rank + state], "C": dbc[..., rank + state:]}
    for form, value in expected.items():
      ours = terms[form][modality]
      assert ours.shape == value.shape, (form, ours.shape, value.shape)
      assert rel_err(ours, value) <= 1e-10, (modality, form, rel_err(ours, value))
  # The paper's Table 5 quantity is the softplus form: positive, and distinct per modality.
  assert terms["delta"]["ir"].min() > 0
  assert not np.allclose(terms["delta"]["ir"], terms["delta"]["vi"])
