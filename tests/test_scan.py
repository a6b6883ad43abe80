"""The selective scan backends against a plain NumPy loop of the recurrence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s4fusion_jax.numerics import scan


def numpy_oracle(u, delta, A, B, C, D, delta_bias):
  """h_t = exp(dt A) h + dt B_t u_t; y_t = C_t . h_t + D u_t, one step at a time, float64."""
  u, delta, A, B, C, D, delta_bias = (np.asarray(x, np.float64)
                                      for x in (u, delta, A, B, C, D, delta_bias))
  delta = np.log1p(np.exp(delta + delta_bias))
  batch, length, groups, channels = u.shape
  h = np.zeros((batch, groups, channels, A.shape[-1]))
  y = np.zeros_like(u)
  for t in range(length):
    h = np.exp(delta[:, t, ..., None] * A) * h + (
        delta[:, t] * u[:, t])[..., None] * B[:, t, :, None, :]
    y[:, t] = np.einsum("bgdn,bgn->bgd", h, C[:, t]) + D * u[:, t]
  return y


def random_inputs(key, batch=2, length=37, groups=3, channels=5, state=4, dtype=jnp.float32):
  ks = jax.random.split(key, 7)
  return (
      jax.random.normal(ks[0], (batch, length, groups, channels), dtype),
      jax.random.normal(ks[1], (batch, length, groups, channels), dtype),
      -jnp.exp(jax.random.normal(ks[2], (groups, channels, state), dtype)),
      jax.random.normal(ks[3], (batch, length, groups, state), dtype),
      jax.random.normal(ks[4], (batch, length, groups, state), dtype),
      jax.random.normal(ks[5], (groups, channels), dtype),
      jax.random.normal(ks[6], (groups, channels), dtype),
  )


@pytest.mark.parametrize("backend", list(scan.ScanBackend))
def test_float64_matches_the_loop(backend):
  with jax.enable_x64(True):
    args = random_inputs(jax.random.key(0), dtype=jnp.float64)
    y = scan.selective_scan(*args, backend=backend)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, numpy_oracle(*args), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", list(scan.ScanBackend))
def test_float32_matches_the_loop(backend):
  args = random_inputs(jax.random.key(1))
  y = jax.jit(scan.selective_scan, static_argnames="backend")(*args, backend=backend)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, numpy_oracle(*args), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", list(scan.ScanBackend))
def test_masked_steps_are_skipped(backend):
  """A masked scan = the scan of the unmasked steps alone, whatever the masked steps hold;
  under grad the masked steps' inputs get no gradient."""
  with jax.enable_x64(True):
    args = random_inputs(jax.random.key(5), dtype=jnp.float64)
    keep = np.random.default_rng(0).random((2, 37)) < 0.6
    keep[1] = True  # one sequence whole
    poisoned = [x.at[0, ~keep[0]].set(jnp.nan) if x.ndim == 4 else x for x in args]
    mask = jnp.asarray(keep)[:, :, None, None]
    run = lambda *a: scan.selective_scan(*a, backend=backend, chunk=8, mask=mask)
    y = run(*poisoned)
    assert not np.any(np.asarray(y[0, ~keep[0]]))  # masked steps output 0
    for b in range(2):
      alone = scan.selective_scan(*(x[b:b + 1, keep[b]] if x.ndim == 4 else x for x in args),
                                  backend=backend, chunk=8)
      np.testing.assert_allclose(y[b:b + 1, keep[b]], alone, rtol=1e-12, atol=1e-12)
    grads = jax.grad(lambda *a: jnp.sum(jnp.sin(run(*a))), argnums=(0, 1, 3, 4))(*args)
    for g in grads:
      assert np.all(np.isfinite(g)) and not np.any(np.asarray(g[0, ~keep[0]]))


def test_bfloat16_inputs_scan_in_float32():
  args = random_inputs(jax.random.key(2), length=16)
  y = scan.selective_scan(*(a.astype(jnp.bfloat16) for a in args))
  assert y.dtype == jnp.float32
  rounded = [np.asarray(a.astype(jnp.bfloat16), np.float64) for a in args]
  np.testing.assert_allclose(y, numpy_oracle(*rounded), rtol=1e-4, atol=1e-4)


def test_backends_have_the_same_gradients():
  args = random_inputs(jax.random.key(3), length=20)

  def loss(backend, *a):
    return jnp.sum(jnp.sin(scan.selective_scan(*a, backend=backend)))

  grads = [jax.grad(loss, argnums=tuple(range(1, 8)))(b, *args) for b in scan.ScanBackend]
  for other in grads[1:]:
    for g_seq, g in zip(grads[0], other):
      np.testing.assert_allclose(g_seq, g, rtol=2e-4, atol=2e-4)


def test_unknown_backend_is_rejected():
  with pytest.raises(ValueError, match="nope"):
    scan.selective_scan(*random_inputs(jax.random.key(4)), backend="nope")


@pytest.mark.parametrize("inner", [scan.ScanBackend.SEQUENTIAL, scan.ScanBackend.ASSOCIATIVE])
def test_chunked_carries_the_state_across_padded_chunks(monkeypatch, inner):
  monkeypatch.setitem(scan.CHUNK_INNER, jax.default_backend(), inner)
  with jax.enable_x64(True):
    args = random_inputs(jax.random.key(5), length=37, dtype=jnp.float64)  # 4 chunks of 8 + 5
    y = scan.selective_scan(*args, backend="chunked", chunk=8)
    np.testing.assert_allclose(y, numpy_oracle(*args), rtol=1e-11, atol=1e-11)
    grads = [jax.grad(lambda u, b=b: jnp.sum(jnp.sin(
        scan.selective_scan(u, *args[1:], backend=b, chunk=8))))(args[0])
             for b in ("sequential", "chunked")]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-11, atol=1e-11)


