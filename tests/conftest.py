"""Shared test fixtures: the golden fixtures of ../shared and small helpers."""

import fcntl
import gc
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from s4fusion_jax.runtime import compile_cache

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("S4FUSION_SHARED", REPO.parent / "shared"))


def shared_path(*parts):
  """A path under ../shared; fails (not skips) the test when it is absent."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.fail(f"{path} not found: the tests need ../shared beside the checkout "
                "(or S4FUSION_SHARED pointing at it)")
  return path


def load_golden(name):
  with np.load(shared_path("golden", name)) as f:
    return {k: f[k] for k in f.files}


def reference_state_dict(golden):
  """The ``param/<name>`` entries of a golden S4Fusion fixture, as a state dict."""
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


def one_train_step(config, image_shape):
  """(graphdef, state before, state after, metrics, batch) of one jitted train step of
  ``config`` (no ResNet50) on a random batch of ``image_shape`` (batch, H, W, 1)."""
  import jax  # pylint: disable=import-outside-toplevel
  from s4fusion_jax.training import build  # pylint: disable=import-outside-toplevel
  run = build.build(config)
  batch = {k: jax.random.uniform(jax.random.key(i), image_shape)
           for i, k in enumerate(("ir", "vi"))}
  new_state, metrics = run.train_step(run.state, batch, None)
  return run.graphdef, run.state, new_state, metrics, batch


def rel_err(ours, ref):
  """max |ours - ref| / max |ref|."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def tiny_golden():
  return load_golden("golden_s4fusion_tiny_37x49.npz")


@pytest.fixture(scope="session")
def paper_golden():
  return load_golden("golden_s4fusion_61x73.npz")


# LLVM compiles the tests' programs without its optimisations (XLA's passes all run), before
# anything is compiled here; the processes the tests start inherit the XLA_FLAGS. Most of the
# tests' programs are small models run once or a few times, where LLVM's optimisation is most
# of the compile. The numbers computed are the same up to float rounding. The tests whose
# processes run long (the docs' commands, among them the README's evaluation of the bundled model
# on TNO) start them with ``optimize=True``.
UNOPTIMIZED = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {UNOPTIMIZED}".strip()


def optimized(env):
  """``env`` (a subprocess environment) whose processes compile with LLVM's optimisations."""
  return {**env, "XLA_FLAGS": " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                       if f != UNOPTIMIZED)}


# Train runs in subprocesses share XLA's persistent compilation cache: a resumed run or a
# second run of one config does not compile again.
CACHE = {"JAX_COMPILATION_CACHE_DIR": os.path.join(
    os.environ.get("PYTEST_TMPDIR", "/tmp"), f"s4fusion-test-xla-cache-{os.getuid()}"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


# Every entry point run by a test uses that cache too, not the user's (compile_cache), and so
# do the tests' own processes: a program that one test, worker or subprocess compiled (the
# tiny models' constructors and train steps, above all) is read by the next.
os.environ["S4FUSION_COMPILE_CACHE"] = CACHE["JAX_COMPILATION_CACHE_DIR"]
compile_cache.enable()


# The tests' own processes trace and compile hundreds of programs, whose jaxprs and executables
# JAX keeps in its caches, and each of Python's full collections walks them all. So a full
# collection comes after 1000 younger ones instead of 10, and at the end of every test module,
# which returns what the module let go and then moves what is still held out of later
# collections' way (gc.freeze: reference counting still frees it).
gc.set_threshold(700, 10, 1000)


@pytest.fixture(autouse=True, scope="module")
def collect_after_each_module():
  yield
  gc.collect()
  gc.freeze()


# The entry points run by tests keep one JAX CPU device, as they do by default (a user's
# XLA_FLAGS asking for more devices does not reach them).
ONE_DEVICE = {"JAX_NUM_CPU_DEVICES": "1"}


def subprocess_env(extra=None, optimize=False):
  """The environment of an entry point run by a test: the tests' cache, one CPU device, and
  LLVM's optimisations where ``optimize`` (a run long enough for them to pay)."""
  env = {**os.environ, "PYTHONPATH": str(REPO), **CACHE, **ONE_DEVICE, **(extra or {})}
  return optimized(env) if optimize else env


def run(args, env=None, optimize=False, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        env=subprocess_env(env, optimize), **kwargs)


# tests/train_config.py: for the tests of resuming, multi-host and failures.
TRAIN_FLAGS = ["--config", "tests/train_config.py", "--progress=false"]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """The workdir of one uninterrupted single-process run of ``TRAIN_FLAGS`` (12 steps): the
  reference that the resume and the multi-host tests compare against.

  Made once per test run: under pytest-xdist (.ci/run) the first worker to need it makes it
  in the folder the workers share, the others wait for it (a lock) and read it.
  """
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent
  workdir = shared / "smoke" / "straight"
  with open(shared / "smoke.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (shared / "smoke" / "done").exists():
      shutil.rmtree(workdir, ignore_errors=True)
      proc = run(["train.py", f"--workdir={workdir}", *TRAIN_FLAGS])
      assert proc.returncode == 0, proc.stderr[-2000:]
      (shared / "smoke" / "done").touch()
  return workdir
