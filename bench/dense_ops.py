"""Milliseconds of three single XLA:CPU operations: how fast this machine does dense math.

    python bench/dense_ops.py
    LOAD=2 bash bench/as_avx2.sh python bench/dense_ops.py     # as if on the slower kind

The yardstick for comparing machines and settings (the AVX2 emulation of bench/as_avx2.sh
against this CPU as it is): a float32 matmul, a 3 x 3 convolution and an elementwise chain, each
compiled alone and timed as the median of ``--repeats`` calls after a warm-up. The table's
header names the CPU and the ``XLA_FLAGS`` the programs were compiled with.
"""

import argparse
import os

import jax
import jax.numpy as jnp

import common  # pylint: disable=wrong-import-order


def conv3x3(x, w):
  """x (1, H, W, C_in), w (3, 3, C_in, C_out) -> (1, H, W, C_out), zero-padded."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def elementwise(x):
  """A chain of elementwise operations and a cumulative sum, as a scan's surroundings have."""
  return jnp.exp(x) * jax.nn.silu(x) + jnp.cumsum(x, axis=2)


def cases():
  """[(name, function, arguments)]: the three operations on fixed random float32 inputs."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (1024, 1024))
  x = jax.random.normal(key, (1, 240, 320, 64))
  w = jax.random.normal(key, (3, 3, 64, 64))
  return [("matmul 1024 x 1024 x 1024", jnp.matmul, (a, a)),
          ("3 x 3 convolution, 240 x 320 x 64 -> 64", conv3x3, (x, w)),
          ("elementwise exp, silu, cumsum on 240 x 320 x 64", elementwise, (x,))]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args()
  rows = []
  for name, fn, fn_args in cases():
    _, compiled = common.compile_timed(fn, *fn_args)
    rows.append({"case": name, "ms": 1e3 * common.time_run(compiled, *fn_args,
                                                           repeats=args.repeats)})
  print(f"{common.machine()}, jax {jax.__version__}, commit {common.commit()}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")
  common.print_table(rows, [("case", "operation", "{}"), ("ms", "ms (median)", "{:.2f}")])


if __name__ == "__main__":
  main()
