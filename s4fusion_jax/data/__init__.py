"""Data, knowing nothing of models: image files, the TFDS builders, the grain input pipeline.
"""
