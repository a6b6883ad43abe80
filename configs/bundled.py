"""The bundled default model: trained here, on 180 RoadScene pairs, on 2 CPU cores.

    python train.py --config configs/bundled.py --workdir runs/bundled

No ImageNet weights exist on this machine, so the perceptual loss is off and the source
weights come from the images' own Sobel energy (``image_gradient``). See README.
"""

import os

from configs import default
from configs import smoke


def get_config():
  config = default.get_config()
  # info of [0, 1] images is ~1e-2, so c = 0.01 lets the sharper source weigh more.
  config.loss.update(perceptual=False, weight_source="image_gradient", temperature=0.01)
  smoke.use_shared_data(config, os.path.expanduser("~/tensorflow_datasets"))
  config.batch_size = 8
  config.crop_size = 97
  config.num_steps = 500
  config.optimizer.update(warmup_steps=50)
  config.log_every = 10
  config.checkpoint_every = 50
  config.eval_every = 125
  config.eval_pairs = 4
  config.eval_size = 229
  return config
