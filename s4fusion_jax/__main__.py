"""The package's command line: ``python -m s4fusion_jax COMMAND ...``.

    convert-reference IN OUT   a reference S4Fusion checkpoint (.pkl/.pth/.npz) -> orbax dir
    convert-resnet IN OUT      torchvision ResNet50 weights (.pth/.npz/.safetensors) -> orbax dir
"""

import argparse
import sys


def _convert_reference(args):
  from s4fusion_jax import checkpoint, reference, weights_io  # pylint: disable=import-outside-toplevel
  model = reference.from_torch_state_dict(weights_io.read_state_dict(args.input))
  checkpoint.save_model(args.output, model, force=args.force)
  print(f"wrote {args.output}: {model.config}")


def _convert_resnet(args):
  from s4fusion_jax import checkpoint, resnet, weights_io  # pylint: disable=import-outside-toplevel
  net = resnet.from_torchvision_state_dict(weights_io.read_state_dict(args.input))
  checkpoint.save_resnet(args.output, net, force=args.force)
  print(f"wrote {args.output}: ResNet50 with {net.fc.out_features} classes")


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
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
