"""Reading audio and video: files (PyAV, soundfile) or arrays, checked and converted to what the processors expect.

Every failure is a `ValueError` that names the input and says what was expected.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
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


def load_audio(source: PathLike, sampling_rate: int = 16000, name: str | None = None) -> np.ndarray:
    """Read an audio file or the sound track of a video file as a mono float32 waveform at `sampling_rate`.

    wav/flac/mp3/ogg/aiff are read with soundfile, any other container (mp4, mkv, webm, m4a, ...) with PyAV.
    Channels are averaged to mono and the result is resampled with soxr (see `iter_audio_blocks`).

    Returns:
        `np.ndarray` of shape (samples,), float32.
    """
    name = name or describe(source, kind="audio")
    return check_waveform(np.concatenate(list(iter_audio_blocks(source, sampling_rate, name=name))), name)


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


def iter_video_frames(
    source: PathLike, fps: float | None = None, name: str | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode a video file's first video stream frame by frame with PyAV (memory stays bounded).

    Args:
        source: path of the video file.
        fps: keep frames at about this rate (the first frame at or after each 1/fps step); `None` or a rate at or
            above the native one keeps every frame (VAVL uses the native rate). Frames are never duplicated.

    Yields:
        `(seconds, frame)` with frame (H, W, 3) uint8 RGB. A file that cannot be decoded, has no video stream, holds
        no frame, or is truncated raises a `ValueError` (a truncation is found at the end of the stream).
    """
    name = name or describe(source, kind="video")
    path = _check_file(source, name)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    next_time, decoded, emitted = 0.0, 0, 0
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
                time = float(frame.time) if frame.time is not None else (decoded - 1) / (native or 1.0)
                if sampling:
                    if time + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / fps
                    while next_time <= time:  # a gap in the stream: do not emit catch-up frames
                        next_time += 1.0 / fps
                emitted += 1
                yield time, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise ValueError(f"{name}: cannot decode the video ({error})") from error
    if not emitted:
        raise ValueError(f"{name}: the video stream holds no frames")
    if decoded < declared:
        raise ValueError(f"{name}: the file is truncated or corrupt ({decoded} of {declared} frames decode)")


def video_frame_rate(source: PathLike, name: str | None = None) -> float | None:
    """The native frame rate of a video file's first video stream (None when the container does not say)."""
    name = name or describe(source, kind="video")
    try:
        with av.open(str(_check_file(source, name))) as container:
            if not container.streams.video:
                raise ValueError(f"{name}: the file has no video stream")
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else None
    except av.error.FFmpegError as error:
        raise ValueError(f"{name}: cannot decode the video ({error})") from error


def load_video(
    source: PathLike, fps: float | None = None, max_frames: int | None = None, name: str | None = None
) -> VideoClip:
    """Decode a whole video (see `iter_video_frames`), keeping at most the first `max_frames` frames (logged).

    Returns:
        `VideoClip` with frames (T, H, W, 3) uint8.
    """
    name = name or describe(source, kind="video")
    frames, times, cut = [], [], False
    for time, frame in iter_video_frames(source, fps=fps, name=name):
        if max_frames is not None and len(frames) >= max_frames:
            cut = True
            break
        frames.append(frame)
        times.append(time)
    if cut:
        logger.warning(
            "%s: kept the first %d frames (max_frames); the rest of the video is not used", name, max_frames
        )
    timestamps = np.asarray(times, dtype=np.float64)
    native = video_frame_rate(source, name)
    if fps is not None and (native is None or fps < native):
        rate = float(fps)
    else:
        rate = native or (len(times) / max(timestamps[-1] - timestamps[0], 1e-6))
    return VideoClip(frames=np.stack(frames), timestamps=timestamps, fps=rate)


def media_streams(source: PathLike, name: str | None = None) -> tuple[bool, bool]:
    """`(has_audio, has_video)` of a media file, read from its container (no decoding)."""
    name = name or describe(source, kind="media")
    path = _check_file(source, name)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            soundfile.info(path)
            return True, False
        except soundfile.LibsndfileError:
            pass
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio), bool(container.streams.video)
    except av.error.FFmpegError as error:
        raise ValueError(f"{name}: cannot read the file as audio or video ({error})") from error


