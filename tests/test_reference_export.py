"""Export to the PyTorch reference's state dict, and back, with and without torch."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import REPO, reference_state_dict
from s4fusion_jax import __main__ as cli
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.interop import reference
from s4fusion_jax.interop import weights_io
from s4fusion_jax.network import model as model_lib

UNUSED = ("vmunet.final_up.norm.weight", "vmunet.final_up.norm.bias")


def flat_params(model):
  return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}


def assert_same_model(a, b):
  pa, pb = flat_params(a), flat_params(b)
  assert pa.keys() == pb.keys()
  for path in pa:
    np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))


@pytest.mark.parametrize("golden_name", ["tiny_golden", "paper_golden"])
def test_export_gives_back_the_fixture(request, golden_name):
  fixture = reference_state_dict(request.getfixturevalue(golden_name))
  exported = reference.to_torch_state_dict(reference.from_torch_state_dict(fixture))
  assert exported.keys() == fixture.keys()
  for name, value in fixture.items():
    assert (exported[name].shape, exported[name].dtype) == (value.shape, value.dtype), name
    if name not in UNUSED:
      np.testing.assert_array_equal(exported[name], value, err_msg=name)
  # The fixture perturbed every parameter; the never-called norm comes back at its init.
  np.testing.assert_array_equal(exported[UNUSED[0]], np.ones_like(fixture[UNUSED[0]]))
  np.testing.assert_array_equal(exported[UNUSED[1]], np.zeros_like(fixture[UNUSED[1]]))


def test_import_export_import_is_the_identity_at_other_sizes():
  config = model_lib.ModelConfig(dims=(12, 24, 48), depths=(2, 1, 1), depths_decoder=(1, 1, 2),
                                 d_state=5, fusion_d_state=7, fusion_blocks=2)
  model = model_lib.create(config, 3)
  back = reference.from_torch_state_dict(reference.to_torch_state_dict(model))
  assert back.config == config
  assert_same_model(back, model)


def test_float64_model_exports_float32_by_default(tiny_golden):
  with jax.enable_x64(True):
    model = reference.from_torch_state_dict(reference_state_dict(tiny_golden), dtype=jnp.float64)
    exported = reference.to_torch_state_dict(model)
    assert {v.dtype for v in exported.values()} == {np.dtype(np.float32)}
    assert {v.dtype for v in reference.to_torch_state_dict(model, np.float64).values()} == {
        np.dtype(np.float64)}


def test_a_model_the_reference_cannot_hold_is_refused(tiny_golden, monkeypatch):
  model = reference.from_torch_state_dict(reference_state_dict(tiny_golden))
  table = reference.name_table(model.config)
  monkeypatch.setattr(reference, "name_table", lambda config: [
      e for e in table if e[1] != "vmunet.fusion_layers.0.layers.0.mark_proj"])
  with pytest.raises(ValueError, match=r"no parameter for 1 .*fusion\.0\.blocks\.0\.mark_proj"):
    reference.to_torch_state_dict(model)


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".npz"])
def test_export_command_round_trip(tmp_path, tiny_golden, suffix):
  fixture = reference_state_dict(tiny_golden)
  ckpt = tmp_path / "ckpt"
  checkpoint.save_model(ckpt, reference.from_torch_state_dict(fixture))
  out = tmp_path / f"model{suffix}"
  assert cli.main(["export-reference", str(ckpt), str(out)]) == 0
  if suffix == ".npz":
    with np.load(out) as archive:
      written = {k: archive[k] for k in archive.files}
  else:
    # What the reference's test.py does: torch.load(path)['model'] into MambaNet.
    written = {k: v.numpy() for k, v in torch.load(out)["model"].items()}
  assert written.keys() == fixture.keys()
  for name in fixture.keys() - set(UNUSED):
    np.testing.assert_array_equal(written[name], fixture[name], err_msg=name)
  # ... and the written file converts back to the same model.
  back = tmp_path / "back"
  assert cli.main(["convert-reference", str(out), str(back)]) == 0
  assert_same_model(checkpoint.load_model(back), checkpoint.load_model(ckpt))
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_reference_saved_checkpoints_convert(tmp_path, tiny_golden):
  """A {'model': state_dict} file written by torch, as the reference's training saves it."""
  fixture = reference_state_dict(tiny_golden)
  for suffix in (".pkl", ".pth"):
    path = tmp_path / f"saved{suffix}"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in fixture.items()}, "epoch": 3}, path)
    model = reference.from_torch_state_dict(weights_io.read_state_dict(path))
    assert_same_model(model, reference.from_torch_state_dict(fixture))


def test_the_bundled_model_exports(tmp_path):
  out = tmp_path / "bundled.npz"
  bundled = REPO / "s4fusion_jax" / "weights" / "s4fusion"
  assert cli.main(["export-reference", str(bundled), str(out)]) == 0
  with np.load(out) as archive:
    names = set(archive.files)
  assert len(names) == len(reference.name_table(checkpoint.read_model_config(bundled))) + 2
  assert_same_model(reference.from_torch_state_dict(weights_io.read_state_dict(out)),
                    checkpoint.load_model(bundled))


def test_export_refuses_to_overwrite_and_bad_targets(tmp_path, tiny_golden, capsys):
  ckpt = tmp_path / "ckpt"
  checkpoint.save_model(ckpt, reference.from_torch_state_dict(reference_state_dict(tiny_golden)))
  out = tmp_path / "model.pkl"
  out.write_bytes(b"keep me")
  assert cli.main(["export-reference", str(ckpt), str(out)]) == 2
  assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
  assert cli.main(["export-reference", str(ckpt), str(out), "--force"]) == 0
  assert "model" in torch.load(out)
  assert cli.main(["export-reference", str(ckpt), str(tmp_path / "model.h5")]) == 2
  assert "cannot write weights as '.h5'" in capsys.readouterr().err
  assert cli.main(["export-reference", str(tmp_path / "nope"), str(tmp_path / "x.npz")]) == 2
  assert "not an s4fusion_jax checkpoint" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["ckpt", "model.pkl"]  # no temporary file left


def test_writing_torch_files_without_torch_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "torch", None)
  with pytest.raises(ImportError, match=r"needs PyTorch .* use \.npz"):
    weights_io.write_state_dict(tmp_path / "m.pth", {"a": np.zeros(2, np.float32)})
  assert not os.listdir(tmp_path)
