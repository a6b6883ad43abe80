"""The training job: state, the jit-compiled data-parallel step, checkpoints, logs, validation.

Data parallelism is ``jax.jit`` over a 1-D device ``Mesh`` with axis ``data``: the batch
is sharded along it (``NamedSharding(mesh, P('data'))``), parameters, optimizer state
and the frozen ResNet50 are replicated (``P()``), and XLA's SPMD partitioner inserts the
gradient all-reduce. This is what ``jax.pmap`` is built on today, without pmap's
per-device Python view; multi-host runs call ``jax.distributed.initialize()`` first and
each host feeds its shard of the global batch.

The step is one pure function ``(state, batch, resnet_state) -> (state, metrics)``.
"""

import dataclasses
import json
import math
import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from s4fusion_jax import checkpoint
from s4fusion_jax import datasets
from s4fusion_jax import input_pipeline
from s4fusion_jax import losses
from s4fusion_jax import model as model_lib
from s4fusion_jax import samples
from s4fusion_jax import scan


class NonFiniteLoss(RuntimeError):
  """A loss term became NaN or Inf."""


@struct.dataclass
class TrainState:
  step: jax.Array
  params: dict  # the model's ``nnx.Param`` values, a pure dict
  model_state: dict  # its other variables (BatchNorm statistics); {} for S4Fusion itself
  opt_state: optax.OptState
  rng: jax.Array  # uint32 key data: the run's seed material


def warmup_cosine(start_lr, ref_lr, final_lr, warmup_steps, total_steps):
  """The reference's WarmupCosineSchedule as an optax schedule of the update count.

  Update ``count`` (0-based) uses the reference's step k = count + 1:
  k < warmup: start + k / warmup (ref - start); then
  final + (ref - final) (1 + cos(pi (k - warmup) / (total - warmup))) / 2, at least final.
  """

  def schedule(count):
    k = jnp.asarray(count, jnp.float32) + 1
    warm = start_lr + k / max(1, warmup_steps) * (ref_lr - start_lr)
    progress = (k - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = final_lr + (ref_lr - final_lr) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    return jnp.where(k < warmup_steps, warm, jnp.maximum(final_lr, cosine))

  return schedule


def make_optimizer(config):
  """AdamW with the warmup-cosine schedule; returns (optax transform, schedule)."""
  opt = config.optimizer
  schedule = warmup_cosine(opt.start_lr, opt.ref_lr, opt.final_lr, opt.warmup_steps,
                           config.num_steps)
  tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


def make_mesh():
  """A 1-D mesh named 'data' over every device of every host."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch(global_batch, mesh, microbatches=1):
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f"the global batch {global_batch} is not divisible by the {devices} devices; "
                     f"use a multiple of {devices} (e.g. --config.batch_size="
                     f"{max(devices, global_batch // devices * devices)})")
  if global_batch % (microbatches * devices):
    raise ValueError(f"the global batch {global_batch} does not split into {microbatches} "
                     f"micro-batches over {devices} devices (needs a multiple of "
                     f"{microbatches * devices})")
  if global_batch % jax.process_count():
    raise ValueError(f"the global batch {global_batch} is not divisible by the "
                     f"{jax.process_count()} hosts")


def train_model_config(config) -> model_lib.ModelConfig:
  """The ``ModelConfig`` of a training config, with an "auto" scan resolved for training."""
  model_config = model_lib.ModelConfig(**config.model)
  return dataclasses.replace(model_config, scan_backend=scan.resolve_backend(
      model_config.scan_backend, model_config.scan_platform, differentiated=True).value)


def _split(model):
  """(graphdef, params, model_state): the ``nnx.Param`` values and the other variables."""
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


def _all_variables(graphdef, params, model_state):
  """The model's whole state as one pure dict, as module checkpoints hold it."""
  return nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, params, model_state)))


def model_of(graphdef, state):
  """The model held by a ``TrainState``, in inference mode (BatchNorm on running statistics)."""
  model = nnx.merge(graphdef, state.params, state.model_state)
  model.eval()
  return model


