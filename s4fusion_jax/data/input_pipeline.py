"""The training input pipeline on grain: deterministic, worker-count independent, resumable.

    mixture (weighted) -> seeded shuffle, a new order each epoch -> repeat
      -> random crop + identical flips -> visible to Y, [0, 1]
      -> host batches (drop remainder) -> this host's shard -> multiprocess prefetch

Each element's randomness comes from the pipeline seed and its index in the whole stream
(``random_map``), and the iterator's state (saved with each training checkpoint) resumes
exactly. With P hosts, host p takes host batches p, P + p, 2P + p, ..., so global batch k is
stream elements k G .. (k + 1) G - 1 whatever P is. An image smaller than the crop is
replaced by the next one in its dataset, as the reference's dataset does.

Batches: ``{"ir": (B, crop, crop, 1), "vi": (B, crop, crop, 1)}`` float32 in [0, 1], where
``vi`` is the visible image's Y = 0.299 R + 0.587 G + 0.114 B.
"""

import grain
import numpy as np

from s4fusion_jax.numerics import color


class CroppableSource:
  """A data source whose item i is the first item at or after i (cyclically) of at least crop x crop."""

  def __init__(self, source, crop):
    self.source, self.crop = source, crop

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    for offset in range(len(self.source)):
      example = self.source[(index + offset) % len(self.source)]
      height, width = example["ir"].shape[:2]
      if height >= self.crop and width >= self.crop:
        return example
    raise ValueError(f"no image in the dataset is at least {self.crop} x {self.crop}")


def crop_flip_to_y(example, rng, crop):
  """One random crop with the same flips for both modalities; -> float32 [0, 1] ir and Y."""
  height, width = example["ir"].shape[:2]
  top = rng.integers(0, height - crop + 1)
  left = rng.integers(0, width - crop + 1)
  ir = example["ir"][top:top + crop, left:left + crop]
  vi = example["vi"][top:top + crop, left:left + crop]
  if rng.random() < 0.5:
    ir, vi = ir[:, ::-1], vi[:, ::-1]
  if rng.random() < 0.5:
    ir, vi = ir[::-1], vi[::-1]
  return {"ir": (ir / np.float32(255)).astype(np.float32),
          "vi": color.rgb_to_y(vi / np.float32(255)).astype(np.float32)}


def train_dataset(sources, *, crop, batch_size, seed, weights=None, shard_index=0,
                  shard_count=1, num_workers=0, num_threads=1, prefetch=2):
  """The training batches, as an iterable dataset (``iter(...)`` gives a resumable iterator).

  Args:
    sources: random-access sources (``datasets.source``), mixed by ``weights``.
    crop: side of the square random crops.
    batch_size: the batch per host (the global batch / ``shard_count``).
    seed: the pipeline seed (shuffle and augmentation).
    shard_index, shard_count: this host's shard (``jax.process_index()``, ``process_count()``).
    num_workers: grain worker processes (0: in this process); the output is the same.
    num_threads, prefetch: each process prepares batches ahead in ``num_threads`` threads, at
      most ``prefetch`` of them (at least one per thread), far fewer than grain's defaults.
  """
  parts = [grain.MapDataset.source(CroppableSource(s, crop)) for s in sources]
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
  ds = ds.seed(seed).shuffle().repeat(None)
  ds = ds.random_map(lambda example, rng: crop_flip_to_y(example, rng, crop))
  ds = ds.batch(batch_size, drop_remainder=True)[shard_index::shard_count].to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads)))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds
