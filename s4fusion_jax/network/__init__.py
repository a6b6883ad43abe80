"""The networks as thin Flax NNX modules over the numerics: SS2D and the VSS block, the CMSA
block, the patch embedding / merging / expanding and fold head, the S4Fusion U-Net and its
ablation fusions, and the ResNet50 of the perceptual loss.
"""