def create_train_state(config, tx, init_from=None):
  """(graphdef, state): a new model (or ``init_from``'s weights) and a fresh optimizer."""
  model_config = train_model_config(config)
  if init_from:
    stored = checkpoint.read_model_config(init_from)
    sizes = lambda c: (c.dims, c.depths, c.depths_decoder, c.d_state, c.fusion_d_state,
                       c.fusion_blocks, c.expand, c.fusion, c.patch_mark, c.fusion_heads)
    if sizes(stored) != sizes(model_config):
      raise ValueError(f"--init_from {init_from} holds a model of other sizes ({stored}) than "
                       f"the config ({model_config})")
    model = checkpoint.load_model(init_from, **{
        f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)})
    model.train()
  else:
    model = model_lib.S4Fusion(model_config, rngs=nnx.Rngs(config.seed))
  graphdef, params, model_state = _split(model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(config.seed)))
  return graphdef, state


def make_train_step(graphdef, resnet_graphdef, tx, schedule, loss_config, microbatches=1):
  """The pure training step ``(state, batch, resnet_state) -> (state, metrics)``.

  With ``microbatches`` = k > 1 the batch is cut into k interleaved micro-batches
  (rows j, j + k, ...: each stays on its device) whose gradients are averaged in a
  ``lax.scan``: the same gradient as the whole batch (every loss term is a batch mean of
  per-sample terms), with about 1/k of the activation memory. The model runs in training
  mode: BatchNorm statistics (the "cnn" ablation) come from each (micro-)batch and their
  running averages are carried in ``state.model_state``.
  """

  def grads_and_metrics(params, model_state, batch, resnet):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, model_state)
      fused = model(batch["ir"], batch["vi"])
      loss, terms = losses.objective(batch["ir"], batch["vi"], fused, loss_config, resnet)
      return loss, (terms, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    (loss, (terms, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, {"loss": loss, **{k: jnp.mean(v) for k, v in terms.items()}}, model_state

  def train_step(state, batch, resnet_state):
    resnet = nnx.merge(resnet_graphdef, resnet_state) if resnet_graphdef is not None else None
    if microbatches == 1:
      grads, metrics, model_state = grads_and_metrics(state.params, state.model_state, batch,
                                                      resnet)
    else:
      split = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches,
                                               *x.shape[1:]), 0, 1)

      def accumulate(carry, micro):
        total, model_state = carry
        grads, metrics, model_state = grads_and_metrics(state.params, model_state, micro, resnet)
        return (jax.tree.map(jnp.add, total, (grads, metrics)), model_state), None

      grads_shape, metrics_shape, _ = jax.eval_shape(
          grads_and_metrics, state.params, state.model_state,
          jax.tree.map(lambda x: split(x)[0], batch), resnet)
      zeros = jax.tree.map(jnp.zeros_like, (grads_shape, metrics_shape))
      (total, model_state), _ = jax.lax.scan(accumulate, (zeros, state.model_state),
                                             jax.tree.map(split, batch))
      grads, metrics = jax.tree.map(lambda x: x / microbatches, total)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(lr=schedule(state.step), grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params), update_norm=optax.tree.norm(updates))
    return state.replace(step=state.step + 1, params=params, model_state=model_state,
                         opt_state=opt_state), metrics

  return train_step


def _sources(entries, data_dir):
  """Prepares (if needed) and opens each ``{dataset, manual_dir, split, weight}`` entry."""
  sources, weights = [], []
  for entry in entries:
    dataset_dir, skipped = datasets.prepare(entry["dataset"], entry["manual_dir"], data_dir,
                                            name=entry.get("name"),
                                            skip_bad_pairs=entry.get("skip_bad_pairs", False))
    for name, reason in skipped:
      print(f"skipped {name}: {reason}")
    src = datasets.source(dataset_dir, entry["split"])
    sources.append(src)
    weights.append(entry.get("weight") or len(src))
  return sources, weights


def _checkpoint_manager(workdir, config):
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
      item_names=(checkpoint.PARAMS, checkpoint.METADATA, "opt_state", "train", "data"))


