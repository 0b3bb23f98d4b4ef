"""The `avemotion` command: the console entry point, kept outside the `avemotion` package so that it starts fast.

Importing `avemotion` registers its models with transformers (and so imports torch and transformers, seconds);
this module imports neither. `avemotion --help` lists the commands from the static table `SUBCOMMANDS`, and
`avemotion CMD ...` imports only CMD's module, which provides `add_arguments(parser)` and `run(args)`, so a missing
optional dependency only affects its own command. `avemotion.cli` re-exports `main`, `build_parser` and the table.

Option spelling: one per option across the commands, with underscores (`--data_dir`, `--output_dir`, as
transformers' `HfArgumentParser` writes them); the dashed spelling (`--data-dir`) is accepted too. `OptionParser`,
the sub-commands' parser class, does this once for every command: it registers each long option with underscores
(help shows that spelling only) and reads dashes in option names as underscores.

User errors (a `ValueError` or `OSError`: a missing or unreadable file, a bad option value, a directory without a
model) are printed as one line, `avemotion COMMAND: error: ...`, with exit status 2; any other exception is a bug and
keeps its traceback. `avemotion --debug COMMAND ...` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("avemotion.pipelines.cli_predict", "predict emotions of media files and/or transcripts"),
    "synth": ("avemotion.data.synthetic", "write the synthetic audio-visual emotion corpus (CREMA-D layout)"),
    "train": ("avemotion.training.cli_train", "train a model with accelerate (VAVL's three-step schedule or joint)"),
    "cache-features": (
        "avemotion.training.cli_cache_features",
        "run a model's frozen backbones over a corpus once and save the features (resumable, accelerate launch)",
    ),
    "evaluate": ("avemotion.training.cli_evaluate", "per-branch metrics of a checkpoint on a dataset split, as JSON"),
    "push": ("avemotion.training.cli_push", "push a trained model, its processor and a model card to the Hub"),
    "export-onnx": ("avemotion.pipelines.cli_export_onnx", "export a model to ONNX (heads or full) for ONNX Runtime"),
    "convert-vavl": (
        "avemotion.models.vavl.convert_vavl_original_checkpoint",
        "convert a checkpoint of the original VAVL code into a transformers checkpoint",
    ),
    "download-face-detector": (
        "avemotion.processing.face_weights",
        "install the MTCNN face detector's weights (facenet-pytorch 2.6.0's data files) into the avemotion cache",
    ),
    "convert-hsemotion": (
        "avemotion.models.hsemotion.convert_hsemotion_checkpoint",
        "convert an HSEmotion face-emotion checkpoint (a pickled timm EfficientNet) into a transformers EfficientNet",
    ),
}


def canonical_option(option: str) -> str:
    """`--data-dir` -> `--data_dir` (long options only; the value of `--name=value` is left alone)."""
    if not option.startswith("--") or option == "--":
        return option
    name, equals, value = option.partition("=")
    return "--" + name[2:].replace("-", "_") + equals + value


def canonical_args(args: Sequence[str]) -> list[str]:
    """Command-line words with every long option name in its canonical (underscore) spelling, up to a `--`."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    return [canonical_option(arg) for arg in args[:end]] + args[end:]


class OptionParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose long options are spelled with underscores and accept dashes.

    `add_argument("--data-dir")` registers `--data_dir` (the `dest` is `data_dir` either way); aliases that differ only
    in that spelling (`"--data_dir", "--data-dir"`, as `HfArgumentParser` adds them) become one option string.
    `parse_known_args` (and so `parse_args`) reads `--data-dir` as `--data_dir`.
    """

    def add_argument(self, *name_or_flags: str, **kwargs: Any) -> argparse.Action:
        flags = list(dict.fromkeys(canonical_option(flag) for flag in name_or_flags))
        return super().add_argument(*flags, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(canonical_args(args), namespace)


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command word of a command line (the first word that is not a top-level option), if any."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `avemotion` parser. Every sub-command is listed (from `SUBCOMMANDS`, importing nothing); only `command`'s
    module is imported, to add its options and its `run`."""
    parser = argparse.ArgumentParser(prog="avemotion", description="Multimodal emotion recognition.")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of errors (by default one line for user errors)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OptionParser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(subparser)
            subparser.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `avemotion ARGV`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    # looked up at run time, so that a replaced `run` (tests) is the one called
    run = importlib.import_module(args._module).run
    try:
        status = run(args)
    except Exception as error:
        # user errors (bad options or files) and errors that already name their cause (`one_line`, e.g. another
        # process's failure) are one line; anything else is a bug: its traceback
        if args.debug or not (isinstance(error, (ValueError, OSError)) or getattr(error, "one_line", False)):
            raise
        print(f"avemotion {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


def _one_line(error: BaseException) -> str:
    """The error's message on one line (library messages can span several)."""
    return " ".join(str(error).split()) or type(error).__name__


__all__ = ["SUBCOMMANDS", "OptionParser", "build_parser", "canonical_args", "canonical_option", "main"]

if __name__ == "__main__":
    sys.exit(main())
