"""The persistent compilation cache of the entry points: where it is, hits across processes, and
the traced programs kept beside it."""

import builtins
import io
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, shared_path
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.network import model as model_lib
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


def evaluate(data, out, cache):
  return subprocess.Popen(
      [sys.executable, "evaluate.py", f"--data={data}", f"--out={out}",
       f"--checkpoint={out.parent / 'tiny'}", "--progress=false", "--samples=0"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "PYTHONPATH": str(REPO), compile_cache.ENV: str(cache)})


def finish(proc):
  stdout, stderr = proc.communicate(timeout=900)
  assert proc.returncode == 0, stderr[-3000:]
  compiled, read = map(int, re.search(r"(\d+) programs compiled and (\d+) read", stdout).groups())
  return compiled, read


def test_two_writers_at_once_then_a_reader_hits(tmp_path):
  """Two evaluations fill an empty cache at once; a third, in a fresh process, reads from it."""
  config = model_lib.ModelConfig(dims=(8, 16, 32), depths=(1, 1, 1), depths_decoder=(1, 1, 1),
                                 d_state=4, fusion_d_state=6)
  checkpoint.save_model(tmp_path / "tiny", model_lib.create(config))
  data = tmp_path / "pairs"
  for kind in ("ir", "vi"):
    os.makedirs(data / kind)
    for name in ("07.png", "19.png"):  # 256 x 256 and 270 x 360: two buckets
      os.symlink(shared_path("data", "tno", kind, name), data / kind / name)
  cache = tmp_path / "cache"
  writers = [evaluate(data, tmp_path / f"out{i}", cache) for i in range(2)]
  first = [finish(p) for p in writers]
  assert all(read == 0 and compiled >= 2 for compiled, read in first), first
  entries = os.listdir(cache / compile_cache.cpu_kind())
  assert entries, "nothing was written to the cache"
  assert len(os.listdir(cache / compile_cache.cpu_kind() / "traced")) == 2  # the two buckets
  compiled, read = finish(evaluate(data, tmp_path / "out2", cache))
  assert read >= 2 and compiled < min(c for c, _ in first), (compiled, read, first)
  means = [json.loads((tmp_path / f"out{i}" / "metrics.json").read_text()) for i in range(3)]
  assert means[0] == means[1] == means[2]


TRACED_SCRIPT = """
import sys
import jax
import jax.numpy as jnp
from s4fusion_jax.runtime import compile_cache
compile_cache.enable()

def fn(params, x, extra):
  print("traced", flush=True)  # runs only while JAX traces fn
  return {"y": jnp.tanh(x @ params["w"]) + params["b"], "z": extra}

call = compile_cache.jit_reusing_traces(fn, {"test": sys.argv[1]})
n = int(sys.argv[2])
params = {"w": jnp.arange(n * 3.0).reshape(n, 3) / 10, "b": jnp.ones(3)}
out = call(params, jnp.ones((2, n)), None)
print(repr(jax.device_get(out["y"]).tolist()), out["z"])
"""


def traced_run(cache, facts="a", n=4):
  proc = subprocess.run([sys.executable, "-c", TRACED_SCRIPT, facts, str(n)], cwd=REPO,
                        capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO), compile_cache.ENV: str(cache)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.count("traced\n"), proc.stdout.splitlines()[-1], proc.stderr


def test_a_traced_program_is_read_back_by_a_fresh_process(tmp_path):
  cache = tmp_path / "cache"
  folder = cache / compile_cache.cpu_kind() / "traced"
  traces, first, _ = traced_run(cache)
  assert traces == 1 and len(os.listdir(folder)) == 1
  traces, again, _ = traced_run(cache)
  assert traces == 0 and again == first  # not traced again, the same numbers
  assert traced_run(cache, facts="b")[0] == 1  # other facts or shapes: traced anew
  assert traced_run(cache, n=5)[0] == 1 and len(os.listdir(folder)) == 3
  for entry in os.listdir(folder):  # unreadable entries: traced again, with a warning
    (folder / entry).write_bytes(b"not a program")
  traces, mended, stderr = traced_run(cache)
  assert traces == 1 and mended == first and "did not read back" in stderr
  assert traced_run(cache)[0] == 0  # the rewritten entry reads back
  traces, off, _ = traced_run("off")  # no cache: plain jit
  assert traces == 1 and off == first


