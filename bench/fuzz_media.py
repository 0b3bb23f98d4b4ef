"""Fuzz harness: odd and corrupt media files through every reader of the package.

Generates (seeded) audio and video files in every container/codec pair users have (wav, flac, mp3, m4a/mp4 AAC,
mov/avi/mkv PCM, mkv/webm/ogg Opus or Vorbis, H.264/MPEG-4/VP8/VP9/FFV1/PNG/QuickTime video), odd channel counts,
8-96 kHz, variable frame rate and rotated video, 1-frame and large frames, grayscale and RGBA video; then corrupts
copies of them (cut at random offsets, zeroed ranges, flipped bytes, empty files, garbage, wrong extensions).
Every file goes through:

- `load`: `load_audio` / `load_video` (and the cheap scan probe `probe_audio` / `probe_video`, whose disagreements
  with the loader are counted separately);
- `processor`: `AvEmotionProcessor` (audio and video; no face detector, small crops);
- `pipeline`: `pipeline("audio-visual-emotion")` with a tiny VAVL model saved with its processor;
- `predict`: `avemotion predict --json` (its `run` function, in-process, on all files at once);
- `corpus`: `load_corpus("crema-d")` on a miniature corpus of the files, then `cache_features`.

Pass: no exception other than `ValueError` (subclasses included), every `ValueError` names the file, and every
success decodes right where the truth is known (duration within the codec tolerance, scale by RMS, frame count).
Prints a table (ok / clean error / FAIL per category and target) and writes JSON to bench/results/fuzz_media.json.

    python bench/fuzz_media.py [--seed 0] [--count 520] [--fast]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_testing import channel_tones, face_frames, write_audio  # noqa: E402

from avemotion.processing.media import (  # noqa: E402
    TRUNCATION_TOLERANCE_FRACTION,
    TRUNCATION_TOLERANCE_SAMPLES,
    load_audio,
    load_video,
    probe_audio,
    probe_video,
)

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 16000
LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# (suffix, codec, sample formats, allowed rates (None: any), max channels, lossy)
AUDIO_CODECS = [
    ("wav", "pcm_s16le", ["s16"], None, 8, False),
    ("wav", "pcm_s32le", ["s32"], None, 8, False),
    ("wav", "pcm_f32le", ["flt"], None, 8, False),
    ("wav", "pcm_u8", ["u8"], None, 2, False),
    ("flac", "flac", ["s16", "s32"], None, 8, False),
    ("mp3", "libmp3lame", ["fltp", "s16p"], [8000, 11025, 16000, 22050, 32000, 44100, 48000], 2, True),
    ("m4a", "aac", ["fltp"], [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000], 6, True),
    ("mp4", "aac", ["fltp"], [16000, 22050, 44100, 48000], 2, True),
    ("mov", "pcm_s16le", ["s16"], None, 8, False),
    ("mov", "pcm_f32le", ["flt"], None, 6, False),
    ("avi", "pcm_s16le", ["s16"], None, 8, False),
    ("mkv", "pcm_s16le", ["s16"], None, 8, False),
    ("mkv", "pcm_s32le", ["s32"], None, 6, False),
    ("mkv", "flac", ["s32"], None, 6, False),
    ("mkv", "libopus", ["flt", "s16"], [8000, 12000, 16000, 24000, 48000], 6, True),
    ("mkv", "vorbis", ["fltp"], [22050, 44100, 48000], 2, True),
    ("webm", "libopus", ["flt"], [48000], 6, True),
    ("ogg", "libopus", ["flt"], [16000, 48000], 2, True),
]
ANY_RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000]
# (suffix, video codec, pixel format, audio codec or None, audio format)
VIDEO_CODECS = [
    ("mp4", "libx264", "yuv420p", "aac", "fltp"),
    ("mp4", "mpeg4", "yuv420p", None, None),
    ("mkv", "libx264", "yuv444p", "pcm_s16le", "s16"),
    ("mkv", "ffv1", "yuv420p", "libopus", "flt"),
    ("webm", "libvpx", "yuv420p", "libopus", "flt"),
    ("webm", "libvpx-vp9", "yuv420p", None, None),
    ("avi", "mpeg4", "yuv420p", "pcm_s16le", "s16"),
    ("mov", "libx264", "yuv420p", "pcm_s16le", "s16"),
    ("mov", "qtrle", "argb", None, None),  # RGBA-like video
    ("mov", "png", "rgba", None, None),
    ("mkv", "ffv1", "gray", None, None),  # grayscale video
    ("mov", "qtrle", "gray", None, None),
]
TARGETS = ("load", "processor", "pipeline", "predict", "corpus")


@dataclass
class Case:
    path: Path
    category: str
    kind: str  # "audio" or "video"
    truth: dict[str, Any] | None = None  # seconds / rms (audio), frames (video), lossy
    note: str = ""
    results: dict[str, tuple[str, str]] = field(default_factory=dict)  # target -> (outcome, detail)


# ------------------------------------------------------------------------------------------------------ generators


def make_audio(folder: Path, index: int, rng: np.random.Generator) -> Case:
    suffix, codec, formats, rates, max_channels, lossy = AUDIO_CODECS[index % len(AUDIO_CODECS)]
    rate = int(rng.choice(rates or ANY_RATES))
    channels = int(rng.choice([c for c in (1, 2, 3, 4, 6, 8) if c <= max_channels]))
    if codec == "vorbis":
        channels = 2  # FFmpeg's native encoder
    if codec == "libopus" and channels > 2:
        channels = 6 if max_channels >= 6 else 2
    fmt = str(rng.choice(formats))
    seconds = float(rng.choice([0.02, 0.05, 0.3, 0.7, 1.2]))
    signal = channel_tones(seconds, rate, channels)
    path = folder / f"a{index:04d}_{codec}_{fmt}_{channels}ch_{rate}.{suffix}"
    try:
        write_audio(
            path, signal, rate, codec, fmt, LAYOUTS[channels], bit_rate=96000 * channels if codec == "aac" else None
        )
    except (av.error.FFmpegError, ValueError) as error:  # an encoder that refuses this layout / rate: a plainer file
        path.unlink(missing_ok=True)
        rate, channels, fmt = 16000, 1, "s16"
        signal = channel_tones(seconds, rate, channels)
        path = folder / f"a{index:04d}_fallback_{type(error).__name__}.wav"
        write_audio(path, signal, rate, "pcm_s16le", "s16", "mono")
        lossy = False
    mono = signal.mean(axis=0)
    truth = {"seconds": signal.shape[1] / rate, "rms": float(np.sqrt(np.mean(mono**2))), "lossy": lossy, "rate": rate}
    return Case(path, "audio: containers, codecs, layouts, rates", "audio", truth)


def _video_frames(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    if height >= 48 and width >= 48:
        frames, _ = face_frames(
            count, height=height, width=width, face_size=min(height, width) // 2, seed=int(rng.integers(1000))
        )
        return frames
    return rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def make_video(folder: Path, index: int, rng: np.random.Generator, fast: bool) -> Case:
    spec = VIDEO_CODECS[index % len(VIDEO_CODECS)]
    try:
        return _make_video(folder, index, rng, fast, *spec)
    except (av.error.FFmpegError, ValueError):  # a muxer that refuses this codec: a plain mp4 instead
        for leftover in folder.glob(f"v{index:04d}_*"):
            leftover.unlink()
        return _make_video(folder, index, rng, fast, "mp4", "libx264", "yuv420p", None, None)


def _make_video(folder, index, rng, fast, suffix, codec, pix_fmt, audio_codec, audio_fmt) -> Case:
    variant = str(rng.choice(["plain", "plain", "one-frame", "vfr", "rotated", "odd-size", "large"]))
    count, height, width, fps = int(rng.integers(3, 12)), 64, 80, int(rng.choice([5, 10, 25]))
    if variant == "one-frame":
        count = 1
    if variant == "odd-size" and pix_fmt not in ("yuv420p",):
        height, width = 37, 51
    if variant == "large":
        height, width, count = (2160, 3840, 2) if not fast else (720, 1280, 2)
    frames = _video_frames(rng, count, height, width)
    path = folder / f"v{index:04d}_{codec}_{pix_fmt}_{variant}.{suffix}"
    audio_seconds = None
    options = {"preset": "ultrafast"} if codec == "libx264" else {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if variant == "rotated":
            stream.metadata["rotate"] = "90"
        sound = None
        if audio_codec is not None:
            audio_rate = 48000
            sound = container.add_stream(audio_codec, rate=audio_rate, layout="stereo")
            sound.format = audio_fmt
        pts = 0
        for frame_index, image in enumerate(frames):
            fmt = "gray" if pix_fmt == "gray" else "rgb24"
            data = image[..., 0] if fmt == "gray" else image
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format=fmt)
            video_frame.pts = pts  # in 1/fps, the encoder's time base
            pts += 3 if variant == "vfr" and frame_index % 3 == 1 else 1  # variable frame rate: gaps of 3 frames
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
        if sound is not None:
            audio_seconds = pts / fps
            signal = channel_tones(audio_seconds, 48000, 2).astype(np.float32)
            chunk = sound.codec_context.frame_size or 960
            for start in range(0, signal.shape[1], chunk):
                part = signal[:, start : start + chunk]
                data = part if audio_fmt == "fltp" else part.T.reshape(1, -1)
                if audio_fmt == "s16":
                    data = np.round(data * 32767).astype(np.int16)
                audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=audio_fmt, layout="stereo")
                audio_frame.sample_rate, audio_frame.pts, audio_frame.time_base = 48000, start, Fraction(1, 48000)
                container.mux(sound.encode(audio_frame))
            container.mux(sound.encode())
    truth = {"frames": count, "audio_seconds": audio_seconds, "height": height, "width": width}
    return Case(path, f"video: {variant}", "video", truth)


def corrupt(base: Case, folder: Path, index: int, rng: np.random.Generator) -> Case:
    data = base.path.read_bytes()
    how = str(rng.choice(["cut", "cut", "cut", "zeros", "flip", "empty", "garbage", "header-only", "wrong-suffix"]))
    suffix = base.path.suffix
    truth = None
    if how == "cut":
        data = data[: int(rng.integers(1, max(2, len(data))))]
    elif how == "zeros":
        start = int(rng.integers(0, len(data)))
        length = int(rng.integers(1, max(2, len(data) // 4)))
        data = data[:start] + bytes(min(length, len(data) - start)) + data[start + length :]
    elif how == "flip":
        buffer = bytearray(data)
        for position in rng.integers(0, len(buffer), size=8):
            buffer[position] ^= 0xFF
        data = bytes(buffer)
    elif how == "empty":
        data = b""
    elif how == "garbage":
        data = rng.integers(0, 256, size=int(rng.integers(16, 4096)), dtype=np.uint8).tobytes()
    elif how == "header-only":
        data = data[:64]
    else:  # the same bytes under another media suffix: must decode as well as the original
        suffix = str(
            rng.choice([s for s in (".wav", ".mp3", ".mp4", ".mkv", ".m4a", ".flac", ".webm") if s != suffix])
        )
        truth = base.truth
    path = folder / f"c{index:04d}_{how}_{base.path.stem}{suffix}"
    path.write_bytes(data)
    return Case(path, f"corrupt: {how}", base.kind, truth, note=f"from {base.path.name}")


def generate(root: Path, count: int, seed: int, fast: bool) -> list[Case]:
    rng = np.random.default_rng(seed)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    valid_audio = max(1, count * 35 // 100)
    valid_video = max(1, count * 20 // 100)
    cases = [make_audio(media, i, rng) for i in range(valid_audio)]
    cases += [make_video(media, i, rng, fast) for i in range(valid_video)]
    bases = list(cases)
    cases += [corrupt(bases[int(rng.integers(len(bases)))], media, i, rng) for i in range(count - len(cases))]
    return cases


# ---------------------------------------------------------------------------------------------------------- checks


def _location(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"


def classify(case: Case, error: BaseException | None, wrong: str | None = None) -> tuple[str, str]:
    """(outcome, detail): ok, clean error (a ValueError naming the file) or FAIL (anything else)."""
    if error is None:
        return ("FAIL", f"decoded wrong: {wrong}") if wrong else ("ok", "")
    message = str(error)
    if isinstance(error, ValueError) and case.path.name in message:
        return "clean error", message[:160]
    kind = "ValueError not naming the file" if isinstance(error, ValueError) else type(error).__name__
    return "FAIL", f"{kind}: {message[:200]} [{_location(error)}]"


def check_audio_truth(case: Case, waveform: np.ndarray) -> str | None:
    truth = case.truth
    if not truth or "seconds" not in truth:
        return None
    seconds = len(waveform) / RATE
    rate = truth["rate"]
    slack = (TRUNCATION_TOLERANCE_SAMPLES * 2) / rate + 0.05 if truth["lossy"] else 2 / RATE + 1 / rate
    low = truth["seconds"] * (1 - TRUNCATION_TOLERANCE_FRACTION) - slack
    if not low <= seconds <= truth["seconds"] + slack + (0.2 if truth["lossy"] else 0):
        return f"{seconds:.3f} s decoded, {truth['seconds']:.3f} s written"
    if truth["seconds"] >= 0.25:
        core = waveform[int(0.05 * RATE) : -int(0.05 * RATE) or None]
        rms = float(np.sqrt(np.mean(core.astype(np.float64) ** 2)))
        tolerance = 0.2 if truth["lossy"] else 0.03
        if not abs(rms / truth["rms"] - 1) <= tolerance:
            return f"RMS {rms:.4f}, expected {truth['rms']:.4f} (scale or channel mix wrong)"
    return None


def run_load(case: Case) -> dict[str, Any]:
    """`load` target, and the scan probe's verdict (for the probe/loader agreement count)."""
    probe, load = (probe_audio, load_audio) if case.kind == "audio" else (probe_video, load_video)
    try:
        probe(case.path)
        probe_ok = True
    except ValueError:
        probe_ok = False
    except Exception as error:  # noqa: BLE001 - a probe must never raise anything else
        case.results["load"] = classify(case, error)
        return {"probe_ok": None, "load_ok": False}
    try:
        if case.kind == "audio":
            waveform = load(case.path)
            case.results["load"] = classify(case, None, check_audio_truth(case, waveform))
        else:
            clip = load(case.path, max_frames=64)
            wrong = None
            if case.truth and clip.frames.shape[0] != case.truth["frames"]:
                wrong = f"{clip.frames.shape[0]} frames decoded, {case.truth['frames']} written"
            if clip.frames.ndim != 4 or clip.frames.shape[-1] != 3:
                wrong = f"frames of shape {clip.frames.shape}"
            case.results["load"] = classify(case, None, wrong)
        load_ok = True
    except Exception as error:  # noqa: BLE001 - classified
        case.results["load"] = classify(case, error)
        load_ok = False
    return {"probe_ok": probe_ok, "load_ok": load_ok}


