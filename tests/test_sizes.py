"""The size rule and the reference's padding."""

import numpy as np

from s4fusion_jax.numerics import sizes


def reference_rest(x):
  """The reference test script's ``get_rest``: pad until (x-1) % 3 == 0 and ((x-1)//3) % 4 == 0."""
  add = 0
  while (x - 1) % 3 != 0 or ((x - 1) // 3) % 4 != 0:
    add += 1
    x += 1
  return add


def test_valid_length_is_the_reference_rule():
  for n in range(5, 1000):
    assert sizes.valid_length(n) - n == reference_rest(n), n
    assert sizes.is_valid_length(n) == (reference_rest(n) == 0), n


def test_pad_splits_the_rest_left_half_first_and_crop_undoes_it():
  x = np.random.default_rng(0).random((2, 40, 50, 1)).astype(np.float32)
  pads, _, box = sizes.placement(40, 50, bucket=False)
  padded = np.pad(x, ((0, 0), *pads, (0, 0)))
  assert padded.shape == (2, 49, 61, 1)
  assert box == (4, 5, 40, 50)  # rest 9 -> 4 before, 5 after; rest 11 -> 5 before, 6 after
  assert np.all(np.asarray(padded)[:, :4] == 0) and np.all(np.asarray(padded)[:, -5:] == 0)
  np.testing.assert_array_equal(sizes.crop(padded, box), x)


def test_other_rules():
  assert sizes.valid_length(10, kernel=4, stride=3, levels=1) == 10
  assert sizes.valid_length(10, kernel=4, stride=3, levels=2) == 13  # 3 patches -> 4
  assert sizes.valid_length(13, kernel=4, stride=3, levels=2) == 13
  assert sizes.valid_length(3, kernel=2, stride=2, levels=3) == 8  # 1 patch -> 4
