"""XLA's persistent compilation cache, on for every entry point, and a count of compiles.

train.py, evaluate.py and ``python -m s4fusion_jax`` (fuse, demo, ablate, convert) call
``enable()`` first, so a program compiled once on a machine is read back by later runs
instead of being compiled again. The directory, in order of precedence:

    $S4FUSION_COMPILE_CACHE           a directory, or "off" to turn the cache off
    $JAX_COMPILATION_CACHE_DIR        JAX's own variable, if set
    $XDG_CACHE_HOME/s4fusion-jax/xla  (default ~/.cache/s4fusion-jax/xla)

Entries live in a subdirectory per host CPU kind, as XLA:CPU code for one kind may not run
on another. JAX evicts entries past ``MAX_BYTES`` and writes only programs that took at least
``MIN_COMPILE_SECONDS`` to compile (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` overrides).
"""

import hashlib
import os
import platform

import jax

ENV = "S4FUSION_COMPILE_CACHE"
MAX_BYTES = 4 * 2**30
MIN_COMPILE_SECONDS = 0.5


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
  """Turns the persistent cache on before the first compile; returns its directory, or None
  (off, or with a warning when the directory cannot be created)."""
  path = directory()
  if path is not None:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      print(f"warning: no compilation cache ({e}); set {ENV}=off to silence this")
      path = None
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


class CompileLog:
  """Counts the programs compiled or read from the persistent cache until ``close()``."""

  def __init__(self):
    self.programs = self.hits = 0
    self.seconds = 0.0
    self._open = True
    jax.monitoring.register_event_listener(self._event)
    jax.monitoring.register_event_duration_secs_listener(self._duration)

  def _event(self, event, **_):
    self.hits += event == "/jax/compilation_cache/cache_hits"

  def _duration(self, event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":  # a compile or a cache read
      self.programs += 1
      self.seconds += duration

  def close(self):
    """Stops counting. Closing it again does nothing."""
    if self._open:
      self._open = False
      jax.monitoring.unregister_event_listener(self._event)
      jax.monitoring.unregister_event_duration_listener(self._duration)

  def __enter__(self):
    return self

  def __exit__(self, *_):
    self.close()

  def summary(self):
    """One line for the end of a run: programs compiled and read from the cache, seconds."""
    return (f"process {jax.process_index()}: {self.programs - self.hits} programs compiled and "
            f"{self.hits} read from the persistent cache in {self.seconds:.1f} s")
