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
from s4fusion_jax import functional
from s4fusion_jax import losses
from s4fusion_jax import model as model_lib
from s4fusion_jax import reference

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
