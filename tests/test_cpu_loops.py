"""runtime.cpu_loops: the XLA_FLAGS an entry point runs with, that XLA:CPU then compiles a scan's
loop whole, and that the scan's numbers are the same either way."""

import subprocess
import sys

import pytest

from conftest import REPO, run, subprocess_env
from s4fusion_jax.runtime import cpu_loops

CPU = {"JAX_PLATFORMS": "cpu"}
ENTRY = f"{cpu_loops.OPTION}={cpu_loops.LOOP_BYTES}"


def test_the_option_joins_the_users_flags_and_never_overrides_them():
  assert cpu_loops.xla_flags(CPU) == f"--xla_backend_extra_options={ENTRY}"
  users = "--xla_force_host_platform_device_count=8  --xla_cpu_enable_fast_math=false"
  assert cpu_loops.xla_flags({**CPU, "XLA_FLAGS": users}).split() == [
      *users.split(), f"--xla_backend_extra_options={ENTRY}"]
  extras = "--xla_backend_extra_options=xla_cpu_disable_loop_unrolling"
  assert cpu_loops.xla_flags({**CPU, "XLA_FLAGS": extras}) == f"{extras},{ENTRY}"
  assert cpu_loops.xla_flags({**CPU, "XLA_FLAGS": "--xla_backend_extra_options="}) == (
      f"--xla_backend_extra_options={ENTRY}")
  theirs = f"--xla_backend_extra_options=a=1,{cpu_loops.OPTION}=64"
  assert cpu_loops.xla_flags({**CPU, "XLA_FLAGS": theirs}) is None
  assert cpu_loops.xla_flags({**CPU, cpu_loops.ENV: "1000"}).endswith(f"{cpu_loops.OPTION}=1000")


def test_off_by_zero_elsewhere_than_the_cpu_and_a_bad_bound_named():
  assert cpu_loops.xla_flags({**CPU, cpu_loops.ENV: "0"}) is None
  assert cpu_loops.xla_flags({"JAX_PLATFORMS": "cuda"}) is None
  for bad in ("4MB", "-1", ""):
    with pytest.raises(ValueError, match=cpu_loops.ENV):
      cpu_loops.xla_flags({**CPU, cpu_loops.ENV: bad})


SCAN = """
import hashlib, sys
from s4fusion_jax.runtime import cpu_loops
cpu_loops.run_small_loops_whole()
import jax, jax.numpy as jnp, numpy as np
from s4fusion_jax.numerics import scan
k = jax.random.split(jax.random.key(0), 4)
u, delta = (jax.random.normal(k[i], (2, 300, 4, 16)) for i in (0, 1))
B, C = (jax.random.normal(k[i], (2, 300, 4, 6)) for i in (2, 3))
A, D = -jnp.ones((4, 16, 6)), jnp.ones((4, 16))
run = jax.jit(lambda *a: scan.selective_scan(*a, backend="sequential"))
args = (u, delta, A, B, C, D, jnp.zeros((4, 16)))
text = run.lower(*args).compile().as_text()
print("xla_cpu_small_call" in text, "while(" in text,
      hashlib.sha256(np.asarray(run(*args)).tobytes()).hexdigest())
"""


def test_a_scan_compiles_as_one_function_and_computes_the_same():
  outputs = {}
  for bound in ("0", str(cpu_loops.LOOP_BYTES)):
    env = subprocess_env({**CPU, cpu_loops.ENV: bound})
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", SCAN], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs[bound] = proc.stdout.split()
  assert outputs["0"][:2] == ["False", "True"]  # XLA's default: a while loop run step by step
  assert outputs[str(cpu_loops.LOOP_BYTES)][0] == "True"
  assert outputs["0"][2] == outputs[str(cpu_loops.LOOP_BYTES)][2]  # bitwise the same output


@pytest.mark.parametrize("entry", [["-m", "s4fusion_jax", "fuse", "--help"],
                                   ["evaluate.py", "--help"], ["train.py", "--help"]])
def test_the_entry_points_set_it_before_jax_starts(entry):
  env = {cpu_loops.ENV: "lots"}
  proc = run(entry, env=env)
  assert proc.returncode != 0 and f"{cpu_loops.ENV}='lots'" in proc.stderr
