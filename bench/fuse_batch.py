"""Seconds per pair of the bundled model's fuse at several batch sizes, per scan backend.

    python bench/fuse_batch.py                              # 481 x 637, batch 1 2 4 8 16
    python bench/fuse_batch.py --batches 1 2 --backends sequential chunked   # a CPU look

The number that chooses how many pairs of one size bucket evaluation fuses per call on a
platform: batch B pays off where seconds per pair at B is below that at 1. Each backend runs
in its own process; each batch size compiles its own program (compile seconds in the table)
and runs it ``--repeats`` times after a warm-up (median): ``common.fuse_seconds`` on
random pairs.
"""

import argparse
import json

import jax

import common  # pylint: disable=wrong-import-order
from s4fusion_jax.evaluation import inference  # pylint: disable=wrong-import-order
from s4fusion_jax.interop import checkpoint  # pylint: disable=wrong-import-order

BACKENDS = ("auto", "chunked", "associative", "sequential")


def run_case(args):
  model = checkpoint.load_model(inference.BUNDLED_MODEL, scan_backend=args.case)
  rows = []
  for batch in args.batches:
    x = jax.random.uniform(jax.random.key(batch), (batch, *args.size, 1))
    compile_s, seconds = common.fuse_seconds(model, x, args.repeats)
    rows.append({"batch": batch, "compile_s": compile_s, "s": seconds, "per_pair": seconds / batch})
    common.progress(f"{args.case}, batch {batch}: {seconds / batch:.4f} s per pair (compiled in "
                    f"{compile_s:.1f} s)")
  print(json.dumps({"case": args.case, "rows": rows}))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--backends", nargs="+", default=("auto",), choices=BACKENDS)
  parser.add_argument("--batches", nargs="+", type=int, default=(1, 2, 4, 8, 16))
  parser.add_argument("--size", nargs=2, type=int, default=(481, 637), metavar=("H", "W"))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--case", help=argparse.SUPPRESS)  # one backend, in a child process
  args = parser.parse_args()
  if args.case:
    run_case(args)
    return
  extra = ["--batches", *map(str, args.batches), "--size", *map(str, args.size),
           "--repeats", str(args.repeats)]
  results = common.run_cases(__file__, args.backends, extra)
  print(f"{common.machine()}, jax {jax.__version__}, commit {common.commit()}; bundled model, "
        f"{args.size[0]} x {args.size[1]} pairs\n")
  rows = []
  for result in results:
    if "error" in result:
      rows.append(result)
      continue
    one = result["rows"][0]["per_pair"]
    rows += [dict(row, case=result["case"], vs_one=row["per_pair"] / one)
             for row in result["rows"]]
  common.print_table(rows, [
      ("case", "backend", "{}"), ("batch", "batch", "{}"), ("compile_s", "compile (s)", "{:.1f}"),
      ("s", "fuse (s)", "{:.4f}"), ("per_pair", "s per pair", "{:.4f}"),
      ("vs_one", "per pair / batch 1", "{:.2f}")])


if __name__ == "__main__":
  main()
