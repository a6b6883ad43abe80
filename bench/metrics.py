"""Seconds per 640x480 image for every fusion metric: ours beside the CDDFuse/EMMA Evaluator.

    python bench/metrics.py [--evaluator PATH/TO/MMIF-CDDFuse/utils/Evaluator.py] [--images 5]

The images are TNO pairs (../shared/data/tno) resized to 640x480, fused by averaging.
The Evaluator is the user's own copy (it needs scikit-learn and scikit-image; OpenCV is
only used by its file reader and is stubbed when absent); without --evaluator only our
column is printed.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time
import types

import numpy as np
from PIL import Image

import common  # pylint: disable=wrong-import-order
from s4fusion_jax.objectives import metrics  # pylint: disable=wrong-import-order

OURS = {
    "EN": lambda f, a, b: metrics.entropy(f),
    "SD": lambda f, a, b: metrics.standard_deviation(f),
    "SF": lambda f, a, b: metrics.spatial_frequency(f),
    "AG": lambda f, a, b: metrics.average_gradient(f),
    "MI": lambda f, a, b: metrics.mutual_information(f, a) + metrics.mutual_information(f, b),
    "VIF": lambda f, a, b: metrics.vif_one(a, f) + metrics.vif_one(b, f),
    "Qabf": metrics.qabf,
    "SSIM": lambda f, a, b: (metrics.ssim(f, a) + metrics.ssim(f, b)) / 2,
    "all (compute)": metrics.compute,
}


def load_evaluator(path):
  if importlib.util.find_spec("cv2") is None:
    sys.modules["cv2"] = types.ModuleType("cv2")
  spec = importlib.util.spec_from_file_location("cddfuse_evaluator", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from skimage.metrics import structural_similarity  # pylint: disable=import-outside-toplevel
  ev = module.Evaluator
  return {
      "EN": lambda f, a, b: ev.EN(f), "SD": lambda f, a, b: ev.SD(f),
      "SF": lambda f, a, b: ev.SF(f), "AG": lambda f, a, b: ev.AG(f), "MI": ev.MI,
      "VIF": ev.VIFF, "Qabf": ev.Qabf,
      "SSIM": lambda f, a, b: (structural_similarity(f, a, data_range=2)
                               + structural_similarity(f, b, data_range=2)) / 2,
      "all (compute)": lambda f, a, b: (
          ev.EN(f), ev.SD(f), ev.SF(f), ev.AG(f), ev.MI(f, a, b), ev.MSE(f, a, b),
          ev.CC(f, a, b), ev.PSNR(f, a, b), ev.SCD(f, a, b), ev.VIFF(f, a, b), ev.Qabf(f, a, b),
          structural_similarity(f, a, data_range=2), structural_similarity(f, b, data_range=2)),
  }


def images(count):
  tno = os.path.join(common.REPO, "..", "shared", "data", "tno")
  out = []
  for name in sorted(os.listdir(os.path.join(tno, "ir")))[:count]:
    ir, vi = (np.asarray(Image.open(os.path.join(tno, sub, name)).convert("L").resize(
        (640, 480), Image.BILINEAR), np.float32) for sub in ("ir", "vi"))
    out.append((np.round((ir + vi) / 2), ir, vi))
  return out


def seconds(fn, triples):
  runs = []
  for f, a, b in triples:
    start = time.perf_counter()
    fn(f, a, b)
    runs.append(time.perf_counter() - start)
  return statistics.median(runs)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--evaluator")
  parser.add_argument("--images", type=int, default=5)
  args = parser.parse_args()
  triples = images(args.images)
  theirs = load_evaluator(args.evaluator) if args.evaluator else {}
  print(f"seconds per 640x480 image (median of {len(triples)}), {common.machine()}\n")
  print("| metric | s4fusion_jax | Evaluator |\n|---|---|---|")
  for name, fn in OURS.items():
    other = f"{seconds(theirs[name], triples):.4f}" if name in theirs else "-"
    print(f"| {name} | {seconds(fn, triples):.4f} | {other} |")


if __name__ == "__main__":
  main()