def run_processor(case: Case, processor: Any) -> None:
    try:
        if case.kind == "audio":
            processor(audio=str(case.path))
        else:
            processor(video=str(case.path), video_kwargs={"max_frames": 16})
        case.results["processor"] = classify(case, None)
    except Exception as error:  # noqa: BLE001 - classified
        case.results["processor"] = classify(case, error)


def run_pipeline(case: Case, pipe: Any) -> None:
    try:
        pipe(str(case.path))
        case.results["pipeline"] = classify(case, None)
    except Exception as error:  # noqa: BLE001 - classified
        case.results["pipeline"] = classify(case, error)


def run_predict(cases: list[Case], model_dir: str) -> None:
    """`avemotion predict --json` on all files in one in-process call; each error line must name its file."""
    from avemotion.pipelines.cli_predict import add_arguments, run

    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", model_dir, "--json", *[str(c.path) for c in cases]]
    )
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            run(args)
    except Exception as error:  # noqa: BLE001 - the whole call failed: every file fails
        for case in cases:
            case.results["predict"] = ("FAIL", f"predict raised {type(error).__name__}: {error} [{_location(error)}]")
        return
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    by_input = {line["input"]: line for line in lines}
    for case in cases:
        line = by_input.get(str(case.path))
        if line is None:
            case.results["predict"] = ("FAIL", "no output line")
        elif "error" in line:
            named = case.path.name in line["error"]
            case.results["predict"] = ("clean error", line["error"][:160]) if named else ("FAIL", line["error"][:200])
        else:
            case.results["predict"] = ("ok", "")


