"""The paper's ablation variants: sizes, definitions, training, checkpoints, the ablate job."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from conftest import REPO, one_train_step, shared_path
from configs import ablations
from s4fusion_jax import __main__ as cli
from s4fusion_jax.evaluation import ablation
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.interop import reference
from s4fusion_jax.network import fusion_variants
from s4fusion_jax.network import layers
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.network import ss2d
from s4fusion_jax.objectives import metrics
from s4fusion_jax.training import train_step
from s4fusion_jax.training import trainer

SMALL = dict(dims=(8, 16, 32), depths=(1, 1, 1), depths_decoder=(1, 1, 1), d_state=4,
             fusion_d_state=4, fusion_blocks=1, scan_backend="chunked", scan_chunk=16)
RELEASED = 3_562_957


def full_size_count(variant):
  config = model_lib.ModelConfig(**ablations.get_config(variant).model)
  return model_lib.count_params(layers.abstract(model_lib.S4Fusion, config=config))


def test_full_size_parameter_counts():
  counts = {v: full_size_count(v) for v in ablations.VARIANTS}
  assert counts["s4fusion"] == counts["no_per"] == RELEASED
  for variant in ("add", "cnn", "ca", "fssm"):
    assert abs(counts[variant] / RELEASED - 1) <= 0.05, (variant, counts[variant])
  # no_pm drops the three scales' 3 mark projections (2 d_inner x d_inner each), not resized.
  marks = 3 * sum(2 * int(1.5 * d) * int(1.5 * d) for d in (48, 96, 192))
  assert counts["no_pm"] == RELEASED - marks
  assert abs(counts["no_pm"] / RELEASED - 1 + 0.18) < 0.01
  with pytest.raises(ValueError, match="unknown variant 'bogus'"):
    ablations.get_config("bogus")


def test_bad_fusion_options_are_named():
  with pytest.raises(ValueError, match="fusion 'mlp' is not one of"):
    model_lib.ModelConfig(fusion="mlp")
  with pytest.raises(ValueError, match="patch_mark=False is a CMSA option"):
    model_lib.ModelConfig(fusion="fssm", patch_mark=False)
  with pytest.raises(ValueError, match="multiples of fusion_heads 8"):
    model_lib.ModelConfig(fusion="cross_attention", dims=(4, 8, 16))


# Jitted: run eagerly, a fuse compiles each of its hundreds of operations on its own.
fuse = nnx.jit(model_lib.fuse)


def small_model(**changes):
  return model_lib.create(model_lib.ModelConfig(**SMALL, **changes), 3)


def flat_params(model):
  return {k: v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_patch_mark_off_removes_the_mark_and_nothing_else():
  x_ir, x_vi = (jax.random.uniform(jax.random.key(i), (2, 25, 37, 1)) for i in (0, 1))
  marked, unmarked = small_model(), small_model(patch_mark=False)
  marked_params, unmarked_params = flat_params(marked), flat_params(unmarked)
  extra = set(marked_params) - set(unmarked_params)
  assert extra and all(p[-1] == "mark_proj" for p in extra) and not set(unmarked_params) - set(
      marked_params)
  assert len(extra) == 3  # one block at each of three scales
  before = fuse(marked, x_ir, x_vi)
  # With every shared weight equal and the mark zeroed, the two models agree.
  nnx.update(unmarked, nnx.from_flat_state({k: marked_params[k] for k in unmarked_params}))
  for path in extra:
    block = marked
    for key in path[:-1]:
      block = block[key] if isinstance(key, int) else getattr(block, key)
    block.mark_proj[...] = jnp.zeros_like(block.mark_proj[...])
  zeroed, without = fuse(marked, x_ir, x_vi), fuse(unmarked, x_ir, x_vi)
  np.testing.assert_allclose(without, zeroed, rtol=0, atol=1e-6)
  assert float(jnp.abs(before - zeroed).max()) > 1e-4  # the mark mattered (100x the tolerance)


def to_torch(x):
  return torch.from_numpy(np.asarray(x, np.float32))


class TorchBasicBlock(torch.nn.Module):
  """The reference's BasicBlock(c, c, strides=1), from its compiled ablation module."""

  def __init__(self, c):
    super().__init__()
    conv = lambda: torch.nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False)
    self.conv1 = torch.nn.Sequential(conv(), torch.nn.BatchNorm2d(c), torch.nn.ReLU())
    self.conv2 = torch.nn.Sequential(conv(), torch.nn.BatchNorm2d(c))

  def forward(self, x):
    return torch.relu(self.conv2(self.conv1(x)) + x)


