"""The package's command line: ``python -m s4fusion_jax COMMAND ...``.

    convert-reference IN OUT   a reference S4Fusion checkpoint (.pkl/.pth/.npz) -> orbax dir
"""

import argparse
import sys


def _convert_reference(args):
  from s4fusion_jax import checkpoint, reference, weights_io  # pylint: disable=import-outside-toplevel
  model = reference.from_torch_state_dict(weights_io.read_state_dict(args.input))
  checkpoint.save_model(args.output, model, force=args.force)
  print(f"wrote {args.output}: {model.config}")


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m s4fusion_jax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  convert = commands.add_parser(
      "convert-reference", help="convert a PyTorch reference checkpoint to an orbax checkpoint")
  convert.add_argument("input", help="reference weights: .pkl/.pth (needs torch) or .npz")
  convert.add_argument("output", help="orbax checkpoint directory to write")
  convert.add_argument("--force", action="store_true", help="replace an existing output")
  convert.set_defaults(run=_convert_reference)
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
