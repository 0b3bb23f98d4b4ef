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


# wav2vec 2.0's feature encoder needs 400 samples (25 ms at 16 kHz) for one frame; shorter audio gives no frame.
MIN_AUDIO_SAMPLES = 400
# Sampling rates outside this range are mistakes (a rate in kHz, samples counted as a rate), not audio.
SAMPLING_RATE_RANGE = (1000, 768000)
# Float samples whose peak is above this are not in [-1, 1] by mistake, e.g. int16 values stored as float.
MAX_FLOAT_PEAK = 2.0


def check_sampling_rate(rate: Any, name: str = "audio") -> int:
    """A sampling rate as an int, or a `ValueError` naming the input: a whole number of Hz in SAMPLING_RATE_RANGE."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: sampling_rate must be a number of Hz, got {rate!r}") from None
    low, high = SAMPLING_RATE_RANGE
    if not (np.isfinite(value) and low <= value <= high and value == int(value)) or isinstance(rate, bool):
        raise ValueError(f"{name}: sampling_rate must be a whole number of Hz from {low} to {high}, got {rate!r}")
    return int(value)


def check_waveform(waveform: Any, name: str, check_range: bool = True) -> np.ndarray:
    """Validate a mono waveform array: 1-D, floating point, finite, not empty. Returns float32.

    With `check_range`, a peak above `MAX_FLOAT_PEAK` (far outside [-1, 1], e.g. int16 values stored as float) is
    logged as a warning; the samples are used as they are.
    """
    if not isinstance(waveform, np.ndarray):
        if hasattr(waveform, "numpy") and callable(waveform.numpy):  # torch tensors
            waveform = waveform.detach().cpu().numpy() if hasattr(waveform, "detach") else waveform.numpy()
        elif isinstance(waveform, (list, tuple)):
            waveform = np.asarray(waveform)
        else:
            raise ValueError(
                f"{name}: expected a file path or a 1-D float waveform array, got {type(waveform).__name__}"
            )
    if waveform.dtype == np.uint8 and waveform.ndim >= 3:
        raise ValueError(
            f"{name}: a uint8 array of shape {waveform.shape} looks like video frames, not audio; pass it as video "
            "(e.g. `{'video': frames}` or `video=frames`)"
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
    if check_range:
        peak = float(np.abs(waveform).max())
        if peak > MAX_FLOAT_PEAK:
            logger.warning(
                "%s: the samples reach %.4g, far outside [-1, 1]; float audio is expected in [-1, 1] (integer PCM "
                "stored as float? divide int16 values by 32768). The samples are used as they are.",
                name,
                peak,
            )
    return waveform.astype(np.float32, copy=False)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """soxr high-quality resampling of a 1-D float32 waveform; a no-op when the rates match."""
    orig_rate = check_sampling_rate(orig_rate)
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
    return check_waveform(np.concatenate(list(iter_audio_blocks(source, sampling_rate, name=name))), name, False)


def decode_audio_value(value: Any, sampling_rate: int, name: str = "audio") -> np.ndarray:
    """One audio value as the package meets it -> a checked mono float32 waveform at `sampling_rate`.

    Accepted: a path; an undecoded `datasets` Audio value `{"path", "bytes"}` (read by `load_audio`, as the corpus
    scan probed it); a decoded one (a torchcodec `AudioDecoder`, channels averaged); a `{"array", "sampling_rate"}`
    dict (array: a mono `(samples,)` list, NumPy array or tensor, see `check_waveform`). The one place
    that does this conversion: the processor, collators, the feature cache, the synthetic corpus and the pipeline
    call it.
    """
    if is_path(value):
        return load_audio(value, sampling_rate, name=name)
    if isinstance(value, dict) and value.get("bytes"):
        return _load_audio_bytes(value["bytes"], value.get("path"), sampling_rate)
    if isinstance(value, dict) and value.get("path") and value.get("array") is None:
        return load_audio(value["path"], sampling_rate, name=name)
    if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder (datasets >= 4)
        samples = value.get_all_samples()
        waveform, rate = samples.data.float().mean(0).numpy(), samples.sample_rate
    else:
        try:
            waveform, rate = value["array"], value["sampling_rate"]
        except (KeyError, TypeError, IndexError):
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise ValueError(
                f"{name}: expected a path, a datasets Audio value or an {{'array', 'sampling_rate'}} dict, got {keys}"
            ) from None
    waveform = check_waveform(waveform, name)
    return resample(waveform, check_sampling_rate(rate, name), sampling_rate)


def _load_audio_bytes(data: bytes, path: str | None, sampling_rate: int) -> np.ndarray:
    """Audio bytes of an undecoded `datasets` Audio value, read by `load_audio` like a file on disk (any container
    it reads, mono mixing, truncation checks): written to a temporary file with the original suffix; errors are
    `ValueError`s naming the original `path`."""
    import tempfile

    name = f"audio file {path!r}" if path else "audio bytes"
    with tempfile.TemporaryDirectory(prefix="avemotion-audio-") as directory:
        # the original file name: its suffix picks the reader, and decoder messages quoting the file stay readable
        base = Path(path).name if path else ""
        temporary = Path(directory) / (base if base not in ("", ".", "..") else "audio")
        temporary.write_bytes(data)
        return load_audio(temporary, sampling_rate, name=name)


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
    """Validate decoded frames and return them as (T, H, W, 3) uint8 RGB.

    Accepted: (T, H, W, 3) RGB; (T, H, W) or (T, H, W, 1) grayscale, repeated into the three channels; (T, H, W, 4)
    RGBA, whose alpha is dropped; or a list of (H, W, 3) / (H, W) / (H, W, 4) frames, stacked. One (H, W, 3) image is
    not a video (it would read as grayscale frames 3 pixels wide): pass `image[None]`.
    """
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
    if video.ndim == 3 and video.shape[-1] in (3, 4):
        raise ValueError(
            f"{name}: got one image of shape {video.shape}, not a video; pass frames as (frames, height, width, 3), "
            "e.g. `image[None]` for a single frame"
        )
    if video.ndim == 3:
        video = video[..., None]  # (T, H, W) grayscale
    if video.ndim != 4 or video.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name}: expected RGB frames of shape (frames, height, width, 3) (or grayscale (frames, height, width), "
            f"or RGBA), got {video.shape}"
        )
    if video.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 frames (0-255), got dtype {video.dtype}")
    if video.shape[0] == 0 or video.shape[1] == 0 or video.shape[2] == 0:
        raise ValueError(f"{name}: the video is empty (shape {video.shape})")
    if video.shape[-1] == 1:
        video = np.repeat(video, 3, axis=-1)
    elif video.shape[-1] == 4:
        video = np.ascontiguousarray(video[..., :3])
    return video


def check_fps(fps: Any, name: str = "video") -> float | None:
    """None, or a frame rate that is a finite positive number (else a `ValueError` naming the input)."""
    if fps is None:
        return None
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: fps must be a number of frames per second, got {fps!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name}: fps must be a positive number of frames per second, got {fps!r}")
    return value


def check_max_frames(max_frames: Any, name: str = "video") -> int | None:
    """None, or a whole number of frames >= 1 (else a `ValueError` naming the input)."""
    if max_frames is None:
        return None
    try:
        valid = not isinstance(max_frames, bool) and float(max_frames).is_integer() and max_frames >= 1
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"{name}: max_frames must be a whole number >= 1 (or None for all frames), got {max_frames!r}"
        )
    return int(max_frames)


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
    fps = check_fps(fps, name)
    path = _check_file(source, name)
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
            declared_seconds = _declared_seconds(container, stream)  # Matroska and others: a duration, no count
            end = 0.0
            for frame in container.decode(stream):
                decoded += 1
                time = float(frame.time) if frame.time is not None else (decoded - 1) / (native or 1.0)
                end = max(end, time + 1.0 / (native or 25.0))
                if sampling:
                    if time + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / fps
                    while next_time <= time:  # a gap in the stream: do not emit catch-up frames
                        next_time += 1.0 / fps
                emitted += 1
                yield time, frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:  # corrupt tags: PyAV raises UnicodeDecodeError
        raise ValueError(f"{name}: cannot decode the video ({error})") from error
    if not emitted:
        raise ValueError(f"{name}: the video stream holds no frames")
    # by time, not by count: AVI counts dropped frames (empty packets) in its frame count
    if declared_seconds is not None and _video_shortfall(end, declared_seconds, 1.0 / (native or 25.0)):
        raise ValueError(
            f"{name}: the file is truncated or corrupt ({decoded} frames decode, ending at {end:.3f} s of the "
            f"{declared_seconds:.3f} s its container declares)"
        )
    if declared_seconds is None and decoded < declared:
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
    except (av.error.FFmpegError, UnicodeDecodeError) as error:  # corrupt tags: PyAV raises UnicodeDecodeError
        raise ValueError(f"{name}: cannot decode the video ({error})") from error


def load_video(
    source: PathLike, fps: float | None = None, max_frames: int | None = None, name: str | None = None
) -> VideoClip:
    """Decode a whole video (see `iter_video_frames`), keeping at most the first `max_frames` frames (logged).

    Returns:
        `VideoClip` with frames (T, H, W, 3) uint8.
    """
    name = name or describe(source, kind="video")
    max_frames = check_max_frames(max_frames, name)
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
    except (av.error.FFmpegError, UnicodeDecodeError) as error:  # corrupt tags: PyAV raises UnicodeDecodeError
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
                    mono = check_waveform(np.ascontiguousarray(block.mean(axis=1)), name, check_range=False)
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


# Lossy codecs add encoder priming and end padding (AAC 1024-2112 samples, MP3 1105 + up to 1152, Opus 312 at
# 48 kHz plus the last frame) and containers round their declared durations (Matroska to 1 ms, AVI to its index):
# a decoded stream may be this much shorter than its container says without being truncated.
TRUNCATION_TOLERANCE_SAMPLES = 2048
TRUNCATION_TOLERANCE_FRACTION = 0.01


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """A stream's duration as its container declares it, in seconds (None when it does not say).

    The stream's own duration, else Matroska's per-track `DURATION` tag, else the container's duration when the stream
    is the file's only stream (with several streams the container's duration is the longest one's).
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    try:
        metadata = dict(stream.metadata or {})
    except UnicodeDecodeError:  # a corrupt tag; the duration then comes from elsewhere
        metadata = {}
    tag = metadata.get("DURATION") or metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _audio_shortfall(decoded_seconds: float, declared_seconds: float | None, rate: int) -> bool:
    """True when `decoded_seconds` falls short of the declared duration by more than the codec tolerance."""
    if declared_seconds is None:
        return False
    allowed = declared_seconds * TRUNCATION_TOLERANCE_FRACTION + TRUNCATION_TOLERANCE_SAMPLES / rate
    return decoded_seconds < declared_seconds - allowed


