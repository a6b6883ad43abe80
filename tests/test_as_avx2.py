"""bench/as_avx2.sh: a command run as if on the AVX2 machine kind (XLA's code capped at AVX2,
busy loops beside it), and bench/dense_ops.py, the table that shows how much slower that is."""

import os
import re
import signal
import subprocess
import sys
import tempfile

from conftest import REPO, subprocess_env

SHOW = ("import os, sys; print('flags', os.environ['XLA_FLAGS']); "
        "print('onednn', os.environ['ONEDNN_MAX_CPU_ISA']); sys.exit(3)")


def busy_loops():
  """The pids of the script's busy loops running now (bash processes running `while :`)."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        if b"while :; do :; done" in f.read():
          found.append(pid)
    except OSError:
      pass
  return found


def as_avx2(args, load, extra_env=None):
  """The script run on ``args``; its output goes to files, not pipes, so that a busy loop
  left running (the failure tested for) cannot hold the test up."""
  env = subprocess_env({"LOAD": str(load), **(extra_env or {})})
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    code = subprocess.call(["bash", "bench/as_avx2.sh", *args], cwd=REPO, env=env, stdout=out,
                           stderr=err)
    out.seek(0), err.seek(0)
    return subprocess.CompletedProcess(args, code, out.read(), err.read())


def test_the_command_gets_the_cap_its_status_and_no_loop_outlives_it():
  before = busy_loops()
  try:
    proc = as_avx2([sys.executable, "-c", SHOW], load=2, extra_env={"XLA_FLAGS": "--theirs=1"})
    assert proc.returncode == 3, proc.stderr  # the command's own status
    assert "flags --theirs=1 --xla_cpu_max_isa=AVX2\n" in proc.stdout  # added to the user's
    assert "onednn AVX2\n" in proc.stdout
    assert re.search(r"^# as_avx2: .*cores, .*XLA capped at AVX2, 2 busy loop\(s\)",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^# as_avx2: [0-9.]+ s wall, exit status 3$", proc.stdout, re.M)
    assert busy_loops() == before
  finally:
    for pid in set(busy_loops()) - set(before):
      os.kill(int(pid), signal.SIGKILL)


def test_usage_without_a_command():
  proc = as_avx2([], load=0)
  assert proc.returncode == 2 and "usage:" in proc.stderr


def test_xla_accepts_the_cap_and_dense_ops_prints_its_table():
  proc = as_avx2([sys.executable, "bench/dense_ops.py", "--repeats", "1"], load=0)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "XLA_FLAGS='" in proc.stdout and "--xla_cpu_max_isa=AVX2" in proc.stdout
  rows = re.findall(r"^\| (matmul|3 x 3 convolution|elementwise)[^|]* \| ([0-9.]+) \|$",
                    proc.stdout, re.M)
  assert [name for name, _ in rows] == ["matmul", "3 x 3 convolution", "elementwise"]
  assert all(float(ms) > 0 for _, ms in rows)