def relative_errors(grads, reference):
  return [float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(grads, reference)]


def all_gradients(backend, args, chunk=None):
  """Gradients of sum(sin(y)) with respect to all seven inputs."""
  loss = lambda *a: jnp.sum(jnp.sin(scan.selective_scan(*a, backend=backend, chunk=chunk)))
  return jax.jit(jax.grad(loss, argnums=tuple(range(7))))(*args)


# (batch, L, G, D, N, chunk): SS2D-like (4 directions, N = 12, D a multiple of 8: the
# 8-lane sums over d) and Cross SS2D-like (even L, N = 18), each with L not a multiple of the
# chunk (a padded last chunk), and one chunk > L.
VJP_CASES = [(2, 37, 4, 16, 12, 8), (3, 2 * 21, 4, 9, 18, 16), (1, 2 * 5, 4, 3, 18, 128)]


@pytest.mark.parametrize("inner", [scan.ScanBackend.SEQUENTIAL, scan.ScanBackend.ASSOCIATIVE])
@pytest.mark.parametrize("case", VJP_CASES)
def test_chunked_vjp_matches_autodiff_float64(monkeypatch, inner, case):
  monkeypatch.setitem(scan.CHUNK_INNER, jax.default_backend(), inner)
  *shape, chunk = case
  with jax.enable_x64(True):
    args = random_inputs(jax.random.key(6), *shape, dtype=jnp.float64)
    errors = relative_errors(all_gradients("chunked", args, chunk),
                             all_gradients("sequential", args))
  assert max(errors) < 1e-9, errors


def test_auto_runs_the_fast_forward_and_the_chunked_gradient(monkeypatch):
  """Where "auto" is one backend forward and the chunked scan under grad (CPU): its values
  are the forward backend's and its gradients the chunked scan's, bit for bit, also with a
  mask and a padded last chunk; and they differ from autodiff of the forward's loop."""
  monkeypatch.setitem(scan.AUTO_BACKEND, (jax.default_backend(), False), "sequential")
  monkeypatch.setitem(scan.AUTO_BACKEND, (jax.default_backend(), True), "chunked")
  args = random_inputs(jax.random.key(11), 2, 45, 4, 8, 12)
  mask = jnp.arange(45)[None, :, None, None] < jnp.array([45, 30])[:, None, None, None]
  run = lambda b: jax.jit(lambda *a: scan.selective_scan(*a, backend=b, chunk=16, mask=mask))
  grads = lambda b: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(scan.selective_scan(
      *a, backend=b, chunk=16, mask=mask))), argnums=tuple(range(7))))(*args)
  np.testing.assert_array_equal(run("auto")(*args), run("sequential")(*args))
  auto, chunked, sequential = grads("auto"), grads("chunked"), grads("sequential")
  for a, c in zip(auto, chunked):
    np.testing.assert_array_equal(a, c)
  assert any(not np.array_equal(a, s) for a, s in zip(auto, sequential))
  assert max(relative_errors(auto, sequential)) < 1e-4


def test_chunked_vjp_matches_autodiff_float32():
  args = random_inputs(jax.random.key(7), 2, 2 * 45, 4, 16, 18)
  errors = relative_errors(all_gradients("chunked", args, 32), all_gradients("sequential", args))
  assert max(errors) < 1e-4, errors


def test_chunked_vjp_keeps_only_chunk_start_states():
  """Under grad the residuals hold (L / chunk) states, not one per step (autodiff's L)."""
  batch, length, groups, channels, state, chunk = 2, 2048, 4, 8, 12, 32
  args = random_inputs(jax.random.key(8), batch, length, groups, channels, state)
  state_bytes = batch * groups * channels * state * 4
  temp = {}
  for backend in ("sequential", "chunked"):
    loss = lambda *a, b=backend: jnp.sum(scan.selective_scan(*a, backend=b, chunk=chunk))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
    temp[backend] = compiled.memory_analysis().temp_size_in_bytes
  assert temp["sequential"] > length * state_bytes
  assert temp["chunked"] < temp["sequential"] / 3, temp  # measured: 4.0 MB vs 18.4 MB


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_chunked_vjp_lowers_for_accelerators(platform):
  """The training backend there: the custom VJP with associative chunks, exported from here."""
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype)
          for a in random_inputs(jax.random.key(9), 2, 100, 4, 8, 12)]
  loss = lambda *a: jnp.sum(scan.selective_scan(*a, backend="chunked", chunk=32,
                                                platform=platform))
  grad = jax.jit(jax.grad(loss, argnums=tuple(range(7))))
  # The chunks' inner form follows the target platform, not this CPU's: no 32-step loops.
  assert "length=32" not in str(jax.make_jaxpr(grad)(*args))
  assert "length=32" in str(jax.make_jaxpr(jax.grad(
      lambda *a: jnp.sum(scan.selective_scan(*a, backend="chunked", chunk=32, platform="cpu")),
      argnums=tuple(range(7))))(*args))
  exported = jax.export.export(grad, platforms=[platform])(*args)
  assert exported.platforms == (platform,)
  assert len(exported.out_avals) == 7


def test_auto_resolves_per_platform_and_use():
  assert scan.resolve_backend("auto", "cpu") == scan.ScanBackend.SEQUENTIAL
  assert scan.resolve_backend("auto", "cpu", differentiated=True) == scan.ScanBackend.CHUNKED
  assert scan.resolve_backend("auto", "gpu", differentiated=True) == scan.AUTO_DEFAULT
  assert scan.resolve_backend("sequential", "gpu") == scan.ScanBackend.SEQUENTIAL
