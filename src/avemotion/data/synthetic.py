"""A synthetic audio-visual emotion corpus in which fusion matters, plus a cheap deterministic feature path.

Each clip is 1.5-2 s of 16 kHz mono audio (`AudioWAV/<stem>.wav`) and an mp4 of already-cropped face frames
(`VideoFlash/<stem>.mp4`, 64x64 at 8 fps by default), written in the CREMA-D layout (stems
`ACTOR_SENTENCE_EMOTION_LEVEL`) so the CREMA-D loader reads it; `labels.csv` holds one-hot class proportions (VAVL's
CREMA-D format, no `Split_Set`, so our speaker-independent folds apply), speaker, gender and arousal / valence /
dominance on a 1-5 scale. The transcript is the CREMA-D sentence named in the stem (it carries no emotion cue).

Class design (6 classes, the CREMA-D names in VAVL's order, balanced to within one clip):
- audio cue: the voice's pitch band, `audio_group = label // 2` (low ~110 Hz, mid ~200 Hz, high ~360 Hz);
- visual cue: the mouth and brows, `visual_group = label % 2` (0: frown, inner brows lowered; 1: smile, brows raised);
- nuisances that carry no class information: pitch jitter (+-6 %), speaking rate, loudness, harmonic timbre, noise,
  face position, skin tone, background, talking-mouth opening.
`(audio_group, visual_group)` identifies the class, so the accuracy ceilings on balanced classes are:
audio only 1/2 (two classes share each pitch band), video only 1/3 (three classes share each face), audio-visual 1.
`CEILINGS` records them. Arousal follows the audio group (1.5 / 3 / 4.5) and valence the visual group (2 / 4), each
with +-0.25 uniform noise; dominance is 3 + 0.5 * (audio_group - 1) with the same noise.

`unpaired_fraction` makes that share of clips unimodal: half of them audio only (no mp4), half video only (no wav).

Cheap features (`extract_audio_features`, `extract_visual_features`, `SyntheticFeatureExtractor`): 32 log-mel bins at
50 frames/s (25 ms Hann window, 20 ms hop; `transformers.audio_utils`), and per video frame the grayscale image
block-averaged to 16x16 and flattened (256 values in [0, 1]). No backbone is needed, and the results are
deterministic, so a small VAVL (`audio_feature_dim=32`, `visual_feature_dim=256`) trains on them in seconds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from avemotion.processing.media import decode_audio_value

from .common import SAMPLING_RATE, CorpusIndex, audio_value_name
from .crema_d import LABEL_NAMES, SENTENCES, CremaDBuilder
from .crema_d import scan as scan_crema_d

EMOTION_CODES = ["ANG", "SAD", "DIS", "FEA", "NEU", "HAP"]  # aligned with LABEL_NAMES
LEVELS = ["LO", "MD", "HI", "XX"]
PITCH_BANDS_HZ = (110.0, 200.0, 360.0)
CEILINGS = {"audio": 1 / 2, "video": 1 / 3, "audio-visual": 1.0}
NUM_MEL_BINS = 32
VISUAL_GRID = 16
AUDIO_FEATURE_DIM, VISUAL_FEATURE_DIM = NUM_MEL_BINS, VISUAL_GRID * VISUAL_GRID
FEATURE_FRAME_RATE = 50  # audio feature frames per second (wav2vec2's rate)


def audio_group(label: int) -> int:
    return label // 2


def visual_group(label: int) -> int:
    return label % 2


# --------------------------------------------------------------------------------------------------------- drawing


def synth_audio(label: int, duration: float, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE):
    """A voiced, syllable-modulated harmonic tone in the class's pitch band. Returns (waveform, envelope fn)."""
    t = np.arange(int(round(duration * sampling_rate))) / sampling_rate
    f0 = PITCH_BANDS_HZ[audio_group(label)] * (1 + rng.uniform(-0.06, 0.06))
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sampling_rate
    timbre = rng.uniform(0.3, 1.0, size=5) / np.arange(1, 6)
    voice = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(timbre))
    rate, offset = rng.uniform(3, 5), rng.uniform(0, 2 * np.pi)

    def envelope(times: np.ndarray) -> np.ndarray:  # syllables, also used to move the mouth
        return 0.55 + 0.45 * np.sin(2 * np.pi * rate * times + offset)

    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    waveform = rng.uniform(0.2, 0.5) * voice / np.abs(voice).max() * envelope(t) * fade
    waveform = waveform + rng.normal(0, 0.01, size=t.shape)
    return waveform.astype(np.float32), envelope


