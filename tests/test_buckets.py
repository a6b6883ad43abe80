"""Size buckets: one program per bucket, with the numbers of the exact padded size."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import load_golden, reference_state_dict, rel_err, shared_path
from s4fusion_jax.evaluation import evaluator
from s4fusion_jax.evaluation import inference
from s4fusion_jax.interop import reference
from s4fusion_jax.network import model as model_lib
from s4fusion_jax.numerics import sizes
from s4fusion_jax.runtime import compile_cache

# 8 sizes (H, W) in 4 buckets and 7 padded sizes: tiny, 1-2 pixels past a valid side, exactly
# a bucket, wide and tall.
SWEEP = [(1, 1), (13, 12),        # bucket 13 x 13
         (74, 98), (97, 121),     # 97 x 121
         (98, 74), (121, 97),     # 121 x 97
         (30, 146), (37, 181)]    # 37 x 181


def tiny_model(golden, **overrides):
  return reference.from_torch_state_dict(reference_state_dict(golden), **overrides)


@pytest.fixture(scope="module")
def compiles():
  with compile_cache.CompileLog() as log:
    yield log


def test_the_ladder():
  ladder = sorted({sizes.bucket_length(n) for n in range(1, 1500)})
  assert ladder[:12] == [13, 25, 37, 49, 61, 73, 97, 121, 145, 181, 229, 277]
  for n in range(1, 1500):
    valid, bucket = sizes.valid_length(n), sizes.bucket_length(n)
    assert sizes.is_valid_length(bucket) and valid <= bucket <= 1.25 * valid + 12, n
    assert bucket == min(b for b in ladder if b >= valid), n
  # Another size rule: 2^(levels - 1) = 8 patches per group, k = s = 2.
  assert sizes.bucket_length(50, 2, 2, 4) == 2 * (8 * 4 - 1) + 2
  pads, valid, box = sizes.placement(30, 44)
  assert valid == (37, 49) and box == (3, 2, 30, 44) and pads == ((3, 4), (2, 3))
  pads, valid, box = sizes.placement(74, 98)
  assert valid == (85, 109) and pads == ((5, 97 - 79), (5, 121 - 103)) and box[:2] == (5, 5)
  assert sizes.placement(74, 98, bucket=False)[0] == ((5, 6), (5, 6))


def test_roadscene_fits_in_sixteen_programs():
  folder = shared_path("data", "roadscene_train", "ir")
  shapes = [Image.open(folder / name).size[::-1] for name in sorted(os.listdir(folder))]
  exact = [(sizes.valid_length(h), sizes.valid_length(w)) for h, w in shapes]
  buckets = [(sizes.bucket_length(h), sizes.bucket_length(w)) for h, w in shapes]
  area = lambda rects: sum(h * w for h, w in rects)
  assert len(shapes) == 180 and len(set(exact)) == 128
  assert len(set(buckets)) <= 16 and area(buckets) <= 1.25 * area(exact)


class RecordingFuser(inference.Fuser):
  """A Fuser that keeps every fused Y (float32), by the pair's size."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.fused_y = {}

  def fuse_y(self, ir, vi_y):
    self.fused_y[ir.shape[:2]] = fused = super().fuse_y(ir, vi_y)
    return fused


def write_pairs(folder, shapes, seed):
  """Random pairs of the given sizes, the visible image colour and grey by turns."""
  rng = np.random.default_rng(seed)
  for i, (h, w) in enumerate(shapes):
    vi = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for kind, image in (("ir", rng.integers(0, 256, (h, w), dtype=np.uint8)),
                        ("vi", np.repeat(vi[..., :1], 3, -1) if i % 2 else vi)):
      os.makedirs(folder / kind, exist_ok=True)
      Image.fromarray(image).save(folder / kind / f"{i:02d}.png")


def test_a_folder_of_eight_sizes_bucketed_equals_exact(tmp_path, tiny_golden, compiles):
  write_pairs(tmp_path, SWEEP, seed=0)
  model = tiny_model(tiny_golden)
  runs = {}
  for exact in (True, False):
    fuser = RecordingFuser(model=model, exact_sizes=exact)
    before = compiles.programs
    saved = {name: fuser.fuse(ir, vi) for name, ir, vi in evaluator.pairs(str(tmp_path))}
    runs[exact] = fuser.fused_y, saved, compiles.programs - before
  (exact_y, exact_saved, exact_programs), (bucket_y, bucket_saved, bucket_programs) = (
      runs[True], runs[False])
  for shape in SWEEP:
    assert rel_err(bucket_y[shape], exact_y[shape]) <= 1e-5, shape
  for i, name in enumerate(sorted(exact_saved)):
    assert exact_saved[name].shape[-1] == (1 if i % 2 else 3), name
    assert np.abs(bucket_saved[name].astype(int) - exact_saved[name]).max() <= 1, name
  # One program per padded size, or per bucket: nothing else is compiled per size.
  exact_shapes = {(sizes.valid_length(h), sizes.valid_length(w)) for h, w in SWEEP}
  bucket_shapes = {(sizes.bucket_length(h), sizes.bucket_length(w)) for h, w in SWEEP}
  assert (exact_programs, bucket_programs) == (len(exact_shapes), len(bucket_shapes)) == (7, 4)


@pytest.mark.parametrize("dtype,backend", [
    ("float32", "chunked"),
    ("float64", "sequential"), ("float64", "chunked"), ("float64", "associative")])
