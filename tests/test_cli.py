"""The `avemotion` command: user errors are one line with exit status 2 (`--debug` shows the traceback), bugs keep
their traceback; `predict` reports an unusable `--model` as one line naming it and goes on past bad files."""

import json
import shutil
from pathlib import Path

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


@pytest.fixture(scope="module")
def interview(tmp_path_factory):
    """2 s of video at 10 fps with a sound track; the face is there in the first second only."""
    from media_testing import face_frames, tone, write_video

    frames, _ = face_frames(20, without_face=range(10, 20), height=120, width=160, face_size=80)
    path = tmp_path_factory.mktemp("interview") / "interview.mp4"
    return str(write_video(path, frames, fps=10, audio=tone(2.0, 16000, frequency=300), audio_rate=16000))


def _image(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)


def test_predict_plot_draws_the_result_along_time(vavl_dir, interview, tmp_path, capsys):
    """`--plot` writes the timeline of the printed result: the windows' modalities in the band (audio only where the
    face is gone), the x-axis over the clip; the image is the one `plot_timeline` draws from the JSON result."""
    from avemotion.plotting import plot_timeline, save_figure
    from avemotion.plotting._figures import modality_key

    out = tmp_path / "plots" / "timeline.png"
    argv = ["predict", "--model", vavl_dir, "--json", interview, "--plot", str(out)]  # windows of 1 s
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)["result"]
    assert f"plot: wrote {out}" in captured.err
    modalities = [modality_key(window["modalities"]) for window in result["windows"]]
    assert modalities[0] == "audio+video" and set(modalities[1:]) == {"audio"}  # no face after 1 s
    config = json.loads((Path(vavl_dir) / "config.json").read_text())
    labels = [config["id2label"][key] for key in sorted(config["id2label"], key=int)]
    figure = plot_timeline(result, labels=labels, title="interview.mp4")
    band, emotions = figure.axes[1], figure.axes[0]
    assert [bar.get_gid() for bar in sorted(band.patches, key=lambda bar: bar.get_x())] == modalities
    assert emotions.get_xlim() == pytest.approx((0.0, result["windows"][-1]["end"]))
    assert result["windows"][-1]["end"] == pytest.approx(2.0, abs=0.15)  # the clip's length (+ the AAC padding)
    drawn = _image(out)
    assert drawn.shape == (420, 1000, 3) and drawn.std() > 40
    np.testing.assert_array_equal(drawn, _image(save_figure(figure, tmp_path / "expected.png")))


def test_predict_plot_names_one_file_per_input(vavl_dir, interview, wav, tmp_path, capsys):
    out = tmp_path / "plot.png"
    assert main(["predict", "--model", vavl_dir, interview, wav, wav, "--plot", str(out)]) == 0
    names = ["plot-interview.png", "plot-speech.png", "plot-speech-2.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)
    for name in names:
        assert _image(tmp_path / name).shape == (420, 1000, 3)
    assert (_image(tmp_path / names[1]) == _image(tmp_path / names[2])).all()  # the same file, the same picture
    assert cli_predict.plot_paths("o", ["text #0", "text #1"]) == [Path("o-text-0.png"), Path("o-text-1.png")]
    assert cli_predict.plot_paths("dir/o.svg", ["a/clip.mp4"]) == [Path("dir/o.svg")]  # one input: OUT itself
    capsys.readouterr()
    assert main(["predict", "--model", vavl_dir, wav, "--plot", str(tmp_path / "x.nope")]) == 2
    error = _error_line(capsys)
    assert "--plot" in error and "unknown image format 'nope'" in error
