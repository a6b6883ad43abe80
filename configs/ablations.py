"""The paper's ablations (Table 3): S4Fusion and six variants, by name.

    python train.py --config configs/ablations.py:fssm --workdir runs/fssm
    python -m s4fusion_jax ablate --train ../shared/data/roadscene_train \\
        --test ../shared/data/tno --workdir runs/ablation [--variants add cnn] [--steps 300]

The paper replaced CMSA by each fusion "and adjusted its layer count and channel numbers to
match the parameter count", widening the encoder and decoder for ADD. Here every replaced
fusion is sized so the whole network is within 5% of S4Fusion's 3,562,957 parameters
(``model.count_params``; tests/test_ablations.py checks it):

    s4fusion  3,562,957            the released sizes
    add       3,512,588  (-1.4%)   R = I + V; dims 48 -> 76 (encoders and decoder widened)
    cnn       3,500,978  (-1.7%)   the reference's CNNs: one basic block at int(2C // 1.4)
    ca        3,647,629  (+2.4%)   11 linear cross-attention layers (8 heads) per scale
    fssm      3,607,309  (+1.2%)   4 FusionMamba FSSM blocks per scale (CMSA has 3)
    no_pm     2,909,773 (-18.3%)   CMSA without the Patch Mark, not resized (as the paper)
    no_per    3,562,957            S4Fusion trained without L_per
"""

from configs import default

VARIANTS = {
    "s4fusion": {},
    "add": dict(model=dict(fusion="add", dims=(76, 152, 304))),
    "cnn": dict(model=dict(fusion="cnn", fusion_blocks=1)),
    "ca": dict(model=dict(fusion="cross_attention", fusion_blocks=11)),
    "fssm": dict(model=dict(fusion="fssm", fusion_blocks=4)),
    "no_pm": dict(model=dict(patch_mark=False)),
    "no_per": dict(loss=dict(perceptual=False)),
}


def get_config(variant="s4fusion"):
  """The paper's training setup (configs/default.py) with ``variant``'s changes."""
  if variant not in VARIANTS:
    raise ValueError(f"configs/ablations.py: unknown variant {variant!r}; expected one of "
                     f"{list(VARIANTS)}")
  config = default.get_config()
  for group, changes in VARIANTS[variant].items():
    config[group].update(changes)
  return config
