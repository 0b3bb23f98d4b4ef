"""Reading audio and video: files (PyAV, soundfile) or arrays, checked and converted to what the processors expect.

Every failure is a `ValueError` that names the input and says what was expected.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import soxr

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
# Containers that soundfile (libsndfile) reads; everything else (mp4, mkv, webm, m4a, ...) goes through PyAV.
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif"}


def is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def describe(value: Any, index: int | None = None, kind: str = "input") -> str:
    """A short name for an input in error messages: the file name, or `audio #1`."""
    if is_path(value):
        return f"{kind} file {os.fspath(value)!r}"
    return f"{kind} #{index}" if index is not None else kind


def _check_file(path: PathLike, name: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{name}: the file is empty")
    return path


def check_waveform(waveform: Any, name: str) -> np.ndarray:
    """Validate a mono waveform array: 1-D, floating point, finite, not empty. Returns float32."""
    if not isinstance(waveform, np.ndarray):
        if hasattr(waveform, "numpy") and callable(waveform.numpy):  # torch tensors
            waveform = waveform.detach().cpu().numpy() if hasattr(waveform, "detach") else waveform.numpy()
        elif isinstance(waveform, (list, tuple)):
            waveform = np.asarray(waveform)
        else:
            raise ValueError(
                f"{name}: expected a file path or a 1-D float waveform array, got {type(waveform).__name__}"
            )
    if not np.issubdtype(waveform.dtype, np.floating):
        raise ValueError(
            f"{name}: expected floating-point samples in [-1, 1], got dtype {waveform.dtype} "
            "(scale integer PCM first, e.g. int16 / 32768)"
        )
    if waveform.ndim != 1:
        raise ValueError(
            f"{name}: expected a mono 1-D waveform (samples,), got shape {waveform.shape}; mix channels to mono "
            "first, and pass a batch as a list of waveforms"
        )
    if waveform.size == 0:
        raise ValueError(f"{name}: the waveform is empty")
    if not np.isfinite(waveform).all():
        raise ValueError(f"{name}: the waveform contains NaN or infinite samples")
    return waveform.astype(np.float32, copy=False)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """soxr high-quality resampling of a 1-D float32 waveform; a no-op when the rates match."""
    if orig_rate <= 0:
        raise ValueError(f"sampling rate must be positive, got {orig_rate}")
    if orig_rate == target_rate:
        return waveform
    return soxr.resample(waveform, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _wav_truncated(path: Path) -> bool:
    """True when a RIFF/WAVE file's `data` chunk declares more bytes than the file holds.

    libsndfile silently shortens such files, so truncation has to be checked from the header.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return False
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                # 0xFFFFFFFF / 0 mark a streamed file of unknown length
                return chunk_size not in (0, 0xFFFFFFFF) and offset + 8 + chunk_size > size
            offset += 8 + chunk_size + (chunk_size & 1)
    return True  # no data chunk before the end of the file


def _read_soundfile(path: Path, name: str) -> tuple[np.ndarray, int]:
    with soundfile.SoundFile(path) as sound:
        declared = sound.frames
        samples = sound.read(dtype="float32", always_2d=True)
        rate, fmt = sound.samplerate, sound.format
    if fmt in ("WAV", "WAVEX", "RF64") and _wav_truncated(path):
        raise ValueError(f"{name}: the file is truncated (its data chunk is shorter than its header says)")
    if fmt == "FLAC" and 0 < len(samples) < declared:
        raise ValueError(f"{name}: the file is truncated ({len(samples)} of {declared} samples)")
    return samples.mean(axis=1), rate


def _read_av_audio(path: Path, name: str) -> tuple[np.ndarray, int]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{name}: the file has no audio stream (expected a sound track)")
            stream = container.streams.audio[0]
            declared = stream.frames  # packets the container indexes; 0 when it does not say
            chunks = []
            for frame in container.decode(stream):
                # planar float keeps channels apart: (channels, samples)
                chunks.append(frame.to_ndarray().reshape(len(frame.layout.channels), -1).astype(np.float32))
            rate = stream.rate or stream.codec_context.sample_rate
    except av.error.FFmpegError as error:
        raise ValueError(f"{name}: cannot decode the audio ({error})") from error
    if not chunks:
        raise ValueError(f"{name}: cannot decode any audio samples from the file")
    if len(chunks) < declared:
        raise ValueError(f"{name}: the file is truncated or corrupt ({len(chunks)} of {declared} audio frames decode)")
    return np.concatenate(chunks, axis=1).mean(axis=0), rate


