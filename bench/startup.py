"""What a user waits for before and while fusing: start-up, compilation, the cache, buckets.

    python bench/startup.py [--pairs 40] [--repeats 3]    # about 15 minutes on 2 CPU cores

Every case is a fresh process, run on an otherwise idle CPU; short cases are repeated and
their median shown, the evaluations run once. Seconds are wall time, also shown in units of
the ResNet50 forward on 4 x 229^2 x 3 measured in this run (the machines differ ~3x).
  import       ``import s4fusion_jax.evaluation.inference`` (JAX, flax and the model's modules)
  load_model   ``checkpoint.load_model`` of the bundled model, after the import
  new_model    ``S4Fusion(ModelConfig(), rngs=...)``: a fresh model, built eagerly
  create       ``model.create(ModelConfig())``: the same in one compiled program (training
               starts this way), with the cache emptied, then warm
  fuse         ``python -m s4fusion_jax fuse`` of one random 481 x 637 pair, the whole command:
               with an emptied cache directory, then again with the cache the first filled
               (--repeats such pairs, the median of each)
  warm fuse    ``Fuser.fuse`` of that pair once compiled (the median of --repeats, with the
               process CPU time / wall time): on one device, as the fusing entry points run
               it, and with its scans split over one CPU device per core
               (``host_cores.split_cpu``, ``Fuser(devices=...)``)
  train step   lowering and compiling the train step of configs/smoke.py (batch 8 x 61^2) and
               of the default config (the full loss with a random ResNet50, batch 4 x 229^2:
               compile time hardly depends on the batch), with an emptied cache, then warm
  evaluate     ``evaluate.py`` on the first --pairs pairs of roadscene_train with the bundled
               model: --exact_sizes or bucketed, each with an emptied and then a warm cache;
               programs compiled and read from the cache as evaluate.py counts them
The padded area (sum of H x W the model runs on) and the number of distinct programs are
printed for those pairs and for all 180, exact and bucketed.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from PIL import Image

import common  # pylint: disable=wrong-import-order
from s4fusion_jax.numerics import sizes  # pylint: disable=wrong-import-order
from s4fusion_jax.runtime import compile_cache  # pylint: disable=wrong-import-order

DATA = os.path.join(common.REPO, "..", "shared", "data", "roadscene_train")

IN_PROCESS = {
    "import": "import s4fusion_jax.evaluation.inference",
    "load_model": "inference.Fuser.from_flags()",
    "new_model": "model_lib.S4Fusion(model_lib.ModelConfig(), rngs=nnx.Rngs(0))",
    "create": "model_lib.create(model_lib.ModelConfig())",
}


def warm_fuse(repeats, split):
  """{seconds, cpu_per_wall} of ``Fuser.fuse`` of a random 481 x 637 pair, once compiled; with
  ``split``, its scans split over one CPU device per core."""
  import jax  # pylint: disable=import-outside-toplevel
  from s4fusion_jax.evaluation import inference  # pylint: disable=import-outside-toplevel
  from s4fusion_jax.interop import checkpoint  # pylint: disable=import-outside-toplevel
  from s4fusion_jax.runtime import host_cores  # pylint: disable=import-outside-toplevel
  if split:
    host_cores.split_cpu()
  fuser = inference.Fuser(checkpoint.load_model(inference.BUNDLED_MODEL),
                          devices=jax.local_devices() if split else None)
  ir, vi = common.random_pair()
  fuser.fuse(ir, vi)
  runs = []
  for _ in range(repeats):
    cpu, start = time.process_time(), time.perf_counter()
    fuser.fuse(ir, vi)
    wall = time.perf_counter() - start
    runs.append((wall, (time.process_time() - cpu) / wall))
  wall, cpu_per_wall = sorted(runs)[len(runs) // 2]
  return {"seconds": wall, "cpu_per_wall": cpu_per_wall}


def train_step_compile(name):
  """{seconds} to lower and compile the train step of configs/``name``.py, with the cache."""
  import jax  # pylint: disable=import-outside-toplevel
  import throughput  # pylint: disable=import-outside-toplevel
  compile_cache.enable()
  step, step_args = throughput.config_step(name)
  start = time.perf_counter()
  jax.jit(step).lower(*step_args).compile()
  return {"seconds": time.perf_counter() - start}


def in_process_case(name, repeats):
  """Times one case in this (fresh) process; prints its seconds (and more) as JSON."""
  if name.startswith("warm_fuse"):
    return print(json.dumps(warm_fuse(repeats, split=name == "warm_fuse_split")))
  if name.startswith("train_"):
    return print(json.dumps(train_step_compile(name[len("train_"):])))
  compile_cache.enable()  # as the entry points do (the "create" case reads and fills it)
  start = time.perf_counter()
  from flax import nnx  # pylint: disable=import-outside-toplevel,unused-import
  from s4fusion_jax.evaluation import inference  # pylint: disable=import-outside-toplevel,unused-import
  from s4fusion_jax.network import model as model_lib  # pylint: disable=import-outside-toplevel,unused-import
  seconds = time.perf_counter() - start
  if name != "import":
    start = time.perf_counter()
    eval(IN_PROCESS[name])  # pylint: disable=eval-used
    seconds = time.perf_counter() - start
  print(json.dumps({"seconds": seconds}))


def timed_command(args, cache, env=None):
  """(wall seconds, stdout) of a command run with ``cache`` as its compilation cache."""
  start = time.perf_counter()
  out = subprocess.run([sys.executable, *args], cwd=common.REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": common.REPO, compile_cache.ENV: cache,
                            **(env or {})}, check=False)
  seconds = time.perf_counter() - start
  if out.returncode != 0:
    raise RuntimeError(f"{args} failed: {out.stderr[-2000:]}")
  return seconds, out.stdout


def resnet_unit(repeats):
  """The median seconds of the ResNet50 forward on 4 x 229^2 x 3 (after compiling it)."""
  import jax  # pylint: disable=import-outside-toplevel
  import throughput  # pylint: disable=import-outside-toplevel
  fn, fn_args = throughput.resnet_case()
  return common.time_run(jax.jit(fn).lower(*fn_args).compile(), *fn_args, repeats=repeats)


def areas(shapes):
  """{exact / bucketed: (distinct programs, padded area)} of images of ``shapes``."""
  exact = [(sizes.valid_length(h), sizes.valid_length(w)) for h, w in shapes]
  bucketed = [(sizes.bucket_length(h), sizes.bucket_length(w)) for h, w in shapes]
  return {name: (len(set(r)), sum(h * w for h, w in r))
          for name, r in (("exact", exact), ("bucketed", bucketed))}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", help=argparse.SUPPRESS)
  parser.add_argument("--pairs", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if args.case:
    return in_process_case(args.case, args.repeats)
  work = tempfile.mkdtemp(prefix="s4fusion-startup-")
  cache = os.path.join(work, "cache")
  rows = []
  for name in IN_PROCESS:
    runs = [json.loads(timed_command([__file__, "--case", name], cache)[1].splitlines()[-1])
            ["seconds"] for _ in range(args.repeats + (name == "create"))]
    if name == "create":  # its first run fills the emptied cache, the others read it
      rows.append({"case": "create, empty cache", "seconds": runs.pop(0), "programs": "-"})
      name = "create, warm cache"
    rows.append({"case": name, "seconds": statistics.median(runs), "programs": "-"})

  for kind, image in zip(("ir", "vi"), common.random_pair()):
    os.makedirs(os.path.join(work, "pair", kind))
    Image.fromarray(image.squeeze()).save(os.path.join(work, "pair", kind, "a.png"))
  fuse_runs = {"empty": [], "warm": []}
  for _ in range(args.repeats):  # each time: the cache emptied, then read back
    shutil.rmtree(cache, ignore_errors=True)
    for state, runs in fuse_runs.items():
      runs.append(timed_command(["-m", "s4fusion_jax", "fuse", "--ir", f"{work}/pair/ir/a.png",
                                 "--vi", f"{work}/pair/vi/a.png", "--out", f"{work}/a.png"],
                                cache)[0])
  for state, runs in fuse_runs.items():
    rows.append({"case": f"fuse 481 x 637, {state} cache", "seconds": statistics.median(runs),
                 "programs": "-"})

  for label, name in (("one device", "warm_fuse"), ("scans split over a device per core",
                                                   "warm_fuse_split")):
    case = json.loads(timed_command([__file__, "--case", name, f"--repeats={args.repeats}"],
                                    cache)[1].splitlines()[-1])
    rows.append({"case": f"warm fuse 481 x 637, {label} (CPU / wall {case['cpu_per_wall']:.2f})",
                 "seconds": case["seconds"], "programs": "-"})
  for config in ("smoke", "default"):
    shutil.rmtree(cache, ignore_errors=True)
    for state in ("empty", "warm"):
      seconds = json.loads(timed_command([__file__, "--case", f"train_{config}"], cache)[1]
                           .splitlines()[-1])["seconds"]
      rows.append({"case": f"train step compile, configs/{config}.py, {state} cache",
                   "seconds": seconds, "programs": "-"})

  names = sorted(os.listdir(os.path.join(DATA, "ir")))
  subset = os.path.join(work, "subset")
  for kind in ("ir", "vi"):
    os.makedirs(os.path.join(subset, kind))
    for name in names[:args.pairs]:
      os.symlink(os.path.join(os.path.abspath(DATA), kind, name), os.path.join(subset, kind, name))
  means = {}
  for mode in ("--exact_sizes", "--noexact_sizes"):
    shutil.rmtree(cache, ignore_errors=True)
    for state in ("empty", "warm"):
      seconds, stdout = timed_command(["evaluate.py", f"--data={subset}", f"--out={work}/eval-{mode}-{state}",
                                       "--progress=false", mode], cache)
      compiled, read = re.search(r"(\d+) programs compiled and (\d+) read", stdout).groups()
      means[mode, state] = dict(kv.split("=") for kv in stdout.split("\n")[-2].split())
      label = "exact sizes" if mode == "--exact_sizes" else "bucketed"
      rows.append({"case": f"evaluate {args.pairs} pairs, {label}, {state} cache",
                   "seconds": seconds, "programs": f"{compiled} compiled, {read} read"})
  unit = resnet_unit(args.repeats)
  for row in rows:
    row["units"] = row["seconds"] / unit

  print(f"{common.machine()}; commit {common.commit()}; unit = ResNet50 forward 4x229^2x3 = "
        f"{unit:.3f} s\n")
  common.print_table(rows, [("case", "case", "{}"), ("seconds", "seconds", "{:.1f}"),
                            ("units", "ResNet50 units", "{:.0f}"), ("programs", "programs", "{}")])
  shapes = [Image.open(os.path.join(DATA, "ir", n)).size[::-1] for n in names]
  print()
  for label, subset_shapes in ((f"first {args.pairs}", shapes[:args.pairs]),
                               (f"all {len(shapes)}", shapes)):
    stats = areas(subset_shapes)
    print(f"roadscene_train, {label} pairs: exact sizes {stats['exact'][0]} programs, bucketed "
          f"{stats['bucketed'][0]}; padded area bucketed / exact = "
          f"{stats['bucketed'][1] / stats['exact'][1]:.3f}")
  worst = max(abs(float(means["--noexact_sizes", "empty"][k]) / float(v) - 1)
              for k, v in means["--exact_sizes", "empty"].items())
  print(f"evaluate's means, bucketed vs exact: largest relative difference {worst:.1e}")
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