def _video_shortfall(end_seconds: float, declared_seconds: float | None, frame_seconds: float) -> bool:
    """True when the last frame ends more than two frames (and 1 %) before the declared duration."""
    if declared_seconds is None:
        return False
    return end_seconds < declared_seconds * (1 - TRUNCATION_TOLERANCE_FRACTION) - 2 * frame_seconds


PROBE_TAIL_SECONDS = 0.5


def probe_audio(source: PathLike, name: str | None = None) -> None:
    """Check cheaply that an audio file (or a video file's sound track) can be read to its end; `ValueError` if not.

    No full decode: a WAV's header is checked against the file size and its last `PROBE_TAIL_SECONDS` are read;
    other soundfile formats have their last part read; other containers have their audio packets decoded (no
    resampling) and counted against the declared duration. Finds empty, unreadable and truncated files, as
    `load_audio` would.
    """
    name = name or describe(source, kind="audio")
    path = _check_file(source, name)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            with soundfile.SoundFile(path) as sound:
                if sound.format in ("WAV", "WAVEX", "RF64") and _wav_truncated(path):
                    raise ValueError(f"{name}: the file is truncated (its data chunk is shorter than its header says)")
                if sound.frames <= 0:
                    raise ValueError(f"{name}: the waveform is empty")
                tail = min(sound.frames, max(1, int(PROBE_TAIL_SECONDS * sound.samplerate)))
                if sound.seekable():
                    sound.seek(sound.frames - tail)
                got = len(sound.read(tail, dtype="float32", always_2d=True))
                if got < tail:
                    raise ValueError(f"{name}: the file is truncated (its last {tail - got} samples are missing)")
                return
        except soundfile.LibsndfileError as error:
            logger.debug("soundfile could not read %s (%s); trying PyAV", path, error)
    _probe_av(path, name, "audio")


