"""Infrared-visible datasets as TFDS builders (array_record; no TensorFlow needed).

Users download each dataset themselves and point ``manual_dir`` at it:

    python -m s4fusion_jax prepare msrs /data/MSRS --data_dir ~/tensorflow_datasets

Every builder has the features ``ir`` uint8 (H, W, 1), ``vi`` uint8 (H, W, 3) (as
``image_files`` reads them) and ``name``. Pairs are matched by file name in an infrared and
a visible folder (``IR_DIRS``, ``VI_DIRS``). Every pair is read first: a missing partner,
an unreadable file or mismatched sizes fail the build with the list of offending names
(with ``skip_bad_pairs`` they are skipped and listed). ``source`` reads a split back.
"""

import dataclasses
import fcntl
import importlib.resources
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from s4fusion_jax.data import image_files

IR_DIRS = ("ir", "Ir", "IR", "infrared", "cropinfrared")
VI_DIRS = ("vi", "Vis", "VI", "visible", "crop_LR_visible")


def read_name_list(name_or_path):
  """The file names of a list: a file in ``s4fusion_jax/splits`` or a path; one per line."""
  if os.path.sep in name_or_path or os.path.exists(name_or_path):
    if not os.path.isfile(name_or_path):
      raise FileNotFoundError(f"name list not found: {name_or_path}")
    with open(name_or_path) as f:
      text = f.read()
  else:
    resource = importlib.resources.files("s4fusion_jax").joinpath("splits", name_or_path)
    if not resource.is_file():
      raise FileNotFoundError(f"no name list {name_or_path!r} in s4fusion_jax/splits and no "
                              "such file")
    text = resource.read_text()
  names = [line.strip() for line in text.splitlines() if line.strip()]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"name list {name_or_path} is empty or repeats a name")
  return names


def find_modality_dir(root, candidates):
  """The one sub-folder of ``root`` named like one of ``candidates``."""
  found = [c for c in candidates if os.path.isdir(os.path.join(root, c))]
  if not found:
    raise FileNotFoundError(f"{root} has no folder named one of {candidates}")
  return os.path.join(root, found[0])


@dataclasses.dataclass
class Pair:
  name: str
  ir_path: str
  vi_path: str


def collect_pairs(root, names=None, skip_bad_pairs=False):
  """Checks and returns the pairs under ``root`` (restricted to ``names`` if given).

  Returns:
    (pairs, skipped): the good pairs and ``(name, reason)`` for the skipped ones.
  Raises:
    ValueError listing every bad pair unless ``skip_bad_pairs``.
  """
  return check_pairs(find_modality_dir(root, IR_DIRS), find_modality_dir(root, VI_DIRS), names,
                     skip_bad_pairs, where=root)


def check_pairs(ir_dir, vi_dir, names=None, skip_bad_pairs=False, where=None):
  """``collect_pairs`` for an infrared folder and a visible folder given directly."""
  ir_names, vi_names = set(image_files.list_images(ir_dir)), set(image_files.list_images(vi_dir))
  wanted = sorted(ir_names | vi_names) if names is None else list(names)
  pairs, bad = [], []
  for name in wanted:
    missing = [m for m, have in (("infrared", ir_names), ("visible", vi_names)) if name not in have]
    if missing:
      bad.append((name, f"no {' and no '.join(missing)} image"))
      continue
    pair = Pair(name, os.path.join(ir_dir, name), os.path.join(vi_dir, name))
    try:
      ir, vi = image_files.read_ir(pair.ir_path), image_files.read_vi(pair.vi_path)
    except (ValueError, FileNotFoundError) as e:
      bad.append((name, str(e)))
      continue
    if ir.shape[:2] != vi.shape[:2]:
      bad.append((name, f"infrared {ir.shape[1]}x{ir.shape[0]} but visible "
                        f"{vi.shape[1]}x{vi.shape[0]}"))
      continue
    pairs.append(pair)
  if bad and not skip_bad_pairs:
    raise ValueError(f"{len(bad)} bad pair(s) under {where or (ir_dir, vi_dir)}:\n  "
                     + "\n  ".join(f"{n}: {r}" for n, r in bad)
                     + "\n(fix them, or prepare with skip_bad_pairs to leave them out)")
  return pairs, bad


