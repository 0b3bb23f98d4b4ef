"""The `avemotion` command.

Each sub-command lives in the module that implements it, which provides `add_arguments(parser)` and `run(args)`;
this file only wires them up, so `avemotion --help` starts fast and a missing optional dependency only affects
its own sub-command.

User errors (a `ValueError` or `OSError`: a missing or unreadable file, a bad option value, a directory without a
model) are printed as one line, `avemotion COMMAND: error: ...`, with exit status 2; any other exception is a bug and
keeps its traceback. `avemotion --debug COMMAND ...` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("avemotion.pipelines.cli_predict", "predict emotions of media files and/or transcripts"),
    "synth": ("avemotion.data.synthetic", "write the synthetic audio-visual emotion corpus (CREMA-D layout)"),
    "train": ("avemotion.training.cli_train", "train a model with accelerate (VAVL's three-step schedule or joint)"),
    "evaluate": ("avemotion.training.cli_evaluate", "per-branch metrics of a checkpoint on a dataset split, as JSON"),
    "push": ("avemotion.training.cli_push", "push a trained model, its processor and a model card to the Hub"),
    "export-onnx": ("avemotion.pipelines.cli_export_onnx", "export a model to ONNX (heads or full) for ONNX Runtime"),
    "convert-vavl": (
        "avemotion.models.vavl.convert_vavl_original_checkpoint",
        "convert a checkpoint of the original VAVL code into a transformers checkpoint",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avemotion", description="Multimodal emotion recognition.")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of errors (by default one line for user errors)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(subparser)
        subparser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args._run(args)
    except (ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"avemotion {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


def _one_line(error: BaseException) -> str:
    """The error's message on one line (library messages can span several)."""
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