def load_audio(source: PathLike, sampling_rate: int = 16000, name: str | None = None) -> np.ndarray:
    """Read an audio file or the sound track of a video file as a mono float32 waveform at `sampling_rate`.

    wav/flac/mp3/ogg/aiff are read with soundfile, any other container (mp4, mkv, webm, m4a, ...) with PyAV.
    Channels are averaged to mono and the result is resampled with soxr.

    Returns:
        `np.ndarray` of shape (samples,), float32.
    """
    name = name or describe(source, kind="audio")
    path = _check_file(source, name)
    samples, rate = None, None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            samples, rate = _read_soundfile(path, name)
        except soundfile.LibsndfileError as error:
            logger.debug("soundfile could not read %s (%s); trying PyAV", path, error)
    if samples is None:
        samples, rate = _read_av_audio(path, name)
    waveform = check_waveform(np.ascontiguousarray(samples, dtype=np.float32), name)
    return resample(waveform, int(rate), sampling_rate)


@dataclass
class VideoClip:
    """Decoded RGB frames.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        timestamps: (T,) seconds of each frame from the start of the stream.
        fps: the rate of the kept frames (the native rate, or the target rate when frames were sampled).
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float


def check_video_array(video: Any, name: str) -> np.ndarray:
    """Validate decoded frames: (T, H, W, 3) uint8 RGB (a list of (H, W, 3) frames is stacked)."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError(f"{name}: the video has no frames")
        shapes = {np.shape(frame) for frame in video}
        if len(shapes) != 1:
            raise ValueError(f"{name}: all frames must have the same shape, got {sorted(shapes)}")
        video = np.stack([np.asarray(frame) for frame in video])
    if hasattr(video, "numpy") and not isinstance(video, np.ndarray):
        video = video.detach().cpu().numpy() if hasattr(video, "detach") else video.numpy()
    if not isinstance(video, np.ndarray):
        raise ValueError(f"{name}: expected a video file path or a (frames, height, width, 3) uint8 array")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name}: expected RGB frames of shape (frames, height, width, 3), got {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 RGB frames (0-255), got dtype {video.dtype}")
    if video.shape[0] == 0 or video.shape[1] == 0 or video.shape[2] == 0:
        raise ValueError(f"{name}: the video is empty (shape {video.shape})")
    return video


def load_video(
    source: PathLike, fps: float | None = None, max_frames: int | None = None, name: str | None = None
) -> VideoClip:
    """Decode a video file's first video stream to RGB frames with PyAV.

    Args:
        source: path of the video file.
        fps: keep frames at about this rate (the first frame at or after each 1/fps step); `None` or a rate at or
            above the native one keeps every frame (VAVL uses the native rate). Frames are never duplicated.
        max_frames: keep at most this many frames (the first ones); the cut is logged.

    Returns:
        `VideoClip` with frames (T, H, W, 3) uint8.
    """
    name = name or describe(source, kind="video")
    path = _check_file(source, name)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames, times = [], []
    next_time, cut, decoded, declared = 0.0, False, 0, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{name}: the file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            native = float(stream.average_rate) if stream.average_rate else None
            sampling = fps is not None and (native is None or fps < native)
            declared = stream.frames  # 0 when the container does not say
            for frame in container.decode(stream):
                decoded += 1
                time = float(frame.time) if frame.time is not None else len(times) / (native or 1.0)
                if sampling:
                    if time + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / fps
                    while next_time <= time:  # a gap in the stream: do not emit catch-up frames
                        next_time += 1.0 / fps
                if max_frames is not None and len(frames) >= max_frames:
                    cut = True
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(time)
    except av.error.FFmpegError as error:
        raise ValueError(f"{name}: cannot decode the video ({error})") from error
    if not frames:
        raise ValueError(f"{name}: the video stream holds no frames")
    if not cut and decoded < declared:
        raise ValueError(f"{name}: the file is truncated or corrupt ({decoded} of {declared} frames decode)")
    if cut:
        logger.warning(
            "%s: kept the first %d frames (max_frames); the rest of the video is not used", name, max_frames
        )
    timestamps = np.asarray(times, dtype=np.float64)
    rate = float(fps) if sampling else (native or (len(times) / max(timestamps[-1] - timestamps[0], 1e-6)))
    return VideoClip(frames=np.stack(frames), timestamps=timestamps, fps=rate)


__all__ = ["VideoClip", "check_video_array", "check_waveform", "load_audio", "load_video", "resample"]