def probe_video(source: PathLike, name: str | None = None) -> None:
    """Check cheaply that a video file's first video stream decodes and reaches its declared end; `ValueError` if not.

    The first frame is decoded and the packets are listed (not decoded) up to the declared frame count / duration.
    """
    name = name or describe(source, kind="video")
    _probe_av(_check_file(source, name), name, "video")


def _probe_av(path: Path, name: str, kind: str) -> None:
    """Audio: decode every packet (cheap next to video, and a cut last packet only shows when decoded) and count the
    samples as `load_audio` does. Video: decode the first frame, list the packets against the declared end."""
    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio if kind == "audio" else container.streams.video
            if not streams:
                raise ValueError(f"{name}: the file has no {kind} stream")
            stream = streams[0]
            declared = _declared_seconds(container, stream)
            if kind == "audio":
                samples, rate = 0, None
                for frame in container.decode(stream):
                    samples, rate = samples + frame.samples, rate or frame.sample_rate
                if not samples:
                    raise ValueError(f"{name}: cannot decode any audio samples from the file")
                if _audio_shortfall(samples / rate, declared, rate):
                    raise ValueError(
                        f"{name}: the file is truncated or corrupt ({samples} of the {int(round(declared * rate))} "
                        f"audio samples ({declared:.3f} s at {rate} Hz) its container declares decode)"
                    )
                return
            packets, end, first_frame = 0, 0.0, None
            stream.thread_type = "NONE"  # frame threads would hold the first frame back for several packets
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the flush packet at the end
                packets += 1
                if packet.pts is not None and packet.time_base:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
                if first_frame is None and packets <= 64:
                    decoded = packet.decode()
                    first_frame = decoded[0] if decoded else None
            if first_frame is None and packets:
                flushed = stream.codec_context.decode(None)  # frames a decoder holds back (B-frame delay)
                first_frame = flushed[0] if flushed else None
            if first_frame is None:
                raise ValueError(f"{name}: no video frame decodes from the file")
            native = float(stream.average_rate) if stream.average_rate else 25.0
            short = _video_shortfall(end, declared, 1.0 / native)  # by time: AVI counts dropped frames as frames
            if short or (declared is None and 0 < packets < stream.frames):
                said = f"{declared:.3f} s" if declared is not None else f"{stream.frames} frames"
                raise ValueError(
                    f"{name}: the file is truncated or corrupt (its video packets end at {end:.3f} s, {packets} "
                    f"packets, of the {said} its container declares)"
                )
    except (av.error.FFmpegError, UnicodeDecodeError) as error:  # corrupt tags: PyAV raises UnicodeDecodeError
        raise ValueError(f"{name}: cannot decode the {kind} ({error})") from error


