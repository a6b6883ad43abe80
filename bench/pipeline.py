"""Input pipeline throughput: pairs per second at batch 20, 229 x 229 crops, by workers and threads.

    python bench/pipeline.py [--data ../shared/data/roadscene_train] [--batches 30]

Reads the paired folder prepared as a TFDS dataset (prepared on first use in a temporary
data_dir), then times ``--batches`` batches after 3 warm-up batches.
"""

import argparse
import os
import tempfile
import time

from absl import flags

import common  # pylint: disable=wrong-import-order
from s4fusion_jax.data import datasets  # pylint: disable=wrong-import-order
from s4fusion_jax.data import input_pipeline  # pylint: disable=wrong-import-order


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data", default=os.path.join(common.REPO, "..", "shared", "data",
                                                     "roadscene_train"))
  parser.add_argument("--batches", type=int, default=30)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory() as data_dir:
    dataset_dir, _ = datasets.prepare("paired_folder", args.data, data_dir)
    src = datasets.source(dataset_dir, "train")
    print(f"{len(src)} pairs from {args.data}; batch 20 of 229 x 229 crops ({common.machine()})\n")
    print("| workers | threads per process | pairs/s |\n|---|---|---|")
    for workers, threads in ((0, 1), (0, 2), (2, 1)):
      it = iter(input_pipeline.train_dataset([src], crop=229, batch_size=20, seed=0,
                                             num_workers=workers, num_threads=threads))
      for _ in range(3):
        next(it)
      start = time.perf_counter()
      for _ in range(args.batches):
        next(it)
      print(f"| {workers} | {threads} | "
            f"{20 * args.batches / (time.perf_counter() - start):.1f} |")


if __name__ == "__main__":
  main()
