"""XLA's persistent compilation cache, on for every entry point, and a count of compiles.

train.py, evaluate.py and ``python -m s4fusion_jax`` (fuse, demo, ablate, convert) call
``enable()`` first, so a program compiled once on a machine is read back by later runs
instead of being compiled again (fusing a folder: one program per size bucket, compiled
once per machine). The directory, in order of precedence:

    $S4FUSION_COMPILE_CACHE           a directory, or "off" to turn the cache off
    $JAX_COMPILATION_CACHE_DIR        JAX's own variable, if set
    $XDG_CACHE_HOME/s4fusion-jax/xla  (default ~/.cache/s4fusion-jax/xla)

Entries live in a subdirectory per host CPU (model and instruction-set flags): XLA:CPU code
compiled for one CPU kind may not run on another, so a cache shared between machines (a
network home) gives the other kind a miss, not a crash. JAX evicts the least recently used
entries past ``MAX_BYTES`` (its eviction takes a file lock, which also keeps two processes
from reading an entry while one writes it) and writes only programs that took at least
``MIN_COMPILE_SECONDS`` to compile (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` overrides).
Clearing it is deleting the directory.

Traced programs: ``jit_reusing_traces`` also keeps a function's traced and lowered form
(``jax.export``, in the directory's ``traced/`` folder), so a later process skips tracing the
model as well as compiling it (the entry points' fusing: ~0.5 s of a command's ~4 s). Their
key holds everything the trace depends on: the caller's facts (the model's config), the
arguments' paths, shapes and dtypes, JAX's version, float64 flag and default matmul precision,
and a digest of this package's source files, so an edited checkout traces again. An entry
that does not read back is traced again and replaced.

Programs of processes k > 0: ``compile_lowered`` keeps the train step of a multi-process run's
other processes on the CPU, whose programs JAX's cache never serves, in ``process-<k>/``
(at most ``MAX_PROCESS_PROGRAMS`` each, outside ``MAX_BYTES``). They are read back with
``pickle`` (``jax.experimental.serialize_executable``), like any cached executable code to be
trusted as the directory is: keep the cache in a directory of your own.
"""

import contextlib
import functools
import hashlib
import json
import os
import platform
import threading
import time
import warnings

import jax

from s4fusion_jax.runtime import atomic_files

ENV = "S4FUSION_COMPILE_CACHE"
MAX_BYTES = 4 * 2**30
MIN_COMPILE_SECONDS = 0.5  # the model's and train step's programs take seconds; eager ops less
MAX_TRACED = 256  # traced programs kept (~0.2 MB each for the bundled model), the oldest dropped
MAX_PROCESS_PROGRAMS = 16  # compile_lowered's programs kept per process (~20 MB each)
PROCESS_CACHE_READ = "/s4fusion_jax/compile_cache/process_cache_read"  # an event, in seconds
_TRACED, _PROGRAM = ".jax_exported", ".executable"  # the two kinds of entries' file names
_enabled = {"path": None}  # the directory enable() turned on


def cpu_kind():
  """A short name for this host's CPU kind: the model and instruction-set flags, hashed."""
  facts = [platform.machine(), platform.processor()]
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("model name", "flags", "Features", "CPU part")):
          facts.append(line.strip())
        elif not line.strip() and len(facts) > 2:
          break  # the first processor's block is enough
  except OSError:
    pass
  return f"cpu-{hashlib.sha256(chr(10).join(facts).encode()).hexdigest()[:12]}"


def directory():
  """The cache directory ``enable`` uses (with its CPU-kind part), or None when turned off."""
  chosen = os.environ.get(ENV)
  if chosen is not None and chosen.strip().lower() in ("off", "0", "false", "no", ""):
    return None
  if not chosen:
    chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")),
        "s4fusion-jax", "xla")
  return os.path.join(chosen, cpu_kind())


def enable():
  """Turns the persistent cache on (see the module docstring); returns its directory or None.

  Call it before the first compile. A directory that cannot be created leaves the cache off
  with a warning: a cache is never a reason for a job to fail.
  """
  path = _enabled["path"] = directory()
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"warning: no compilation cache ({e}); set {ENV}=off to silence this")
    _enabled["path"] = None
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