def _save(manager, graphdef, state, data_iterator, model_config):
  step = int(state.step)
  manager.save(step, args=ocp.args.Composite(**{
      checkpoint.PARAMS: ocp.args.StandardSave(
          _all_variables(graphdef, state.params, state.model_state)),
      checkpoint.METADATA: ocp.args.JsonSave(dataclasses.asdict(model_config)),
      "opt_state": ocp.args.StandardSave(state.opt_state),
      "train": ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
      "data": grain.checkpoint.CheckpointSave(data_iterator),
  }))
  manager.wait_until_finished()


def _restore(manager, graphdef, state, data_iterator):
  step = manager.latest_step()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  variables = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                           _all_variables(graphdef, state.params, state.model_state))
  restored = manager.restore(step, args=ocp.args.Composite(**{
      checkpoint.PARAMS: ocp.args.StandardRestore(variables),
      "opt_state": ocp.args.StandardRestore(abstract.opt_state),
      "train": ocp.args.StandardRestore({"step": abstract.step, "rng": abstract.rng}),
      "data": grain.checkpoint.CheckpointRestore(data_iterator),
  }))
  _, params, model_state = _split(nnx.merge(graphdef, restored[checkpoint.PARAMS]))
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


class _JsonLog:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record):
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def drop_after(self, step):
    """Forgets the records of steps after ``step``, which a resumed run logs again.

    A line cut short by a kill is dropped too. The file is replaced atomically.
    """
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record["step"] <= step:
          kept.append(line)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)


def train_and_evaluate(config, workdir, init_from=None, progress=True):
  """Trains under ``config`` in ``workdir``, resuming from its latest checkpoint if any.

  Returns:
    (graphdef, final ``TrainState``): ``model_of(graphdef, state)`` is the trained model.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh()
  check_batch(config.batch_size, mesh, config.microbatches)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  resnet_graphdef = resnet_state = None
  if losses.needs_resnet(config.loss):
    net = checkpoint.load_resnet(config.loss.resnet_weights)
    resnet_graphdef, resnet_state = nnx.split(net)
    resnet_state = jax.device_put(resnet_state, replicated)

  tx, schedule = make_optimizer(config)
  graphdef, state = create_train_state(config, tx, init_from)
  model_config = model_lib.ModelConfig(**config.model)  # saved with "auto", as configured

  sources, weights = _sources(config.data.train, config.data.data_dir)
  data = input_pipeline.train_dataset(
      sources, crop=config.crop_size, batch_size=config.batch_size // jax.process_count(),
      seed=config.seed, weights=weights, shard_index=jax.process_index(),
      shard_count=jax.process_count(), num_workers=config.data.num_workers)
  data_iterator = iter(data)

  manager = _checkpoint_manager(workdir, config)
  if manager.latest_step() is not None:
    state = _restore(manager, graphdef, state, data_iterator)
    print(f"resumed from step {int(state.step)} in {workdir}")
  state = jax.device_put(state, replicated)

  train_step = jax.jit(make_train_step(graphdef, resnet_graphdef, tx, schedule, config.loss,
                                       config.microbatches),
                       in_shardings=(replicated, sharded, replicated),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  log = _JsonLog(workdir)
  log.drop_after(int(state.step))
  validation = samples.Validation(config, workdir) if config.eval_every else None

  start_step = int(state.step)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=config.num_steps, initial=start_step, desc="train", dynamic_ncols=True)
  # Metrics stay on the device until a step that logs, validates or saves: then the steps
  # since the last fetch are fetched together and checked, so no saved state holds a NaN and
  # the host does not wait for the device on the other steps.
  pending, tick = [], time.perf_counter()
  for step in range(start_step, config.num_steps):
    batch = next(data_iterator)
    batch = jax.make_array_from_process_local_data(sharded, {k: batch[k] for k in ("ir", "vi")})
    state, metrics = train_step(state, batch, resnet_state)
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
      record = validation.run(model_of(graphdef, state), done)
      log.write({"step": done, **record})
    if save_now:
      _save(manager, graphdef, state, data_iterator, model_config)
    tick = time.perf_counter()  # images/s counts training steps only
  if bar is not None:
    bar.close()
  manager.close()
  return graphdef, state
