"""runtime.host_memory: which allocator settings an entry point restarts with, that it restarts
once and in place, and that with them a program's temporary buffer is reused between calls."""

import platform
import subprocess
import sys

from conftest import REPO, subprocess_env
from s4fusion_jax.runtime import host_memory

GLIBC = ("glibc", "2.36")
ALL = [f"{name}={value}" for name, value in host_memory.TUNABLES.items()]
CPU = {"JAX_PLATFORMS": "cpu"}


def test_the_settings_join_the_users_tunables_and_never_override_them():
  assert host_memory.tunables_to_set(CPU, GLIBC).split(":") == ALL
  users = ["glibc.malloc.arena_max=4", "glibc.rtld.nns=8"]
  got = host_memory.tunables_to_set({**CPU, "GLIBC_TUNABLES": ":".join(users)}, GLIBC)
  assert got.split(":") == users + ALL[1:]
  assert host_memory.tunables_to_set({**CPU, "GLIBC_TUNABLES": ":".join(ALL)}, GLIBC) is None


def test_no_restart_when_turned_off_without_glibc_or_for_an_accelerator(monkeypatch):
  assert host_memory.tunables_to_set({**CPU, host_memory.ENV: "0"}, GLIBC) is None
  assert host_memory.tunables_to_set(CPU, ("", "")) is None
  assert host_memory.tunables_to_set({"JAX_PLATFORMS": "cuda"}, GLIBC) is None
  assert host_memory.tunables_to_set({"JAX_PLATFORMS": "tpu,cpu"}, GLIBC) is None
  assert host_memory.on_cpu({"JAX_PLATFORMS": "cpu,cuda"})
  real_find_spec = host_memory.importlib.util.find_spec
  monkeypatch.setattr(host_memory.importlib.util, "find_spec",
                      lambda name: object() if name == "libtpu" else real_find_spec(name))
  assert not host_memory.on_cpu({})
  assert host_memory.tunables_to_set({}, GLIBC) is None


def clean_env(extra=None):
  env = subprocess_env({"JAX_PLATFORMS": "cpu", **(extra or {})})
  env.pop("GLIBC_TUNABLES", None)
  return env


def applies():
  return (sys.platform == "linux"
          and host_memory.tunables_to_set(clean_env(), platform.libc_ver()) is not None)


def run_script(tmp_path, text, args=(), extra=None):
  script = tmp_path / "script.py"
  script.write_text(text)
  proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=clean_env(extra),
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.splitlines()


def pid_of(lines):
  return lines[0].split()[1]


RESTART = """import os, sys
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
from s4fusion_jax.runtime import host_memory
host_memory.reuse_freed_buffers()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


def test_an_entry_point_restarts_once_in_place_with_its_arguments(tmp_path):
  lines = run_script(tmp_path, RESTART, args=["a", "b c"])
  args, pid = "['a', 'b c']", pid_of(lines)
  if applies():
    assert lines == [f"start {pid} None {args}", f"start {pid} {':'.join(ALL)} {args}",
                     f"after {pid} {':'.join(ALL)} {args}"]
  else:
    assert lines == [f"start {pid} None {args}", f"after {pid} None {args}"]
  off = run_script(tmp_path, RESTART, args=["a", "b c"], extra={host_memory.ENV: "0"})
  assert off == [f"start {pid_of(off)} None {args}", f"after {pid_of(off)} None {args}"]


FAULTS = """import resource, time
from s4fusion_jax.runtime import host_memory
host_memory.reuse_freed_buffers()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jax.lax.optimization_barrier(jnp.sin(x)).sum(0))  # a 64 MB temporary
x = jnp.ones((4096, 4096), jnp.float32)
f(x).block_until_ready()
counts = []
for _ in range(12):
  time.sleep(0.05)  # for the last call's buffer to be freed (dispatch is asynchronous)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(count > 10_000 for count in counts))
"""


def test_with_the_settings_a_programs_buffer_is_reused_between_calls(tmp_path):
  """The calls (of 12) that fault a 64 MB temporary in anew (16,384 pages of 4 KiB): every one
  without the settings; with them at most a few (a call may still allocate before the last
  one's buffer is freed, under load), the others reusing what those left."""
  off = int(run_script(tmp_path, FAULTS, extra={host_memory.ENV: "0"})[-1])
  on = int(run_script(tmp_path, FAULTS)[-1])
  if applies():
    assert off == 12, off
    assert on <= 4, on
  else:
    assert on == 12, on


EXIT_SCRIPT = """
import atexit, sys
from s4fusion_jax.runtime import host_memory
if sys.argv[1] == "skip":
  host_memory.no_collection_at_exit()

class Cycle:
  def __del__(self):
    print("collected", flush=True)

cycle = Cycle()
cycle.itself = cycle
del cycle
atexit.register(print, "exit handler ran", flush=True)  # registered later, runs earlier
"""


def test_no_collection_at_exit_leaves_cycles_to_the_process_end():
  for mode, expected in (("collect", ["exit handler ran", "collected"]),
                         ("skip", ["exit handler ran"])):
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, mode], cwd=REPO, text=True,
                          capture_output=True, env=subprocess_env(), check=True)
    assert proc.stdout.splitlines() == expected, (mode, proc.stdout, proc.stderr)


PAUSE_SCRIPT = """
import gc, os
from s4fusion_jax.runtime import host_memory

def state():
  return f"enabled={gc.isenabled()} frozen={gc.get_freeze_count() > 0}"

host_memory.resume_collections()  # not paused: nothing happens
print("before", state())
host_memory.pause_collections()
print("paused", state())
child = os.fork()
if child == 0:  # a worker forked during the start-up collects as usual
  print("forked child", state(), flush=True)
  os._exit(0)
os.waitpid(child, 0)
host_memory.resume_collections()
print("resumed", state())
gc.unfreeze()
host_memory.resume_collections()  # once only
print("again", state())
"""


def test_collections_paused_during_start_up_resume_frozen_and_a_fork_collects():
  proc = subprocess.run([sys.executable, "-c", PAUSE_SCRIPT], cwd=REPO, text=True,
                        capture_output=True, env=subprocess_env(), check=True)
  assert proc.stdout.splitlines() == [
      "before enabled=True frozen=False", "paused enabled=False frozen=False",
      "forked child enabled=True frozen=True", "resumed enabled=True frozen=True",
      "again enabled=True frozen=False"], proc.stderr
