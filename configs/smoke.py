"""A few minutes on 2 CPU cores: a tiny model on ../shared/data/roadscene_train.

    python train.py --config configs/smoke.py --workdir /tmp/s4fusion_smoke
"""

import os

from configs import default

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def use_shared_data(config, data_dir):
  """Train on ../shared/data/roadscene_train and validate on ../shared/data/tno."""
  config.data.data_dir = data_dir
  config.data.train = [dict(dataset="paired_folder", manual_dir=os.path.join(
      SHARED, "roadscene_train"), name="roadscene_train", split="train", weight=None)]
  config.data.val = dict(dataset="tno", manual_dir=os.path.join(SHARED, "tno"), split="test")
  config.data.num_workers = 0


def get_config():
  config = default.get_config()
  config.model.update(dims=(8, 16, 32), depths=(1, 1, 1), depths_decoder=(1, 1, 1), d_state=4,
                      fusion_d_state=6)
  config.loss.update(perceptual=False, weight_source="image_gradient")
  use_shared_data(config, "/tmp/s4fusion_tfds")
  config.batch_size = 8
  config.crop_size = 61
  config.num_steps = 60
  config.optimizer.update(warmup_steps=10)
  config.log_every = 5
  config.checkpoint_every = 20
  config.eval_every = 30
  config.eval_pairs = 2
  config.eval_size = 121
  return config