@functools.cache
def package_digest():
  """sha256 of this package's Python sources (their paths and contents)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  digest = hashlib.sha256()
  for folder, subfolders, files in os.walk(root):
    subfolders.sort()
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, root).encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read() + b"\0")
  return digest.hexdigest()


def jit_reusing_traces(fn, facts):
  """``jax.jit(fn)`` whose traced form, per argument shapes, is kept in the cache directory.

  Only where ``enable()`` turned the cache on; otherwise plain ``jax.jit(fn)``. ``facts``
  (JSON-able) must name everything besides the arguments' shapes and this package's code that
  ``fn``'s trace depends on (e.g. the model's config): two functions with the same facts share
  entries. Arguments are pytrees of arrays (None allowed); ``fn`` runs on one device.
  """
  if _enabled["path"] is None:
    return jax.jit(fn)
  programs = {}

  def call(*args):
    leaves, treedef = jax.tree.flatten(args)
    shapes = (treedef, tuple(map(jax.typeof, leaves)))  # shapes and dtypes
    if shapes not in programs:  # this process's first call at these shapes
      signature = [[jax.tree_util.keystr(path), str(aval)]
                   for (path, _), aval in zip(jax.tree.leaves_with_path(args), shapes[1])]
      key = hashlib.sha256(json.dumps(
          [facts, signature, str(treedef), jax.__version__, jax.config.jax_enable_x64,
           jax.config.jax_default_matmul_precision, jax.default_backend(), package_digest()],
          sort_keys=True, default=str).encode()
      ).hexdigest()
      flat = jax.jit(lambda *leaves: fn(*jax.tree.unflatten(treedef, leaves)))
      programs[shapes] = jax.jit(_traced(key, flat, leaves).call)
    return programs[shapes](*leaves)

  return call


def _traced(key, flat, leaves):
  """The ``jax.export.Exported`` of ``flat`` at ``leaves``' shapes: read back, else traced and
  kept (``_kept``; at most ``MAX_TRACED`` entries)."""
  return _kept(os.path.join(_enabled["path"], "traced", f"{key}{_TRACED}"),
               jax.export.deserialize, lambda: jax.export.export(flat)(*leaves),
               lambda exported: exported.serialize(), ("traced program", "tracing"),
               MAX_TRACED)[0]


def _kept(path, read, make, serialize, names, keep):
  """(value, whether it was read): ``read(bytes)`` of the entry at ``path``, else ``make()``,
  written there as ``serialize(value)`` (atomically; the least recently used entries of its
  folder with its suffix past ``keep`` removed).

  An entry that does not read back is made again and replaced; one that cannot be written
  leaves the value unkept: each with a warning naming ``names`` (what, and the making).
  """
  what, making = names
  try:
    with open(path, "rb") as f:
      value = read(f.read())
    with contextlib.suppress(OSError):  # (removed meanwhile by another process)
      os.utime(path)  # recently used: kept longest
    return value, True
  except FileNotFoundError:
    pass
  except Exception as e:  # pylint: disable=broad-exception-caught  # any unreadable entry
    warnings.warn(f"{what} {path} did not read back ({type(e).__name__}: {e}); "
                  f"{making} it again")
  value = make()
  try:
    atomic_files.write(path, lambda f: f.write(serialize(value)), suffix=".partial")
    _drop_oldest(os.path.dirname(path), os.path.splitext(path)[1], keep)
  except Exception as e:  # pylint: disable=broad-exception-caught
    # e.g. a full disk, or no flatbuffers to serialize with: the call runs all the same
    warnings.warn(f"{what} not kept ({type(e).__name__}: {e})")
  return value, False


def compile_lowered(lowered):
  """``lowered.compile()``; on the CPU processes of a multi-process run other than process 0,
  the compiled program is also kept in the cache directory's ``process-<i>/`` folder and read
  back by the next run of that process.

  JAX writes its persistent cache from process 0 alone, and on the CPU its key holds the
  topology as each process sees it, so the other processes never find their programs there:
  every run of a 2-process training compiled its train step again on process 1 (61 s of a
  91 s run of the tests' config on this project's CPU; process 0 read all its programs in
  11 s). This keeps the program whole (``jax.experimental.serialize_executable``), keyed by the
  lowered program's text, the process's index and count, the devices, JAX's version and
  ``XLA_FLAGS``; an entry that does not read back is compiled again and replaced. Elsewhere, or
  with the cache off, it is ``lowered.compile()``.

  Args:
    lowered: a ``jax.stages.Lowered`` (``jax.jit(f).lower(*args)``).

  Returns:
    the ``jax.stages.Compiled`` program.
  """
  if (_enabled["path"] is None or jax.process_count() == 1 or jax.process_index() == 0
      or jax.default_backend() != "cpu"):
    return lowered.compile()
  return _compile_kept(lowered, os.path.join(_enabled["path"], f"process-{jax.process_index()}"),
                       [jax.process_index(), jax.process_count(), [d.id for d in jax.devices()]])


def _compile_kept(lowered, folder, facts):
  """``lowered`` compiled, or read back from ``folder``, where it is kept under a key of its
  text, ``facts``, JAX's version and ``XLA_FLAGS`` (``compile_lowered``)."""
  from jax.experimental import serialize_executable  # pylint: disable=import-outside-toplevel
  key = hashlib.sha256(json.dumps(
      [lowered.as_text(), facts, jax.__version__, os.environ.get("XLA_FLAGS", "")]
  ).encode()).hexdigest()
  start = time.perf_counter()
  compiled, read = _kept(
      os.path.join(folder, f"{key}{_PROGRAM}"),
      lambda payload: serialize_executable.deserialize_and_load(
          payload, jax.tree.structure(lowered.args_info), lowered.out_tree),
      lowered.compile, lambda compiled: serialize_executable.serialize(compiled)[0],
      ("compiled program", "compiling"), MAX_PROCESS_PROGRAMS)
  if read:
    jax.monitoring.record_event_duration_secs(PROCESS_CACHE_READ, time.perf_counter() - start)
  return compiled


