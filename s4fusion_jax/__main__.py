"""The package's command line: ``python -m s4fusion_jax COMMAND ...``.

    convert-reference IN OUT   a reference S4Fusion checkpoint (.pkl/.pth/.npz) -> orbax dir
    export-reference CKPT OUT  an S4Fusion checkpoint dir -> the reference's state dict
                               ({'model': ...} .pkl/.pth via torch, or .npz without torch)
    convert-resnet IN OUT      torchvision ResNet50 weights (.pth/.npz/.safetensors) -> orbax dir
    prepare DATASET DIR        build a TFDS dataset (msrs, roadscene, m3fd, tno, paired_folder)
                               from the user-downloaded folder DIR (--validation LIST: hold
                               those pairs of a paired_folder out as a validation split)
    demo                       fuse TNO with the bundled model and every baseline (average,
                               max, and copying either source), write the fused images,
                               samples and a table (beside the published results on all
                               25 TNO pairs)
    figure                     IR | VI | several methods' fused images (--fused LABEL=DIR),
                               a row per pair (--names), as one PNG
    plot WORKDIR               draw a training run's logged curves to WORKDIR/curves.png
                               (or a kept log: plot LOG.jsonl -> LOG.png)
    delta-stats --data DIR     the paper's Table 5 for a model (--checkpoint, default the
                               bundled one) on a folder of pairs: the mean step size Delta
                               of each modality per CMSA layer (--out: md, csv, json, png)
    ablate                     train the paper's ablation variants (configs/ablations.py) alike
                               on --train, evaluate each on --test, write one table and chart
    fuse                       fuse one pair (--ir --vi --out) or two folders (--ir --vi
                               --out as folders) with a model (--checkpoint, default the
                               bundled one) or a baseline (--method, one of baselines.METHODS)
"""

import argparse
import importlib.util
import os
import sys

from s4fusion_jax.evaluation import baselines


EXACT_SIZES_HELP = ("one compiled program per padded image size, instead of one per size bucket "
                    "(the same numbers)")


def _convert_reference(args):
  from s4fusion_jax.interop import checkpoint, reference, weights_io  # pylint: disable=import-outside-toplevel
  model = reference.from_torch_state_dict(weights_io.read_state_dict(args.input))
  checkpoint.save_model(args.output, model, force=args.force)
  print(f"wrote {args.output}: {model.config}")


def _export_reference(args):
  from s4fusion_jax.interop import checkpoint, reference, weights_io  # pylint: disable=import-outside-toplevel
  weights_io.check_target(args.output, force=args.force)  # before the model is loaded
  model = checkpoint.load_model(args.checkpoint)
  weights_io.write_state_dict(args.output, reference.to_torch_state_dict(model), force=args.force)
  print(f"wrote {args.output}: the reference's MambaNet state dict for {model.config}")


def _convert_resnet(args):
  from s4fusion_jax.interop import checkpoint, torchvision, weights_io  # pylint: disable=import-outside-toplevel
  net = torchvision.from_torchvision_state_dict(weights_io.read_state_dict(args.input))
  checkpoint.save_resnet(args.output, net, force=args.force)
  print(f"wrote {args.output}: ResNet50 with {net.fc.out_features} classes")


def _prepare(args):
  from s4fusion_jax.data import datasets  # pylint: disable=import-outside-toplevel
  dataset_dir, skipped = datasets.prepare(args.dataset, args.manual_dir, args.data_dir,
                                          skip_bad_pairs=args.skip_bad_pairs, name=args.name,
                                          validation=args.validation)
  for name, reason in skipped:
    print(f"skipped {name}: {reason}")
  print(f"prepared {dataset_dir}")


def _fuse(args):
  from s4fusion_jax.data import image_files  # pylint: disable=import-outside-toplevel
  from s4fusion_jax.evaluation import inference  # pylint: disable=import-outside-toplevel
  if os.path.isdir(args.ir) != os.path.isdir(args.vi):
    raise ValueError("--ir and --vi must both be files or both be folders")
  if os.path.isdir(args.ir):
    # Only folders need it: it imports tensorflow_datasets for its dataset builders.
    from s4fusion_jax.data import datasets  # pylint: disable=import-outside-toplevel
    pairs, _ = datasets.check_pairs(args.ir, args.vi)
    jobs = [(p.ir_path, p.vi_path, os.path.join(args.out, os.path.splitext(p.name)[0] + ".png"))
            for p in pairs]
  else:
    jobs = [(args.ir, args.vi, args.out)]
    image_sizes = [image_files.read_ir(args.ir).shape[:2], image_files.read_vi(args.vi).shape[:2]]
    if image_sizes[0] != image_sizes[1]:
      raise ValueError(f"{args.ir} is {image_sizes[0]} but {args.vi} is {image_sizes[1]}")
  fuser = inference.Fuser.from_flags(args.checkpoint, args.method, args.scan_backend,
                                     args.exact_sizes)
  for ir_path, vi_path, out_path in jobs:
    image_files.write_png(out_path, fuser.fuse(image_files.read_ir(ir_path),
                                               image_files.read_vi(vi_path)))
    print(out_path)


