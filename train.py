"""Trains S4Fusion.

    python train.py --config configs/default.py --workdir /tmp/s4fusion [--config.batch_size=8]
                    [--init_from converted_reference_checkpoint]
    # one process of an explicit cluster (run it once per process, I = 0 .. N - 1):
    python train.py ... --coordinator_address HOST:PORT --num_processes N --process_id I

Everything the run writes goes to --workdir; a run started again on the same workdir
resumes from its latest checkpoint. In a cluster every process waits up to --cluster_timeout_s
for the others at each of the run's barriers (s4fusion_jax.runtime.cluster), and all leave together.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from s4fusion_jax.runtime import cluster
from s4fusion_jax.runtime import compile_cache
from s4fusion_jax.training import trainer

config_flags.DEFINE_config_file("config", "configs/default.py", "the training config file")
flags.DEFINE_string("workdir", None, "where the run writes checkpoints, logs and samples",
                    required=True)
flags.DEFINE_string("init_from", None, "an S4Fusion checkpoint to start from (convert-reference)")
flags.DEFINE_bool("progress", True, "show a progress bar")
flags.DEFINE_bool("distributed", False, "multi-host: call jax.distributed.initialize() first "
                  "(coordinator, process count and id from the cluster environment)")
flags.DEFINE_string("coordinator_address", None, "an explicit cluster: process 0's HOST:PORT "
                    "(with --num_processes and --process_id)")
flags.DEFINE_integer("num_processes", None, "an explicit cluster: the number of processes")
flags.DEFINE_integer("process_id", None, "an explicit cluster: this process, 0 .. N - 1")
flags.DEFINE_float("cluster_timeout_s", cluster.DEFAULT_TIMEOUT_S, "a cluster: how long a "
                   "process waits at a barrier for the others (e.g. while they compile)")
flags.DEFINE_float("shutdown_timeout_s", cluster.DEFAULT_SHUTDOWN_TIMEOUT_S,
                   "a cluster: how long JAX's shutdown waits for the other processes")
# For tests only: "linger_after_training_s=SECONDS" makes this process sleep that long after
# its last step (a process of a cluster finishing late).
TEST_HOOK = "S4FUSION_TEST_HOOK"


def linger_seconds():
  """The seconds ``TEST_HOOK`` asks this process to sleep after training (0 when unset)."""
  hook = os.environ.get(TEST_HOOK)
  if not hook:
    return 0.0
  name, _, seconds = hook.partition("=")
  if name != "linger_after_training_s":
    raise ValueError(f"{TEST_HOOK}={hook!r}: expected linger_after_training_s=SECONDS")
  return float(seconds)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  f = flags.FLAGS
  compile_cache.enable()
  compiles = compile_cache.CompileLog()
  try:
    linger_s = linger_seconds()
    explicit = (f.coordinator_address, f.num_processes, f.process_id)
    if f.distributed or any(x is not None for x in explicit):
      cluster.join(*explicit, timeout_s=f.cluster_timeout_s,
                   shutdown_timeout_s=f.shutdown_timeout_s)
    trainer.train_and_evaluate(f.config, f.workdir, init_from=f.init_from,
                               progress=f.progress)
    time.sleep(linger_s)
    print(compiles.summary())
    cluster.leave()
  except (ValueError, FileNotFoundError, trainer.NonFiniteLoss, cluster.ClusterTimeout) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
