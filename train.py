"""Trains S4Fusion.

    python train.py --config configs/default.py --workdir /tmp/s4fusion [--config.batch_size=8]
                    [--init_from converted_reference_checkpoint]
    # one process of an explicit cluster (run it once per process, I = 0 .. N - 1):
    python train.py ... --coordinator_address HOST:PORT --num_processes N --process_id I

Everything the run writes goes to --workdir; a run started again on the same workdir
resumes from its latest checkpoint.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from s4fusion_jax import training

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


def start_cluster(f):
  """Joins the cluster the flags describe, if any; CPU collectives go over gloo."""
  explicit = (f.coordinator_address, f.num_processes, f.process_id)
  if any(x is not None for x in explicit):
    if any(x is None for x in explicit):
      raise ValueError("an explicit cluster needs all of --coordinator_address, "
                       "--num_processes and --process_id")
    if not 0 <= f.process_id < f.num_processes:
      raise ValueError(f"--process_id {f.process_id} is not in 0 .. {f.num_processes - 1}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
  elif f.distributed:
    jax.distributed.initialize()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  try:
    start_cluster(flags.FLAGS)
    training.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                                init_from=flags.FLAGS.init_from, progress=flags.FLAGS.progress)
  except (ValueError, FileNotFoundError, training.NonFiniteLoss) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
