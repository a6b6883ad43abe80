"""The SS2D scan paths and the Cross SS2D interleaving."""

import jax
import numpy as np

from s4fusion_jax.numerics import directions


def test_paths_are_row_major_column_major_and_their_reverses():
  x = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1).astype(np.float32)
  paths = np.asarray(directions.flatten_directions(x))
  assert paths.shape == (2, 12, 4, 1)
  np.testing.assert_array_equal(paths[0, :, 0, 0], x[0, :, :, 0].reshape(-1))
  np.testing.assert_array_equal(paths[0, :, 1, 0], x[0, :, :, 0].T.reshape(-1))
  np.testing.assert_array_equal(paths[0, :, 2, 0], x[0, :, :, 0].reshape(-1)[::-1])
  np.testing.assert_array_equal(paths[0, :, 3, 0], x[0, :, :, 0].T.reshape(-1)[::-1])


def test_each_direction_reads_its_own_map():
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 5, 4, 2)))
  paths = np.asarray(directions.flatten_each_direction(x))
  assert paths.shape == (2, 15, 4, 2)
  for k in range(4):
    np.testing.assert_array_equal(paths[:, :, k],
                                  np.asarray(directions.flatten_directions(x[..., k, :]))[:, :, k])


def test_merge_maps_every_path_back_to_its_pixel():
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 7, 3)))
  merged = directions.merge_directions(directions.flatten_directions(x), 5, 7)
  np.testing.assert_allclose(merged, 4 * x, rtol=1e-6)


def test_interleave_puts_infrared_first_and_round_trips():
  ir = np.arange(6).reshape(1, 3, 2).astype(np.float32)
  vi = -ir - 1
  z = np.asarray(directions.interleave(ir, vi))
  assert z.shape == (1, 6, 2)
  np.testing.assert_array_equal(z[0, 0::2], ir[0])
  np.testing.assert_array_equal(z[0, 1::2], vi[0])
  back_ir, back_vi = directions.deinterleave(z)
  np.testing.assert_array_equal(back_ir, ir)
  np.testing.assert_array_equal(back_vi, vi)