def test_traced_entries_past_the_limit_go_oldest_first(tmp_path):
  for i in range(4):
    (tmp_path / f"{i}.jax_exported").write_bytes(b"")
    os.utime(tmp_path / f"{i}.jax_exported", (i, i))
  (tmp_path / ".tmp-x.partial").write_bytes(b"")  # another process's entry being written
  compile_cache._drop_oldest(tmp_path, ".jax_exported", 2)  # pylint: disable=protected-access
  assert sorted(os.listdir(tmp_path)) == [".tmp-x.partial", "2.jax_exported", "3.jax_exported"]


def test_a_trace_that_cannot_be_kept_still_runs(monkeypatch, tmp_path):
  monkeypatch.setitem(compile_cache._enabled, "path", str(tmp_path))  # pylint: disable=protected-access

  def no_serializer(self, *args, **kwargs):
    raise ImportError("no module named flatbuffers")

  monkeypatch.setattr(jax.export.Exported, "serialize", no_serializer)
  call = compile_cache.jit_reusing_traces(lambda x: {"y": x * 2}, {"test": "unkept"})
  with pytest.warns(UserWarning, match="traced program not kept.*flatbuffers"):
    out = call(jnp.arange(3.0))
  np.testing.assert_array_equal(out["y"], [0.0, 2.0, 4.0])
  assert not [e for e in os.listdir(tmp_path / "traced") if e.endswith(".jax_exported")]


def test_a_kept_program_is_read_back_and_an_unreadable_one_compiled_again(tmp_path):
  """``compile_lowered``'s store for the processes JAX's cache does not serve (the 2-process
  training runs of test_multihost.py read it in fresh processes)."""
  reads = []

  def listener(event, duration, **_):
    del duration
    if event == compile_cache.PROCESS_CACHE_READ:
      reads.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    check_kept_programs(tmp_path, reads)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def check_kept_programs(tmp_path, reads):
  """The kept programs' store in ``tmp_path``; ``reads`` lists its reads as they happen."""
  lowered = jax.jit(lambda x, y: {"z": jnp.sin(x) * y}, donate_argnums=0).lower(
      jnp.ones(5), jnp.float32(2))
  compile_kept = compile_cache._compile_kept  # pylint: disable=protected-access
  kept = lambda facts=("process 1",): compile_kept(lowered, tmp_path, list(facts))
  run = lambda compiled: np.asarray(compiled(jnp.arange(5.0), jnp.float32(2))["z"])
  want = run(lowered.compile())
  np.testing.assert_array_equal(run(kept()), want)
  (entry,) = tmp_path.iterdir()
  np.testing.assert_array_equal(run(kept()), want)
  assert len(reads) == 1  # the second call read the first's program
  kept(["process 2"])
  assert len(reads) == 1 and len(list(tmp_path.iterdir())) == 2  # other facts: another entry
  entry.write_bytes(b"not a program")
  with pytest.warns(UserWarning, match="did not read back"):
    np.testing.assert_array_equal(run(kept()), want)
  assert len(reads) == 1
  np.testing.assert_array_equal(run(kept()), want)  # the rewritten entry reads back
  assert len(reads) == 2
  np.testing.assert_array_equal(run(compile_cache.compile_lowered(lowered)), want)
  assert len(reads) == 2  # one process: JAX's cache alone, nothing kept beside it
  assert not any(name.startswith("process-")
                 for name in os.listdir(compile_cache.directory()))


def test_a_compile_log_counts_until_closed():
  x = np.ones(7, np.float32)
  with compile_cache.CompileLog() as log:
    jax.jit(lambda x: x * 3 + 1).lower(x).compile()
    assert log.programs == 1 and log.seconds > 0
  jax.jit(lambda x: x * 5 + 2).lower(x).compile()
  assert log.programs == 1
  log.close()  # closed already (by leaving the with): nothing to do, no error
