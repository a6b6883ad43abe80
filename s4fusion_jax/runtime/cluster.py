"""Multi-host runs: joining a cluster, barriers that name who is missing, leaving together.

Processes drift apart where one does work the others do not, above all compiling (only
process 0 reads its programs from the persistent cache on CPU), and a gloo collective gives
up after a fixed wait. So the training job meets at a ``barrier`` (the coordination
service's key-value barrier, whose timeout is ours) before its first collective, after
compiling the train step, after each validation and after its last step; ``leave`` then
shuts the cluster down with every process present.

In a single-process run every function here is a no-op.
"""

import contextlib
import dataclasses

from absl import flags
import jax
import orbax.checkpoint  # pylint: disable=unused-import  (defines the flag that join sets)

DEFAULT_TIMEOUT_S = 1800  # a process may compile for this long while the others wait
DEFAULT_SHUTDOWN_TIMEOUT_S = 300


class ClusterTimeout(RuntimeError):
  """Some processes did not reach a barrier in time."""


@dataclasses.dataclass
class _Settings:
  timeout_s: float = DEFAULT_TIMEOUT_S
  barriers: int = 0


_SETTINGS = _Settings()


def join(coordinator_address=None, num_processes=None, process_id=None, *,
         timeout_s=DEFAULT_TIMEOUT_S, shutdown_timeout_s=DEFAULT_SHUTDOWN_TIMEOUT_S):
  """Joins a cluster: explicit (all three arguments) or from the environment (none).

  CPU collectives go over gloo. ``timeout_s`` bounds each ``barrier``;
  ``shutdown_timeout_s`` bounds JAX's own barrier in ``leave``.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(x is None for x in explicit) and any(x is not None for x in explicit):
    raise ValueError("an explicit cluster needs all of --coordinator_address, "
                     "--num_processes and --process_id")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id {process_id} is not in 0 .. {num_processes - 1}")
  for name, value in (("timeout", timeout_s), ("shutdown timeout", shutdown_timeout_s)):
    if not value > 0:
      raise ValueError(f"the cluster's {name} must be positive, not {value}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             shutdown_timeout_seconds=int(shutdown_timeout_s))
  _SETTINGS.timeout_s = timeout_s
  _use_key_value_barriers_in_orbax()


def _use_key_value_barriers_in_orbax():
  """Orbax's own barriers are gloo collectives unless this flag of its says otherwise."""
  flags.FLAGS["experimental_orbax_use_distributed_barrier"].value = True


def _client():
  """The coordination service's client (JAX keeps it private; orbax reads it the same way)."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def barrier(name):
  """Waits until every process of the run reaches the barrier ``name``.

  Each call site passes its own name; calls are numbered, so a name may repeat. Raises
  ``ClusterTimeout`` naming the processes that did not arrive within the timeout of ``join``.
  """
  if jax.process_count() == 1:
    return
  _SETTINGS.barriers += 1
  key = f"s4fusion/{_SETTINGS.barriers}/{name}"
  client = _client()
  client.key_value_set(f"{key}/arrived/{jax.process_index()}", "1")
  try:
    client.wait_at_barrier(key, int(_SETTINGS.timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-exception-caught
    arrived = {int(k.rsplit("/", 1)[-1]) for k, _ in client.key_value_dir_get(f"{key}/arrived/")}
    missing = sorted(set(range(jax.process_count())) - arrived)
    raise ClusterTimeout(f"process(es) {missing} did not reach '{name}' within "
                         f"{_SETTINGS.timeout_s:g} s (a process that is still compiling "
                         "needs a longer --cluster_timeout_s)") from e


@contextlib.contextmanager
def process_zero_first(name):
  """Process 0 runs the body before the others do (it prepares what they then find ready)."""
  if jax.process_index() != 0:
    barrier(name)
  yield
  if jax.process_index() == 0:
    barrier(name)


def leave():
  """Every process meets at a last barrier, then the cluster shuts down."""
  if jax.process_count() == 1:
    return
  barrier("leave")
  jax.distributed.shutdown()
