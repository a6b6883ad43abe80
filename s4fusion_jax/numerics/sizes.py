"""The size rule of the S4Fusion U-Net, and padding to it, as pure functions.

With a k x k patch embedding at stride s and ``levels - 1`` 2x merges, a side of
length n is valid when (n - k) is a multiple of s and the patch count
(n - k) / s + 1 is a multiple of 2^(levels - 1). For the reference (k = 4, s = 3,
three levels) that is (n - 1) % 12 == 0. The reference's test script zero-pads
both sides up to the next valid length, ``rest // 2`` before and the remainder
after, and crops the output back; ``placement`` / ``crop`` do the same.

Size buckets: a reference-padded image (its "valid rectangle") is placed at the top-left of
a larger valid size, its bucket, and the model masks every position outside it
(``grid_mask``), so one compiled program fuses every size of a bucket. With q = 2^(levels - 1)
patches per group, a side of m groups (length s (q m - 1) + k) is a bucket side when
m = ceil(1.25^i) for some i >= 0 (m = 1, 2, 3, 4, 5, 6, 8, 10, ...), so a side grows by at
most 25%.
"""

import math

import jax.numpy as jnp


def is_valid_length(n, kernel=4, stride=3, levels=3):
  """Whether a side of length n passes the size rule."""
  return n >= kernel and (n - kernel) % stride == 0 and (
      ((n - kernel) // stride + 1) % 2**(levels - 1) == 0)


def valid_length(n, kernel=4, stride=3, levels=3):
  """The smallest valid side length >= n."""
  step = 2**(levels - 1)
  patches = max(math.ceil((n - kernel) / stride) + 1, 1)
  patches = math.ceil(patches / step) * step
  return stride * (patches - 1) + kernel


def crop(images, box):
  """Crops (batch, H', W', C) images to ``box = (top, left, H, W)``."""
  top, left, height, width = box
  return images[:, top:top + height, left:left + width]


def _ladder_groups(groups):
  """The smallest m = ceil(1.25^i) >= groups."""
  i = 0
  while -(-5**i // 4**i) < groups:
    i += 1
  return -(-5**i // 4**i)


def bucket_length(n, kernel=4, stride=3, levels=3):
  """The bucket side of a side of length n: the smallest ladder length >= valid_length(n)."""
  step = 2**(levels - 1)
  groups = ((valid_length(n, kernel, stride, levels) - kernel) // stride + 1) // step
  return stride * (step * _ladder_groups(groups) - 1) + kernel


def placement(height, width, kernel=4, stride=3, levels=3, bucket=True):
  """Where an H x W image goes in the model's input.

  Returns:
    ``pads``: ((top, bottom), (left, right)), placing the image as the reference pads it in
    its valid rectangle, and (with ``bucket``) that rectangle at the top-left of its bucket;
    ``valid``: (H_v, W_v); ``box``: (top, left, H, W), the image, for ``crop``.
  """
  rule = (kernel, stride, levels)
  valid = (valid_length(height, *rule), valid_length(width, *rule))
  outer = (bucket_length(height, *rule), bucket_length(width, *rule)) if bucket else valid
  top, left = (valid[0] - height) // 2, (valid[1] - width) // 2
  pads = ((top, outer[0] - height - top), (left, outer[1] - width - left))
  return pads, valid, (top, left, height, width)


def grid_mask(valid, height, width, kernel=4, stride=3, level=0):
  """Which patches of a level-``level`` map lie inside each image's valid rectangle.

  Args:
    valid: (batch, 2) integers, each image's valid rectangle (H_v, W_v) in pixels, sides that
      pass the size rule; may be traced (a run-time argument of a compiled program).
    height, width: the map's size in patches, h x w (static).
    level: the map's scale: at level l a patch spans 2^l patches of level 0.

  Returns:
    (batch, h, w) booleans.
  """
  counts = ((jnp.asarray(valid) - kernel) // stride + 1) // 2**level  # (batch, 2)
  rows = jnp.arange(height)[None, :, None] < counts[:, 0, None, None]
  cols = jnp.arange(width)[None, None, :] < counts[:, 1, None, None]
  return rows & cols