def test_bucketed_equals_exact_on_every_backend(tiny_golden, dtype, backend):
  rng = np.random.default_rng(2)
  with jax.enable_x64(dtype == "float64"):
    model = tiny_model(tiny_golden, dtype=dtype, scan_backend=backend, scan_chunk=16)
    fuse = nnx.jit(model_lib.fuse, static_argnames="exact_sizes")
    ir, vi = (jnp.asarray(rng.random((2, 75, 98, 1)), dtype) for _ in range(2))  # in 97 x 121
    exact, bucketed = (fuse(model, ir, vi, exact_sizes=e) for e in (True, False))
    assert bucketed.dtype == jnp.dtype(dtype)
    assert rel_err(bucketed, exact) <= (1e-10 if dtype == "float64" else 1e-5)


def test_poison_outside_the_valid_rectangle_changes_nothing(tiny_golden):
  model = tiny_model(tiny_golden, scan_backend="sequential")
  apply = nnx.jit(lambda m, a, b, valid: m(a, b, valid))
  embed = nnx.jit(lambda m, a, b, valid: m.stages(a, b, valid)["patch_embed_ir"])
  rng = np.random.default_rng(3)
  valid = np.array([[85, 37], [49, 109]], np.int32)  # two rectangles in one 121 x 121 bucket
  clean = np.zeros((2, 2, 121, 121, 1), np.float32)
  for b, (h, w) in enumerate(valid):
    clean[:, b, :h, :w] = rng.random((2, h, w, 1))
  poisoned = rng.random(clean.shape).astype(np.float32) * 50 - 25
  poisoned[:, 1, 100:, :, :] = np.nan
  poisoned[:, 0, :, 110:, :] = np.inf
  for b, (h, w) in enumerate(valid):
    poisoned[:, b, :h, :w] = clean[:, b, :h, :w]
  outs = [np.asarray(apply(model, x[0], x[1], jnp.asarray(valid))) for x in (clean, poisoned)]
  for b, (h, w) in enumerate(valid):
    np.testing.assert_array_equal(outs[1][b, :h, :w], outs[0][b, :h, :w])
    # and each rectangle is the model at its own size
    alone = np.asarray(apply(model, clean[0, b:b + 1, :h, :w], clean[1, b:b + 1, :h, :w], None))
    assert rel_err(outs[0][b, :h, :w], alone[0]) <= 1e-5
  # The poison did get in (outside the rectangles; the fold head leaves the output there finite).
  assert not np.isfinite(embed(model, poisoned[0], poisoned[1], jnp.asarray(valid))).all()


@pytest.mark.parametrize("name,dtype", [("golden_s4fusion_tiny_37x49.npz", "float64"),
                                        ("golden_s4fusion_61x73.npz", "float32")])
def test_golden_parity_in_a_larger_bucket(name, dtype):
  golden = load_golden(name)
  with jax.enable_x64(dtype == "float64"):
    model = reference.from_torch_state_dict(reference_state_dict(golden), dtype=dtype)
    ir, vi = (golden[f"input/{m}"].transpose(0, 2, 3, 1) for m in ("ir", "vi"))
    batch, height, width, _ = ir.shape
    canvas = lambda x: jnp.asarray(np.pad(x, ((0, 0), (0, 24), (0, 36), (0, 0))), dtype)
    valid = jnp.asarray([[height, width]] * batch)
    stages = nnx.jit(lambda m, a, b, v: m.stages(a, b, v))(model, canvas(ir), canvas(vi), valid)
    tolerance = {"float64": 1e-9, "float32": 1e-4}[dtype]
    for key, ours in stages.items():
      ref = golden[f"{dtype}/{key}"]
      ref = ref.transpose(0, 2, 3, 1) if key == "output" else ref
      assert rel_err(ours[:, :ref.shape[1], :ref.shape[2]], ref) <= tolerance, key


def test_the_bundled_model_bucketed_equals_exact():
  model = inference.Fuser.from_flags().model
  fusers = [RecordingFuser(model=model, exact_sizes=True), RecordingFuser(model=model)]
  items = {name: (ir, vi) for name, ir, vi in evaluator.pairs(str(shared_path("data", "tno")))}
  for name in ("07.png", "19.png"):  # 256 x 256 -> 265^2, bucket 277^2; 270 x 360 -> 277 x 361,
    ir, vi = items[name]             # bucket 277 x 433
    assert any(sizes.bucket_length(n) > sizes.valid_length(n) for n in ir.shape[:2])
    exact, bucketed = (fuser.fuse(ir, vi).astype(int) for fuser in fusers)
    assert np.abs(bucketed - exact).max() <= 1, name
    assert rel_err(fusers[1].fused_y[ir.shape[:2]], fusers[0].fused_y[ir.shape[:2]]) <= 1e-5


def test_ablations_without_masks_fuse_at_exact_sizes():
  config = dataclasses.replace(model_lib.ModelConfig(dims=(8, 16, 32), depths=(1, 1, 1),
                                                     depths_decoder=(1, 1, 1), d_state=4,
                                                     fusion_d_state=4, fusion_blocks=1),
                               fusion="cnn")
  model = model_lib.create(config)
  assert not model.takes_buckets and not inference.Fuser(model=model).bucketed
  ir = jnp.zeros((1, 97, 97, 1))
  with pytest.raises(ValueError, match="does not take size buckets"):
    model(ir, ir, jnp.asarray([[85, 85]]))
  fused = nnx.jit(model_lib.fuse)(model, ir[:, :80, :90], ir[:, :80, :90])  # at exact sizes
  assert fused.shape == (1, 80, 90, 1)
