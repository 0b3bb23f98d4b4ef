"""The avemotion demo app (Gradio): try a checkpoint on a video, an audio file and/or a transcript in the browser.

Upload or record a video (a face and a voice), an audio file (it replaces the video's sound) and/or type a transcript,
pick a checkpoint directory, and see:
- the top labels of each modality on its own (audio only, video only, text only) and of all of them fused: the
  pipeline runs once per modality subset that the model takes and the input has;
- the face crops the model saw (a strip of thumbnails of the processor's crops, evenly spaced over the clip);
- the timeline of a clip longer than one analysis window (`avemotion.plotting.plot_timeline`);
- clear messages, not tracebacks, for a video without a face or without sound (the pipeline's fall-back notes).

Checkpoints: any directory written by `save_pretrained` with its `AvEmotionProcessor` (models with backbones take raw
media). A model trained on the synthetic corpus's cheap features (`make demo`, which saves `synthetic_features.json`
with its standardisation next to the model) gets those features computed here, per analysis window.

Run locally:
    pip install "avemotion[demo]"            # gradio, matplotlib, playwright
    python examples/app.py --model outputs/demo/vavl/best [--port 7860] [--share]

As a Hugging Face Space (SDK gradio), the Space repository holds:
    README.md          front matter: `sdk: gradio`, `app_file: app.py`
    app.py             this file
    requirements.txt   `avemotion[demo] @ git+https://github.com/<owner>/avemotion` (or a pinned wheel)
    model/             a checkpoint (config.json, model.safetensors, processor_config.json), the default `--model`
The Space runs `python app.py`; the host and port come from `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT` (set by
Spaces), the model from `--model` or `AVEMOTION_MODEL` (default `model` when that directory exists).

`python examples/app.py --screenshot OUT.png --video CLIP.mp4` starts the app on 127.0.0.1, drives it with headless
Chromium through Playwright (`executable_path` of the system `chromium`), and saves a screenshot (`make demo` does so).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (also: offline machines)

import av  # noqa: E402
import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from transformers import pipeline  # noqa: E402

import avemotion  # noqa: E402, F401  (registers the models and the pipeline task)
from avemotion.processing.media import load_audio, media_streams  # noqa: E402

FEATURES_FILE = "synthetic_features.json"  # written by examples/demo_synthetic.py next to its model
MODALITY_NAMES = {"audio": "Audio only", "video": "Video only", "text": "Text only"}
_SUBSET_WORDS = {"audio": "audio-only", "video": "video-only", "text": "text-only", "fused": "fused"}
MAX_THUMBNAILS, THUMBNAIL_SIDE = 8, 96
SCREENSHOT_SIZE = (1280, 1200)  # width, height of `capture_screenshot`'s PNG
NO_FACE = "No face found in the video"
NO_SOUND = "The video has no sound"
_THEME_FONTS = {"font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}
# a small clip (e.g. 64x64 synthetic faces) would otherwise be scaled up to the column's width
_CSS = "#video-input video { max-height: 260px; object-fit: contain; }"


# ------------------------------------------------------------------------------------------------------ checkpoints


def find_model_dirs(roots: tuple[str, ...] = ("outputs", "model", "."), max_depth: int = 4) -> list[str]:
    """Local checkpoint directories (holding `config.json` and `processor_config.json`) under `roots`."""
    found: list[str] = []
    for root in roots:
        base = Path(root)
        if not base.is_dir():
            continue
        for config in sorted(base.glob("**/config.json")):
            folder = config.parent
            depth = len(folder.relative_to(base).parts)
            if depth <= max_depth and (folder / "processor_config.json").is_file() and str(folder) not in found:
                if ".venv" not in folder.parts and "node_modules" not in folder.parts:
                    found.append(str(folder))
    return found


@dataclass
class Checkpoint:
    """A loaded checkpoint: its pipeline and, for models trained on the synthetic cheap features, their statistics."""

    path: str
    classify: Any
    feature_stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.classify.model_modalities

    @property
    def regression(self) -> bool:
        return self.classify.model.config.problem_type == "regression"

    @property
    def window_seconds(self) -> float:
        return float(self.classify.model_spec.window_seconds or 12.0)


@functools.lru_cache(maxsize=4)
def load_checkpoint(path: str) -> Checkpoint:
    """The pipeline of a checkpoint directory (cached); a `ValueError` naming it when it cannot be loaded."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"checkpoint {path!r}: no such directory")
    if not (folder / "config.json").is_file():
        raise ValueError(f"checkpoint {path!r}: no config.json (write it with save_pretrained)")
    try:
        classify = pipeline("audio-visual-emotion", model=str(folder))
    except (OSError, ValueError) as error:
        raise ValueError(f"checkpoint {path!r}: cannot be loaded ({error})") from error
    stats = None
    if (folder / FEATURES_FILE).is_file():
        saved = json.loads((folder / FEATURES_FILE).read_text())
        stats = {
            name: (np.asarray(value["mean"], np.float32), np.asarray(value["std"], np.float32))
            for name, value in saved.get("standardize", {}).items()
        }
    return Checkpoint(str(folder), classify, stats)


