"""Every stage of the port against the PyTorch reference's golden fixtures."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import reference_state_dict, rel_err
from s4fusion_jax.interop import reference
from s4fusion_jax.numerics import scan

TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


def run_stages(golden, dtype, backend):
  model = reference.from_torch_state_dict(reference_state_dict(golden), dtype=dtype,
                                          scan_backend=backend)
  ir, vi = (jnp.asarray(golden[f"input/{m}"].transpose(0, 2, 3, 1), dtype) for m in ("ir", "vi"))
  return nnx.jit(lambda m, a, b: m.stages(a, b))(model, ir, vi)


def check_all_stages(golden, dtype, backend):
  stages = run_stages(golden, dtype, backend)
  expected = {k.split("/", 1)[1] for k in golden if k.startswith(f"{dtype}/")}
  assert set(stages) == expected
  errors = {}
  for name, ours in stages.items():
    assert ours.dtype == jnp.dtype(dtype), name
    ref = golden[f"{dtype}/{name}"]
    if name == "output":
      ref = ref.transpose(0, 2, 3, 1)
    assert ours.shape == ref.shape, name
    errors[name] = rel_err(ours, ref)
  bad = {k: v for k, v in errors.items() if not v <= TOLERANCE[dtype]}
  assert not bad, f"stages beyond {TOLERANCE[dtype]}: {bad}"


@pytest.mark.parametrize("backend", list(scan.ScanBackend))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tiny_model_matches_reference(tiny_golden, dtype, backend):
  with jax.enable_x64(dtype == "float64"):
    check_all_stages(tiny_golden, dtype, backend)


@pytest.mark.parametrize("backend", list(scan.ScanBackend))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_paper_size_model_matches_reference(paper_golden, dtype, backend):
  with jax.enable_x64(dtype == "float64"):
    check_all_stages(paper_golden, dtype, backend)


def test_paper_size_parameter_count(paper_golden):
  sd = reference_state_dict(paper_golden)
  assert sum(v.size for v in sd.values()) == 3_562_981
  model = reference.from_torch_state_dict(sd)
  assert model.config.dims == (48, 96, 192) and model.config.depths == (1, 2, 1)
  assert model.config.d_state == 12 and model.config.fusion_d_state == 18
  # The reference's final_up.norm (12 + 12 values) is never called and is dropped.
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert sum(x.size for x in params) == 3_562_981 - 24
