"""Trains S4Fusion.

    python train.py --config configs/default.py --workdir /tmp/s4fusion [--config.batch_size=8]
                    [--init_from converted_reference_checkpoint]

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


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  if flags.FLAGS.distributed:
    jax.distributed.initialize()
  try:
    training.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                                init_from=flags.FLAGS.init_from, progress=flags.FLAGS.progress)
  except (ValueError, FileNotFoundError, training.NonFiniteLoss) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
