"""The `avemotion` command: user errors are one line with exit status 2 (`--debug` shows the traceback), bugs keep
their traceback; `predict` reports an unusable `--model` as one line naming it and goes on past bad files."""

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch
from test_pipeline import _save, _vavl

from avemotion import cli
from avemotion.cli import main
from avemotion.pipelines import cli_predict

RATE = 16000


@pytest.fixture(scope="module")
def vavl_dir(tmp_path_factory):
    torch.manual_seed(0)
    return _save(_vavl(), tmp_path_factory.mktemp("vavl"))


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "speech.wav"
    soundfile.write(path, (np.random.default_rng(0).standard_normal(RATE // 2) * 0.1).astype(np.float32), RATE)
    return str(path)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _broken_copy(vavl_dir, tmp_path, remove=(), truncate=None) -> str:
    target = tmp_path / "model"
    shutil.copytree(vavl_dir, target)
    for name in remove:
        (target / name).unlink()
    if truncate:
        data = (target / truncate).read_bytes()
        (target / truncate).write_bytes(data[: len(data) // 2])
    return str(target)


@pytest.mark.parametrize(
    ("remove", "truncate", "message"),
    [
        ((), None, "no such directory"),
        (("processor_config.json",), None, r"no processor \(processor_config.json\)"),
        (("model.safetensors",), None, r"no model weights \(model.safetensors"),
        (("config.json",), None, "no config.json"),
        ((), "model.safetensors", r"model.safetensors: cannot read the weights .* truncated or corrupt"),
    ],
)
def test_predict_unusable_model_is_one_error_line(vavl_dir, wav, tmp_path, capsys, remove, truncate, message):
    model = str(tmp_path / "missing") if message == "no such directory" else None
    model = model or _broken_copy(vavl_dir, tmp_path, remove, truncate)
    assert main(["predict", "--model", model, wav]) == 2
    line = _error_line(capsys)
    assert line.startswith("avemotion predict: error: ") and model in line
    assert pytest.importorskip("re").search(message, line), line


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        main(["--debug", "predict", "--model", str(tmp_path / "missing"), "x.wav"])


def test_user_errors_of_any_subcommand_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def user_error(args):
        raise PermissionError(13, "Permission denied", "/read-only/out")

    monkeypatch.setattr(cli_predict, "run", user_error)
    assert main(["predict", "--model", "m", "x.wav"]) == 2
    assert _error_line(capsys) == "avemotion predict: error: [Errno 13] Permission denied: '/read-only/out'"

    def multi_line(args):
        raise ValueError("first line\n  second line")

    monkeypatch.setattr(cli_predict, "run", multi_line)
    assert main(["predict", "--model", "m", "x.wav"]) == 2
    assert _error_line(capsys) == "avemotion predict: error: first line second line"

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli_predict, "run", bug)
    with pytest.raises(KeyError):
        main(["predict", "--model", "m", "x.wav"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--window-seconds", "1e-9"], "window_seconds must be a finite number of seconds >= 0.025"),
        (["--window_seconds", "1", "--stride-seconds", "2"], "must not exceed window_seconds"),  # either spelling
        (["--batch-size", "0"], "--batch_size must be at least 1"),
    ],
)
def test_predict_bad_options_are_one_line(vavl_dir, wav, capsys, option, message):
    assert main(["predict", "--model", vavl_dir, *option, wav]) == 2
    assert message in _error_line(capsys)


def test_predict_batches_and_keeps_going_past_bad_files(vavl_dir, wav, tmp_path, capsys):
    missing, directory = str(tmp_path / "missing.wav"), str(tmp_path)
    files = [wav, missing, wav, directory, "speech.wa", wav]
    assert main(["predict", "--model", vavl_dir, "--json", "--batch-size", "2", *files]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["input"] for line in lines] == files
    assert "input #1" in lines[1]["error"] and f"'{missing}': no such file" in lines[1]["error"]
    assert "is a directory" in lines[3]["error"] and "'speech.wa': no such file" in lines[4]["error"]
    scores = [{p["label"]: p["score"] for p in lines[i]["result"]} for i in (0, 2, 5)]
    assert scores[1] == pytest.approx(scores[0], abs=1e-5) and scores[2] == pytest.approx(scores[0], abs=1e-5)


def test_help_lists_debug_and_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--debug" in out and all(name in out for name in cli.SUBCOMMANDS)
