"""Fusion-quality metrics, as the Evaluator published with CDDFuse / EMMA computes them.

    from s4fusion_jax.objectives.metrics import compute
    compute(fused, ir, vi) -> {"EN": ..., "SD": ..., ...}

Inputs are 2-D float arrays in 0..255 (8-bit grey, as that Evaluator reads them), computed
in float64 with NumPy. Conventions:
  EN    entropy (bits) of the histogram of round(F) over 0..255.
  SD    population standard deviation of F.        SF  sqrt(mean(dx^2) + mean(dy^2)).
  AG    mean of sqrt((gx^2 + gy^2) / 2), central differences, one-sided at the borders.
  MI    MI(F, I) + MI(F, V) in nats, one histogram bin per distinct grey level
        (sklearn's mutual_info_score); ``MI_bits`` is the same in bits.
  MSE   (mean((I - F)^2) + mean((V - F)^2)) / 2.   PSNR  10 log10(max(F)^2 / MSE).
  CC    (corr(I, F) + corr(V, F)) / 2.             SCD   corr(I, F - V) + corr(V, F - I).
  VIF   pixel-domain multi-scale VIF (4 scales, sigma_n^2 = 2), VIF(I, F) + VIF(V, F);
        a NaN per-source score counts as 1.0.
  Qabf  Xydeas-Petrovic with zero-padded 3x3 Sobel responses and arctan(gy / gx)
        (pi / 2 where gx = 0); where g_source == g_fused the gradient term is g_fused,
        as the Evaluator has it.
  SSIM  (SSIM(F, I) + SSIM(F, V)) / 2, skimage's SSIM with its defaults (7 x 7 uniform
        window, sample covariance, valid region) and data_range = 2, in float32.

CC, SCD are NaN when an image is constant; PSNR is inf when F equals both sources; Qabf is
NaN only when both sources are constant; the others are always finite.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

NAMES = ("EN", "SD", "SF", "AG", "MI", "MI_bits", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR",
         "MSE")
# Table columns: the published TNO table's (CDDFuse's Table 1); validation adds AG.
PAPER_COLUMNS = ("MI", "SF", "AG", "SSIM", "VIF", "Qabf")
ABLATION_COLUMNS = ("MI", "AG", "VIF", "Qabf", "SSIM", "SF")  # the paper's Table 3
PUBLISHED_COLUMNS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
VALIDATION_COLUMNS = PUBLISHED_COLUMNS + ("AG",)


def _valid_filter(x, taps):
  """'valid' correlation of a 2-D array with the separable kernel outer(taps, taps)."""
  x = sliding_window_view(x, len(taps), axis=0) @ taps
  return sliding_window_view(x, len(taps), axis=1) @ taps


def entropy(f):
  counts = np.bincount(np.round(f).astype(np.uint8).ravel(), minlength=256)
  p = counts[counts > 0] / f.size
  return float(-np.sum(p * np.log2(p)))


def standard_deviation(f):
  return float(np.std(f))


def spatial_frequency(f):
  return float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)))


def average_gradient(f):
  gy, gx = np.gradient(f)
  return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


def mutual_information(a, b):
  """MI(a, b) in nats, one bin per distinct value of each image (sklearn's convention)."""
  va, la = np.unique(a.ravel(), return_inverse=True)
  vb, lb = np.unique(b.ravel(), return_inverse=True)
  joint = np.bincount(la * len(vb) + lb, minlength=len(va) * len(vb))
  joint = joint.reshape(len(va), len(vb)) / a.size
  pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
  nz = joint > 0
  return float(np.sum(joint[nz] * (np.log(joint[nz]) - np.log((pa * pb)[nz]))))


def _corr(a, b):
  a, b = a - a.mean(), b - b.mean()
  return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def _vif_taps(scale):
  """The 1-D factor of the Evaluator's N x N Gaussian window (N = 2^(5 - scale) + 1, sd = N / 5)."""
  n = 2 ** (4 - scale + 1) + 1
  t = np.arange(n) - (n - 1) / 2
  g = np.exp(-t**2 / (2 * (n / 5.0) ** 2))
  return g / g.sum()


def _vif_fits(side):
  """Whether a side of ``side`` pixels survives the four VIF scales' valid filtering."""
  for scale in range(1, 5):
    taps = len(_vif_taps(scale))
    if scale > 1:
      side = -(-(side - taps + 1) // 2)
    if side < taps:
      return False
  return True


MIN_SIDE = next(n for n in range(1, 512) if _vif_fits(n))


def vif_one(ref, dist, sigma_nsq=2.0, eps=1e-10):
  """Pixel-domain multi-scale VIF of ``dist`` against ``ref``; NaN counts as 1.0."""
  num = den = 0.0
  for scale in range(1, 5):
    taps = _vif_taps(scale)
    if scale > 1:
      ref = _valid_filter(ref, taps)[::2, ::2]
      dist = _valid_filter(dist, taps)[::2, ::2]
    mu1, mu2 = _valid_filter(ref, taps), _valid_filter(dist, taps)
    s1 = np.maximum(_valid_filter(ref * ref, taps) - mu1 * mu1, 0)
    s2 = np.maximum(_valid_filter(dist * dist, taps) - mu2 * mu2, 0)
    s12 = _valid_filter(ref * dist, taps) - mu1 * mu2
    g = s12 / (s1 + eps)
    sv = s2 - g * s12
    flat1, flat2 = s1 < eps, s2 < eps
    g = np.where(flat1 | flat2, 0.0, g)
    sv = np.where(flat1, s2, sv)
    s1 = np.where(flat1, 0.0, s1)
    sv = np.where(flat2, 0.0, sv)
    sv = np.where(g < 0, s2, sv)
    g = np.maximum(g, 0)
    sv = np.maximum(sv, eps)
    num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
    den += np.sum(np.log10(1 + s1 / sigma_nsq))
  vif = num / den
  return 1.0 if np.isnan(vif) else float(vif)


def _sobel_strength_angle(img):
  """Zero-padded Sobel magnitude and arctan(gy / gx) (pi / 2 where gx == 0)."""
  p = np.pad(img, 1)
  left, right = p[:, :-2], p[:, 2:]
  dx = right - left
  gx = dx[:-2] + 2 * dx[1:-1] + dx[2:]
  rows = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
  gy = rows[:-2] - rows[2:]
  strength = np.sqrt(gx * gx + gy * gy)
  with np.errstate(divide="ignore", invalid="ignore"):
    angle = np.where(gx == 0, math.pi / 2, np.arctan(gy / np.where(gx == 0, 1, gx)))
  return strength, angle


def _edge_preservation(g_src, a_src, g_f, a_f):
  """Q^{SF}: the Evaluator's sigmoid gradient and angle preservation, per pixel."""
  with np.errstate(divide="ignore", invalid="ignore"):
    g = np.where(g_src > g_f, g_f / g_src, np.where(g_src < g_f, g_src / g_f, g_f))
  a = 1 - np.abs(a_src - a_f) / (math.pi / 2)
  q_g = 0.9994 / (1 + np.exp(-15 * (g - 0.5)))
  q_a = 0.9879 / (1 + np.exp(-22 * (a - 0.8)))
  return q_g * q_a


def qabf(f, a, b):
  g_f, a_f = _sobel_strength_angle(f)
  g_a, a_a = _sobel_strength_angle(a)
  g_b, a_b = _sobel_strength_angle(b)
  q = _edge_preservation(g_a, a_a, g_f, a_f) * g_a + _edge_preservation(g_b, a_b, g_f, a_f) * g_b
  return float(np.sum(q) / np.sum(g_a + g_b))


def _uniform_valid_float32(x, win):
  """scipy's uniform_filter on float32 data, valid region: each 1-D pass rounded to float32."""
  taps = np.full(win, 1.0 / win)
  for axis in (0, 1):
    x = (sliding_window_view(x.astype(np.float64), win, axis=axis) @ taps).astype(np.float32)
  return x


def ssim(x, y, data_range=2.0, win=7):
  """skimage.metrics.structural_similarity(x, y, data_range) on float32 images, its defaults,
  in float32 as skimage computes it (so the numbers match published ones)."""
  x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
  ux, uy, uxx, uyy, uxy = (_uniform_valid_float32(t, win) for t in (x, y, x * x, y * y, x * y))
  cov_norm = win * win / (win * win - 1.0)
  vx, vy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy)
  vxy = cov_norm * (uxy - ux * uy)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
  return float(s.mean(dtype=np.float64))


def compute(fused, ir, vi):
  """Every metric of ``NAMES`` for one fused image and its two sources.

  Args:
    fused, ir, vi: 2-D arrays of the same shape, grey levels in 0..255.

  Returns:
    {name: float}.
  """
  f, a, b = (np.asarray(x, np.float64) for x in (fused, ir, vi))
  if f.ndim != 2 or f.shape != a.shape or f.shape != b.shape:
    raise ValueError(f"metrics need three 2-D images of one shape; got {f.shape}, {a.shape}, "
                     f"{b.shape}")
  if min(f.shape) < MIN_SIDE:
    raise ValueError(f"metrics need images of at least {MIN_SIDE} x {MIN_SIDE} pixels (VIF's "
                     f"four scales); got {f.shape}")
  mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
  mi = mutual_information(f, a) + mutual_information(f, b)
  with np.errstate(divide="ignore", invalid="ignore"):
    return {
        "EN": entropy(f), "SD": standard_deviation(f), "SF": spatial_frequency(f),
        "AG": average_gradient(f), "MI": mi, "MI_bits": mi / math.log(2),
        "SCD": _corr(a, f - b) + _corr(b, f - a),
        "VIF": vif_one(a, f) + vif_one(b, f), "Qabf": qabf(f, a, b),
        "SSIM": (ssim(f, a) + ssim(f, b)) / 2, "CC": (_corr(a, f) + _corr(b, f)) / 2,
        "PSNR": float(10 * np.log10(np.max(f) ** 2 / mse)), "MSE": float(mse),
    }


def evaluator_gray(image):
  """uint8 (H, W), (H, W, 1) or RGB (H, W, 3) -> float64 (H, W) grey, as the Evaluator reads files.

  OpenCV's float32 BGR -> GRAY (0.114 B + 0.587 G + 0.299 R), then rounded.
  """
  image = np.asarray(image)
  if image.ndim == 2 or image.shape[-1] == 1:
    return image.reshape(image.shape[:2]).astype(np.float64)
  rgb = image.astype(np.float32)
  grey = rgb[..., 2] * np.float32(0.114) + rgb[..., 1] * np.float32(0.587) + rgb[
      ..., 0] * np.float32(0.299)
  return np.round(grey).astype(np.float64)
