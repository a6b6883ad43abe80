"""Shared benchmark helpers: timing after compilation, XLA's cost analysis, peak RSS per case.

Each case runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own; the parent prints one markdown table.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=wrong-import-position,wrong-import-order
from flax import nnx  # pylint: disable=wrong-import-position,wrong-import-order

from s4fusion_jax.network import model as model_lib  # pylint: disable=wrong-import-position


def compile_timed(fn, *args):
  """(compile seconds, the compiled ``jax.jit(fn)`` for ``args``)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start, compiled


def fuse_program(model, x):
  """``model.fuse`` on the pair (x, x), x (batch, H, W, 1), as a function of the model's state
  for ``jax.jit``: (fn, (state, x, x))."""
  graphdef, state = nnx.split(model)
  return (lambda s, a, b: model_lib.fuse(nnx.merge(graphdef, s), a, b)), (state, x, x)


def fuse_seconds(model, x, repeats=3):
  """(compile seconds, median seconds of ``repeats`` runs) of ``model.fuse`` on the pair (x, x),
  x (batch, H, W, 1), in one bucket's program under ``jit``."""
  fn, args = fuse_program(model, x)
  compile_s, compiled = compile_timed(fn, *args)
  return compile_s, time_run(compiled, *args, repeats=repeats)


def time_run(compiled, *args, repeats=3):
  """The median seconds of ``repeats`` runs of ``compiled`` after one warm-up run."""
  jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  return statistics.median(runs)


def xla_stats(compiled):
  """flops, bytes accessed and temporary buffer bytes that XLA reports for a compiled function."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  memory = compiled.memory_analysis()
  return {
      "gflops": cost.get("flops", float("nan")) / 1e9,
      "gbytes_accessed": cost.get("bytes accessed", float("nan")) / 1e9,
      "temp_gb": getattr(memory, "temp_size_in_bytes", float("nan")) / 1e9,
  }


def peak_rss_gb():
  """This process's peak resident memory in GB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def progress(message):
  """Prints a progress line of a case's child (``#`` first): ``run_cases`` echoes it at once,
  so a run stopped midway (a timeout on a lent machine) still shows what was measured."""
  print(f"# {message}", flush=True)


def run_cases(script, cases, extra_args=()):
  """Runs ``script --case NAME`` for each case in a fresh process; returns their JSON rows.

  The child's ``progress`` lines are echoed as they come; its last line is its row.
  """
  rows = []
  for case in cases:
    with tempfile.TemporaryFile("w+") as stderr:
      child = subprocess.Popen([sys.executable, script, "--case", case, *extra_args],
                               stdout=subprocess.PIPE, stderr=stderr, text=True)
      last = ""
      for last in child.stdout:
        if last.startswith("# "):
          print(last, end="", flush=True)
      child.wait()
      if child.returncode != 0:
        stderr.seek(0)
        rows.append({"case": case, "error": stderr.read().strip().splitlines()[-1:]})
        continue
    rows.append(json.loads(last))
  return rows


def print_table(rows, columns):
  """Prints ``rows`` (dicts) as a markdown table of ``columns`` (key, header, format); a
  column a row does not have (a measurement not asked for) shows "-"."""
  print("| " + " | ".join(h for _, h, _ in columns) + " |")
  print("|" + "---|" * len(columns))
  for row in rows:
    if "error" in row:
      print(f"| {row['case']} | failed: {row['error']} |")
      continue
    print("| " + " | ".join(fmt.format(row[k]) if k in row else "-" for k, _, fmt in columns)
          + " |")


def cpu():
  """The host CPU: model name, family / model numbers, AVX-512 or not (from /proc/cpuinfo)."""
  facts = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        facts.setdefault(key.strip(), value.strip())
  except OSError:
    return "an unknown CPU"
  avx512 = "AVX-512" if "avx512f" in facts.get("flags", "").split() else "no AVX-512 (AVX2 only)"
  return (f"{facts.get('model name', '?')} (family {facts.get('cpu family', '?')}, model "
          f"{facts.get('model', '?')}), {avx512}, {os.cpu_count()} CPUs")


def machine():
  """One line naming the device and the host CPU (model, AVX-512 or not, CPU count)."""
  device = jax.devices()[0]
  return f"{device.platform}: {device.device_kind}; {cpu()}"


def commit():
  """The checked-out commit (short hash), with "+changes" when the tree differs from it."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False).stdout.strip()
  return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain") else "")


def random_pair(height=481, width=637, seed=0):
  """A random uint8 pair as ``Fuser.fuse`` takes it: ir (H, W, 1), vi (H, W, 3)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  return tuple(rng.integers(0, 256, (height, width, c), np.uint8) for c in (1, 3))
