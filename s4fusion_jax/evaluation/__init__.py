"""Inference and evaluation jobs: fusing pairs of any size, evaluating a folder, the demo, the
published results, charts and image grids, the ablation study, the paper's Table 5.
"""