def iter_audio_blocks(
    source: PathLike, sampling_rate: int = 16000, block_seconds: float = 5.0, name: str | None = None
) -> Iterator[np.ndarray]:
    """Stream an audio file, or the sound track of a video file, as mono float32 blocks at `sampling_rate`.

    Memory stays bounded by the block size: wav/flac/mp3/ogg/aiff are read in blocks with soundfile, other
    containers packet by packet with PyAV, and the blocks are resampled with a streaming soxr resampler.
    Errors are `ValueError`s as in `load_audio`; a truncated file is reported when the stream ends.
    """
    name = name or describe(source, kind="audio")
    path = _check_file(source, name)
    resampler, produced = None, 0

    def convert(samples: np.ndarray, rate: int, last: bool = False) -> np.ndarray:
        nonlocal resampler
        if rate == sampling_rate:
            return samples
        if resampler is None:
            resampler = soxr.ResampleStream(rate, sampling_rate, 1, dtype="float32", quality="HQ")
        return resampler.resample_chunk(samples, last=last)

    rate = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            with soundfile.SoundFile(path) as sound:
                if sound.format in ("WAV", "WAVEX", "RF64") and _wav_truncated(path):
                    raise ValueError(f"{name}: the file is truncated (its data chunk is shorter than its header says)")
                rate, declared, read = sound.samplerate, sound.frames, 0
                for block in sound.blocks(blocksize=max(1, int(block_seconds * sound.samplerate)), dtype="float32",
                                          always_2d=True):  # fmt: skip
                    read += len(block)
                    mono = check_waveform(np.ascontiguousarray(block.mean(axis=1)), name)
                    out = convert(mono, rate)
                    produced += out.size
                    if out.size:
                        yield out
                if sound.format == "FLAC" and 0 < read < declared:
                    raise ValueError(f"{name}: the file is truncated ({read} of {declared} samples)")
        except soundfile.LibsndfileError as error:
            logger.debug("soundfile could not read %s (%s); trying PyAV", path, error)
            rate = None
    if rate is None:
        yield from _iter_av_audio(path, name, sampling_rate, block_seconds, convert)
        return
    tail = convert(np.zeros(0, dtype=np.float32), rate, last=True)
    if tail.size:
        yield tail
    if produced + tail.size == 0:
        raise ValueError(f"{name}: the waveform is empty")


def _iter_av_audio(path: Path, name: str, sampling_rate: int, block_seconds: float, convert) -> Iterator[np.ndarray]:
    pending, pending_size, produced, decoded, rate = [], 0, 0, 0, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{name}: the file has no audio stream (expected a sound track)")
            stream = container.streams.audio[0]
            declared = stream.frames
            rate = stream.rate or stream.codec_context.sample_rate
            block = max(1, int(block_seconds * rate))
            for frame in container.decode(stream):
                decoded += 1
                channels = frame.to_ndarray().reshape(len(frame.layout.channels), -1).astype(np.float32)
                pending.append(channels.mean(axis=0))
                pending_size += channels.shape[1]
                if pending_size >= block:
                    out = convert(check_waveform(np.concatenate(pending), name), rate)
                    pending, pending_size, produced = [], 0, produced + out.size
                    if out.size:
                        yield out
    except av.error.FFmpegError as error:
        raise ValueError(f"{name}: cannot decode the audio ({error})") from error
    if decoded == 0:
        raise ValueError(f"{name}: cannot decode any audio samples from the file")
    if decoded < declared:
        raise ValueError(f"{name}: the file is truncated or corrupt ({decoded} of {declared} audio frames decode)")
    rest = check_waveform(np.concatenate(pending), name) if pending else np.zeros(0, dtype=np.float32)
    out = convert(rest, rate, last=True)
    if out.size:
        yield out


__all__ = [
    "VideoClip",
    "check_video_array",
    "check_waveform",
    "iter_audio_blocks",
    "iter_video_frames",
    "load_audio",
    "load_video",
    "media_streams",
    "resample",
    "video_frame_rate",
]
