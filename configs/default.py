"""The paper's settings and the released model's sizes.

    python train.py --config configs/default.py --workdir /tmp/s4fusion
    python train.py --config configs/default.py --config.model.scan_backend=associative ...
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # The released MambaNet (3,562,957 used parameters; see s4fusion_jax.model.ModelConfig).
  config.model = ml_collections.ConfigDict(dict(
      dims=(48, 96, 192),
      depths=(1, 2, 1),
      depths_decoder=(1, 2, 1),
      d_state=12,
      fusion_d_state=18,
      fusion_blocks=3,  # CMSA blocks per scale
      expand=1.5,
      patch_kernel=4,
      patch_stride=3,
      scan_backend="auto",  # "auto" | "sequential" | "associative" | "chunked"
      scan_chunk=128,  # steps per chunk of the "chunked" backend
      dtype="float32",  # computation; the scan state is at least float32
      param_dtype="float32",
  ))

  # The paper's loss: L_per + 15 L_l1 + 15 L_ssim + 15 L_grad (s4fusion_jax.losses).
  config.loss = ml_collections.ConfigDict(dict(
      weights=dict(loss_per=1.0, loss_l1=15.0, loss_ssim=15.0, loss_grad=15.0),
      temperature=20.0,  # c of softmax(info / c); the reference's value is not released
      perceptual=True,  # L_per, the ResNet50's prediction entropy on the fused image
      weight_source="resnet50",  # "resnet50" | "image_gradient" | "equal"
      resnet_weights="",  # a ResNet50 checkpoint dir or .pth/.npz/.safetensors file
  ))
  return config