def _iter_av_audio(path: Path, name: str, sampling_rate: int, block_seconds: float, convert) -> Iterator[np.ndarray]:
    """Decode the first audio stream with PyAV as mono float32 blocks at the stream's own rate, then `convert`.

    Every frame goes through PyAV's `AudioResampler` to interleaved float at its own layout and rate: libswresample
    does the sample-format work (packed or planar, u8/s16/s32/s64 scaled to [-1, 1), float/double), so no layout is
    read wrongly. The channels are then averaged here, as the soundfile path does; libswresample's own downmix to mono
    is not a mean (it weights the front channels by -3 dB and drops the LFE of 5.1).
    Truncation is found by counting decoded samples against the declared duration (see TRUNCATION_TOLERANCE_*).
    """
    pending, pending_size, decoded, rate, block = [], 0, 0, None, 1
    to_float, source_format = None, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{name}: the file has no audio stream (expected a sound track)")
            stream = container.streams.audio[0]
            declared_seconds = _declared_seconds(container, stream)
            for frame in container.decode(stream):
                if not frame.samples:
                    continue
                if rate is None:
                    rate = frame.sample_rate  # the decoder's rate (HE-AAC streams may declare half of it)
                    block = max(1, int(block_seconds * rate))
                elif frame.sample_rate != rate:
                    raise ValueError(
                        f"{name}: the audio sample rate changes within the stream ({rate} Hz, then "
                        f"{frame.sample_rate} Hz)"
                    )
                frame_format = (frame.format.name, frame.layout.name, len(frame.layout.channels))
                if frame_format != source_format:  # a new converter when the layout changes mid-stream
                    to_float, source_format = av.AudioResampler(format="flt"), frame_format
                for converted in to_float.resample(frame):
                    # interleaved float: one plane of samples x channels (PyAV 18 miscounts the planes of planar
                    # frames with 8 or more channels and reads past them)
                    count = len(converted.layout.channels)
                    interleaved = converted.to_ndarray().reshape(-1, count)  # (samples, channels) float32
                    decoded += interleaved.shape[0]
                    pending.append(interleaved.mean(axis=1, dtype=np.float64).astype(np.float32))
                    pending_size += interleaved.shape[0]
                if pending_size >= block:
                    out = convert(check_waveform(np.concatenate(pending), name, check_range=False), rate)
                    pending, pending_size = [], 0
                    if out.size:
                        yield out
    except (av.error.FFmpegError, UnicodeDecodeError) as error:  # corrupt tags: PyAV raises UnicodeDecodeError
        raise ValueError(f"{name}: cannot decode the audio ({error})") from error
    if decoded == 0:
        raise ValueError(f"{name}: cannot decode any audio samples from the file")
    if _audio_shortfall(decoded / rate, declared_seconds, rate):
        raise ValueError(
            f"{name}: the file is truncated or corrupt ({decoded} of the {int(round(declared_seconds * rate))} audio "
            f"samples ({declared_seconds:.3f} s at {rate} Hz) its container declares decode)"
        )
    rest = check_waveform(np.concatenate(pending), name, False) if pending else np.zeros(0, dtype=np.float32)
    out = convert(rest, rate, last=True)
    if out.size:
        yield out


