"""Image filters for the loss and the metrics, as pure functions on (batch, H, W, C).

    sobel(x)  = |x * K_x| + |x * K_y|    (cross-correlation, zero padding 1, per channel)
        K_x = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],  K_y = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    ssim_map  = kornia's SSIM map: 11 x 11 Gaussian window (sigma 1.5), reflect padding,
                C1 = 0.01^2, C2 = 0.03^2, num / (den + 1e-12)
"""

import jax.numpy as jnp
import numpy as np

SSIM_C1, SSIM_C2, SSIM_EPS = 0.01**2, 0.03**2, 1e-12


def sobel_xy(x):
  """The two Sobel responses (x * K_x, x * K_y) of (batch, H, W, C), zero padded; same shape."""
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  left, mid, right = p[:, :, :-2], p[:, :, 1:-1], p[:, :, 2:]
  dx = right - left  # horizontal difference, then [1, 2, 1] down the rows
  gx = dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]
  smooth = left + 2 * mid + right  # [1, 2, 1] along the row, then top minus bottom
  gy = smooth[:, :-2] - smooth[:, 2:]
  return gx, gy


def sobel(x):
  """|x * K_x| + |x * K_y| of (batch, H, W, C) -> (batch, H, W, C)."""
  gx, gy = sobel_xy(x)
  return jnp.abs(gx) + jnp.abs(gy)


def gaussian_kernel1d(size, sigma):
  """kornia's normalised 1-D Gaussian of ``size`` taps (odd size)."""
  t = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-t**2 / (2 * sigma**2))
  return g / g.sum()


def gaussian_blur(x, size=11, sigma=1.5):
  """Separable Gaussian filter of (batch, H, W, C) with reflect padding ('same' size)."""
  taps = gaussian_kernel1d(size, sigma)
  r = size // 2
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    p = jnp.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    x = sum(float(w) * p[(slice(None),) * axis + (slice(i, i + n),)] for i, w in enumerate(taps))
  return x


def ssim_map(a, b, size=11, sigma=1.5):
  """kornia.metrics.ssim(a, b, size) for images in [0, 1]: (batch, H, W, C) -> same shape."""
  blur = lambda t: gaussian_blur(t, size, sigma)
  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a**2
  var_b = blur(b * b) - mu_b**2
  cov = blur(a * b) - mu_a * mu_b
  num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
  den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
  return num / (den + SSIM_EPS)


def ssim_loss_map(a, b, size=11, sigma=1.5):
  """kornia.losses.ssim_loss(..., reduction='none'): clip((1 - SSIM) / 2, 0, 1)."""
  return jnp.clip((1.0 - ssim_map(a, b, size, sigma)) / 2, 0.0, 1.0)
