"""Fuses a dataset with S4Fusion (or a baseline) and measures it.

    python evaluate.py --data ../shared/data/tno --out /tmp/tno_eval [--checkpoint DIR]
    python evaluate.py --data ../shared/data/tno --out /tmp/tno_avg --method average

--data is a folder with ir/ and vi/ (same-named pairs) or a prepared TFDS dataset
directory (python -m s4fusion_jax prepare ...) read at --split. Without --checkpoint and
--method the bundled model is used. Run again with the same arguments after an interruption,
it fuses only the pairs not yet done (a different model or setting starts afresh).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from s4fusion_jax.evaluation import evaluator
from s4fusion_jax.evaluation import inference
from s4fusion_jax.runtime import compile_cache

flags.DEFINE_string("data", None, "a folder with ir/ and vi/, or a prepared TFDS dataset dir",
                    required=True)
flags.DEFINE_string("out", None, "output folder", required=True)
flags.DEFINE_string("split", "test", "the split of a prepared dataset")
flags.DEFINE_string("checkpoint", None, "an S4Fusion checkpoint directory")
flags.DEFINE_enum("method", None, list(inference.METHODS), "a baseline instead of a model")
flags.DEFINE_string("scan_backend", "auto", "selective scan backend")
flags.DEFINE_bool("exact_sizes", False, "one compiled program per padded image size instead of "
                  "one per size bucket (the same numbers)")
flags.DEFINE_integer("samples", 4, "pairs drawn in samples.png")
flags.DEFINE_bool("progress", True, "show a progress bar")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  compile_cache.enable()
  compiles = compile_cache.CompileLog()
  try:
    fuser = inference.Fuser.from_flags(f.checkpoint, f.method, f.scan_backend, f.exact_sizes)
    fused = {"pairs": 0}
    mean = evaluator.evaluate(fuser, f.data, f.out, split=f.split, num_samples=f.samples,
                              progress=f.progress,
                              on_pair=lambda count: fused.update(pairs=count))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"fused {fused['pairs']} pairs in this run (pairs an earlier run of the same model, "
        "settings and data recorded in --out are kept)")
  print(compiles.summary())
  print(" ".join(f"{k}={v:.4f}" for k, v in mean.items()))


if __name__ == "__main__":
  app.run(main)
