"""Between representations: the reference's and torchvision's PyTorch state dicts, weight
files, orbax checkpoints, and the model as pure functions of plain pytrees (``functional``).
"""
