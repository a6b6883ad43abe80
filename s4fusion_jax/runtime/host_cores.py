"""One JAX CPU device per core, so that work split over devices runs on every core.

JAX's CPU backend has one device unless asked for more, and XLA:CPU runs each loop of a
program (a selective scan is one) on one thread. ``split_cpu()``, called before JAX starts its
backend, asks for one device per core this process may use, over which
``inference.Fuser(model, devices=jax.local_devices())`` splits each scan's channels. The entry
points do not call it: on this project's 2-core CPU one device fuses faster (docs/fusing.md).

``JAX_NUM_CPU_DEVICES=1`` (JAX's own variable) keeps one device.
"""

import os

import jax

_XLA_DEVICE_COUNT = "xla_force_host_platform_device_count"


def split_cpu():
  """Asks JAX for one CPU device per usable core; returns that count.

  Returns None, changing nothing, where the count is not ours to choose: set by the user
  (``JAX_NUM_CPU_DEVICES``, or XLA's ``--xla_force_host_platform_device_count``), or JAX's
  backends already started (the count is fixed then).
  """
  if jax.config.jax_num_cpu_devices != -1 or _XLA_DEVICE_COUNT in os.environ.get("XLA_FLAGS", ""):
    return None
  cores = len(os.sched_getaffinity(0))
  try:
    jax.config.update("jax_num_cpu_devices", cores)
  except RuntimeError:  # the backends are running
    return None
  return cores