class TorchCNNs(torch.nn.Module):
  """The reference's CNNs(d_model = 2C): cat -> 1x1 -> BasicBlock -> 1x1, channels-last out."""

  def __init__(self, d_model):
    super().__init__()
    width = int(d_model // 1.4)
    self.in_proj = torch.nn.Conv2d(d_model, width, 1)
    self.block = TorchBasicBlock(width)
    self.out_proj = torch.nn.Conv2d(width, d_model // 2, 1)

  def forward(self, x, y):
    x = torch.cat([x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)], 1)
    return self.out_proj(self.block(self.in_proj(x))).permute(0, 2, 3, 1)


def load_conv(torch_conv, ours):
  torch_conv.weight.data = to_torch(ours.kernel[...].transpose(3, 2, 0, 1))
  if torch_conv.bias is not None:
    torch_conv.bias.data = to_torch(ours.bias[...])


def load_bn(torch_bn, ours):
  torch_bn.weight.data, torch_bn.bias.data = to_torch(ours.scale[...]), to_torch(ours.bias[...])
  torch_bn.running_mean.data = to_torch(ours.mean[...])
  torch_bn.running_var.data = to_torch(ours.var[...])


def test_cnn_fusion_matches_the_reference_definition():
  ours = fusion_variants.CNNFusion(16, 1, rngs=nnx.Rngs(0))
  theirs = TorchCNNs(32)
  load_conv(theirs.in_proj, ours.in_proj)
  load_conv(theirs.out_proj, ours.out_proj)
  block = ours.blocks[0]
  for (conv, bn), seq in (((block.conv1, block.bn1), theirs.block.conv1),
                          ((block.conv2, block.bn2), theirs.block.conv2)):
    load_conv(seq[0], conv)
    load_bn(seq[1], bn)
  assert block.conv1.kernel[...].shape == (3, 3, 22, 22)  # int(32 // 1.4) = 22
  x, y = (jax.random.uniform(jax.random.key(i), (2, 9, 11, 16)) for i in (0, 1))
  # Training mode: batch statistics, and the running mean moves as PyTorch's does.
  out = ours(x, y)
  np.testing.assert_allclose(out, theirs(to_torch(x), to_torch(y)).detach(), atol=2e-5)
  np.testing.assert_allclose(block.bn1.mean[...], theirs.block.conv1[1].running_mean, atol=1e-6)
  # Inference mode: running statistics (given distinct values first).
  for bn, seq in ((block.bn1, theirs.block.conv1), (block.bn2, theirs.block.conv2)):
    bn.mean[...] = jax.random.normal(jax.random.key(5), bn.mean[...].shape) * 0.1
    bn.var[...] = jax.random.uniform(jax.random.key(6), bn.var[...].shape, minval=0.5, maxval=2)
    load_bn(seq[1], bn)
  ours.eval()
  theirs.eval()
  np.testing.assert_allclose(ours(x, y), theirs(to_torch(x), to_torch(y)).detach(), atol=2e-5)


def torch_cross_attention_layer(x1, x2, kv1, kv2, heads):
  """The reference's CrossAttentionLayer.forward with kv weights (2C, C), as PyTorch runs it."""
  batch, n, c = x1.shape
  scale = (c // heads)**-0.5
  q1 = x1.reshape(batch, -1, heads, c // heads).permute(0, 2, 1, 3)
  q2 = x2.reshape(batch, -1, heads, c // heads).permute(0, 2, 1, 3)
  k1, v1 = (x1 @ kv1.T).reshape(batch, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
  k2, v2 = (x2 @ kv2.T).reshape(batch, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
  ctx1 = ((k1.transpose(-2, -1) @ v1) * scale).softmax(dim=-2)
  ctx2 = ((k2.transpose(-2, -1) @ v2) * scale).softmax(dim=-2)
  return ((q1 @ ctx2).permute(0, 2, 1, 3).reshape(batch, n, c),
          (q2 @ ctx1).permute(0, 2, 1, 3).reshape(batch, n, c))


def test_cross_attention_fusion_matches_the_reference_definition():
  ours = fusion_variants.CrossAttentionFusion(16, 2, 4, rngs=nnx.Rngs(0))
  x, y = (jax.random.uniform(jax.random.key(i), (2, 5, 7, 16)) for i in (0, 1))
  a, b = to_torch(x).reshape(2, 35, 16), to_torch(y).reshape(2, 35, 16)
  for layer in ours.layers:  # the reference's layers are not residual
    a, b = torch_cross_attention_layer(a, b, to_torch(layer.kv_ir[...]).T,
                                       to_torch(layer.kv_vi[...]).T, 4)
  np.testing.assert_allclose(ours(x, y), (a + b).reshape(2, 5, 7, 16), atol=1e-5)


def test_fssm_block_with_tied_weights_and_equal_inputs_is_ss2d():
  ref = ss2d.SS2D(16, 4, rngs=nnx.Rngs(0), backend="sequential")
  ours = fusion_variants.FSSMBlock(16, 4, rngs=nnx.Rngs(1), backend="sequential")
  for name in ("in_proj", "conv", "out_norm", "out_proj"):
    nnx.update(getattr(ours, name), nnx.state(getattr(ref, name)))
  nnx.update(ours.ssm_ir, nnx.state(ref.ssm))
  nnx.update(ours.ssm_vi, nnx.state(ref.ssm))
  ours.x_proj_ir[...] = ref.x_proj[...]
  ours.x_proj_vi[...] = ref.x_proj[...]
  x = jax.random.uniform(jax.random.key(0), (2, 6, 7, 16))
  out_ir, out_vi = ours(x, x)
  np.testing.assert_allclose(out_ir, ref(x), atol=1e-6)
  np.testing.assert_allclose(out_vi, ref(x), atol=1e-6)
  # Each modality's scan is driven by the other's projections: changing V changes I's output.
  changed_ir, _ = ours(x, jax.random.uniform(jax.random.key(1), x.shape))
  assert float(jnp.abs(changed_ir - out_ir).max()) > 1e-4 * float(jnp.abs(out_ir).max())


def small_config(variant):
  """``variant``'s training config with SMALL's model at two scales (a merge, an expand and
  a skip fusion: every kind of block) for the tests that train it."""
  config = ablations.get_config(variant)
  config.model.update(SMALL, dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1))
  config.loss.update(perceptual=False, weight_source="image_gradient")
  config.model.remat = False
  return config


def test_no_per_is_s4fusion_without_the_perceptual_loss():
  s4fusion, no_per = ablations.get_config("s4fusion"), ablations.get_config("no_per")
  assert no_per.model == s4fusion.model and not no_per.loss.perceptual and s4fusion.loss.perceptual
  s4fusion.loss.perceptual = False
  assert no_per == s4fusion


# The fusions other than S4Fusion's own: s4fusion's step is trained throughout the suite, add's
# in test_ablate_tabulates_and_resumes, no_pm's model is s4fusion's less one parameter
# (test_patch_mark_off_removes_the_mark_and_nothing_else) and no_per's is s4fusion's.
@pytest.mark.parametrize("variant", ["cnn", "ca", "fssm"])
def test_each_variant_trains_a_step_and_round_trips_a_checkpoint(variant, tmp_path):
  config = small_config(variant)
  graphdef, state, new_state, step_metrics, batch = one_train_step(config, (2, 13, 25, 1))
  assert np.isfinite(float(step_metrics["loss"]))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert sum(jax.tree.leaves(moved)) > 0.9 * len(jax.tree.leaves(moved))
  if variant == "cnn":  # BatchNorm statistics are carried and updated
    assert jax.tree.leaves(new_state.model_state)
    assert not np.allclose(jax.tree.leaves(state.model_state)[0],
                           jax.tree.leaves(new_state.model_state)[0])
  else:
    assert not jax.tree.leaves(new_state.model_state)
  model = train_step.model_of(graphdef, new_state)
  checkpoint.save_model(tmp_path / "ckpt", model)
  loaded = checkpoint.load_model(tmp_path / "ckpt")
  assert loaded.config == model.config
  assert loaded.config.fusion == config.model.fusion
  np.testing.assert_array_equal(fuse(loaded, batch["ir"], batch["vi"]),
                                fuse(model, batch["ir"], batch["vi"]))


def test_export_to_the_reference_refuses_a_variant():
  with pytest.raises(ValueError, match="only S4Fusion itself exports"):
    reference.to_torch_state_dict(small_model(fusion="add"))


def small_pairs(folder, names, size):
  """Copies centre crops of some TNO pairs into folder/ir, folder/vi."""
  tno = shared_path("data", "tno")
  for sub in ("ir", "vi"):
    os.makedirs(folder / sub, exist_ok=True)
    for name in names:
      image = Image.open(tno / sub / name)
      left, top = (image.width - size) // 2, (image.height - size) // 2
      image.crop((left, top, left + size, top + size)).save(folder / sub / name)
  return folder


def test_ablate_tabulates_and_resumes(tmp_path, monkeypatch):
  names = sorted(os.listdir(shared_path("data", "tno", "ir")))
  train = small_pairs(tmp_path / "train", names[:6], 40)
  test = small_pairs(tmp_path / "test", names[6:8], 41)  # VIF needs 41 x 41
  workdir = tmp_path / "ablation"

  def configs():
    return {n: ablation.short_budget(small_config(n), train, workdir, steps=2, batch_size=2,
                                     crop_size=25) for n in ("add", "no_per")}

  table = ablation.run(configs(), test, workdir, with_perceptual=False, progress=False)
  rows = [line for line in table.splitlines() if line.startswith("| ") and "variant" not in line]
  no_per = "| no_per (= s4fusion: L_per needs ResNet50 weights)"
  assert [r.split(" | ")[0] for r in rows] == ["| add", "| s4fusion", no_per]
  assert rows[1].split(" | ")[1:] == rows[2].split(" | ")[1:]
  assert not (workdir / "no_per").exists()
  for name in ("ablation.md", "ablation.csv", "ablation.png"):
    assert (workdir / name).is_file()
  first = json.loads((workdir / "add" / "result.json").read_text())
  assert first["steps"] == 2 and first["params"] == model_lib.count_params(
      checkpoint.load_model(workdir / "add" / "checkpoints" / "2"))

  # A finished variant is not run again; one without its result resumes from its checkpoint.
  (workdir / "add" / "result.json").unlink()
  trained = []
  original = trainer.train_and_evaluate
  monkeypatch.setattr(trainer, "train_and_evaluate",
                      lambda config, run_dir, **kw: trained.append(os.path.basename(run_dir))
                      or original(config, run_dir, **kw))
  ablation.run(configs(), test, workdir, with_perceptual=False, progress=False)
  assert trained == ["add"]
  again = json.loads((workdir / "add" / "result.json").read_text())
  assert {k: again[k] for k in metrics.ABLATION_COLUMNS} == {k: first[k]
                                                           for k in metrics.ABLATION_COLUMNS}
  logged = [json.loads(line)["step"] for line in open(workdir / "add" / "metrics.jsonl")]
  assert logged == [2]  # logged once: no step was trained again


def test_ablate_command_names_bad_input(tmp_path, capsys):
  data = str(shared_path("data", "tno"))
  assert cli.main(["ablate", "--train", data, "--test", data, "--workdir", str(tmp_path),
                   "--variants", "s4fusion", "bogus"]) == 2
  assert "unknown variants ['bogus']" in capsys.readouterr().err
  assert cli.main(["ablate", "--train", str(tmp_path / "none"), "--test", data, "--workdir",
                   str(tmp_path)]) == 2
  assert "no folder" in capsys.readouterr().err
  assert str(REPO) in cli.REPO
