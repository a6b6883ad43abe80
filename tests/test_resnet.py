"""The ResNet50 port against torchvision's outputs (golden_resnet50.npz), and its loading."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import load_golden, rel_err
from s4fusion_jax import __main__ as cli
from s4fusion_jax.interop import checkpoint
from s4fusion_jax.interop import torchvision
from s4fusion_jax.network import resnet

apply = nnx.jit(lambda net, x: net(x))


@pytest.fixture(scope="module")
def golden():
  return load_golden("golden_resnet50.npz")


@pytest.fixture(scope="module")
def state_dict(golden):
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


def check_outputs(net, golden, dtype, tolerance):
  logits, features = apply(net, jnp.asarray(golden["input"].transpose(0, 2, 3, 1), dtype))
  assert logits.dtype == jnp.dtype(dtype) and len(features) == 4
  assert rel_err(logits, golden["output/logits"]) <= tolerance
  for i, f in enumerate(features):
    ref = golden[f"output/layer{i + 1}"].transpose(0, 2, 3, 1)
    assert f.shape == ref.shape
    assert rel_err(f, ref) <= tolerance, f"layer{i + 1}"


def test_float32_matches_torchvision(golden, state_dict):
  check_outputs(torchvision.from_torchvision_state_dict(state_dict), golden, "float32", 1e-4)


def test_float64_matches_torchvision(golden, state_dict):
  # The fixture's outputs were computed by torch in float32: they carry ~2e-6 of their own
  # rounding (our float64 run and our float32 run differ from them by the same amount), so
  # 1e-5 is the tightest bound a float64 run can be held to against this fixture.
  with jax.enable_x64(True):
    net = torchvision.from_torchvision_state_dict(state_dict, dtype=jnp.float64)
    check_outputs(net, golden, "float64", 1e-5)


def test_converter_lists_every_problem(state_dict):
  sd = dict(state_dict)
  sd["layer1.0.bn1.num_batches_tracked"] = np.array(5)  # ignored, as torchvision saves it
  sd["layer9.weight"] = np.zeros(3)
  sd["layer2.0.conv1.weight"] = np.zeros((128, 256, 3, 3))
  del sd["fc.bias"]
  with pytest.raises(ValueError) as info:
    torchvision.from_torchvision_state_dict(sd)
  message = str(info.value)
  assert "3 problem(s)" in message
  assert "unknown parameter 'layer9.weight'" in message
  assert "missing parameter 'fc.bias'" in message
  assert "'layer2.0.conv1.weight' has shape (128, 256, 3, 3)" in message


def write_safetensors(path, tensors):
  header, offset, blobs = {}, 0, []
  for name, value in tensors.items():
    data = np.ascontiguousarray(value, "<f2").tobytes()
    header[name] = {"dtype": "F16", "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
    blobs.append(data)
  raw = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_loads_from_safetensors_npz_and_a_converted_checkpoint(tmp_path, golden, state_dict):
  write_safetensors(tmp_path / "r50.safetensors", state_dict)
  np.savez(tmp_path / "r50.npz", **state_dict)
  assert cli.main(["convert-resnet", str(tmp_path / "r50.safetensors"), str(tmp_path / "ck")]) == 0
  x = jnp.asarray(golden["input"].transpose(0, 2, 3, 1))
  expected = apply(torchvision.from_torchvision_state_dict(state_dict), x)[0]
  for source in ("r50.safetensors", "r50.npz", "ck"):
    logits = apply(checkpoint.load_resnet(tmp_path / source), x)[0]
    np.testing.assert_array_equal(logits, expected, err_msg=source)


def test_missing_weights_say_how_to_get_them(tmp_path):
  for path in ("", tmp_path / "nope.pth"):
    with pytest.raises(FileNotFoundError, match="convert-resnet.*image_gradient"):
      checkpoint.load_resnet(path)
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="(?s)cannot read weights.*convert-resnet"):
    checkpoint.load_resnet(tmp_path / "bad.npz")


def test_imagenet_input_repeats_and_normalises():
  gray = jnp.full((1, 2, 2, 1), 0.5)
  x = resnet.imagenet_input(gray)
  assert x.shape == (1, 2, 2, 3)
  np.testing.assert_allclose(x[0, 0, 0], (0.5 - np.array(resnet.IMAGENET_MEAN))
                             / np.array(resnet.IMAGENET_STD), rtol=1e-6)
