"""Multi-host training on one machine: 2 processes over localhost (gloo) against 1 process.

The smoke config's first 12 steps run as one process (one CPU device) and as an explicit
2-process cluster (one CPU device each, each feeding half of the global batch). The module's
runs share one persistent compilation cache, empty for the first: JAX writes it from process 0
alone, and on the CPU process 1 finds none of its programs there, so a later run's processes
drift tens of seconds apart, and the run must hold together all the same
(s4fusion_jax.runtime.cluster).
"""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TRAIN_FLAGS, run, subprocess_env
from test_training import final_params

import train

STEPS = 12


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_cluster(workdir, caches, flags=(), envs=({}, {})):
  """Starts the processes of one training run, process i with the compilation cache
  ``caches[i]`` and the extra environment ``envs[i]``; returns their Popen objects."""
  address = f"127.0.0.1:{free_port()}"
  return [subprocess.Popen(
      [sys.executable, "train.py", f"--workdir={workdir}", *TRAIN_FLAGS, *flags,
       f"--coordinator_address={address}", f"--num_processes={len(caches)}",
       f"--process_id={i}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=subprocess_env({"S4FUSION_COMPILE_CACHE": str(cache), **env}))
          for i, (cache, env) in enumerate(zip(caches, envs))]


def finish(procs, timeout=600):
  outputs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def losses(workdir):
  return [(r["step"], r["loss"]) for r in map(json.loads, open(workdir / "metrics.jsonl"))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A compilation cache shared by this module's runs: empty for the first, warm after."""
  return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, cache):
  """The uninterrupted 2-process run, both processes starting with an empty cache."""
  workdir = tmp_path_factory.mktemp("two") / "run"
  finish(start_cluster(workdir, (cache, cache)))
  return workdir


def assert_same_run(workdir, reference):
  assert losses(workdir) == losses(reference)
  for a, b in zip(final_params(reference, STEPS), final_params(workdir, STEPS)):
    np.testing.assert_array_equal(a, b)


def test_two_processes_train_as_one(two_process_run, smoke_run):
  ours, theirs = losses(two_process_run), losses(smoke_run)
  assert [s for s, _ in ours] == [s for s, _ in theirs] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([l for _, l in ours], [l for _, l in theirs], rtol=1e-5)
  two, single = final_params(two_process_run, STEPS), final_params(smoke_run, STEPS)
  largest = max(float(np.abs(p).max()) for p in single)
  assert max(float(np.abs(a - b).max()) for a, b in zip(two, single)) <= 1e-5 * largest


BARRIER_SCRIPT = """
import os, sys, time
from s4fusion_jax.runtime import cluster
address, process = sys.argv[1], int(sys.argv[2])
cluster.join(address, 2, process, timeout_s=2, shutdown_timeout_s=5)
if process == 0:
  try:
    cluster.barrier("the end of the run")
  except cluster.ClusterTimeout as e:
    print(e)
else:
  import jax
  jax.process_count()  # joins the topology exchange that process 0's barrier needs first
  time.sleep(30)  # never at the barrier
os._exit(0)
"""


def test_a_barrier_that_times_out_names_the_missing_process():
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", BARRIER_SCRIPT, address, str(i)], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  out, err = procs[0].communicate(timeout=120)
  procs[1].kill()
  procs[1].communicate()
  assert "process(es) [1] did not reach 'the end of the run' within 2 s" in out, err[-2000:]


def test_killed_then_resumed_with_a_late_process_equals_an_uninterrupted_pair(
    tmp_path, two_process_run, cache):
  """Both processes are killed after step 6 and started again on the warm cache: process 0
  reads its programs from it while process 1 (on the CPU, it finds none of its own there)
  compiles, so they run apart; process 1 also lingers after its last step for longer than
  the shutdown timeout. Both exit with 0 and the run equals the uninterrupted one."""
  killed = tmp_path / "killed"
  procs = start_cluster(killed, (cache, cache))
  deadline = time.time() + 600
  while not (killed / "checkpoints" / "6").exists() and time.time() < deadline:
    time.sleep(0.2)
  for p in procs:
    p.kill()
  for p in procs:
    p.communicate()
  assert (killed / "checkpoints" / "6").exists(), "the runs never reached step 6"
  assert not (killed / "checkpoints" / str(STEPS)).exists(), "they finished before the kill"
  outputs = finish(start_cluster(killed, (cache, cache), flags=["--shutdown_timeout_s=2"],
                                 envs=({}, {train.TEST_HOOK: "linger_after_training_s=6"})))
  assert all("resumed from step" in out for out in outputs)
  assert_same_run(killed, two_process_run)


def test_an_incomplete_cluster_is_named():
  proc = run(["train.py", "--workdir=/tmp/never", *TRAIN_FLAGS, "--num_processes=2"])
  assert proc.returncode == 2
  assert "needs all of --coordinator_address, --num_processes and --process_id" in proc.stderr