def run_corpus(cases: list[Case], root: Path) -> dict[str, Any]:
    """A CREMA-D-layout corpus of the files (audio as AudioWAV/*.wav, video as VideoFlash/*.mp4, whatever they hold),
    through `load_corpus` and `cache_features`; a file the scan keeps must not stop `cache_features`."""
    from avemotion.data import load_corpus
    from avemotion.data.cache import cache_features
    from avemotion.data.synthetic import SyntheticFeatureExtractor

    corpus = root / "corpus"
    stems: dict[Path, Case] = {}
    for index, case in enumerate(cases):
        sentence = ["DFA", "IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "ITS", "TSI", "WSI"][
            index // 30 % 12
        ]
        emotion, level = ["ANG", "SAD", "HAP"][index // 10 % 3], ["XX", "LO", "MD", "HI"][index // 360 % 4]
        stem = f"{1001 + index % 10}_{sentence}_{emotion}_{level}"  # one stem per file (1,440 of them)
        folder, suffix = ("AudioWAV", ".wav") if case.kind == "audio" else ("VideoFlash", ".mp4")
        target = corpus / folder / f"{stem}{suffix}"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case.path, target)
        stems[target] = case
    summary: dict[str, Any] = {}
    try:
        dataset, report = load_corpus("crema-d", corpus, cache_dir=root / "hf-cache", return_report=True)
        malformed = {Path(path) for path, _ in report.malformed}
        summary["malformed"] = len(malformed)
    except Exception as error:  # noqa: BLE001 - the scan itself must not fail on bad files
        outcome = classify(Case(corpus, "", ""), error)
        for case in stems.values():
            case.results["corpus"] = outcome if outcome[0] == "FAIL" else ("FAIL", f"scan: {outcome[1]}")
        return {"error": str(error)}
    for target, case in stems.items():
        case.results["corpus"] = ("clean error", "reported as malformed") if target in malformed else ("ok", "")
    try:
        cache_features(dataset, SyntheticFeatureExtractor(), cache_dir=root / "features")
        summary["cache_features"] = "ok"
    except Exception as error:  # noqa: BLE001 - a file the scan kept stopped the caching: blame it
        summary["cache_features"] = f"{type(error).__name__}: {error}"
        culprit = next((c for t, c in stems.items() if str(t) in str(error) or t.stem in str(error)), None)
        for case in [culprit] if culprit else stems.values():
            case.results["corpus"] = (
                "FAIL",
                f"cache_features: {type(error).__name__}: {str(error)[:160]} [{_location(error)}]",
            )
    return summary