def _drop_oldest(folder, suffix, keep):
  """Removes the least recently used entries (files ending in ``suffix``) of ``folder`` past
  ``keep``."""
  entries = []
  for entry in os.scandir(folder):
    if entry.name.endswith(suffix):
      try:
        entries.append((entry.stat().st_mtime, entry.path))
      except FileNotFoundError:  # removed meanwhile by another process
        pass
  for _, path in sorted(entries)[:max(0, len(entries) - keep)]:
    try:
      os.unlink(path)
    except FileNotFoundError:
      pass


class CompileLog:
  """Counts the programs this process compiled or read from the persistent cache.

  From JAX's monitoring events (for every thread); ``summary()`` is one line for the end of
  a run. As a context manager it stops counting on leaving (``close``).
  """

  def __init__(self):
    self.programs = self.hits = 0
    self.seconds = 0.0
    self._lock = threading.Lock()
    self._open = True
    jax.monitoring.register_event_listener(self._event)
    jax.monitoring.register_event_duration_secs_listener(self._duration)

  def _event(self, event, **_):
    if event == "/jax/compilation_cache/cache_hits":
      with self._lock:
        self.hits += 1

  def _duration(self, event, duration, **_):
    if event in ("/jax/core/compile/backend_compile_duration",  # a compile or a cache read
                 PROCESS_CACHE_READ):  # compile_lowered's read
      with self._lock:
        self.programs += 1
        self.hits += event == PROCESS_CACHE_READ
        self.seconds += duration

  def close(self):
    """Stops counting: JAX no longer calls this log. Closing it again does nothing."""
    if not self._open:
      return
    self._open = False
    jax.monitoring.unregister_event_listener(self._event)
    jax.monitoring.unregister_event_duration_listener(self._duration)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  @property
  def compiled(self):
    """Programs compiled (not read from the cache) so far."""
    return self.programs - self.hits

  def summary(self):
    return (f"process {jax.process_index()}: {self.compiled} programs compiled and "
            f"{self.hits} read from the persistent cache in {self.seconds:.1f} s")
