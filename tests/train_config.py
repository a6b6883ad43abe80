"""The training configs of the tests that train (resume, multi-host, failures, data parallelism).

    python train.py --config tests/train_config.py --workdir /tmp/s4fusion_test_run

``get_config``: the smoke config's data and model with one CMSA block per scale, 12 steps of 4
crops of 37 x 37, checkpointed every 3: the runs through train.py, which check how a run is
carried out (resumed, split over processes, stopped), not that it learns.

``two_scales``: the same at two scales, the smallest model with every kind of block (a patch
merge, a patch expand, a skip fusion), whose train step compiles in about 0.6x the time: for
the tests of the step itself (data parallelism, micro-batches). Not for the 2-process run
against 1 process: in that model the float32 differences of the gradients' reduction order
grew to 7.5e-5 of the loss by step 11 (3 of 12 steps beyond the test's 1e-5), where the
three-scale model stays within it.
"""

from configs import smoke


def get_config():
  config = smoke.get_config()
  config.model.fusion_blocks = 1
  config.crop_size, config.batch_size = 37, 4
  config.num_steps, config.checkpoint_every, config.log_every, config.eval_every = 12, 3, 1, 0
  return config


def two_scales(config):
  """``config`` with its model cut to the first two scales."""
  config.model.update(dims=config.model.dims[:2], depths=config.model.depths[:2],
                      depths_decoder=config.model.depths_decoder[:2])
  return config