def tiny_model_dir(root: Path) -> str:
    """A tiny random VAVL with its processor (no face detector: frames are taken as face crops)."""
    import torch
    from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

    from avemotion import (
        AvEmotionFeatureExtractor,
        AvEmotionImageProcessor,
        AvEmotionProcessor,
        VavlForEmotionRecognition,
    )

    torch.manual_seed(0)
    config = tiny_vavl_config(
        audio_backbone_config=tiny_wav2vec2_config(),
        visual_backbone_config=tiny_efficientnet_config(),
        visual_feature_dim=128,
        window_seconds=1.0,
    )
    model = VavlForEmotionRecognition(config).eval()
    processor = AvEmotionProcessor(
        AvEmotionFeatureExtractor(sampling_rate=RATE, normalization="utterance"),
        AvEmotionImageProcessor(face_detector=None, size={"height": 32, "width": 32}, max_frames=16),
    )
    directory = root / "tiny-vavl"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def fuzz(
    count: int = 520, seed: int = 0, fast: bool = False, targets: tuple[str, ...] = TARGETS, model_every: int = 1
) -> dict[str, Any]:
    """Generate `count` files, run them through `targets`, return the counts and the failures.

    `model_every`: run the model targets (`pipeline`, `predict`) on every k-th file only (they take ~0.5 s a file).
    """
    from transformers import pipeline

    from avemotion import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor

    package_logger = logging.getLogger("avemotion")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)  # the expected warnings of bad files would drown the table
    try:
        with tempfile.TemporaryDirectory(prefix="avemotion-fuzz-") as folder:
            root = Path(folder)
            started = time.perf_counter()
            cases = generate(root, count, seed, fast)
            generated = time.perf_counter() - started
            agreement = Counter()
            processor = AvEmotionProcessor(
                AvEmotionFeatureExtractor(normalization="utterance"),
                AvEmotionImageProcessor(face_detector=None, size={"height": 32, "width": 32}),
            )
            model_dir = tiny_model_dir(root) if {"pipeline", "predict"} & set(targets) else None
            pipe = pipeline("audio-visual-emotion", model=model_dir) if "pipeline" in targets else None
            timings: Counter = Counter()
            mismatches: list[str] = []
            model_cases = cases[::model_every]
            for index, case in enumerate(cases):
                if "load" in targets:
                    tick = time.perf_counter()
                    verdict = run_load(case)
                    timings["load"] += time.perf_counter() - tick
                    if verdict["probe_ok"] is not None:
                        key = ("probe accepts" if verdict["probe_ok"] else "probe rejects") + (
                            ", load decodes" if verdict["load_ok"] else ", load fails"
                        )
                        agreement[key] += 1
                        if verdict["probe_ok"] != verdict["load_ok"]:
                            mismatches.append(f"{key}: {case.path.name}")
                if "processor" in targets:
                    tick = time.perf_counter()
                    run_processor(case, processor)
                    timings["processor"] += time.perf_counter() - tick
                if pipe is not None and index % model_every == 0:
                    tick = time.perf_counter()
                    run_pipeline(case, pipe)
                    timings["pipeline"] += time.perf_counter() - tick
            if "predict" in targets:
                tick = time.perf_counter()
                run_predict(model_cases, model_dir)
                timings["predict"] += time.perf_counter() - tick
            if "corpus" in targets:
                tick = time.perf_counter()
                corpus = run_corpus(cases, root)
                timings["corpus"] += time.perf_counter() - tick
            else:
                corpus = {}
            elapsed = time.perf_counter() - started
            result = summarise(cases, targets, agreement, corpus, generated, elapsed, count, seed, fast)
            result["seconds"].update({target: round(seconds, 2) for target, seconds in timings.items()})
            result["probe_vs_load_mismatches"] = mismatches
            result["model_every"] = model_every
            return result
    finally:
        package_logger.setLevel(level)