def draw_face(label: int, openings: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(T, size, size, 3) uint8 frames of a face filling the frame; mouth and brows carry the visual group."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # coordinates in [0, 1)
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
    skin = np.array([rng.uniform(150, 235), rng.uniform(110, 190), rng.uniform(80, 160)])
    background = rng.uniform(20, 90)
    base = np.full((size, size, 3), background, dtype=np.float32)
    face = ((xx - cx) / 0.42) ** 2 + ((yy - cy) / 0.48) ** 2 <= 1
    base[face] = skin
    dark = np.array([30.0, 20.0, 20.0])
    for side in (-1, 1):  # eyes
        base[((xx - cx - side * 0.16) ** 2 + (yy - cy + 0.1) ** 2) <= 0.05**2] = dark
    smile = visual_group(label) == 1
    thickness = 0.035
    for side in (-1, 1):  # brows: raised and flat (smile) or lowered towards the nose (frown)
        u = np.clip((xx - cx - side * 0.16) / 0.12, -1, 1)
        inner = -side * u  # 1 at the inner end
        brow_y = cy - (0.3 if smile else 0.22) + (0.0 if smile else -0.06 * (1 - inner) + 0.04 * inner)
        base[(np.abs(xx - cx - side * 0.16) <= 0.12) & (np.abs(yy - brow_y) <= thickness)] = dark
    frames = np.empty((len(openings), size, size, 3), dtype=np.uint8)
    u = (xx - cx) / 0.2
    curve = (-1 if smile else 1) * 0.1 * u**2  # corners up for a smile, down for a frown
    for index, opening in enumerate(openings):
        frame = base.copy()
        mouth_y = cy + 0.22 + curve
        band = (np.abs(u) <= 1) & (yy >= mouth_y - thickness) & (yy <= mouth_y + thickness + 0.06 * opening)
        frame[band] = np.array([120.0, 30.0, 40.0])
        frames[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


# ---------------------------------------------------------------------------------------------------------- corpus


def _prepare_output_dir(output_dir: str | Path) -> Path:
    """The corpus folder with its `AudioWAV/` and `VideoFlash/` sub-folders, checked to be new (or empty of a corpus)
    and writable."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"output_dir {str(root)!r} is a file, not a directory; choose a new or empty directory")
    if (root / "labels.csv").exists():
        raise ValueError(f"{str(root)!r} already holds a synthetic corpus (labels.csv); choose an empty directory")
    try:
        (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
        (root / "VideoFlash").mkdir(parents=True, exist_ok=True)
        probe = root / ".avemotion-write-test"
        probe.touch()  # os.access says yes to root even on read-only mounts: try
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write the corpus into {str(root)!r}: {error.strerror or error}") from error
    return root


def _plan_clips(
    num_clips: int, seed: int, num_speakers: int, unpaired_fraction: float
) -> tuple[list[tuple[int, str, str, str]], set[int], set[int]]:
    """`([(label, speaker, sentence, level) per clip], audio-only clip indices, video-only clip indices)`: balanced
    labels in random order, each clip a distinct stem; deterministic by `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_clips) % len(LABEL_NAMES)
    rng.shuffle(labels)
    speakers = [str(1001 + s) for s in range(num_speakers)]
    sentences = sorted(SENTENCES)
    unused = {c: [(s, t, lv) for s in speakers for t in sentences for lv in LEVELS] for c in range(len(LABEL_NAMES))}
    for c in unused:
        order = rng.permutation(len(unused[c]))
        unused[c] = [unused[c][i] for i in order]
    num_unpaired = int(round(unpaired_fraction * num_clips))
    unpaired = rng.permutation(num_clips)[:num_unpaired]
    audio_only, video_only = (
        set(unpaired[: (num_unpaired + 1) // 2].tolist()),
        set(unpaired[(num_unpaired + 1) // 2 :].tolist()),
    )
    clips = [(label, *unused[label].pop()) for label in labels.tolist()]
    return clips, audio_only, video_only


def _write_clip(
    root: Path,
    clip: tuple[int, str, str, str],
    clip_rng: np.random.Generator,
    with_audio: bool,
    with_video: bool,
    fps: int,
    image_size: int,
    duration_range: tuple[float, float],
) -> list:
    """Write one clip's wav and/or mp4 and return its `labels.csv` row."""
    label, speaker, sentence, level = clip
    stem = f"{speaker}_{sentence}_{EMOTION_CODES[label]}_{level}"
    duration = clip_rng.uniform(*duration_range)
    waveform, envelope = synth_audio(label, duration, clip_rng)
    if with_audio:
        sf.write(root / "AudioWAV" / f"{stem}.wav", waveform, SAMPLING_RATE, subtype="PCM_16")
    if with_video:
        times = np.arange(int(duration * fps)) / fps
        write_mp4(root / "VideoFlash" / f"{stem}.mp4", draw_face(label, envelope(times), image_size, clip_rng), fps)
    noise = clip_rng.uniform(-0.25, 0.25, size=3)
    arousal = 1.5 + 1.5 * audio_group(label) + noise[0]
    valence = 2.0 + 2.0 * visual_group(label) + noise[1]
    dominance = 3.0 + 0.5 * (audio_group(label) - 1) + noise[2]
    gender = "Female" if int(speaker) % 2 else "Male"
    one_hot = [1.0 if c == label else 0.0 for c in range(len(LABEL_NAMES))]
    return [f"{stem}.wav", *one_hot, speaker, gender, *(round(v, 4) for v in (arousal, valence, dominance))]


def write_synthetic_corpus(
    output_dir: str | Path,
    num_clips: int = 200,
    seed: int = 0,
    num_speakers: int = 10,
    unpaired_fraction: float = 0.0,
    fps: int = 8,
    image_size: int = 64,
    min_duration: float = 1.5,
    max_duration: float = 2.0,
) -> Path:
    """Write the synthetic corpus (see the module docstring) and return `output_dir`. Deterministic by `seed`."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if not 0.0 <= unpaired_fraction <= 1.0:
        raise ValueError(f"unpaired_fraction must be in [0, 1], got {unpaired_fraction}")
    if num_speakers < 1 or image_size < 16 or image_size % 2 or fps < 1:
        raise ValueError("need num_speakers >= 1, an even image_size >= 16 and fps >= 1")
    combos_per_class = num_speakers * len(SENTENCES) * len(LEVELS)
    if num_clips > combos_per_class * len(LABEL_NAMES):
        raise ValueError(
            f"num_clips={num_clips} exceeds the {combos_per_class * 6} unique stems of {num_speakers} speakers"
        )
    root = _prepare_output_dir(output_dir)
    clips, audio_only, video_only = _plan_clips(num_clips, seed, num_speakers, unpaired_fraction)
    rows = [
        _write_clip(
            root,
            clip,
            np.random.default_rng([seed, index]),
            with_audio=index not in video_only,
            with_video=index not in audio_only,
            fps=fps,
            image_size=image_size,
            duration_range=(min_duration, max_duration),
        )
        for index, clip in enumerate(clips)
    ]
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", *LABEL_NAMES, "SpkrID", "Gender", "arousal", "valence", "dominance"])
        writer.writerows(rows)
    info = {
        "num_clips": num_clips,
        "seed": seed,
        "num_speakers": num_speakers,
        "unpaired_fraction": unpaired_fraction,
        "audio_only": len(audio_only),
        "video_only": len(video_only),
        "fps": fps,
        "image_size": image_size,
        "ceilings": CEILINGS,
        "attribute_scale": [1, 5],
    }
    (root / "synthetic.json").write_text(json.dumps(info, indent=2))
    return root


# -------------------------------------------------------------------------------------------------- cheap features


def extract_audio_features(waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """(T, 32) float32 log-mel frames at 50 Hz of a 16 kHz mono waveform (T = 1 + (N - 400) // 320, at least 1)."""
    if sampling_rate != SAMPLING_RATE:
        import soxr

        waveform = soxr.resample(waveform, sampling_rate, SAMPLING_RATE)
    waveform = np.asarray(waveform, dtype=np.float64)
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"waveform must be a non-empty 1-D array, got shape {waveform.shape}")
    if waveform.size < 400:
        waveform = np.pad(waveform, (0, 400 - waveform.size))
    features = spectrogram(
        waveform,
        window_function(400, "hann"),
        frame_length=400,
        hop_length=320,
        fft_length=512,
        power=2.0,
        center=False,
        mel_filters=_mel_filters(),
        log_mel="log10",
        mel_floor=1e-10,
    )
    return features.T.astype(np.float32)


def _mel_filters() -> np.ndarray:
    return mel_filter_bank(
        num_frequency_bins=257,
        num_mel_filters=NUM_MEL_BINS,
        min_frequency=20.0,
        max_frequency=SAMPLING_RATE / 2,
        sampling_rate=SAMPLING_RATE,
        norm="slaney",
        mel_scale="slaney",
    )


def extract_visual_features(frames: np.ndarray) -> np.ndarray:
    """(T, 256) float32: each frame in grayscale, block-averaged to 16x16, scaled to [0, 1].

    `frames`: (T, H, W, 3) uint8 RGB, or (T, H, W) uint8 grayscale (e.g. the luma plane from `read_video_frames`).
    """
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 3:
        gray = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif frames.ndim == 3:
        gray = frames.astype(np.float32)
    else:
        raise ValueError(f"frames must be (T, H, W, 3) or (T, H, W), got shape {frames.shape}")
    t, h, w = gray.shape
    if t == 0 or h < VISUAL_GRID or w < VISUAL_GRID:
        raise ValueError(
            f"frames must be non-empty and at least {VISUAL_GRID}x{VISUAL_GRID}, got shape {frames.shape}"
        )
    bh, bw = h // VISUAL_GRID, w // VISUAL_GRID
    gray = gray[:, : bh * VISUAL_GRID, : bw * VISUAL_GRID] / 255.0
    return gray.reshape(t, VISUAL_GRID, bh, VISUAL_GRID, bw).mean(axis=(2, 4)).reshape(t, -1)


def read_video_frames(path: str | Path, gray: bool = False) -> np.ndarray:
    """All frames of a video (PyAV): (T, H, W, 3) uint8 RGB, or with `gray=True` the (T, H, W) uint8 luma plane
    (no colour conversion, several times faster)."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"video {str(path)!r} has no video stream")
            stream = container.streams.video[0]
            stream.thread_count = 1  # decoder threads cost more to start than these small clips take to decode
            for frame in container.decode(stream):
                if gray and frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "gray"):
                    plane = frame.planes[0]  # luma, rows padded to line_size
                    luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
                    frames.append(luma.copy())
                else:
                    frames.append(frame.to_ndarray(format="gray" if gray else "rgb24"))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:  # PyAV: UnicodeDecodeError for corrupt tags
        raise ValueError(f"video {str(path)!r}: cannot decode the video ({error})") from error
    if not frames:
        raise ValueError(f"video {str(path)!r} has no frames")
    return np.stack(frames)


class SyntheticFeatureExtractor:
    """The cheap feature path as a `cache_features` extractor: rows with `audio` / `video` -> features and masks.

    `extract_batch(batch)` takes a `datasets` batch (columns -> lists) and returns `audio_features` (list of (T, 32)
    arrays or None for rows without audio) and `visual_features` (list of (T, 256) arrays or None).
    """

    audio_feature_dim, visual_feature_dim = AUDIO_FEATURE_DIM, VISUAL_FEATURE_DIM  # for the model config

    def fingerprint(self) -> str:
        spec = f"synthetic-cheap-features:mel{NUM_MEL_BINS}:grid{VISUAL_GRID}:v1"
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def extract_batch(self, batch: dict[str, list]) -> dict[str, list]:
        audio_out, visual_out = [], []
        for audio, video in zip(batch["audio"], batch["video"]):
            if audio is None:
                audio_out.append(None)
            else:
                waveform = decode_audio_value(audio, SAMPLING_RATE, audio_value_name(audio))
                audio_out.append(extract_audio_features(waveform))
            visual_out.append(None if video is None else extract_visual_features(read_video_frames(video, gray=True)))
        return {"audio_features": audio_out, "visual_features": visual_out}


# ---------------------------------------------------------------------------------------------------------- builder


class SyntheticBuilder(CremaDBuilder):
    """The synthetic corpus read with the CREMA-D code; `num_clips` (and `seed`, ...) writes it first if absent."""

    corpus = "synthetic"
    attribute_scale = (1.0, 5.0)

    @classmethod
    def scan(
        cls,
        data_dir: str | Path,
        num_clips: int | None = None,
        seed: int = 0,
        unpaired_fraction: float = 0.0,
        **options: Any,
    ) -> CorpusIndex:
        root = Path(data_dir)
        if not (root / "labels.csv").is_file():
            if num_clips is None:
                raise ValueError(
                    f"synthetic: {str(root)!r} holds no synthetic corpus (no labels.csv). Write one with "
                    "`avemotion synth --output_dir DIR`, or pass num_clips=N to load_corpus to write it there."
                )
            write_synthetic_corpus(root, num_clips=num_clips, seed=seed, unpaired_fraction=unpaired_fraction)
        options.setdefault("labels_csv", root / "labels.csv")
        return scan_crema_d(root, corpus=cls.corpus, **options)


# -------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output_dir", "--output-dir", required=True, help="an empty directory to write the corpus into"
    )
    parser.add_argument("--num_clips", "--num-clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-speakers", type=int, default=10)
    parser.add_argument(
        "--unpaired-fraction", type=float, default=0.0, help="share of clips with one modality (half audio only)"
    )
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)


def run(args: argparse.Namespace) -> None:
    root = write_synthetic_corpus(
        args.output_dir,
        num_clips=args.num_clips,
        seed=args.seed,
        num_speakers=args.num_speakers,
        unpaired_fraction=args.unpaired_fraction,
        fps=args.fps,
        image_size=args.image_size,
    )
    print(f"wrote {args.num_clips} synthetic clips to {root} (load with avemotion.data.load_corpus('synthetic', ...))")
