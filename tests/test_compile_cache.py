"""The persistent compilation cache of the entry points: where it is, turning it on or off, hits
across processes, and the count of compiles."""

import builtins
import io
import os
import re
import subprocess
import sys

import jax
import numpy as np

from conftest import REPO
from s4fusion_jax.runtime import compile_cache


def test_the_directory_and_its_switches(monkeypatch, tmp_path):
  kind = compile_cache.cpu_kind()
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.directory() == str(tmp_path / "xdg" / "s4fusion-jax" / "xla" / kind)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
  assert compile_cache.directory() == str(tmp_path / "jax" / kind)
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "ours"))
  assert compile_cache.directory() == str(tmp_path / "ours" / kind)
  for off in ("off", "0", ""):
    monkeypatch.setenv(compile_cache.ENV, off)
    assert compile_cache.directory() is None


def test_each_cpu_kind_has_its_own_entries(monkeypatch):
  real_open = builtins.open

  def cpuinfo(flags):
    def fake_open(path, *args, **kwargs):
      if path == "/proc/cpuinfo":
        return io.StringIO(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n"
                           f"processor\t: 1\nflags\t\t: other\n")
      return real_open(path, *args, **kwargs)
    return fake_open

  kinds = []
  for flags in ("fpu sse2 avx2 avx512f", "fpu sse2 avx2", "fpu sse2 avx2"):
    monkeypatch.setattr(builtins, "open", cpuinfo(flags))
    kinds.append(compile_cache.cpu_kind())
  assert kinds[0] != kinds[1] and kinds[1] == kinds[2]


def test_enable_sets_the_cache_or_turns_it_off(monkeypatch, tmp_path, capsys):
  updates = {}
  monkeypatch.setattr(jax.config, "update", updates.__setitem__)
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "ours"))
  path = compile_cache.enable()
  assert path == compile_cache.directory() and os.path.isdir(path)
  assert updates == {"jax_compilation_cache_dir": path,
                     "jax_compilation_cache_max_size": compile_cache.MAX_BYTES,
                     "jax_persistent_cache_min_compile_time_secs":
                         compile_cache.MIN_COMPILE_SECONDS}
  off = {"jax_enable_compilation_cache": False}
  updates.clear()
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.enable() is None and updates == off
  updates.clear()
  (tmp_path / "a-file").write_text("")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "a-file" / "cache"))
  assert compile_cache.enable() is None and updates == off  # a warning, not a failure
  assert "warning: no compilation cache" in capsys.readouterr().out


SCRIPT = """
import jax
import jax.numpy as jnp
from s4fusion_jax.runtime import compile_cache
compile_cache.enable()
with compile_cache.CompileLog() as log:
  y = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))(jnp.arange(12.0).reshape(3, 4) / 10)
print(repr(jax.device_get(y).tolist()))
print(log.summary())
"""


def start(cache):
  return subprocess.Popen(
      [sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env={**os.environ, "PYTHONPATH": str(REPO), compile_cache.ENV: str(cache),
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})


def finish(proc):
  """(programs compiled, programs read from the cache, the printed result) of ``start``."""
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  compiled, read = map(int, re.search(r"(\d+) programs compiled and (\d+) read", stdout).groups())
  return compiled, read, stdout.splitlines()[0]


def test_two_writers_at_once_then_a_reader_hits(tmp_path):
  """Two processes fill an empty cache at once; a third, in a fresh process, reads from it."""
  cache = tmp_path / "cache"
  first = [finish(p) for p in [start(cache), start(cache)]]
  assert all(compiled >= 1 for compiled, _, _ in first), first
  assert os.listdir(cache / compile_cache.cpu_kind()), "nothing was written to the cache"
  compiled, read, result = finish(start(cache))
  assert read >= 1 and compiled < min(c for c, _, _ in first), (compiled, read, first)
  assert result == first[0][2] == first[1][2]


def test_a_compile_log_counts_until_closed():
  x = np.ones(7, np.float32)
  with compile_cache.CompileLog() as log:
    jax.jit(lambda x: x * 3 + 1).lower(x).compile()
    assert log.programs == 1 and log.seconds > 0
  jax.jit(lambda x: x * 5 + 2).lower(x).compile()
  assert log.programs == 1
  log.close()  # closed already (by leaving the with): nothing to do, no error
