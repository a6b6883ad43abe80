"""The paper's settings and the released model's sizes.

    python train.py --config configs/default.py --workdir /tmp/s4fusion
    python train.py --config configs/default.py --config.model.scan_backend=associative ...
"""

import os

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # The released MambaNet (3,562,957 used parameters; see s4fusion_jax.network.model.ModelConfig).
  config.model = ml_collections.ConfigDict(dict(
      dims=(48, 96, 192),
      depths=(1, 2, 1),
      depths_decoder=(1, 2, 1),
      d_state=12,
      fusion_d_state=18,
      fusion_blocks=3,  # CMSA blocks per scale (layers of an ablation's fusion)
      fusion="cmsa",  # or an ablation of the paper's Table 3: configs/ablations.py
      patch_mark=True,  # CMSA's Patch Mark (False: the "w/o PM" ablation)
      fusion_heads=8,  # heads of the "cross_attention" ablation
      expand=1.5,
      patch_kernel=4,
      patch_stride=3,
      scan_backend="auto",  # "auto" | "sequential" | "associative" | "chunked"
      scan_chunk=128,  # steps per chunk of the "chunked" backend
      scan_platform=None,  # compile the scan for this platform (None: JAX's); see ModelConfig
      remat=True,  # recompute each VSS / CMSA block in the backward pass
      dtype="float32",  # computation; the scan state is at least float32
      param_dtype="float32",
  ))

  # The paper's loss: L_per + 15 L_l1 + 15 L_ssim + 15 L_grad (s4fusion_jax.objectives.losses).
  config.loss = ml_collections.ConfigDict(dict(
      weights=dict(loss_per=1.0, loss_l1=15.0, loss_ssim=15.0, loss_grad=15.0),
      temperature=20.0,  # c of softmax(info / c); the reference's value is not released
      perceptual=True,  # L_per, the ResNet50's prediction entropy on the fused image
      weight_source="resnet50",  # "resnet50" | "image_gradient" | "equal"
      resnet_weights="",  # a ResNet50 checkpoint dir or .pth/.npz/.safetensors file
  ))

  # Data: the paper trains on MSRS train + 70% of RoadScene + 70% of M3FD (weights None:
  # proportional to their sizes). Each entry is prepared into data_dir on first use.
  config.data = ml_collections.ConfigDict(dict(
      data_dir=os.path.expanduser("~/tensorflow_datasets"),
      train=[
          dict(dataset="msrs", manual_dir="/data/MSRS", split="train", weight=None),
          dict(dataset="roadscene", manual_dir="/data/RoadScene", split="train", weight=None),
          dict(dataset="m3fd", manual_dir="/data/M3FD_Fusion", split="train", weight=None),
      ],
      val=dict(dataset="roadscene", manual_dir="/data/RoadScene", split="test"),
      num_workers=4,  # grain worker processes; 0: batches are made in the training process
      num_threads=1,  # threads per process making batches ahead
      prefetch=2,  # batches made ahead per process (memory: 8.4 MB each at 20 x 229^2)
  ))

  # Training (paper, appendix A.1): AdamW, warmup-cosine 3e-4 -> 1.5e-3 -> 6e-4, batch 20,
  # 800 epochs of ~1,447 pairs (72 steps each), random 229 x 229 crops with flips.
  config.seed = 0
  config.batch_size = 20  # global, over all devices and hosts
  config.microbatches = 1  # gradient accumulation: 4 fits batch 20 x 229^2 in 24 GB on CPU
  config.crop_size = 229
  config.num_steps = 800 * 72
  config.optimizer = ml_collections.ConfigDict(dict(
      start_lr=3e-4, ref_lr=1.5e-3, final_lr=6e-4,
      warmup_steps=10 * 72,  # not stated in the paper
      weight_decay=0.01,  # not stated; PyTorch's AdamW default
      b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0))

  # Run bookkeeping.
  config.log_every = 10
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.eval_every = 1000  # 0: no validation
  config.eval_pairs = 4
  config.eval_size = 229
  config.best_metric = "Qabf"  # higher is better
  return config
