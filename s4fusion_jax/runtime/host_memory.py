"""glibc's allocator keeps the large buffers XLA:CPU frees, for the next call to reuse; Python's
cyclic collector waits while a command starts (``pause_collections``) and skips the collections
at exit (``no_collection_at_exit``).

Every call of a compiled program on the CPU allocates its temporary buffer (918 MB for a fuse
of a 481 x 637 pair in its size bucket, 3.1 GB for the default config's train step) and frees
it when the call ends. By default glibc serves allocations that large with fresh mappings
from the kernel and unmaps them on free, so every call touches its buffer anew, a 4 KiB page
fault at a time: about 240,000 faults and 0.35 s of system time per fuse, 800,000 and 1.5 s
per train step. The XLA runtime's threads allocate it, so glibc's per-thread arenas (whose
heaps are at most 64 MB) would map it fresh whatever the threshold. With

    glibc.malloc.arena_max=1                 every thread allocates from the main heap,
    glibc.malloc.mmap_threshold=4294967296   which serves allocations up to 4 GiB,
    glibc.malloc.trim_threshold=4294967296   and keeps up to 4 GiB freed at its top,

the buffer freed by one call is the next call's: no faults once the first few calls have run
(one may allocate before the last one's buffer is freed: dispatch is asynchronous). A warm
fuse takes 1.78 -> 1.60 s, a train step 6.6-7.3 -> 6.2-6.3 s, evaluate.py on 20 pairs
32 -> 30 s (docs/performance.md). The numbers computed do not change; the process keeps its
peak memory until it exits.

glibc reads these tunables once, when a process starts. So ``reuse_freed_buffers()``, called
by an entry point (``train.py``, ``evaluate.py``, ``python -m s4fusion_jax``, the bench
scripts) before it imports JAX, starts that process again in place (``exec``: the same process
id, ``sys.orig_argv`` and environment) with the tunables added to ``GLIBC_TUNABLES``; the
processes it starts inherit them. It does so only on Linux with glibc, where JAX computes on
the CPU (``JAX_PLATFORMS`` is ``cpu``, or unset with no GPU or TPU plugin installed: one
arena for every thread is not for a host feeding accelerators), and leaves a tunable the user
set as it is. ``S4FUSION_REUSE_BUFFERS=0`` turns it off. In a Python process of your own, set
``GLIBC_TUNABLES`` to ``TUNABLES`` joined by ``:`` before starting it.

This module imports nothing of JAX's.
"""

import atexit
import gc
import importlib.metadata
import importlib.util
import os
import platform
import sys

ENV = "S4FUSION_REUSE_BUFFERS"
TUNABLES = {
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.mmap_threshold": str(4 << 30),
    "glibc.malloc.trim_threshold": str(4 << 30),
}


def on_cpu(environ):
  """Whether JAX will compute on the CPU: ``JAX_PLATFORMS`` says so, or, unset, no GPU or TPU
  plugin is installed (JAX finds those as ``jax_plugins`` modules or entry points, or
  ``libtpu``)."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not (importlib.util.find_spec("jax_plugins") or importlib.util.find_spec("libtpu")
              or importlib.metadata.entry_points(group="jax_plugins"))


def tunables_to_set(environ, libc):
  """The ``GLIBC_TUNABLES`` value to restart with, or None to leave the process as it is.

  Args:
    environ: the process environment (a mapping).
    libc: ``platform.libc_ver()``: ("glibc", version), or something else.
  """
  if environ.get(ENV, "1") == "0" or libc[0] != "glibc":
    return None
  existing = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
  named = {t.split("=")[0] for t in existing}
  missing = [f"{name}={value}" for name, value in TUNABLES.items() if name not in named]
  if not missing or not on_cpu(environ):  # the plugins' lookup last: ~50 ms
    return None
  return ":".join(existing + missing)


def reuse_freed_buffers():
  """Restarts this process with the allocator settings above, where they apply.

  Returns, doing nothing, where they are set already (by an earlier call, or each by the user),
  turned off or not applicable; otherwise it does not return: the process runs again from the
  start with the same ``sys.orig_argv``. Call it first in a program's entry point, before
  importing JAX (everything done before it is done again).
  """
  if sys.platform != "linux" or not sys.executable:
    return
  tunables = tunables_to_set(os.environ, platform.libc_ver())
  if tunables is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})


_paused = {"now": False, "fork_handler": False}


def pause_collections():
  """Turns Python's cyclic garbage collector off while a command starts, until
  ``resume_collections``.

  Importing JAX, Flax and orbax, loading a model and tracing a program make hundreds of
  thousands of objects that live as long as the process, and each of the collector's full
  collections walks them all: in a warm ``fuse`` command of ~4 s, four of them took 0.3 s; in a
  training run's start, ten took 2 s (those during the train step's trace 0.2-0.4 s each). Call
  it in an entry point before those imports, and ``resume_collections`` once the command is set
  up. A process forked meanwhile (a data worker) starts with the collector on.
  """
  gc.disable()
  _paused["now"] = True
  if not _paused["fork_handler"]:
    os.register_at_fork(after_in_child=resume_collections)
    _paused["fork_handler"] = True


def resume_collections():
  """Ends ``pause_collections``: what the start-up made is moved out of the collector's reach
  for good (``gc.freeze``: later full collections do not walk it again; the few cycles it left
  unreferenced stay until exit: +1 MB of a fuse command's 1.38 GB peak), then the collector is
  on again. Does nothing unless ``pause_collections`` turned it off, so library code may call
  it and tests may call an entry point's ``main``."""
  if _paused["now"]:
    _paused["now"] = False
    gc.freeze()
    gc.enable()


def no_collection_at_exit():
  """Skips the garbage collections Python runs as it exits (for the entry points' last step).

  As the interpreter shuts down it collects every object it tracks; with JAX, Flax and a traced
  model loaded that is ~0.25 s of a `fuse` command's ~4 s, for memory the process is about to
  return anyway. Registered first (before the imports that register theirs), ``gc.freeze``
  runs after every other exit handler and moves every object out of the collector's reach.
  Objects left in reference cycles are then not finalized at exit (Python does not promise
  it): the entry points close their files and writers themselves.
  """
  atexit.register(gc.freeze)
