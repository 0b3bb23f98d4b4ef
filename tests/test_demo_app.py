"""The demo app (examples/app.py): its prediction function (labels per modality, face crops, timeline, messages for a
video without a face or without sound), and the app driven in headless Chromium as a person would use it."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media_testing import face_frames, tone, write_video
from test_pipeline import FPS, _save, _vavl
from vavl_testing import LABELS

gr = pytest.importorskip("gradio")
pytest.importorskip("matplotlib")

APP_PATH = Path(__file__).resolve().parents[1] / "examples" / "app.py"


def _load_app():
    spec = importlib.util.spec_from_file_location("avemotion_demo_app", APP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return _save(_vavl(), tmp_path_factory.mktemp("vavl"))  # window_seconds=1.0, 48x48 face crops


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    frames, _ = face_frames(15)  # 1.5 s at 10 fps: two 1 s windows
    blank = np.full((10, 120, 160, 3), 90, np.uint8)
    return {
        "clip": str(write_video(folder / "clip.mp4", frames, fps=FPS, audio=tone(1.5, 44100, channels=2))),
        "faceless": str(write_video(folder / "faceless.mp4", blank[:8], fps=FPS, audio=tone(0.8, 44100))),
        "silent": str(write_video(folder / "silent.mp4", frames, fps=FPS)),
        "silent_faceless": str(write_video(folder / "silent_faceless.mp4", blank, fps=FPS)),
    }


def test_analyse_gives_labels_per_modality_crops_and_timeline(model_dir, clips):
    analysis = app.analyse(model_dir, video=clips["clip"])
    assert analysis.messages == []
    assert set(analysis.results) == {"audio", "video", "fused"}
    assert analysis.used == {"audio": ["audio"], "video": ["video"], "fused": ["audio", "video"]}
    for result in analysis.results.values():
        shown = app.scores(result)
        assert sorted(shown) == sorted(LABELS) and sum(shown.values()) == pytest.approx(1.0, abs=1e-4)
        assert [w["end"] for w in result["windows"]] == pytest.approx(
            [1.0, 1.5], abs=0.05
        )  # 2 windows of 1.5 s (+ AAC padding)
    # the fused result differs from both single-modality results (it is not one of them relabelled)
    fused = app.scores(analysis.results["fused"])
    assert fused != app.scores(analysis.results["audio"]) and fused != app.scores(analysis.results["video"])
    # 8 face crops (96x96) side by side with 2-pixel gaps, showing the face, not black padding
    assert analysis.crops.shape == (96, 8 * 98 - 2, 3) and analysis.crops.dtype == np.uint8
    assert analysis.crops[:, :96].std() > 20
    figure = app.timeline_figure(analysis)
    assert figure is not None and len(figure.axes) >= 1
    # an audio file replaces the video's sound; a transcript is not used by an audio-visual model (said so)
    again = app.analyse(model_dir, video=clips["clip"], audio=clips["faceless"], text="I am fine")
    assert app.scores(again.results["video"]) == app.scores(analysis.results["video"])
    assert app.scores(again.results["audio"]) != app.scores(analysis.results["audio"])
    assert any("text is not used" in message for message in again.messages)


def test_messages_for_a_video_without_face_or_sound(model_dir, clips):
    faceless = app.analyse(model_dir, video=clips["faceless"])
    assert set(faceless.results) == {"audio", "fused"} and faceless.used["fused"] == ["audio"]
    assert faceless.crops is None
    assert any(m.startswith(app.NO_FACE) and "video-only result is left out" in m for m in faceless.messages)
    assert any(m.startswith(app.NO_FACE) and "uses the audio only" in m for m in faceless.messages)
    silent = app.analyse(model_dir, video=clips["silent"])
    assert set(silent.results) == {"video"} and silent.crops is not None
    assert any(m.startswith(app.NO_SOUND) for m in silent.messages)
    neither = app.analyse(model_dir, video=clips["silent_faceless"])
    assert neither.results == {}
    assert any(m.startswith(app.NO_SOUND) for m in neither.messages)
    assert any(m.startswith(app.NO_FACE) for m in neither.messages)
    assert app.analyse(model_dir).messages == [
        "Nothing to analyse: upload or record a video, an audio file or type a transcript."
    ]
    with pytest.raises(ValueError, match="no such directory"):
        app.analyse(str(Path(model_dir) / "missing"), video=clips["clip"])


def test_predict_handler_shows_and_hides_outputs(model_dir, clips):
    status, fused, audio, video, text, crops, timeline, raw = app.predict(clips["faceless"], None, "", model_dir, None)
    assert status.startswith("**Analysed**") and app.NO_FACE in status
    assert fused["visible"] and fused["label"] == "Fused (audio)" and sorted(fused["value"]) == sorted(LABELS)
    assert audio["visible"] and audio["label"] == "Audio only"
    assert not video["visible"] and not text["visible"] and crops is None
    assert timeline is None  # a 0.8 s clip is one window
    assert set(raw) == {"audio", "fused"}
    status, *outputs = app.predict(clips["clip"], None, None, "", None)
    assert "Pick a checkpoint" in status and all(o is None or o["visible"] is False for o in outputs)


def test_find_model_dirs(model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path / "runs" / "best")
    (tmp_path / "runs" / "other").mkdir()
    assert app.find_model_dirs((str(tmp_path),)) == [str(tmp_path / "runs" / "best")]


CHROMIUM = app.find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian's `chromium`; `make system-deps`)")
def test_app_in_headless_chromium(model_dir, clips, tmp_path):
    """Start the app on 127.0.0.1, upload a clip in Chromium, click Analyse, read the labels, keep a screenshot."""
    pytest.importorskip("playwright.sync_api")
    from PIL import Image

    screenshot = tmp_path / "app.png"
    with app.serve(model_dir) as url:
        assert url.startswith("http://127.0.0.1:")
        shown = app.capture_screenshot(url, screenshot, video=clips["clip"], timeout_s=30)
    assert "Analysed" in shown and "Fused (audio + video)" in shown and "Audio only" in shown
    for label in LABELS:
        assert label in shown
    copy_to = os.environ.get("AVEMOTION_APP_SCREENSHOT")  # to look at the page when the app changes
    if copy_to:
        shutil.copyfile(screenshot, copy_to)
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size == app.SCREENSHOT_SIZE
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # not blank
