"""S4Fusion as pure functions of plain pytrees, a thin layer over the NNX modules.

    net, variables = functional.from_checkpoint("s4fusion_jax/weights/s4fusion")
    fused = jax.jit(net.apply)(variables, ir, vi)                   # (batch, H, W, 1)
    ensemble = jax.vmap(net.apply, in_axes=(0, None, None))(stacked, ir, vi)
    saliency = jax.grad(lambda ir: net.apply(variables, ir, vi)[0, 30, 40, 0])(ir)

``variables`` is ``{"params": ..., "state": ...}``, nested dicts of arrays (NNX pure dicts):
the ``nnx.Param`` values and every other variable (BatchNorm statistics of the "cnn"
ablation; ``{}`` for S4Fusion). A ``Network`` holds only the NNX graph definition
(``net.module(variables).config`` is the ``ModelConfig``); each call rebuilds the modules
around the given arrays (``nnx.merge``), so the numbers are the model's. Train / eval mode is
an argument: ``apply(..., train=True)`` also returns the updated ``state``.
"""

import dataclasses
from typing import Optional

import jax
from flax import nnx

from s4fusion_jax.interop import reference
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import directions
from s4fusion_jax.numerics import scan
from s4fusion_jax.objectives import losses


def _pure(state):
  return nnx.to_pure_dict(state)


def variables_of(module: nnx.Module) -> dict:
  """``{"params": ..., "state": ...}`` of an NNX module (parameters and other variables)."""
  _, params, state = nnx.split(module, nnx.Param, ...)
  return {"params": _pure(params), "state": _pure(state)}


@dataclasses.dataclass(frozen=True)
class Network:
  """The static half of an S4Fusion model (its NNX graph definition, and optionally the
  frozen ResNet50's for the loss); its methods are pure functions of ``variables`` and
  channels-last (batch, H, W, 1) images in [0, 1]."""
  graphdef: nnx.GraphDef
  resnet_graphdef: Optional[nnx.GraphDef] = None

  def module(self, variables, *, train=False) -> model_lib.S4Fusion:
    """The NNX model holding ``variables`` (variables -> model), in train or eval mode."""
    model = nnx.merge(self.graphdef, variables["params"], variables["state"])
    if train:
      model.train()
    else:
      model.eval()
    return model

  def apply(self, variables, ir, vi, valid=None, *, train=False):
    """Fuses (batch, H, W, 1) images satisfying the size rule -> (batch, H, W, 1), unclamped.

    ``valid``: None, or the (batch, 2) valid rectangles of a size bucket (``S4Fusion.stages``).
    With ``train``, returns ``(fused, variables)``, the variables with BatchNorm's running
    statistics updated from this batch (unchanged for S4Fusion itself).
    """
    model = self.module(variables, train=train)
    fused = model(ir, vi, valid)
    if not train:
      return fused
    return fused, {"params": variables["params"], "state": _pure(nnx.state(model, nnx.Not(
        nnx.Param)))}

  def fuse(self, variables, ir, vi, *, exact_sizes=False):
    """Fuses (batch, H, W, 1) images of any H x W (padded, bucketed and cropped as
    ``model.fuse``) -> (batch, H, W, 1), unclamped; eval mode."""
    return model_lib.fuse(self.module(variables), ir, vi, exact_sizes=exact_sizes)

  def stages(self, variables, ir, vi, valid=None):
    """Every intermediate of one forward pass, as ``S4Fusion.stages`` names them."""
    return self.module(variables).stages(ir, vi, valid)

  def intermediates(self, variables, ir, vi, valid=None):
    """One forward pass (eval mode) and what it computed on the way.

    Returns:
      ``(stages, scans)``: ``stages`` as ``S4Fusion.stages`` names them; ``scans``, per
      selective scan by its module path joined with "/" (``"fusion/0/blocks/0/ssm"``: the
      first CMSA block of the finest scale), ``delta`` (dt_low dt_proj, before the bias and
      softplus; (batch, L, 4, D)), ``B`` and ``C`` ((batch, L, 4, N)); in a CMSA block L is
      2 H W, the modalities interleaved, infrared first (``cross_scan_terms`` splits them).
    """
    model = self.module(variables)
    for _, module in nnx.iter_modules(model):
      if getattr(module, "remat", False):
        module.remat = False  # nnx.capture does not see inside nnx.remat; the values are equal
    stages, captured = nnx.capture(lambda m: m.stages(ir, vi, valid), nnx.Intermediate)(model)
    scans = {}
    for path, value in nnx.to_flat_state(captured):
      *module_path, name = path
      (scans.setdefault("/".join(map(str, module_path)), {}))[name] = value.get_value()[0]
    return stages, scans

  def loss(self, variables, batch, loss_config, resnet_variables=None):
    """The training objective of one batch, in train mode.

    Args:
      variables: ``{"params", "state"}``.
      batch: ``{"ir": (batch, H, W, 1), "vi": (batch, H, W, 1)}`` in [0, 1], sides
        satisfying the size rule.
      loss_config: the ``loss`` field of a training config (``losses.objective``).
      resnet_variables: the frozen ResNet50's whole state (``with_resnet``), when the loss
        config needs it.

    Returns:
      ``(loss, (terms, variables))``, the variables with BatchNorm statistics updated, as
      ``jax.value_and_grad(..., has_aux=True)`` takes it.
    """
    fused, variables = self.apply(variables, batch["ir"], batch["vi"], train=True)
    resnet = None
    if resnet_variables is not None:
      if self.resnet_graphdef is None:
        raise ValueError("resnet_variables were given to a Network without a ResNet50; "
                         "build it with Network.with_resnet")
      resnet = nnx.merge(self.resnet_graphdef, resnet_variables)
    loss, terms = losses.objective(batch["ir"], batch["vi"], fused, loss_config, resnet)
    return loss, (terms, variables)

  def with_resnet(self, resnet) -> tuple:
    """(this network with ``resnet``'s structure, the ResNet50's state) for ``loss``."""
    graphdef, state = nnx.split(resnet)
    return dataclasses.replace(self, resnet_graphdef=graphdef), _pure(state)

  def to_reference(self, variables) -> dict:
    """The reference's ``MambaNet`` state dict (names -> numpy arrays) of ``variables``."""
    return reference.to_torch_state_dict(self.module(variables))


