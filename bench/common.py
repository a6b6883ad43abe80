"""The helpers of bench/: the machine line, compile-then-time, peak memory, a markdown table."""

import importlib
import os
import resource
import statistics
import subprocess
import time

import jax
from flax import nnx

from s4fusion_jax.network import model as model_lib
from s4fusion_jax.training import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu():
  """The host CPU's model name and whether it has AVX-512 (from /proc/cpuinfo)."""
  facts = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        facts.setdefault(key.strip(), value.strip())
  except OSError:
    return f"an unknown CPU, {os.cpu_count()} CPUs"
  avx512 = "AVX-512" if "avx512f" in facts.get("flags", "").split() else "no AVX-512"
  return f"{facts.get('model name', '?')}, {avx512}, {os.cpu_count()} CPUs"


def commit():
  """The checked-out commit (short hash), with "+changes" when the tree differs from it."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False).stdout.strip()
  return (git("rev-parse", "--short", "HEAD") or "?") + (
      "+changes" if git("status", "--porcelain") else "")


def machine():
  """One line: the device (the CPU's model and AVX-512 on a CPU), JAX's version, the commit."""
  device = jax.devices()[0]
  name = cpu() if device.platform == "cpu" else f"{device.platform}: {device.device_kind}"
  return f"{name}; jax {jax.__version__}; commit {commit()}"


def compile_timed(fn, *args):
  """(compile seconds, the compiled ``jax.jit(fn)`` for ``args``)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start, compiled


def time_run(compiled, *args, repeats=3):
  """The median seconds of ``repeats`` runs of ``compiled`` after one warm-up run."""
  jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  return statistics.median(runs)


def peak_memory_gb():
  """The device's peak bytes in use so far (``memory_stats``), or where JAX keeps no such
  count (the CPU) the process's peak resident memory, in GB."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 1e9
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def fuse_seconds(model, height, width, batch=1, repeats=3):
  """(compile seconds, median seconds) of ``model_lib.fuse`` on ``batch`` random pairs."""
  graphdef, state = nnx.split(model)
  x = jax.random.uniform(jax.random.key(0), (batch, height, width, 1))
  fn = lambda s, a, b: model_lib.fuse(nnx.merge(graphdef, s), a, b)
  compile_s, compiled = compile_timed(fn, state, x, x)
  return compile_s, time_run(compiled, state, x, x, repeats=repeats)


def load_config(spec):
  """The config of "path/to/config.py[:argument]" (as train.py's ``--config`` takes it), the
  path relative to the repository root."""
  path, _, argument = spec.partition(":")
  module = importlib.import_module(os.path.splitext(path)[0].replace(os.sep, "."))
  return module.get_config(argument) if argument else module.get_config()


def train_seconds(config, repeats=3):
  """(compile seconds, median seconds) of ``build.build(config)``'s train step on a random
  batch of ``config.batch_size`` x ``config.crop_size``^2 (a random ResNet50 where the loss
  needs one)."""
  run = build.build(config, resnet="random")
  shape = (config.batch_size, config.crop_size, config.crop_size, 1)
  batch = {k: jax.random.uniform(jax.random.key(i), shape) for i, k in enumerate(("ir", "vi"))}
  compile_s, compiled = compile_timed(run.train_step, run.state, batch, run.resnet_state)
  return compile_s, time_run(compiled, run.state, batch, run.resnet_state, repeats=repeats)


class Table:
  """A markdown table printed a row at a time, so a run cut short still shows its rows."""

  def __init__(self, *columns):
    """``columns``: (header, format) pairs."""
    self.formats = [fmt for _, fmt in columns]
    print("| " + " | ".join(header for header, _ in columns) + " |")
    print("|" + "---|" * len(columns), flush=True)

  def row(self, *values):
    """Prints one row; a value None (not measured) shows "-"."""
    cells = ("-" if v is None else fmt.format(v) for fmt, v in zip(self.formats, values))
    print("| " + " | ".join(cells) + " |", flush=True)
