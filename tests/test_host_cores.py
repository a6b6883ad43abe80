"""One CPU device per core, and a pair's scans split their channels over the host's devices."""

import subprocess
import sys
import textwrap

from conftest import REPO, run, shared_path, subprocess_env

# Run with two CPU devices: the split scan and the split Fuser against the unsplit ones.
SPLIT_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from s4fusion_jax.evaluation import inference
    from s4fusion_jax.interop import reference
    from s4fusion_jax.numerics import scan
    from s4fusion_jax.runtime import host_cores

    assert host_cores.split_cpu() is None  # JAX_NUM_CPU_DEVICES is the user's choice
    assert jax.device_count() == 2
    mesh = scan.channel_mesh(jax.devices())
    keys = iter(jax.random.split(jax.random.key(0), 8))
    b, L, G, D, N = 2, 37, 4, 6, 5
    u, delta = (jax.random.normal(next(keys), (b, L, G, D)) for _ in range(2))
    B, C = (jax.random.normal(next(keys), (b, L, G, N)) for _ in range(2))
    A = -jnp.exp(jax.random.normal(next(keys), (G, D, N)))
    skip, bias = (jax.random.normal(next(keys), (G, D)) for _ in range(2))
    mask = jnp.arange(L)[None, :, None, None] % 5 != 2

    def loss(u, delta, backend, mask, channels):
      y = scan.selective_scan(u[..., :channels], delta[..., :channels], A[:, :channels], B, C,
                              skip[:, :channels], bias[:, :channels], backend=backend, chunk=8,
                              mask=mask)
      return jnp.sum(jnp.sin(y)), y

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=(2, 4))
    # Every backend, masked; and 3 channels, which do not split over 2 devices: unsplit.
    cases = [(backend, mask, D) for backend in ("sequential", "associative", "chunked", "auto")]
    for backend, m, channels in cases + [("sequential", None, 3)]:
      (_, y1), g1 = fn(u, delta, backend, m, channels)
      with jax.set_mesh(mesh):
        lowered = fn.lower(u, delta, backend, m, channels).as_text()
        (_, y2), g2 = fn(u, delta, backend, m, channels)
      assert ("manual_computation" in lowered) == (channels == D), (backend, channels)
      for a, c in zip((y1, *g1), (y2, *g2)):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)

    jax.config.update("jax_enable_x64", False)
    golden = dict(np.load(GOLDEN))
    model = reference.from_torch_state_dict(
        {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")})
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (50, 70, 1), np.uint8)
    vi = rng.integers(0, 256, (50, 70, 3), np.uint8)
    split, single = inference.Fuser(model=model, devices=jax.devices()), inference.Fuser(model=model)
    assert split.mesh is not None and single.mesh is None  # one device unless asked
    y_split, y_single = (f.fuse_y(ir / np.float32(255), vi[..., :1] / np.float32(255))
                         for f in (split, single))
    assert np.abs(y_split - y_single).max() <= 1e-5 * np.abs(y_single).max()
    assert np.abs(split.fuse(ir, vi).astype(int) - single.fuse(ir, vi)).max() <= 1
    print("ok")
""")


def test_split_cpu_gives_one_device_per_core():
  env = {k: v for k, v in subprocess_env().items()
         if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  script = ("import os, jax\nfrom s4fusion_jax.runtime import host_cores\n"
            "cores = host_cores.split_cpu()\n"
            "assert cores == len(os.sched_getaffinity(0)) == jax.device_count(), cores\n"
            "assert host_cores.split_cpu() is None  # the backend runs: too late to change\n"
            "print('ok')")
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                       text=True, check=False)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_split_scans_and_fuser_equal_the_unsplit():
  golden = shared_path("golden", "golden_s4fusion_tiny_37x49.npz")
  out = run(["-c", f"GOLDEN = {str(golden)!r}\n" + SPLIT_SCRIPT],
            env={"JAX_NUM_CPU_DEVICES": "2", "XLA_FLAGS": ""})
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
