"""Multi-host training on one machine: 2 processes over localhost (gloo) against 1 process.

The smoke config's first 12 steps run as one process (one CPU device) and as an explicit
2-process cluster (one CPU device each, each feeding half of the global batch).
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

STEPS = 12


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_cluster(workdir, processes=2):
  """Starts the processes of one training run; returns their Popen objects."""
  address = f"127.0.0.1:{free_port()}"
  return [subprocess.Popen(
      [sys.executable, "train.py", f"--workdir={workdir}", *TRAIN_FLAGS,
       f"--coordinator_address={address}", f"--num_processes={processes}", f"--process_id={i}"],
      cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(processes)]


def finish(procs, timeout=600):
  outputs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def losses(workdir):
  return [(r["step"], r["loss"]) for r in map(json.loads, open(workdir / "metrics.jsonl"))]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two") / "run"
  finish(start_cluster(workdir))
  return workdir


def test_two_processes_train_as_one(two_process_run, smoke_run):
  ours, theirs = losses(two_process_run), losses(smoke_run)
  assert [s for s, _ in ours] == [s for s, _ in theirs] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([l for _, l in ours], [l for _, l in theirs], rtol=1e-5)
  two, single = final_params(two_process_run, STEPS), final_params(smoke_run, STEPS)
  largest = max(float(np.abs(p).max()) for p in single)
  assert max(float(np.abs(a - b).max()) for a, b in zip(two, single)) <= 1e-5 * largest


def test_two_processes_killed_and_resumed_equal_an_uninterrupted_pair(tmp_path,
                                                                      two_process_run):
  killed = tmp_path / "killed"
  procs = start_cluster(killed)
  deadline = time.time() + 600
  while not (killed / "checkpoints" / "6").exists() and time.time() < deadline:
    time.sleep(0.2)
  for p in procs:
    p.kill()
  for p in procs:
    p.communicate()
  assert (killed / "checkpoints" / "6").exists(), "the runs never reached step 6"
  assert not (killed / "checkpoints" / str(STEPS)).exists(), "they finished before the kill"
  outputs = finish(start_cluster(killed))
  assert all("resumed from step" in out for out in outputs)
  for a, b in zip(final_params(two_process_run, STEPS), final_params(killed, STEPS)):
    np.testing.assert_array_equal(a, b)
  assert losses(killed) == losses(two_process_run)


def test_an_incomplete_cluster_is_named():
  proc = run(["train.py", "--workdir=/tmp/never", *TRAIN_FLAGS, "--num_processes=2"])
  assert proc.returncode == 2
  assert "needs all of --coordinator_address, --num_processes and --process_id" in proc.stderr
