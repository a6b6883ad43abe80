"""TFDS builders (pixel-exact, splits, bad input) and the grain pipeline (determinism, resume)."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from PIL import Image

from conftest import REPO, shared_path, subprocess_env
from s4fusion_jax.data import datasets
from s4fusion_jax.data import image_files
from s4fusion_jax.data import input_pipeline
from s4fusion_jax.numerics import color

flags.FLAGS.mark_as_parsed()  # multiprocess grain reads absl flags


def write_pair(root, name, size=(40, 30), seed=0, ir_dirname="ir", vi_dirname="vi"):
  rng = np.random.default_rng(seed)
  for sub, shape, mode in ((ir_dirname, size[::-1], "L"), (vi_dirname, (*size[::-1], 3), "RGB")):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
        os.path.join(root, sub, name))


@pytest.fixture(scope="module")
def roadscene_sample(tmp_path_factory):
  """Six real RoadScene pairs prepared as a paired folder."""
  root = tmp_path_factory.mktemp("rs")
  for sub in ("ir", "vi"):
    os.makedirs(root / "raw" / sub)
    for name in sorted(os.listdir(shared_path("data", "roadscene_train", sub)))[:6]:
      shutil.copy(shared_path("data", "roadscene_train", sub, name), root / "raw" / sub / name)
  dataset_dir, skipped = datasets.prepare("paired_folder", root / "raw", root / "tfds")
  assert skipped == []
  return root / "raw", dataset_dir


def test_paired_folder_reads_back_pixel_exact(roadscene_sample):
  raw, dataset_dir = roadscene_sample
  src = datasets.source(dataset_dir, "train")
  assert len(src) == 6
  for i in range(len(src)):
    example = src[i]
    name = example["name"].decode() if isinstance(example["name"], bytes) else example["name"]
    assert example["ir"].dtype == np.uint8 and example["ir"].shape[-1] == 1
    assert example["vi"].shape[-1] == 3
    np.testing.assert_array_equal(example["ir"], image_files.read_ir(raw / "ir" / name))
    np.testing.assert_array_equal(example["vi"], image_files.read_vi(raw / "vi" / name))

  encoded = datasets.source(dataset_dir, "train", decode_images=False)
  for i in range(len(src)):
    assert encoded[i]["name"] == src[i]["name"]
    assert encoded[i]["ir"][:8] == b"\x89PNG\r\n\x1a\n"  # not decoded


def test_two_processes_preparing_one_dataset_at_once_both_succeed(roadscene_sample, tmp_path):
  """They take turns (a lock in data_dir): one builds, the other finds it built."""
  raw, _ = roadscene_sample
  script = ("import sys; from s4fusion_jax.data import datasets; "
            "print(datasets.prepare('paired_folder', sys.argv[1], sys.argv[2])[0])")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(raw), str(tmp_path / "tfds")],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  dirs = {out.strip().splitlines()[-1] for out, _ in outputs}
  assert len(dirs) == 1 and len(datasets.source(dirs.pop(), "train")) == 6


def test_paired_folder_holds_out_a_validation_list(roadscene_sample, tmp_path):
  raw, _ = roadscene_sample
  names = sorted(os.listdir(raw / "ir"))
  (tmp_path / "val.txt").write_text(f"{names[4]}\n{names[1]}\n\n")
  dataset_dir, _ = datasets.prepare("paired_folder", raw, tmp_path / "tfds", name="held",
                                    validation=str(tmp_path / "val.txt"))
  read = lambda split: sorted(
      e["name"].decode() for e in datasets.source(dataset_dir, split, decode_images=False))
  assert read("validation") == [names[1], names[4]]
  assert read("train") == [n for i, n in enumerate(names) if i not in (1, 4)]
  again, _ = datasets.prepare("paired_folder", raw, tmp_path / "tfds", name="held",
                              validation=str(tmp_path / "val.txt"))
  assert again == dataset_dir
  (tmp_path / "other.txt").write_text(f"{names[4]}\n")
  for other in (str(tmp_path / "other.txt"), None):  # the same name, other pairs held out
    with pytest.raises(ValueError, match="was prepared with 2 validation pair"):
      datasets.prepare("paired_folder", raw, tmp_path / "tfds", name="held", validation=other)


def test_validation_lists_are_checked(roadscene_sample, tmp_path):
  raw, _ = roadscene_sample
  (tmp_path / "absent.txt").write_text("nowhere.jpg\n")
  with pytest.raises(ValueError,
                     match=r"1 validation image\(s\) of .*absent.txt are not in .*nowhere.jpg"):
    datasets.prepare("paired_folder", raw, tmp_path / "tfds", name="a",
                     validation=str(tmp_path / "absent.txt"))
  (tmp_path / "twice.txt").write_text("001.jpg\n001.jpg\n")
  with pytest.raises(ValueError, match="repeats a name"):
    datasets.prepare("paired_folder", raw, tmp_path / "tfds", name="b",
                     validation=str(tmp_path / "twice.txt"))
  with pytest.raises(FileNotFoundError, match="no name list 'nolist.txt'"):
    datasets.prepare("paired_folder", raw, tmp_path / "tfds", name="c", validation="nolist.txt")
  with pytest.raises(ValueError, match="a validation list is for paired_folder"):
    datasets.prepare("tno", raw, tmp_path / "tfds", validation=str(tmp_path / "twice.txt"))
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_shipped_validation_list_is_every_ninth_training_pair():
  names = sorted(os.listdir(shared_path("data", "roadscene_train", "ir")))
  assert datasets.read_name_list("roadscene_train_validation.txt") == names[8::9]


def test_tno_three_channel_grey_infrared_becomes_one_channel(tmp_path):
  dataset_dir, _ = datasets.prepare("tno", shared_path("data", "tno"), tmp_path)
  src = datasets.source(dataset_dir, "test")
  assert len(src) == 25
  example = src[0]
  assert example["ir"].shape[-1] == 1 and example["vi"].shape[-1] == 3


def test_roadscene_split_is_the_reference_test_list(tmp_path):
  test_names = datasets.read_name_list("roadscene_test_s4fusion.txt")
  assert len(test_names) == 67
  train_names = ["FLIR_99990.jpg", "FLIR_99991.jpg", "FLIR_99992.jpg"]
  for i, name in enumerate(test_names + train_names):
    write_pair(tmp_path / "raw", name, size=(12, 10), seed=i, ir_dirname="cropinfrared",
               vi_dirname="crop_LR_visible")
  dataset_dir, _ = datasets.prepare("roadscene", tmp_path / "raw", tmp_path / "tfds")
  names = {split: sorted(n.decode() if isinstance(n, bytes) else n for n in (
      datasets.source(dataset_dir, split)[i]["name"]
      for i in range(len(datasets.source(dataset_dir, split))))) for split in ("train", "test")}
  assert names["test"] == sorted(test_names) and names["train"] == train_names


def test_roadscene_without_a_test_image_is_refused(tmp_path):
  write_pair(tmp_path / "raw", "FLIR_00060.jpg")
  with pytest.raises(ValueError, match="66 test image"):
    datasets.prepare("roadscene", tmp_path / "raw", tmp_path / "tfds")


def test_msrs_layout(tmp_path):
  for split, n in (("train", 3), ("test", 2)):
    for i in range(n):
      write_pair(tmp_path / "raw" / split, f"{i:05d}.png", seed=i)
  dataset_dir, _ = datasets.prepare("msrs", tmp_path / "raw", tmp_path / "tfds")
  assert [len(datasets.source(dataset_dir, s)) for s in ("train", "test")] == [3, 2]


def bad_folder(root):
  write_pair(root, "good.png", seed=1)
  write_pair(root, "sizes.png", seed=2)
  Image.fromarray(np.zeros((31, 40, 3), np.uint8)).save(root / "vi" / "sizes.png")
  write_pair(root, "lonely.png", seed=3)
  os.remove(root / "vi" / "lonely.png")
  write_pair(root, "broken.png", seed=4)
  (root / "ir" / "broken.png").write_bytes(b"\x89PNG not really")


def test_bad_pairs_fail_the_build_with_every_name(tmp_path):
  bad_folder(tmp_path / "raw")
  with pytest.raises(ValueError) as info:
    datasets.prepare("paired_folder", tmp_path / "raw", tmp_path / "tfds")
  message = str(info.value)
  assert "3 bad pair(s)" in message
  assert "lonely.png: no visible image" in message
  assert "sizes.png: infrared 40x30 but visible 40x31" in message
  assert "broken.png: cannot read image" in message
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_bad_pairs_can_be_skipped_and_are_reported(tmp_path):
  bad_folder(tmp_path / "raw")
  dataset_dir, skipped = datasets.prepare("paired_folder", tmp_path / "raw", tmp_path / "tfds",
                                          skip_bad_pairs=True)
  assert sorted(n for n, _ in skipped) == ["broken.png", "lonely.png", "sizes.png"]
  assert len(datasets.source(dataset_dir, "train")) == 1


def test_sixteen_bit_images_map_to_eight_bits(tmp_path):
  values = np.array([[0, 257, 65535], [128, 1000, 30000]], np.uint16)
  Image.fromarray(values).save(tmp_path / "ir16.png")
  assert Image.open(tmp_path / "ir16.png").mode.startswith("I")
  np.testing.assert_array_equal(image_files.read_ir(tmp_path / "ir16.png")[..., 0],
                                np.round(values / 257).astype(np.uint8))
  with pytest.raises(FileNotFoundError, match="image not found"):
    image_files.read_vi(tmp_path / "missing.png")


class ListSource:
  def __init__(self, items):
    self.items = items

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


def synthetic_source(n=10, seed=0, small=()):
  rng = np.random.default_rng(seed)
  items = []
  for i in range(n):
    size = (20, 24) if i in small else (40, 52)
    items.append({"ir": rng.integers(0, 256, (*size, 1), dtype=np.uint8),
                  "vi": rng.integers(0, 256, (*size, 3), dtype=np.uint8), "name": str(i)})
  return ListSource(items)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in ("ir", "vi"):
      np.testing.assert_array_equal(x[key], y[key])


def test_batches_are_deterministic_and_worker_count_independent():
  sources = [synthetic_source(10, 0), synthetic_source(7, 1)]
  make = lambda workers: iter(input_pipeline.train_dataset(
      sources, crop=16, batch_size=4, seed=3, weights=[0.6, 0.4], num_workers=workers))
  first = take(make(0), 6)
  assert first[0]["ir"].shape == (4, 16, 16, 1) and first[0]["vi"].dtype == np.float32
  assert_same_batches(first, take(make(0), 6))
  assert_same_batches(first, take(make(2), 6))
  other_seed = take(iter(input_pipeline.train_dataset(sources, crop=16, batch_size=4, seed=4,
                                                      weights=[0.6, 0.4])), 1)
  assert not np.array_equal(first[0]["ir"], other_seed[0]["ir"])


class CountingSource(ListSource):
  reads = 0

  def __getitem__(self, i):
    self.reads += 1
    return super().__getitem__(i)


def test_batches_are_made_only_a_few_ahead():
  source = CountingSource(synthetic_source(10, 0).items)
  iterator = iter(input_pipeline.train_dataset([source], crop=16, batch_size=4, seed=3,
                                               num_threads=2, prefetch=3))
  first = next(iterator)
  time.sleep(1)  # time to read far ahead (grain's default: 500 batches in 16 threads)
  assert 4 <= source.reads <= 4 * (1 + 3 + 1)
  assert_same_batches([first, *take(iterator, 5)], take(iter(input_pipeline.train_dataset(
      [synthetic_source(10, 0)], crop=16, batch_size=4, seed=3)), 6))


def test_the_global_batch_does_not_depend_on_the_host_count():
  sources = [synthetic_source(10, 0), synthetic_source(7, 1)]
  make = lambda batch, index, count: take(iter(input_pipeline.train_dataset(
      sources, crop=16, batch_size=batch, seed=3, weights=[0.6, 0.4], shard_index=index,
      shard_count=count)), 5)
  one = make(8, 0, 1)
  for count in (2, 4):
    hosts = [make(8 // count, i, count) for i in range(count)]
    joined = [{k: np.concatenate([h[step][k] for h in hosts]) for k in ("ir", "vi")}
              for step in range(5)]
    assert_same_batches(one, joined)


def test_resume_mid_epoch_is_bit_exact():
  ds = input_pipeline.train_dataset([synthetic_source(10)], crop=16, batch_size=3, seed=0)
  it = iter(ds)
  take(it, 2)  # 6 of 10 elements: mid-epoch
  state = it.get_state()
  expected = take(it, 5)  # runs into the next epoch
  resumed = iter(ds)
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, 5))


def test_epochs_are_reshuffled_and_crops_stay_inside_the_image():
  ds = input_pipeline.train_dataset([synthetic_source(8)], crop=40, batch_size=8, seed=0)
  it = iter(ds)
  a, b = take(it, 2)
  assert not np.array_equal(a["ir"], b["ir"])
  assert a["ir"].min() >= 0 and a["ir"].max() <= 1


def test_small_images_are_replaced_by_the_next_one():
  src = input_pipeline.CroppableSource(synthetic_source(4, small=(1, 2)), crop=30)
  assert src[1]["name"] == "3" and src[2]["name"] == "3" and src[0]["name"] == "0"
  with pytest.raises(ValueError, match="at least 99 x 99"):
    input_pipeline.CroppableSource(synthetic_source(2), crop=99)[0]


def test_crop_flip_keeps_the_modalities_aligned_and_makes_y():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
  example = {"ir": rgb[..., :1].copy(), "vi": rgb}
  out = input_pipeline.crop_flip_to_y(example, np.random.default_rng(5), crop=6)
  y = color.rgb_to_y(rgb / 255.0)
  # Find the crop in the original by matching the infrared channel, then check Y there.
  for flip_rows in (False, True):
    for flip_cols in (False, True):
      ir = out["ir"][::-1] if flip_rows else out["ir"]
      ir = ir[:, ::-1] if flip_cols else ir
      vi = out["vi"][::-1] if flip_rows else out["vi"]
      vi = vi[:, ::-1] if flip_cols else vi
      for top in range(5):
        for left in range(7):
          if np.allclose(ir, rgb[top:top + 6, left:left + 6, :1] / 255.0):
            np.testing.assert_allclose(vi, y[top:top + 6, left:left + 6], rtol=1e-6)
            return
  pytest.fail("the infrared crop is not a flipped crop of the input")
