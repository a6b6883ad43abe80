"""The training step and what it carries, as pure functions: state, optimizer, step.

Nothing here reads files or data (no orbax, grain or TFDS), so the step can be built and
timed on a machine that has only JAX, flax and optax (``python -m bench.device_check``).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from s4fusion_jax.interop import functional


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


def split_model(model):
  """(graphdef, params, model_state): the ``nnx.Param`` values and the other variables."""
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


def all_variables(graphdef, params, model_state):
  """The model's whole state as one pure dict, as module checkpoints hold it."""
  return nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, params, model_state)))


def init_state(model, tx, seed):
  """(graphdef, a step-0 ``TrainState``) for ``model`` and the optax transform ``tx``."""
  graphdef, params, model_state = split_model(model)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              model_state=model_state, opt_state=tx.init(params),
                              rng=jax.random.key_data(jax.random.key(seed)))


def model_of(graphdef, state):
  """The model held by a ``TrainState``, in inference mode (BatchNorm on running statistics)."""
  model = nnx.merge(graphdef, state.params, state.model_state)
  model.eval()
  return model


def make_train_step(graphdef, resnet_graphdef, tx, schedule, loss_config, microbatches=1):
  """The pure training step ``(state, batch, resnet_state) -> (state, metrics)``.

  With ``microbatches`` = k > 1 the batch is cut into k interleaved micro-batches (rows j,
  j + k, ...) whose gradients are averaged in a ``lax.scan``: the whole batch's gradient in
  about 1/k of the activation memory. BatchNorm statistics (the "cnn" ablation) come from
  each (micro-)batch; their running averages are carried in ``state.model_state``.
  """

  network = functional.Network(graphdef, resnet_graphdef)

  def grads_and_metrics(params, model_state, batch, resnet):
    loss_fn = lambda params: network.loss({"params": params, "state": model_state}, batch,
                                          loss_config, resnet)
    (loss, (terms, variables)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, {"loss": loss, **{k: jnp.mean(v) for k, v in terms.items()}}, variables["state"]

  def train_step(state, batch, resnet_state):
    resnet = resnet_state if resnet_graphdef is not None else None
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
