"""The fusion metrics against the Evaluator published with CDDFuse / EMMA (golden_metrics)."""

import json

import numpy as np
import pytest

from conftest import load_golden, shared_path
from s4fusion_jax.objectives import metrics

TOLERANCE = {"VIF": 1e-5, "Qabf": 1e-5}


@pytest.fixture(scope="module")
def golden():
  return load_golden("golden_metrics.npz"), json.loads(
      shared_path("golden", "golden_metrics.json").read_text())


def test_every_metric_matches_the_evaluator(golden):
  images, expected = golden
  assert len(expected) == 12
  for triple, values in expected.items():
    ours = metrics.compute(*(images[f"{triple}/{k}"].astype(float) for k in ("fused", "ir", "vi")))
    assert set(ours) == set(metrics.NAMES)
    for name, value in values.items():
      if name == "source":
        continue
      assert ours[name] == pytest.approx(value, rel=TOLERANCE.get(name, 1e-6)), (triple, name)
    assert ours["MI_bits"] == pytest.approx(ours["MI"] / np.log(2))


def test_identical_images_and_constant_images():
  rng = np.random.default_rng(0)
  img = np.round(rng.random((60, 70)) * 255)
  same = metrics.compute(img, img, img)
  assert same["SSIM"] == pytest.approx(1.0) and same["CC"] == pytest.approx(1.0)
  # Equal gradients give the Evaluator's G = g_F (not 1): on strong edges the gradient term
  # saturates at T_g = 0.9994, and equal angles give T_a / (1 + e^{-22 * 0.2}).
  best = 0.9994 * 0.9879 / (1 + np.exp(-22 * 0.2))
  assert best * 0.999 < same["Qabf"] <= best * (1 + 1e-12)
  assert same["PSNR"] == np.inf and same["MSE"] == 0
  flat = np.full((60, 70), 7.0)
  result = metrics.compute(img, flat, img)
  assert np.isnan(result["CC"]) and np.isnan(result["SCD"])  # a constant source
  assert all(np.isfinite(result[k]) for k in ("EN", "SD", "SF", "AG", "MI", "SSIM", "VIF",
                                              "Qabf"))


def test_shapes_are_checked():
  with pytest.raises(ValueError, match="one shape"):
    metrics.compute(np.zeros((4, 5)), np.zeros((4, 5)), np.zeros((5, 4)))
  small = np.zeros((metrics.MIN_SIDE - 1, 80))
  with pytest.raises(ValueError, match=f"at least {metrics.MIN_SIDE}"):
    metrics.compute(small, small, small)
  big_enough = np.random.default_rng(1).random((metrics.MIN_SIDE, metrics.MIN_SIDE)) * 255
  assert np.isfinite(metrics.compute(big_enough, big_enough, big_enough)["VIF"])
