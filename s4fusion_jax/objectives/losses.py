"""The S4Fusion training loss, as pure functions (the reference's compiled ``utils/loss.py``).

Images are channels-last (batch, H, W, 1) in [0, 1]; features are lists of
channels-last maps (batch, h, w, C). Per sample b:

    info(x)       = mean_k mean_{h,w,c} sobel(phi_k(x))^2        (phi_k: ResNet50 layer k, detached)
    [w_I, w_V]    = softmax([info(I) / c, info(V) / c])
    L_ssim        = mean_b(w_I mean ssim_loss(I, F)) + mean_b(w_V mean ssim_loss(V, F))
    L_l1          = mean_b(w_I mean |I - F|)         + mean_b(w_V mean |V - F|)
    L_grad        = mean |max(sobel(V), sobel(I)) - sobel(F)|
    L_per         = mean_b(-sum_i p_i log p_i),  p = softmax(ResNet50(F)) + 1e-9
    L_total       = w_per L_per + w_l1 L_l1 + w_ssim L_ssim + w_grad L_grad   (paper: 1, 15, 15, 15)

``ssim_loss`` is kornia's (window 11, sigma 1.5, reflect padding): clip((1 - SSIM) / 2, 0, 1).
"""

import jax
import jax.numpy as jnp

from s4fusion_jax.network import resnet as resnet_lib
from s4fusion_jax.numerics import filters

ENTROPY_EPS = 1e-9
TERMS = ("loss_per", "loss_l1", "loss_ssim", "loss_grad")
WEIGHT_SOURCES = ("resnet50", "image_gradient", "equal")


def _sample_mean(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def information(features):
  """info per sample: the mean over maps of mean(sobel(map)^2); (batch,) (zeros for no maps)."""
  per_map = [_sample_mean(filters.sobel(jax.lax.stop_gradient(f)) ** 2) for f in features]
  return sum(per_map) / len(per_map)


def adaptive_weights(info_ir, info_vi, c):
  """softmax([info_ir / c, info_vi / c]) per sample -> (w_ir, w_vi), each (batch,)."""
  w = jax.nn.softmax(jnp.stack([info_ir / c, info_vi / c]), axis=0)
  return w[0], w[1]


def prediction_entropy(logits):
  """mean_b(-sum_i p_i log p_i) with p = softmax(logits) + 1e-9; logits (batch, classes)."""
  p = jax.nn.softmax(logits, axis=-1) + ENTROPY_EPS
  return jnp.mean(-jnp.sum(p * jnp.log(p), axis=-1))


def loss_terms(ir, vi, fused, features_ir, features_vi, logits_fused, c):
  """Every term of the S4Fusion loss.

  Args:
    ir, vi, fused: (batch, H, W, 1) in [0, 1].
    features_ir, features_vi: lists of (batch, h, w, C) maps whose Sobel energy weighs
      the sources (ResNet50 layer1..layer4 in the paper; the images themselves for
      ``image_gradient``). Empty lists give equal weights.
    logits_fused: (batch, classes) ResNet50 logits of the fused image, or None (L_per = 0).
    c: the softmax temperature.

  Returns:
    A dict of ``info_ir, info_vi, weight_ir, weight_vi`` (batch,) and the scalars
    ``loss_ssim, loss_l1, loss_grad, loss_per``.
  """
  batch = ir.shape[0]
  info_ir = information(features_ir) if features_ir else jnp.zeros(batch, ir.dtype)
  info_vi = information(features_vi) if features_vi else jnp.zeros(batch, vi.dtype)
  w_ir, w_vi = adaptive_weights(info_ir, info_vi, c)

  def weighted(per_sample):
    return jnp.mean(w_ir * per_sample(ir)) + jnp.mean(w_vi * per_sample(vi))

  sobel_fused = filters.sobel(fused)
  return dict(
      info_ir=info_ir, info_vi=info_vi, weight_ir=w_ir, weight_vi=w_vi,
      loss_ssim=weighted(lambda src: _sample_mean(filters.ssim_loss_map(src, fused))),
      loss_l1=weighted(lambda src: _sample_mean(jnp.abs(src - fused))),
      loss_grad=jnp.mean(jnp.abs(jnp.maximum(filters.sobel(vi), filters.sobel(ir)) - sobel_fused)),
      loss_per=(prediction_entropy(logits_fused) if logits_fused is not None
                else jnp.zeros((), fused.dtype)),
  )


def total_loss(terms, weights):
  """sum_t weights[t] * terms[t] over ``TERMS``; ``weights`` maps each term to its weight."""
  return sum(weights[t] * terms[t] for t in TERMS)


def needs_resnet(config):
  """Whether the loss config ``config`` (``cfg.loss``) needs the ResNet50."""
  if config.weight_source not in WEIGHT_SOURCES:
    raise ValueError(f"loss.weight_source is {config.weight_source!r}; expected one of "
                     f"{WEIGHT_SOURCES}")
  return bool(config.perceptual) or config.weight_source == "resnet50"


def objective(ir, vi, fused, config, resnet=None):
  """The training loss of S4Fusion under the loss config ``config`` (``cfg.loss``).

  Args:
    ir, vi, fused: (batch, H, W, 1) in [0, 1].
    config: ``weights`` (one per term of ``TERMS``), ``temperature`` (c),
      ``perceptual`` (bool) and ``weight_source``: ``resnet50`` (the paper),
      ``image_gradient`` (the Sobel energy of the images themselves, for users
      without ImageNet weights) or ``equal``.
    resnet: the frozen ResNet50, needed when ``needs_resnet(config)``.

  Returns:
    (total, terms) with ``terms`` as ``loss_terms`` gives them.
  """
  if needs_resnet(config) and resnet is None:
    raise ValueError("this loss config needs a ResNet50 and none was given")
  run = lambda x: resnet(resnet_lib.imagenet_input(x))
  if config.weight_source == "resnet50":
    features_ir, features_vi = run(ir)[1], run(vi)[1]
  elif config.weight_source == "image_gradient":
    features_ir, features_vi = [ir], [vi]
  else:
    features_ir, features_vi = [], []
  logits = run(fused)[0] if config.perceptual else None
  terms = loss_terms(ir, vi, fused, features_ir, features_vi, logits, config.temperature)
  return total_loss(terms, config.weights), terms