class _PairedBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared machinery: features, pair checking, example generation."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def __init__(self, *, skip_bad_pairs=False, **kwargs):
    self.skip_bad_pairs = skip_bad_pairs
    self.skipped = []
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "ir": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            "vi": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "name": tfds.features.Text(),
        }))

  def _pairs(self, root, names=None):
    pairs, skipped = collect_pairs(root, names, self.skip_bad_pairs)
    self.skipped += skipped
    return self._generate_examples(pairs)

  def _held_out_splits(self, root, held_out, list_name, held_split):
    """{"train": the pairs of ``root`` not in ``held_out``, held_split: those in it}."""
    names = set(image_files.list_images(find_modality_dir(root, IR_DIRS))) | set(
        image_files.list_images(find_modality_dir(root, VI_DIRS)))
    absent = sorted(set(held_out) - names)
    if absent:
      raise ValueError(f"{len(absent)} {held_split} image(s) of {list_name} are not in {root}: "
                       f"{absent[:10]}{' ...' if len(absent) > 10 else ''}")
    return {"train": self._pairs(root, sorted(names - set(held_out))),
            held_split: self._pairs(root, sorted(held_out))}

  def _generate_examples(self, pairs):
    for pair in pairs:
      yield pair.name, {
          "ir": Image.fromarray(image_files.read_ir(pair.ir_path)[..., 0], "L"),
          "vi": Image.fromarray(image_files.read_vi(pair.vi_path), "RGB"),
          "name": pair.name,
      }


class _ListSplitBuilder(_PairedBuilder):
  """One folder of pairs, split into train / test by the reference's test list."""

  TEST_LIST = ""

  def _split_generators(self, dl_manager):
    return self._held_out_splits(dl_manager.manual_dir, read_name_list(self.TEST_LIST),
                                 self.TEST_LIST, "test")


class Msrs(_PairedBuilder):
  """MSRS (Tang et al.): train 1,083 / test 361 pairs, as released."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download MSRS from https://github.com/Linghao-Tang/MSRS and pass its root as manual_dir:
  <manual_dir>/train/ir/*.png, <manual_dir>/train/vi/*.png, <manual_dir>/test/ir, test/vi.
  """

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    return {split: self._pairs(os.path.join(root, split)) for split in ("train", "test")}


