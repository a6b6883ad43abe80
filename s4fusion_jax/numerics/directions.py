"""Scan paths of SS2D and the interleaving of Cross SS2D, as pure functions.

SS2D (VMamba) reads a (H, W) map along four paths of length L = H W:
    k = 0: row-major            k = 2: row-major, reversed
    k = 1: column-major         k = 3: column-major, reversed
and merges the four outputs back onto the map by summing them.

Cross SS2D (S4Fusion's CMSA) interleaves the infrared (I) and visible (V) sequences of one
path, [I_1, V_1, I_2, V_2, ..., I_L, V_L] (length 2L), so one scan reads both modalities.
"""

import jax.numpy as jnp

NUM_DIRECTIONS = 4


def _path(x, k):
  """Path k of a (batch, H, W, C) map: (batch, L, C)."""
  batch, height, width, channels = x.shape
  sequence = (jnp.swapaxes(x, 1, 2) if k % 2 else x).reshape(batch, height * width, channels)
  return jnp.flip(sequence, axis=1) if k >= 2 else sequence


def flatten_directions(x):
  """(batch, H, W, C) -> (batch, L, 4, C), the four SS2D paths of ``x``."""
  return jnp.stack([_path(x, k) for k in range(NUM_DIRECTIONS)], axis=2)


def flatten_each_direction(x):
  """(batch, H, W, 4, C) -> (batch, L, 4, C): path k of the map ``x[..., k, :]``, for each k.

  For a position-wise function f with one form per path (a projection with weights per
  direction), ``flatten_each_direction(f_k(x))`` is ``f_k(flatten_directions(x))``.
  """
  return jnp.stack([_path(x[..., k, :], k) for k in range(NUM_DIRECTIONS)], axis=2)


def sequence_mask(mask):
  """A map mask (batch, H, W) -> the four paths' mask (batch, L, 4, 1); None stays None."""
  return None if mask is None else flatten_directions(mask[..., None])


def merge_directions(y, height, width):
  """(batch, L, 4, C) -> (batch, H, W, C): each path mapped back and summed."""
  batch, _, _, channels = y.shape
  forward = y[:, :, :2] + jnp.flip(y[:, :, 2:], axis=1)
  rows = forward[:, :, 0].reshape(batch, height, width, channels)
  cols = forward[:, :, 1].reshape(batch, width, height, channels)
  return rows + jnp.swapaxes(cols, 1, 2)


def interleave(first, second):
  """Two (batch, L, ...) sequences -> (batch, 2L, ...), alternating, ``first`` first."""
  stacked = jnp.stack([first, second], axis=2)
  return stacked.reshape(first.shape[0], 2 * first.shape[1], *first.shape[2:])


def deinterleave(z):
  """(batch, 2L, ...) -> the two (batch, L, ...) sequences ``interleave`` joined."""
  paired = z.reshape(z.shape[0], z.shape[1] // 2, 2, *z.shape[2:])
  return paired[:, :, 0], paired[:, :, 1]
