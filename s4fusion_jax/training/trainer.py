"""The training job: data, the data-parallel step (``build``), checkpoints, logs, validation.
Each host feeds its shard of the global batch to the pure step ``train_step``.
"""

import dataclasses
import math
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from s4fusion_jax.data import datasets
from s4fusion_jax.data import input_pipeline
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.runtime import cluster
from s4fusion_jax.training import build
from s4fusion_jax.training import run_log
from s4fusion_jax.training import samples
from s4fusion_jax.training import train_step


class NonFiniteLoss(RuntimeError):
  """A loss term became NaN or Inf."""


def prepare(entry, data_dir):
  """A config's ``{dataset, manual_dir, split, ...}`` entry prepared (if needed; process 0
  first) -> its dataset folder; ``name``, ``skip_bad_pairs``, ``validation`` are optional."""
  with cluster.process_zero_first(f"prepare {entry['dataset']}"):
    dataset_dir, skipped = datasets.prepare(entry["dataset"], entry["manual_dir"], data_dir,
                                            name=entry.get("name"),
                                            skip_bad_pairs=entry.get("skip_bad_pairs", False),
                                            validation=entry.get("validation"))
  for name, reason in skipped:
    print(f"skipped {name}: {reason}")
  return dataset_dir


def _checkpoint_manager(workdir, config):
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
      item_names=(checkpoint.PARAMS, checkpoint.METADATA, "opt_state", "train", "data"))


def _save(manager, graphdef, state, data_iterator, model_config):
  step = int(state.step)
  manager.save(step, args=ocp.args.Composite(**{
      checkpoint.PARAMS: ocp.args.StandardSave(
          train_step.all_variables(graphdef, state.params, state.model_state)),
      checkpoint.METADATA: ocp.args.JsonSave(dataclasses.asdict(model_config)),
      "opt_state": ocp.args.StandardSave(state.opt_state),
      "train": ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
      "data": grain.checkpoint.CheckpointSave(data_iterator),
  }))
  manager.wait_until_finished()


def _restore(manager, graphdef, state, data_iterator, sharding):
  """``state`` with the values of the latest checkpoint, restored straight into ``sharding``
  (whatever topology saved it)."""
  step = manager.latest_step()
  target = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
  abstract = target(state)
  variables = target(train_step.all_variables(graphdef, state.params, state.model_state))
  restored = manager.restore(step, args=ocp.args.Composite(**{
      checkpoint.PARAMS: ocp.args.StandardRestore(variables),
      "opt_state": ocp.args.StandardRestore(abstract.opt_state),
      "train": ocp.args.StandardRestore({"step": abstract.step, "rng": abstract.rng}),
      "data": grain.checkpoint.CheckpointRestore(data_iterator),
  }))
  _, params, model_state = train_step.split_model(
      nnx.merge(graphdef, restored[checkpoint.PARAMS]))
  return state.replace(params=params, model_state=model_state, opt_state=restored["opt_state"],
                       step=restored["train"]["step"], rng=restored["train"]["rng"])


def _fetch_checked(pending):
  """The host values of ``pending`` [(step, metrics on the device)], oldest first.

  Raises ``NonFiniteLoss`` naming the first step with a NaN or Inf and its terms.
  """
  fetched = []
  for step, metrics in jax.device_get(pending):
    metrics = {k: float(v) for k, v in metrics.items()}
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
      raise NonFiniteLoss(f"non-finite {', '.join(bad)} at step {step}; the last good "
                          "checkpoint is kept in the workdir")
    fetched.append(metrics)
  return fetched


def train_and_evaluate(config, workdir, init_from=None, progress=True):
  """Trains under ``config`` in ``workdir``, resuming from its latest checkpoint if any.

  Returns:
    (graphdef, final ``TrainState``): ``train_step.model_of(graphdef, state)`` is the model.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = build.make_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  run = build.build(config, init_from=init_from, mesh=mesh)
  graphdef, state, resnet_state = run.graphdef, run.state, run.resnet_state
  model_config = model_lib.ModelConfig(**config.model)  # saved with "auto", as configured

  sources = [datasets.source(prepare(e, config.data.data_dir), e["split"])
             for e in config.data.train]
  weights = [e.get("weight") or len(src) for e, src in zip(config.data.train, sources)]
  data = input_pipeline.train_dataset(
      sources, crop=config.crop_size, batch_size=config.batch_size // jax.process_count(),
      seed=config.seed, weights=weights, shard_index=jax.process_index(),
      shard_count=jax.process_count(), num_workers=config.data.num_workers,
      num_threads=config.data.num_threads, prefetch=config.data.prefetch)
  data_iterator = iter(data)

  cluster.barrier("start")  # processes that read more from the compile cache wait here
  manager = _checkpoint_manager(workdir, config)
  if manager.latest_step() is not None:
    state = jax.device_put(_restore(manager, graphdef, state, data_iterator, replicated),
                           replicated)
    print(f"resumed from step {int(state.step)} in {workdir}")
  log = run_log.RunLog(workdir, int(state.step))
  validation = (samples.Validation(config, workdir, run.fuse,
                                   prepare(config.data.val, config.data.data_dir))
                if config.eval_every else None)

  start_step = int(state.step)
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=config.num_steps, initial=start_step, desc="train", dynamic_ncols=True)
  # Metrics stay on the device until a step that logs, validates or saves fetches and checks
  # them together, so no saved state holds a NaN.
  pending, tick, compiled = [], time.perf_counter(), None
  for step in range(start_step, config.num_steps):
    batch = next(data_iterator)
    batch = jax.make_array_from_process_local_data(sharded, {k: batch[k] for k in ("ir", "vi")})
    if compiled is None:  # compiled ahead, so that no process enters its collectives early
      begun = time.perf_counter()
      compiled = run.train_step.lower(state, batch, resnet_state).compile()
      cluster.barrier("compiled the train step")
      # Printed as it happens (a run cut short by a time limit still shows it).
      note = (f"train step ready in {time.perf_counter() - begun:.1f} s (traced, and compiled "
              "or read from the compile cache)")
      if bar is not None:
        bar.write(note)
      elif jax.process_index() == 0:
        print(note, flush=True)
      tick = time.perf_counter()
    state, metrics = compiled(state, batch, resnet_state)
    done = step + 1
    pending.append((done, metrics))
    if bar is not None:
      bar.update(1)
    last = done == config.num_steps
    log_now = done % config.log_every == 0 or last
    eval_now = validation is not None and (done % config.eval_every == 0 or last)
    save_now = done % config.checkpoint_every == 0 or last
    if not (log_now or eval_now or save_now):
      continue
    metrics = _fetch_checked(pending)[-1]
    metrics["images_per_s"] = config.batch_size * len(pending) / (time.perf_counter() - tick)
    pending = []
    if bar is not None:
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
    if log_now:
      log.write({"step": done, **metrics})
    if eval_now:
      record, grid = validation.run(train_step.model_of(graphdef, state), done)
      log.write({"step": done, **record}, image=grid)
      cluster.barrier("validated")
    if save_now:
      _save(manager, graphdef, state, data_iterator, model_config)
    tick = time.perf_counter()  # images/s counts training steps only
  if bar is not None:
    bar.close()
  log.close()
  manager.close()
  return graphdef, state