# --------------------------------------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    """What the app shows for one request.

    `results` maps a modality subset ("audio", "video", "text", or "fused") to the pipeline's result for it;
    `used` maps it to the modalities that result used; `crops` is a (96, n * 98 - 2, 3) uint8 strip of face crops.
    """

    results: dict[str, Any] = field(default_factory=dict)
    used: dict[str, list[str]] = field(default_factory=dict)
    crops: np.ndarray | None = None
    messages: list[str] = field(default_factory=list)
    regression: bool = False
    labels: list[str] = field(default_factory=list)  # the model's labels (or attributes) in id order
    scale: list[float] | None = None  # a dimensional model's `config.label_scale`

    @property
    def main(self) -> Any:
        """The fused result, else the single modality's."""
        if "fused" in self.results:
            return self.results["fused"]
        return next(iter(self.results.values()), None)


def scores(result: Any) -> dict[str, float]:
    """`{label: score}` of a pipeline result: a list of predictions, or a windowed result's aggregate, or the
    attribute values of a dimensional model."""
    if isinstance(result, list):
        return {p["label"]: float(p["score"]) for p in result}
    if "predictions" in result:
        return {p["label"]: float(p["score"]) for p in result["predictions"]}
    return {k: float(v) for k, v in result.items() if k not in ("windows", "modalities", "notes")}


def analyse(
    model_dir: str,
    video: str | None = None,
    audio: str | None = None,
    text: str | None = None,
    window_seconds: float | None = None,
) -> Analysis:
    """Run the checkpoint on every modality subset of the input that the model takes.

    Args:
        model_dir: checkpoint directory.
        video: a video file (its frames, and its sound unless `audio` is given).
        audio: an audio file (or a video file's sound track).
        text: a transcript.
        window_seconds: analysis window (default: the model's `config.window_seconds`).

    Returns:
        an `Analysis`; problems with the input are `messages`, never exceptions, except an unusable checkpoint
        (`ValueError`).
    """
    checkpoint = load_checkpoint(model_dir)
    config = checkpoint.classify.model.config
    labels = [config.id2label[i] for i in sorted(config.id2label)]
    analysis = Analysis(regression=checkpoint.regression, labels=labels, scale=getattr(config, "label_scale", None))
    text = (text or "").strip() or None
    has_sound = has_frames = False
    if video:
        has_sound, has_frames = media_streams(video)
        if not has_frames:
            analysis.messages.append("The video file holds no video stream: it is used as audio.")
    if audio:
        has_sound = True
    elif video and not has_sound and has_frames:
        analysis.messages.append(f"{NO_SOUND} track: the audio-only result is left out; the face is used alone.")
    sources: dict[str, Any] = {}
    if has_sound:
        sources["audio"] = audio or video
    if has_frames:
        sources["video"] = video
    if text:
        sources["text"] = text
    if not sources:
        analysis.messages.append("Nothing to analyse: upload or record a video, an audio file or type a transcript.")
        return analysis
    unused = [m for m in sources if m not in checkpoint.modalities]
    if unused:
        analysis.messages.append(
            f"This model takes {' and '.join(checkpoint.modalities)}; the {' and '.join(unused)} is not used."
        )
    usable = [m for m in checkpoint.modalities if m in sources]
    if not usable:
        return analysis
    subsets = {m: [m] for m in usable}
    if len(usable) > 1:
        subsets["fused"] = usable
    window = window_seconds or checkpoint.window_seconds
    for name, modalities in subsets.items():
        inputs = {m: sources[m] for m in modalities}
        try:
            if checkpoint.feature_stats is not None:
                result = _feature_model_result(checkpoint, inputs, window)
            else:
                result = checkpoint.classify(inputs, window_seconds=window)
        except ValueError as error:
            analysis.messages.append(_explain(name, error))
            continue
        analysis.results[name] = result
        analysis.used[name] = list(result[0]["modalities"] if isinstance(result, list) else result["modalities"])
        for note in _notes(result):
            message = _explain_note(name, note)
            if message not in analysis.messages:
                analysis.messages.append(message)
    if "video" in sources and "video" in checkpoint.modalities:
        analysis.crops = face_crop_strip(checkpoint, sources["video"])
    return analysis