def summarise(cases, targets, agreement, corpus, generated, elapsed, count, seed, fast) -> dict[str, Any]:
    table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    failures = []
    for case in cases:
        group = case.category
        for target, (outcome, detail) in case.results.items():
            table[group][target][outcome] += 1
            table["all"][target][outcome] += 1
            if outcome == "FAIL":
                failures.append(
                    {
                        "file": case.path.name,
                        "category": case.category,
                        "target": target,
                        "detail": detail,
                        "note": case.note,
                    }
                )
    counts = {group: {t: dict(c) for t, c in by_target.items()} for group, by_target in table.items()}
    return {
        "files": len(cases),
        "requested": count,
        "seed": seed,
        "fast": fast,
        "targets": list(targets),
        "seconds": {"generate": round(generated, 2), "total": round(elapsed, 2)},
        "counts": counts,
        "probe_vs_load": dict(agreement),
        "corpus": corpus,
        "failures": failures,
    }


def print_table(result: dict[str, Any]) -> None:
    targets = result["targets"]
    header = f"{'category':<44}" + "".join(f"{t:>22}" for t in targets)
    print(header)
    print(" " * 44 + "".join(f"{'ok/clean/FAIL':>22}" for _ in targets))
    for group in sorted(result["counts"], key=lambda g: (g == "all", g)):
        row = result["counts"][group]
        cells = []
        for target in targets:
            c = row.get(target, {})
            cells.append(f"{c.get('ok', 0)}/{c.get('clean error', 0)}/{c.get('FAIL', 0)}")
        print(f"{group:<44}" + "".join(f"{cell:>22}" for cell in cells))
    print(f"\nprobe vs load: {result['probe_vs_load']}")
    for line in result["probe_vs_load_mismatches"]:
        print(f"  {line}")
    print(f"corpus: {result['corpus']}")
    print(f"seconds: {result['seconds']}")
    print(f"{result['files']} files in {result['seconds']['total']:.1f} s; {len(result['failures'])} FAIL")
    for failure in result["failures"][:40]:
        print(f"  FAIL {failure['target']:<9} {failure['file']}: {failure['detail']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=520)
    parser.add_argument("--fast", action="store_true", help="no 4K frames (1280x720 instead)")
    parser.add_argument("--model-every", type=int, default=1, help="pipeline/predict on every k-th file only")
    parser.add_argument("--output", type=Path, default=RESULTS / "fuzz_media.json")
    args = parser.parse_args()
    result = fuzz(args.count, args.seed, args.fast, model_every=args.model_every)
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
