"""Where one train step's time goes: a JAX profile of the compiled step, summed by kind of op.

    python bench/profile_step.py                # the small step of bench/throughput.py
    python bench/profile_step.py --case full    # the full-loss step at 4 x 229^2
    python bench/profile_step.py --top 20       # and the 20 costliest ops

Runs the step twice, traces the third run (``jax.profiler``), and sums the time of every XLA
op by pass (forward, or backward: JAX's ``transpose(jvp)``) and kind (the scan loops, the
convolutions, matmuls, data movement, the rest), read from the op's source in the compiled
HLO (ops XLA made without a source, such as its library calls, are counted apart). Op times
on the two cores' threads add up, so the total exceeds the wall time.
"""

import argparse
import collections
import glob
import os
import re
import tempfile

import jax

import throughput  # pylint: disable=wrong-import-order

KINDS = (  # (kind, what the op's JAX source name contains), first match wins
    ("selective scan loops", ("/while/",)),
    ("convolutions", ("conv_general_dilated",)),
    ("matmuls", ("dot_general",)),
    ("data movement", ("transpose", "concatenate", "pad", "copy", "reshape", "slice", "stack",
                       "rev", "broadcast", "squeeze", "split")),
)
FRAMES = ("$", "ThunkExecutor", "ThreadpoolListener", "PjitFunction", "end: ")


def op_sources(hlo_text):
  """HLO instruction name -> the JAX source (op_name metadata) it was lowered from."""
  return dict(re.findall(r'^\s*%?([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', hlo_text,
                         re.M))


def kind_of(source):
  if not source:
    return "no source in the HLO (library calls)"
  last = source.rsplit("/", 1)[-1]
  for kind, keys in KINDS:
    if any(key in (source if key == "/while/" else last) for key in keys):
      return kind
  return "elementwise and other"


def profile(fn, args, workdir):
  compiled = jax.jit(fn).lower(*args).compile()
  for _ in range(2):
    jax.block_until_ready(compiled(*args))
  jax.profiler.start_trace(workdir)
  jax.block_until_ready(compiled(*args))
  jax.profiler.stop_trace()
  path = sorted(glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
  sources = op_sources(compiled.as_text())
  times = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        name = event.name
        # A while loop's own event spans the ops inside it, which have events of their own.
        if name.startswith(FRAMES) or name.startswith("while"):
          continue
        times[(name, sources.get(name, ""))] += event.duration_ns / 1e9
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", choices=("small", "full"), default="small")
  parser.add_argument("--top", type=int, default=0)
  args = parser.parse_args()
  fn, fn_args = (throughput.train_case(8, 97, False) if args.case == "small"
                 else throughput.train_case(4, 229, True))
  with tempfile.TemporaryDirectory() as workdir:
    times = profile(fn, fn_args, workdir)
  total = sum(times.values())
  by_kind = collections.Counter()
  for (_, source), seconds in times.items():
    pass_ = "backward" if "transpose(" in source else "forward" if source else "-"
    by_kind[(pass_, kind_of(source))] += seconds
  print(f"{args.case} step: {total:.2f} s of op time\n")
  print("| pass | kind | seconds | share |\n|---|---|---|---|")
  for (pass_, kind), seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
    print(f"| {pass_} | {kind} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
  if args.top:
    print("\n| op | source | seconds |\n|---|---|---|")
    for (name, source), seconds in times.most_common(args.top):
      print(f"| {name} | {source[:80]} | {seconds:.3f} |")


if __name__ == "__main__":
  main()