def _notes(result: Any) -> list[str]:
    if isinstance(result, list):
        return list(result[0].get("notes", [])) if result else []
    return list(result.get("notes", []))


def _explain(subset: str, error: ValueError) -> str:
    """A user-facing line for a subset that could not be analysed."""
    what, message = _SUBSET_WORDS[subset], str(error)
    if "no face found" in message.lower():
        return f"{NO_FACE}: the {what} result is left out (no frame shows a face the detector finds)."
    if "no audio" in message.lower() or "shorter than one model frame" in message:
        return f"No usable sound: the {what} result is left out ({message})."
    return f"The {what} result could not be computed: {message}"


def _explain_note(subset: str, note: str) -> str:
    if "no face found" in note.lower():
        return f"{NO_FACE}: the fused result uses the audio only."
    return f"Note ({_SUBSET_WORDS[subset]}): {note}"


# ----------------------------------------------------------------------------------------------------- face crops


def face_crop_strip(checkpoint: Checkpoint, video: str) -> np.ndarray | None:
    """Up to 8 of the face crops the model sees, evenly spaced over the clip, side by side: (96, n * 98 - 2, 3)
    uint8, or None when no face is found. Models on the synthetic cheap features see the frame's 16x16 grey grid."""
    try:
        with av.open(video) as container:
            duration = float(container.duration or 0) / av.time_base
    except av.error.FFmpegError:
        return None
    if checkpoint.feature_stats is not None:
        from avemotion.data.synthetic import VISUAL_GRID, extract_visual_features, read_video_frames

        grids = extract_visual_features(read_video_frames(video, gray=True)).reshape(-1, VISUAL_GRID, VISUAL_GRID)
        crops = np.repeat((np.clip(grids, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
        return _strip(crops, cv2.INTER_NEAREST)
    image_processor = checkpoint.classify.processor.image_processor
    rate = max(MAX_THUMBNAILS / max(duration, 1e-3), 0.02)
    if image_processor.video_fps:
        rate = min(rate, image_processor.video_fps)
    try:
        out = image_processor(video, video_fps=rate, do_rescale=False, do_normalize=False, return_tensors="np")
    except ValueError:  # no face in any frame (NoFaceFoundError), or an undecodable file: reported elsewhere
        return None
    pixels, mask = out["pixel_values_videos"][0], out["visual_features_mask"][0].astype(bool)
    crops = np.clip(pixels[mask], 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return _strip(crops, cv2.INTER_AREA) if len(crops) else None


def _strip(crops: np.ndarray, interpolation: int) -> np.ndarray:
    """Evenly chosen crops (n, h, w, 3), each resized to 96x96, joined with 2 white pixels between them."""
    chosen = crops[np.unique(np.linspace(0, len(crops) - 1, min(MAX_THUMBNAILS, len(crops))).round().astype(int))]
    side = THUMBNAIL_SIDE
    tiles = [cv2.resize(np.ascontiguousarray(c), (side, side), interpolation=interpolation) for c in chosen]
    gap = np.full((side, 2, 3), 255, np.uint8)
    parts = [part for tile in tiles for part in (tile, gap)][:-1]
    return np.concatenate(parts, axis=1)


# ------------------------------------------------------------------------------- models on the cheap features


def _feature_model_result(checkpoint: Checkpoint, inputs: dict[str, Any], window: float) -> Any:
    """The pipeline result of a model trained on the synthetic corpus's cheap features (`make demo`): features
    computed and standardised here, the media cut into windows of `window` seconds (one result per window and their
    duration-weighted mean, as the pipeline gives for long media)."""
    from avemotion.data.synthetic import (
        FEATURE_FRAME_RATE,
        SAMPLING_RATE,
        extract_audio_features,
        extract_visual_features,
        read_video_frames,
    )
    from avemotion.processing.media import video_frame_rate

    stats = checkpoint.feature_stats or {}
    streams: dict[str, tuple[np.ndarray, float]] = {}
    if "audio" in inputs:
        waveform = load_audio(inputs["audio"], SAMPLING_RATE)
        streams["audio_features"] = (extract_audio_features(waveform), float(FEATURE_FRAME_RATE))
    if "video" in inputs:
        frames = read_video_frames(inputs["video"], gray=True)
        streams["visual_features"] = (extract_visual_features(frames), video_frame_rate(inputs["video"]) or 25.0)
    if "text" in inputs:
        raise ValueError("this model on cheap features takes no transcript")
    for name, (values, rate) in streams.items():
        if name in stats:
            mean, std = stats[name]
            streams[name] = ((values - mean) / std, rate)
    duration = max(len(values) / rate for values, rate in streams.values())
    count = max(1, math.ceil(duration / window - 1e-6))
    windows, items = [], []
    for k in range(count):
        start, end = k * window, min((k + 1) * window, duration)
        item = {}
        for name, (values, rate) in streams.items():
            part = values[int(round(start * rate)) : int(round(end * rate))]
            if len(part):
                item[name] = part.astype(np.float32)
        if item:
            windows.append((start, end))
            items.append(item)
    if not items:
        raise ValueError("nothing to analyse (no audio or video frames)")
    results = checkpoint.classify(items)
    if len(items) == 1:
        return results[0]
    return _windowed(windows, results, checkpoint.regression)


def _windowed(windows: list[tuple[float, float]], results: list[Any], regression: bool) -> dict[str, Any]:
    """Per-window results with their aggregate, in the pipeline's format for media longer than one window."""
    weights = np.asarray([max(end - start, 1e-6) for start, end in windows])
    weights = weights / weights.sum()
    modalities = [m for m in ("audio", "video", "text") if any(m in _used(r) for r in results)]
    out: dict[str, Any] = {"windows": [], "modalities": modalities}
    totals: dict[str, float] = {}
    for (start, end), result, weight in zip(windows, results, weights):
        entry: dict[str, Any] = {"start": round(start, 3), "end": round(end, 3)}
        if regression:
            entry.update(result)
        else:
            entry.update({"predictions": result, "modalities": _used(result)})
        out["windows"].append(entry)
        for label, score in scores(result).items():
            totals[label] = totals.get(label, 0.0) + weight * score
    if regression:
        out.update(totals)
    else:
        order = sorted(totals, key=totals.get, reverse=True)
        out["predictions"] = [{"label": k, "score": totals[k], "modalities": modalities} for k in order]
    return out


def _used(result: Any) -> list[str]:
    return list(result[0]["modalities"] if isinstance(result, list) else result["modalities"])


# ---------------------------------------------------------------------------------------------------------- the UI


def timeline_figure(analysis: Analysis, title: str | None = None) -> Any:
    """`plot_timeline` of the main result (a matplotlib Figure) when it has more than one window, else None."""
    main = analysis.main
    if not isinstance(main, dict) or len(main.get("windows", ())) < 2:
        return None
    from avemotion.plotting import plot_timeline

    return plot_timeline(main, labels=analysis.labels or None, scale=analysis.scale, title=title)


def _label_value(analysis: Analysis, subset: str) -> Any:
    result = analysis.results.get(subset)
    if result is None:
        return None
    values = scores(result)
    if analysis.regression:  # gr.Label shows a string as the heading: the attribute values on the model's scale
        return ", ".join(f"{name} {value:.2f}" for name, value in values.items())
    return values


def predict(
    video: str | None, audio: str | None, text: str | None, model_dir: str | None, window_seconds: float | None
) -> tuple[Any, ...]:
    """The app's event handler: the status markdown, the fused / audio / video / text labels (as `gr.update`s that
    also show or hide them), the face-crop strip, the timeline figure and the raw result."""
    hidden = gr.update(value=None, visible=False)
    if not model_dir:
        gr.Warning("Pick a checkpoint directory first.")
        return ("**Pick a checkpoint directory first.**", hidden, hidden, hidden, hidden, None, None, None)
    try:
        analysis = analyse(model_dir, video=video, audio=audio, text=text, window_seconds=window_seconds or None)
    except ValueError as error:
        gr.Warning(str(error))
        return (f"**{error}**", hidden, hidden, hidden, hidden, None, None, None)
    for message in analysis.messages:
        if message.startswith((NO_FACE, NO_SOUND, "Nothing to analyse", "No usable sound")):
            gr.Warning(message)
    lines = []
    if analysis.results:
        main = analysis.main
        windows = len(main.get("windows", ())) if isinstance(main, dict) else 1
        top = max(scores(main).items(), key=lambda kv: kv[1])[0] if not analysis.regression else None
        used = " + ".join(analysis.used.get("fused") or next(iter(analysis.used.values())))
        summary = f"top label **{top}**, " if top else ""
        lines.append(f"**Analysed**: {summary}from {used}, {windows} window{'s' if windows > 1 else ''}.")
    lines += [f"- {message}" for message in analysis.messages]
    labels = []
    for subset in ("fused", "audio", "video", "text"):
        value = _label_value(analysis, subset)
        if value is None:
            labels.append(hidden)
            continue
        heading = "Fused" if subset == "fused" else MODALITY_NAMES[subset]
        if subset == "fused":
            heading += f" ({' + '.join(analysis.used[subset])})"
        labels.append(gr.update(value=value, label=heading, visible=True))
    raw = {name: result for name, result in analysis.results.items()}
    title = Path(video or audio).name if (video or audio) else None
    return ("\n".join(lines), *labels, analysis.crops, timeline_figure(analysis, title), raw or None)


def build_app(model_dir: str | None = None) -> gr.Blocks:
    """The Gradio app; `model_dir` is the checkpoint selected at start (any local checkpoint can be picked)."""
    choices = find_model_dirs()
    if model_dir and model_dir not in choices:
        choices.insert(0, model_dir)
    with gr.Blocks(title="avemotion demo", analytics_enabled=False) as app:
        gr.Markdown(
            "## avemotion: emotions from a face, a voice and a transcript\n"
            "Upload or record a video, an audio file and/or type a transcript, then **Analyse**. Each modality is "
            "classified on its own and fused; long clips get a timeline."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                checkpoint = gr.Dropdown(
                    choices=choices,
                    value=model_dir or (choices[0] if choices else None),
                    allow_custom_value=True,
                    label="Checkpoint directory",
                    elem_id="model-dir",
                )
                video = gr.Video(sources=["upload", "webcam"], label="Video (face and voice)", elem_id="video-input")
                audio = gr.Audio(
                    sources=["upload", "microphone"],
                    type="filepath",
                    label="Audio file (replaces the video's sound)",
                    elem_id="audio-input",
                )
                with gr.Row():
                    text = gr.Textbox(label="Transcript", lines=1, scale=3, elem_id="text-input")
                    window = gr.Number(
                        label="Window (s)", info="0: the model's", value=0, minimum=0, scale=1, elem_id="window"
                    )
                button = gr.Button("Analyse", variant="primary", elem_id="analyse-button")
            with gr.Column(scale=3, min_width=420):
                status = gr.Markdown("Results appear here.", elem_id="status")
                with gr.Row(equal_height=True):
                    fused = gr.Label(label="Fused", num_top_classes=3, elem_id="label-fused", visible=False)
                    audio_label = gr.Label(num_top_classes=3, elem_id="label-audio", visible=False)
                    video_label = gr.Label(num_top_classes=3, elem_id="label-video", visible=False)
                    text_label = gr.Label(num_top_classes=3, elem_id="label-text", visible=False)
                gr.Markdown("**Face crops the model saw** (evenly spaced over the clip)")
                crops = gr.Image(
                    show_label=False, type="numpy", height=110, interactive=False, buttons=[], elem_id="face-crops"
                )
                gr.Markdown("**Timeline** (clips longer than one window)")
                timeline = gr.Plot(show_label=False, elem_id="timeline")
                with gr.Accordion("Raw results (JSON)", open=False):
                    raw = gr.JSON(elem_id="raw-results")
        button.click(
            predict,
            inputs=[video, audio, text, checkpoint, window],
            outputs=[status, fused, audio_label, video_label, text_label, crops, timeline, raw],
        )
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs: Any):
    """Start the app (`Blocks.launch`) with the theme and no server-side rendering; returns its local URL."""
    theme = gr.themes.Soft(**_THEME_FONTS)  # system fonts: no font downloads
    _, url, _ = app.launch(
        server_name=host, server_port=port, share=share, theme=theme, css=_CSS, ssr_mode=False, quiet=True, **kwargs
    )
    return url


# ------------------------------------------------------------------------------------------- headless screenshots


def find_chromium() -> str | None:
    """The system Chromium (Debian's `chromium`), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(model_dir: str | None) -> Iterator[str]:
    """The app on 127.0.0.1 at a free port, in this process (background threads); yields its URL."""
    app = build_app(model_dir)
    url = launch(app, port=free_port(), prevent_thread_lock=True)
    try:
        yield url
    finally:
        app.close()


def capture_screenshot(
    url: str,
    output: str | Path,
    video: str | None = None,
    audio: str | None = None,
    text: str | None = None,
    window_seconds: float | None = None,
    timeout_s: float = 60.0,
    size: tuple[int, int] = SCREENSHOT_SIZE,
) -> str:
    """Drive the app at `url` with headless Chromium as a person would (upload, click Analyse, wait for the result)
    and save a `size` (width, height) PNG screenshot at `output`. Returns the page's result text (status and labels).

    Raises `RuntimeError` when no Chromium is installed or the result does not appear within `timeout_s`.
    """
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found (install Debian's `chromium`)")
    timeout_ms = timeout_s * 1000
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]}, device_scale_factor=1)
            page.set_default_timeout(timeout_ms)
            page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
            page.locator("#analyse-button").wait_for(state="visible")
            if video:
                page.locator("#video-input input[type=file]").set_input_files(video)
                page.locator("#video-input video").wait_for(state="attached")
            if audio:
                page.locator("#audio-input input[type=file]").set_input_files(audio)
                page.locator("#audio-input audio, #audio-input .waveform-container").first.wait_for(state="attached")
            if text:
                page.locator("#text-input textarea").fill(text)
            if window_seconds:
                page.locator("#window input").fill(str(window_seconds))
            page.locator("#analyse-button").click()
            page.wait_for_function(
                "() => { const s = document.querySelector('#status');"
                " return s && /Analysed|Nothing to analyse|could not|No face|no sound/i.test(s.innerText); }",
                timeout=timeout_ms,
            )
            with contextlib.suppress(Exception):  # images (crops, timeline) finish loading
                page.wait_for_load_state("networkidle", timeout=min(timeout_ms, 10000))
            time.sleep(0.5)  # Gradio's fade-in of updated components
            page.mouse.move(0, 0)
            page.screenshot(path=str(output))
            texts = [page.locator("#status").inner_text()]
            for elem in ("label-fused", "label-audio", "label-video", "label-text"):
                if page.locator(f"#{elem}").is_visible():
                    texts.append(page.locator(f"#{elem}").inner_text())
            return "\n".join(texts)
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = os.environ.get("AVEMOTION_MODEL") or ("model" if Path("model").is_dir() else None)
    parser.add_argument("--model", default=default_model, help="checkpoint directory selected at start")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="a public gradio.live link (off by default)")
    parser.add_argument("--screenshot", help="headless: analyse --video/--audio/--text, save a PNG there, exit")
    parser.add_argument("--video")
    parser.add_argument("--audio")
    parser.add_argument("--text")
    parser.add_argument("--window", type=float, help="analysis window in seconds (default: the model's)")
    args = parser.parse_args(argv)
    if args.screenshot:
        with serve(args.model) as url:
            shown = capture_screenshot(
                url, args.screenshot, video=args.video, audio=args.audio, text=args.text, window_seconds=args.window
            )
        print(shown)
        print(f"screenshot: {args.screenshot}")
        return
    app = build_app(args.model)
    launch(app, host=args.host, port=args.port, share=args.share)


if __name__ == "__main__":
    main()
