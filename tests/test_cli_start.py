"""The `avemotion` entry point starts without torch or transformers, imports only the command it runs, and spells
every option one way (underscores) while accepting dashes."""

import subprocess
import sys

import pytest

import avemotion_cli
from avemotion_cli import SUBCOMMANDS, OptionParser, build_parser, canonical_args, main

HEAVY = ("torch", "transformers", "avemotion")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_help_imports_neither_torch_nor_transformers():
    code = (
        "import sys, avemotion_cli\n"
        "try:\n    avemotion_cli.main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        f"print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = _run(code)
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED []"
    assert all(name in result.stdout for name in SUBCOMMANDS) and "--debug" in result.stdout


def test_module_entry_point_runs_help():
    result = subprocess.run([sys.executable, "-m", "avemotion_cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "convert-vavl" in result.stdout


def test_a_command_imports_only_its_own_module():
    code = (
        "import sys, avemotion_cli\n"
        "avemotion_cli.build_parser('export-onnx')\n"
        "print([name for name, _ in avemotion_cli.SUBCOMMANDS.values() if name in sys.modules])"
    )
    assert _run(code).stdout.strip() == "['avemotion.pipelines.cli_export_onnx']"


def test_avemotion_cli_is_the_package_command():
    from avemotion import cli

    assert cli.main is main and cli.SUBCOMMANDS is SUBCOMMANDS and cli.build_parser is build_parser


def test_options_are_registered_with_underscores_and_accept_dashes():
    parser = OptionParser(prog="x")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--num_clips", type=int, default=3)
    parser.add_argument("--top_k", "--top-k", type=int)  # HfArgumentParser-style aliases become one option
    parser.add_argument("--no-check", action="store_true")
    for argv in (["--data-dir", "d"], ["--data_dir", "d"], ["--data-dir=d"], ["--data_d", "d"]):
        assert parser.parse_args(argv).data_dir == "d"
    args = parser.parse_args(["--data_dir", "d", "--num-clips", "7", "--top-k=2", "--no-check"])
    assert (args.num_clips, args.top_k, args.no_check) == (7, 2, True)
    usage = parser.format_help()
    assert "--data_dir" in usage and "--no_check" in usage and "--top_k" in usage
    assert "--data-dir" not in usage and "--top-k" not in usage and "--no-check" not in usage
    with pytest.raises(SystemExit):
        parser.parse_args([])  # still required, whichever spelling


def test_words_after_a_double_dash_and_values_are_left_alone():
    assert canonical_args(["--top-k=a-b", "-x", "file-name", "--", "--not-an-option"]) == [
        "--top_k=a-b", "-x", "file-name", "--", "--not-an-option"
    ]  # fmt: skip


@pytest.mark.parametrize("command", sorted(avemotion_cli.SUBCOMMANDS))
def test_command_help_shows_the_underscore_spelling(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    longs = [word.strip("[],") for word in out.split() if word.startswith(("--", "[--"))]
    assert longs and not [word for word in longs if "-" in word.lstrip("[-")], longs


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        avemotion_cli.main(["no-such-command"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
