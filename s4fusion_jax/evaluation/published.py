"""What published fusion networks report on the 25 TNO pairs, and how ours is compared with it.

The numbers are CDDFuse's Table 1, TNO section (Zhao et al., CVPR 2023), by the Evaluator
that ``metrics`` reproduces, means over the 25 pairs of ``TNO_PAIRS`` (so comparable with
ours only on those: ``is_tno_set``). Its SSIM is SSIM(F, IR) + SSIM(F, VI), twice ours.

Published values have two decimals. A metric counts as beaten when ours, rounded to two
decimals (SSIM as the sum), is strictly greater: a tie is not a win.
"""

import hashlib

import numpy as np

from s4fusion_jax.objectives import metrics

# Rows in the order of ``metrics.PUBLISHED_COLUMNS``; the last is SSIM(F, IR) + SSIM(F, VI).
_TABLE = {
    "DIDFuse": (6.97, 45.12, 12.59, 1.70, 1.71, 0.60, 0.40, 0.81),
    "U2Fusion": (6.83, 34.55, 11.52, 1.37, 1.71, 0.58, 0.44, 0.99),
    "SDNet": (6.64, 32.66, 12.05, 1.52, 1.49, 0.56, 0.44, 1.00),
    "RFN-Nest": (6.83, 34.50, 15.71, 1.20, 1.67, 0.51, 0.39, 0.92),
    "TarDAL": (6.84, 45.63, 8.68, 1.86, 1.52, 0.53, 0.32, 0.88),
    "DeFusion": (6.95, 38.41, 8.21, 1.78, 1.64, 0.60, 0.41, 0.96),
    "ReCoNet": (7.10, 44.85, 8.73, 1.78, 1.70, 0.57, 0.39, 0.88),
    "CDDFuse": (7.12, 46.00, 13.15, 2.19, 1.76, 0.77, 0.54, 1.03),
}


def as_published(metric, value):
  """A published mean as published: two decimals; our SSIM (half the published two-decimal sum)
  with three, its exact value."""
  return f"{value:.3f}" if metric == "SSIM" else f"{value:.2f}"


def tno_results():
  """{method: {metric: published mean}} over ``metrics.PUBLISHED_COLUMNS`` (SSIM halved to our
  convention)."""
  results = {method: dict(zip(metrics.PUBLISHED_COLUMNS, row)) for method, row in _TABLE.items()}
  for values in results.values():
    values["SSIM"] /= 2
  return results


# The 25 TNO pairs of the table: 01.png ... 25.png -> ``fingerprint`` of the infrared image.
TNO_PAIRS = dict(zip((f"{i:02d}.png" for i in range(1, 26)), (
    "ce1814165718a401", "dd05069fa4543e8a", "77bb930fd693eb1e", "b0ee3845f9bfec86",
    "514d8675a46ccb66", "9316304cd28842cd", "d71619487b443935", "fb72eee968f98664",
    "ee354d7aed80d2cb", "a627a7280b1ec136", "7d1e55893d282812", "b0b464ff55d6591b",
    "c7d55f5cc9ce395a", "42047569f2c398ac", "b509fb947b418c5c", "4e291fd031110fe9",
    "c00f10d2f1fe0547", "90901d5e5b3b2b0d", "65f4e674aa19e9ba", "b280ea945b8bb55b",
    "964f33db0e4808fe", "6ab2024a334de7fb", "00a3bccb733ccdc2", "92dc6b61dac531ae",
    "bdbe25d4567ab653",
)))


def fingerprint(ir):
  """The first 16 hex digits of SHA-256 over an infrared image's uint8 pixels and shape."""
  ir = np.ascontiguousarray(ir, dtype=np.uint8)
  return hashlib.sha256(ir.tobytes() + str(ir.shape).encode()).hexdigest()[:16]


def is_tno_set(infrared):
  """Whether ``{name: ir uint8 (H, W, 1)}`` is exactly the 25 pairs of the published table."""
  return set(infrared) == set(TNO_PAIRS) and all(
      fingerprint(ir) == TNO_PAIRS[name] for name, ir in infrared.items())


def rounded(metric, value):
  """``value`` of ``metric`` at the table's precision: two decimals (SSIM as the sum)."""
  return round((2 if metric == "SSIM" else 1) * value, 2)


def beats(ours, published, metric):
  """Whether our mean beats a published one on ``metric`` at the table's two decimals."""
  return rounded(metric, ours) > rounded(metric, published)


def wins(ours, published):
  """The metrics of ``metrics.PUBLISHED_COLUMNS`` on which ``ours`` ({metric: mean}) beats one
  published row."""
  return [k for k in metrics.PUBLISHED_COLUMNS if beats(ours[k], published[k], k)]
