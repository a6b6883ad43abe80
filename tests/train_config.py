"""The training config of the tests that train (resume, multi-host, failures, data parallelism).

    python train.py --config tests/train_config.py --workdir /tmp/s4fusion_test_run

The smoke config's data with the smallest model that still has every kind of block: two
scales (so a patch merge, a patch expand and a skip fusion), one CMSA block per scale, and
12 steps of 4 crops of 37 x 37, checkpointed every 3. These tests check how a run is carried
out (resumed, split over processes or devices, stopped), not that it learns; its train step
compiles in about half the smoke config's time.
"""

from configs import smoke


def get_config():
  config = smoke.get_config()
  config.model.update(dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1), fusion_blocks=1)
  config.crop_size, config.batch_size = 37, 4
  config.num_steps, config.checkpoint_every, config.log_every, config.eval_every = 12, 3, 1, 0
  return config