class RoadScene(_ListSplitBuilder):
  """RoadScene (Xu et al.): 221 aligned pairs; test = the reference's 67 names, train = the rest."""

  TEST_LIST = "roadscene_test_s4fusion.txt"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download RoadScene from https://github.com/hanna-xu/RoadScene and pass as manual_dir a folder
  with <manual_dir>/cropinfrared/FLIR_*.jpg and <manual_dir>/crop_LR_visible/FLIR_*.jpg
  (or the same files in ir/ and vi/).
  """


class M3fdFusion(_ListSplitBuilder):
  """M3FD fusion set (Liu et al.): 300 pairs; test = the reference's 90 names, train = the rest."""

  TEST_LIST = "m3fd_test_s4fusion.txt"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the M3FD fusion set (300 pairs) from https://github.com/JinyuanLiu-CV/TarDAL and pass
  as manual_dir the folder holding Ir/*.png and Vis/*.png (or ir/ and vi/).
  """


class Tno(_PairedBuilder):
  """TNO image fusion dataset (Toet): test only."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download TNO (https://figshare.com/articles/dataset/TNO_Image_Fusion_Dataset/1008029) and pass
  as manual_dir a folder of pairs: <manual_dir>/ir/NAME.png and <manual_dir>/vi/NAME.png.
  """

  def _split_generators(self, dl_manager):
    return {"test": self._pairs(dl_manager.manual_dir)}


@dataclasses.dataclass(eq=False)
class PairedFolderConfig(tfds.core.BuilderConfig):
  """``validation``: names held out of ``train`` as a ``validation`` split (none: train only);
  ``validation_list``: where those names came from (for messages)."""
  validation: tuple = ()
  validation_list: str = ""


class PairedFolder(_PairedBuilder):
  """Any folder of pairs (LLVIP, a user's own data): <manual_dir>/ir/NAME and <manual_dir>/vi/NAME.

  Split ``train``, or ``train`` and ``validation`` when the config holds validation names.
  """

  BUILDER_CONFIGS = [PairedFolderConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Pass as manual_dir a folder with ir/ and vi/ sub-folders holding same-named images.
  """

  def _split_generators(self, dl_manager):
    if self.builder_config.validation:
      return self._held_out_splits(dl_manager.manual_dir, self.builder_config.validation,
                                   self.builder_config.validation_list, "validation")
    return {"train": self._pairs(dl_manager.manual_dir)}


BUILDERS = {"msrs": Msrs, "roadscene": RoadScene, "m3fd": M3fdFusion, "tno": Tno,
            "paired_folder": PairedFolder}


def prepare(dataset, manual_dir, data_dir, *, skip_bad_pairs=False, name=None, validation=None):
  """Builds ``dataset`` (a key of ``BUILDERS``) from ``manual_dir`` into ``data_dir``.

  Args:
    name: for ``paired_folder``, the config name (default: the folder's base name), so
      several folders can live in one ``data_dir``.
    validation: for ``paired_folder``, a name list (``read_name_list``) held out of
      ``train`` as the ``validation`` split. Give such a dataset its own ``name``.

  Returns:
    (dataset directory for ``source``, skipped pairs as (name, reason)).
  """
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(BUILDERS)}")
  manual_dir = os.path.abspath(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
  if validation and dataset != "paired_folder":
    raise ValueError(f"a validation list is for paired_folder; {dataset!r} has its own splits")
  kwargs = {}
  if dataset == "paired_folder":
    config_name = name or os.path.basename(manual_dir.rstrip(os.sep))
    held_out = tuple(read_name_list(validation)) if validation else ()
    kwargs["config"] = PairedFolderConfig(name=config_name, validation=held_out,
                                          validation_list=validation or "")
  builder = BUILDERS[dataset](data_dir=os.fspath(data_dir), skip_bad_pairs=skip_bad_pairs,
                              **kwargs)
  # Processes preparing one dataset at once (the hosts of a run, parallel jobs) take turns:
  # TFDS builds into a temporary folder and fails the rename when another one has finished.
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".prepare.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  if dataset == "paired_folder":
    _check_held_out(builder, kwargs["config"].validation, skip_bad_pairs)
  return os.fspath(builder.data_dir), builder.skipped


def _check_held_out(builder, held_out, skip_bad_pairs):
  """A paired folder prepared earlier under the same name must hold out the same pairs."""
  have = set()
  if "validation" in builder.info.splits:
    have = {e["name"].decode() for e in source(os.fspath(builder.data_dir), "validation",
                                               decode_images=False)}
  if have != set(held_out) and not (skip_bad_pairs and have <= set(held_out)):
    raise ValueError(f"{builder.data_dir} was prepared with {len(have)} validation pair(s), "
                     f"not the {len(held_out)} asked for: prepare it under another name, or "
                     "delete that folder")


def source(dataset_dir, split, decode_images=True):
  """A random-access source of a prepared split: ``len`` and ``[i]`` -> feature dict.

  With ``decode_images=False`` the images stay encoded (PNG bytes): a cheap scan of names.
  """
  if not os.path.isdir(dataset_dir):
    raise FileNotFoundError(f"prepared dataset not found: {dataset_dir} (run "
                            "'python -m s4fusion_jax prepare ...' first)")
  builder = tfds.builder_from_directory(dataset_dir)
  if split not in builder.info.splits:
    raise ValueError(f"{dataset_dir} has splits {sorted(builder.info.splits)}, not {split!r}")
  decoders = None if decode_images else {
      key: tfds.decode.SkipDecoding() for key, feature in builder.info.features.items()
      if isinstance(feature, tfds.features.Image)}
  return builder.as_data_source(split=split, decoders=decoders)