# Media file suffixes (lower case), defined once: audio containers and video containers that the readers above decode
# (soundfile for `_SOUNDFILE_SUFFIXES`, PyAV for the rest). The pipeline tells file names from text with them; corpus
# builders keep the suffixes of their own layouts (e.g. CREMA-D's `.wav` and `.flv`/`.mp4`), which are subsets.
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif", ".m4a", ".aac", ".opus"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".flv", ".mkv", ".mov", ".webm", ".mpg", ".mpeg"})
MEDIA_SUFFIXES = AUDIO_SUFFIXES | VIDEO_SUFFIXES


__all__ = [
    "AUDIO_SUFFIXES",
    "MEDIA_SUFFIXES",
    "VIDEO_SUFFIXES",
    "decode_audio_value",
    "MAX_FLOAT_PEAK",
    "TRUNCATION_TOLERANCE_FRACTION",
    "TRUNCATION_TOLERANCE_SAMPLES",
    "VideoClip",
    "check_video_array",
    "MIN_AUDIO_SAMPLES",
    "SAMPLING_RATE_RANGE",
    "check_fps",
    "check_max_frames",
    "check_sampling_rate",
    "check_waveform",
    "iter_audio_blocks",
    "iter_video_frames",
    "load_audio",
    "probe_audio",
    "probe_video",
    "load_video",
    "media_streams",
    "resample",
    "video_frame_rate",
]
