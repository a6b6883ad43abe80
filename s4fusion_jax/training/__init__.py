"""The training job: the jit-compiled data-parallel step, the loop with checkpoints and
resumption, validation during training, the run's logs (metrics.jsonl, TensorBoard).
"""