def cross_scan_terms(variables, scans):
  """Per CMSA block, the step size Delta in its three forms and B, C, split by modality.

  Args:
    variables: the model's ``{"params", "state"}``.
    scans: the second result of ``Network.intermediates``.

  Returns:
    ``{"fusion_<s>/block_<k>": {form: {"ir": ..., "vi": ...}}}`` for scale s (0: finest) and
    block k, with the forms ``delta_proj`` (dt_low dt_proj), ``delta_biased`` (plus dt_bias),
    ``delta`` (its softplus), each (batch, H W, 4, D), and ``B``, ``C`` (batch, H W, 4, N).
  """
  terms = {}
  for path, scan_terms in scans.items():
    parts = path.split("/")
    if len(parts) != 5 or parts[0] != "fusion" or parts[2] != "blocks" or parts[4] != "ssm":
      continue  # an SS2D, or an ablation's scans
    params = variables["params"]["fusion"][int(parts[1])]["blocks"][int(parts[3])]["ssm"]
    proj = scan_terms["delta"].astype(scan.state_dtype(scan_terms["delta"].dtype))
    biased = proj + params["dt_bias"].astype(proj.dtype)
    forms = {"delta_proj": proj, "delta_biased": biased, "delta": jax.nn.softplus(biased),
             "B": scan_terms["B"], "C": scan_terms["C"]}
    terms[f"fusion_{parts[1]}/block_{parts[3]}"] = {
        form: dict(zip(("ir", "vi"), directions.deinterleave(value)))
        for form, value in forms.items()}
  return terms


def from_model(model: model_lib.S4Fusion):
  """(``Network``, variables) of an ``S4Fusion`` model."""
  return Network(nnx.graphdef(model)), variables_of(model)


def from_config(config: model_lib.ModelConfig, seed=0):
  """(``Network``, variables) of a freshly initialised model (``model.create``)."""
  return from_model(model_lib.create(config, seed))


def from_checkpoint(path, **overrides):
  """(``Network``, variables) of a saved model (``checkpoint.load_model``)."""
  # Imported here: the training step uses this module and runs where orbax is not installed.
  from s4fusion_jax.interop import checkpoint  # pylint: disable=import-outside-toplevel
  return from_model(checkpoint.load_model(path, **overrides))


def from_reference(state_dict, **kwargs):
  """(``Network``, variables) of the reference's state dict (``reference.from_torch_state_dict``)."""
  return from_model(reference.from_torch_state_dict(state_dict, **kwargs))

