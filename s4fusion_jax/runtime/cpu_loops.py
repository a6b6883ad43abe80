"""XLA:CPU runs each small loop, the selective scans' above all, as one compiled function.

A ``lax.scan`` becomes an XLA while loop, and XLA:CPU runs a while loop one step at a time:
at every step it calls each kernel of the loop's body from its runtime (a sequential scan's
step: the state update, the output's in-place write, the step counter, the comparison, the
carried copies). It can instead compile a loop whole, as one function that calls nothing
between steps (its ``SmallWhileLoopHoistingPass``), but by default only where one step reads
and writes less than 1 KiB. ``run_small_loops_whole()`` raises that bound to ``LOOP_BYTES``
through ``XLA_FLAGS`` (``--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=N``).

The bound is per step, not per loop: a scan's step touches one state and one position (the
forward's 3.3 MB at most at the paper's batch of 20; backward steps carry more) and falls under
it at the batches measured; the loops whose every step is large (a chunk of the chunked scan at
training sizes, the micro-batches of a train step) stay as they are, their large kernels split
over the cores by XLA:CPU's runtime. The numbers computed do not change (the same kernels,
called from one function).

Measured on this project's 2-core CPU (docs/performance.md, alternated runs): the smoke
config's train step 0.25-0.27 -> 0.19 s, the default config's 7.7 -> 6.9 s; a fuse does not
measurably change.

Entry points (``train.py``, ``evaluate.py``, ``python -m s4fusion_jax``) call it before JAX
computes anything; so do the tests. It adds the option only where JAX computes on the CPU
(``host_memory.on_cpu``) and leaves an ``XLA_FLAGS`` that sets it already as it is;
``S4FUSION_CPU_LOOP_BYTES`` sets another bound (0: leave XLA's default). In a Python process of
your own, add the same to ``XLA_FLAGS`` before JAX first compiles.

This module imports nothing of JAX's.
"""

import os

from s4fusion_jax.runtime import host_memory

ENV = "S4FUSION_CPU_LOOP_BYTES"
OPTION = "xla_cpu_small_while_loop_byte_threshold"
LOOP_BYTES = 4 << 20
_EXTRA = "--xla_backend_extra_options="


def xla_flags(environ):
  """The ``XLA_FLAGS`` value with ``OPTION`` added, or None to leave the environment as it is.

  Args:
    environ: the process environment (a mapping).

  Raises:
    ValueError: ``S4FUSION_CPU_LOOP_BYTES`` is not a whole number of bytes >= 0.
  """
  chosen = environ.get(ENV, str(LOOP_BYTES))
  if not chosen.isdigit():
    raise ValueError(f"{ENV}={chosen!r}: give a whole number of bytes (0: XLA's default)")
  flags = environ.get("XLA_FLAGS", "").split()  # as XLA splits them
  extras = [i for i, flag in enumerate(flags) if flag.startswith(_EXTRA)]
  if int(chosen) == 0 or any(f"{OPTION}=" in flags[i] for i in extras):
    return None
  if not host_memory.on_cpu(environ):
    return None
  entry = f"{OPTION}={chosen}"
  if extras:  # joins the user's last list (XLA adds every list's entries to one map)
    flags[extras[-1]] += ("," if flags[extras[-1]] != _EXTRA else "") + entry
  else:
    flags.append(_EXTRA + entry)
  return " ".join(flags)


def run_small_loops_whole():
  """Sets ``XLA_FLAGS`` for this process (and those it starts) as ``xla_flags`` says; for an
  entry point, which exits naming ``S4FUSION_CPU_LOOP_BYTES`` if that is not a number.

  Call it before JAX compiles anything: XLA reads ``XLA_FLAGS`` once, when its first backend
  starts.
  """
  try:
    flags = xla_flags(os.environ)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if flags is not None:
    os.environ["XLA_FLAGS"] = flags