def _plot(args):
  from s4fusion_jax.evaluation import charts  # pylint: disable=import-outside-toplevel
  print(charts.plot(args.workdir, args.out))


def _delta_stats(args):
  from s4fusion_jax.evaluation import delta_stats, inference  # pylint: disable=import-outside-toplevel
  from s4fusion_jax.interop import functional  # pylint: disable=import-outside-toplevel
  net, variables = functional.from_checkpoint(args.checkpoint or inference.BUNDLED_MODEL)
  path = delta_stats.write(delta_stats.compute(net, variables, args.data, args.progress),
                           args.out)
  with open(path) as f:
    print(f.read())
  print(f"table, csv, json and chart in {args.out}")


def _demo(args):
  from s4fusion_jax.evaluation import evaluator  # pylint: disable=import-outside-toplevel
  print(evaluator.demo(args.out, args.data, args.checkpoint, exact_sizes=args.exact_sizes))
  print(f"fused images, samples.png and metrics in {args.out}/<method>/")


def _figure(args):
  from s4fusion_jax.evaluation import evaluator  # pylint: disable=import-outside-toplevel
  columns = {}
  for column in args.fused:
    label, sep, folder = column.partition("=")
    if not sep or not label or not folder:
      raise ValueError(f"--fused takes LABEL=FOLDER, got {column!r}")
    columns[label] = folder
  print(evaluator.figure(args.data, columns, args.names, args.out))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config_module(path):
  """Imports a config file (e.g. configs/ablations.py) with the checkout on the import path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file {path}")
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location("ablation_configs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _ablate(args):
  from s4fusion_jax.evaluation import ablation  # pylint: disable=import-outside-toplevel
  for folder in (args.train, args.test):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"no folder {folder} (expected ir/ and vi/ inside)")
  module = _load_config_module(args.config)
  names = args.variants or list(module.VARIANTS)
  unknown = [n for n in names if n not in module.VARIANTS]
  if unknown:
    raise ValueError(f"unknown variants {unknown}; {args.config} has {list(module.VARIANTS)}")
  configs = {n: ablation.short_budget(
      module.get_config(n), args.train, args.workdir, steps=args.steps,
      batch_size=args.batch_size, crop_size=args.crop_size, resnet_weights=args.resnet_weights)
             for n in names}
  print(ablation.run(configs, args.test, args.workdir, with_perceptual=bool(args.resnet_weights),
                     progress=args.progress))
  print(f"table, chart and each variant's run in {args.workdir}")


# The commands that compile XLA programs, and so use the persistent compilation cache.
COMPILING = (_convert_reference, _export_reference, _convert_resnet, _fuse, _demo, _ablate,
             _delta_stats)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m s4fusion_jax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  for name, run, what, formats in (
      ("convert-reference", _convert_reference, "a PyTorch reference S4Fusion checkpoint",
       ".pkl/.pth (needs torch) or .npz"),
      ("convert-resnet", _convert_resnet, "torchvision ResNet50 weights",
       ".pth (needs torch), .npz or .safetensors")):
    convert = commands.add_parser(name, help=f"convert {what} to an orbax checkpoint")
    convert.add_argument("input", help=f"the weights file: {formats}")
    convert.add_argument("output", help="orbax checkpoint directory to write")
    convert.add_argument("--force", action="store_true", help="replace an existing output")
    convert.set_defaults(run=run)
  export = commands.add_parser(
      "export-reference", help="write a checkpoint as the PyTorch reference's state dict")
  export.add_argument("checkpoint", help="S4Fusion checkpoint directory (e.g. the bundled "
                      "s4fusion_jax/weights/s4fusion)")
  export.add_argument("output", help="the file: .pkl/.pth/.pt ({'model': state_dict}, needs "
                      "torch) or .npz")
  export.add_argument("--force", action="store_true", help="replace an existing output")
  export.set_defaults(run=_export_reference)
  prepare = commands.add_parser("prepare", help="build a TFDS dataset from a downloaded folder")
  prepare.add_argument("dataset", choices=("msrs", "roadscene", "m3fd", "tno", "paired_folder"))
  prepare.add_argument("manual_dir", help="the downloaded dataset's folder")
  prepare.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  prepare.add_argument("--name", help="paired_folder only: the dataset's name (default: folder)")
  prepare.add_argument("--validation", help="paired_folder only: a list of names (a file, or "
                       "one of s4fusion_jax/splits) held out as the 'validation' split")
  prepare.add_argument("--skip_bad_pairs", action="store_true",
                       help="leave out (and list) pairs that are missing, unreadable or mismatched")
  prepare.set_defaults(run=_prepare)
  fuse = commands.add_parser("fuse", help="fuse a pair or two folders of images")
  fuse.add_argument("--ir", required=True, help="infrared image, or folder of them")
  fuse.add_argument("--vi", required=True, help="visible image (grey or RGB), or folder of them")
  fuse.add_argument("--out", required=True, help="fused PNG, or output folder")
  fuse.add_argument("--checkpoint", help="S4Fusion checkpoint dir (default: the bundled model)")
  fuse.add_argument("--method", choices=tuple(baselines.METHODS),
                    help="a baseline instead of a model")
  fuse.add_argument("--scan_backend", default="auto")
  fuse.add_argument("--exact_sizes", action="store_true", help=EXACT_SIZES_HELP)
  fuse.set_defaults(run=_fuse)
  plot = commands.add_parser("plot", help="draw a training run's curves to a PNG")
  plot.add_argument("workdir", help="a training run's workdir, or a metrics .jsonl file")
  plot.add_argument("--out", help="the PNG (default WORKDIR/curves.png, or LOG.png for LOG.jsonl)")
  plot.set_defaults(run=_plot)
  stats = commands.add_parser("delta-stats", help="the paper's Table 5: mean Delta per "
                              "modality and CMSA layer")
  stats.add_argument("--data", required=True, help="the pairs: a folder with ir/ and vi/")
  stats.add_argument("--checkpoint", help="S4Fusion checkpoint dir (default: the bundled model)")
  stats.add_argument("--out", default="out/delta_stats", help="folder for the table and chart")
  stats.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
  stats.set_defaults(run=_delta_stats)
  demo = commands.add_parser("demo", help="the bundled model and the baselines on TNO")
  demo.add_argument("--out", default="out/demo")
  demo.add_argument("--data", help="a folder with ir/ and vi/ (default: TNO)")
  demo.add_argument("--checkpoint", help="a model checkpoint (default: the bundled one)")
  demo.add_argument("--exact_sizes", action="store_true", help=EXACT_SIZES_HELP)
  demo.set_defaults(run=_demo)
  figure = commands.add_parser("figure", help="IR | VI | fused images of several methods, "
                                "a row per pair, as one PNG")
  figure.add_argument("--data", required=True, help="the pairs: a folder with ir/ and vi/")
  figure.add_argument("--fused", nargs="+", required=True,
                      help="LABEL=FOLDER, a column each (FOLDER: NAME.png files or an "
                      "evaluate.py output)")
  figure.add_argument("--names", nargs="+", required=True, help="pair file names, a row each")
  figure.add_argument("--out", required=True, help="the PNG to write")
  figure.set_defaults(run=_figure)
  ablate = commands.add_parser("ablate", help="train and compare the paper's ablation variants")
  ablate.add_argument("--train", required=True, help="training pairs: a folder with ir/ and vi/")
  ablate.add_argument("--test", required=True, help="test pairs: a folder with ir/ and vi/")
  ablate.add_argument("--workdir", required=True, help="runs, results, table and chart")
  ablate.add_argument("--variants", nargs="+", help="variant names (default: all of --config)")
  ablate.add_argument("--steps", type=int, default=300, help="training steps per variant")
  ablate.add_argument("--batch_size", type=int, default=8)
  ablate.add_argument("--crop_size", type=int, default=61,
                      help="training crop side (the size rule: 12k + 1)")
  ablate.add_argument("--resnet_weights", help="ResNet50 weights: L_per on (no_per differs)")
  ablate.add_argument("--config", default=os.path.join(REPO, "configs", "ablations.py"),
                      help="the variants' configs (VARIANTS and get_config(name))")
  ablate.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
  ablate.set_defaults(run=_ablate)
  args = parser.parse_args(argv)
  try:
    if args.run in COMPILING:
      from s4fusion_jax.runtime import compile_cache  # pylint: disable=import-outside-toplevel
      compile_cache.enable()
    args.run(args)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
