"""Time windows of the `audio-visual-emotion` pipeline: audio samples and video frames read on demand and cut into the
same windows by time (presentation timestamps), with notes on the spans that lack a modality. Module-level, outside
the pipeline class (as transformers' ASR pipeline's `chunk_iter`): memory stays bounded by about one window per
stream, whatever the input's length."""

from __future__ import annotations

import math
from collections.abc import Iterator

import av
import numpy as np

# Shortest window and stride: one model frame; shorter ones only multiply windows (1e-6 s ran out of memory).
MIN_WINDOW_SECONDS = 0.025
_EPS = 1e-6  # seconds; tolerance when comparing timestamps

Window = tuple[float, float, np.ndarray | None, np.ndarray | None]  # (start, end, audio samples, video frames)


class _AudioTrack:
    """A stream of sample blocks read on demand, holding only the samples later windows still need."""

    def __init__(self, blocks: Iterator[np.ndarray], rate: int):
        self._blocks, self.rate = iter(blocks), rate
        self._buffer, self._offset, self.done = np.zeros(0, dtype=np.float32), 0, False

    @property
    def end(self) -> float:
        """Seconds read so far (the duration once `done`)."""
        return (self._offset + len(self._buffer)) / self.rate

    def read_to(self, seconds: float) -> None:
        target = int(round(seconds * self.rate))
        while not self.done and self._offset + len(self._buffer) < target:
            block = next(self._blocks, None)
            if block is None:
                self.done = True
            else:
                self._buffer = np.concatenate([self._buffer, np.asarray(block, dtype=np.float32)])

    def take(self, start: float, end: float) -> np.ndarray:
        begin = int(round(start * self.rate))
        stop = begin + int(round((end - start) * self.rate))
        return self._buffer[max(begin - self._offset, 0) : max(stop - self._offset, 0)]

    def drop_before(self, seconds: float) -> None:
        cut = int(round(seconds * self.rate)) - self._offset
        if cut > 0:
            self._buffer, self._offset = self._buffer[cut:], self._offset + cut


class _VideoTrack:
    """Timed frames `(seconds, frame)` read on demand, holding only the frames later windows still need.

    Frames are placed by their presentation time, so gaps (variable frame rate, dropped frames) stay gaps. The stream
    ends one frame duration after its last frame (`frame_duration`, else the shortest interval seen)."""

    def __init__(self, frames: Iterator[tuple[float, np.ndarray]], frame_duration: float | None = None):
        self._frames, self._held = iter(frames), []
        self._last: float | None = None
        self._step, self.done = frame_duration, False

    @property
    def end(self) -> float:
        if self._last is None:
            return 0.0
        return self._last + (self._step or 0.0) if self.done else self._last

    def read_to(self, seconds: float) -> None:
        while not self.done and (self._last is None or self._last < seconds - _EPS):
            item = next(self._frames, None)
            if item is None:
                self.done = True
                break
            time, frame = float(item[0]), item[1]
            if self._last is not None and time - self._last > _EPS:
                self._step = min(self._step or math.inf, time - self._last)
            self._last = time if self._last is None else max(self._last, time)
            self._held.append((time, frame))

    def take(self, start: float, end: float) -> list[np.ndarray]:
        return [frame for time, frame in self._held if start - _EPS <= time < end - _EPS]

    def drop_before(self, seconds: float) -> None:
        self._held = [(time, frame) for time, frame in self._held if time >= seconds - _EPS]


def time_windows(
    audio: _AudioTrack | None, video: _VideoTrack | None, window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray | None, list[np.ndarray] | None]]:
    """Cut audio and video into the same windows, by time: `[k * stride, k * stride + window)` while the longer
    stream covers them, then one last window aligned to the end of the longer stream if its tail is uncovered.

    Yields `(start, end, samples, frames)`; `samples` / `frames` hold what that stream has in the window (possibly
    nothing: a gap in the video, or a stream shorter than the other). Memory stays bounded by one window per
    stream, whatever the input's length."""
    tracks = [track for track in (audio, video) if track is not None]
    if not tracks:
        return

    def take(start: float, end: float):
        return (
            audio.take(start, end) if audio is not None else None,
            video.take(start, end) if video is not None else None,
        )

    k, covered = 0, None
    while True:
        start = k * stride_seconds
        end = start + window_seconds
        for track in tracks:
            track.read_to(end)
        if all(track.done for track in tracks) and end > max(track.end for track in tracks) + _EPS:
            break
        yield (start, end, *take(start, end))
        covered, k = end, k + 1
        for track in tracks:  # keep what the next window, or a tail window at the end of this stream, needs
            track.drop_before(min(k * stride_seconds, track.end - window_seconds))
    duration = max(track.end for track in tracks)
    if covered is None or duration > covered + _EPS:
        start = max(0.0, duration - window_seconds)
        yield (start, duration, *take(start, duration + window_seconds))  # everything from `start` on


def audio_windows(
    blocks: Iterator[np.ndarray], rate: int, window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Cut a stream of sample blocks into windows `[k * stride, k * stride + window)`; an uncovered tail gets one
    last window aligned to the end of the stream. Only about one window of samples is held."""
    for start, end, samples, _ in time_windows(_AudioTrack(blocks, rate), None, window_seconds, stride_seconds):
        yield start, end, samples


def video_windows(
    frames: Iterator[tuple[float, np.ndarray]], window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Group timed frames into the same windows as `audio_windows` (by timestamp; windows without frames are left
    out); holds about one window of frames."""
    for start, end, _, chunk in time_windows(None, _VideoTrack(frames), window_seconds, stride_seconds):
        if chunk:
            yield start, end, np.stack(chunk)


def _stream_start(path: str, kind: str) -> float:
    """Seconds at which the first `kind` ("audio" or "video") stream of a media file starts (0 when unknown)."""
    try:
        with av.open(path) as container:
            streams = getattr(container.streams, kind)
            if streams and streams[0].start_time is not None:
                return float(streams[0].start_time * streams[0].time_base)
    except (av.error.FFmpegError, OSError):  # unreadable: the decoders report it, naming the file
        pass
    return 0.0


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


class _SpanNotes:
    """Notes about time spans, consecutive spans merged: "1.00-2.00, 5.00-9.00 s: no video frames; ..."."""

    def __init__(self, limit: int = 5):
        self._spans: dict[str, list[list[float]]] = {}
        self._limit = limit

    def add(self, what: str, start: float, end: float) -> None:
        spans = self._spans.setdefault(what, [])
        if spans and start <= spans[-1][1] + _EPS:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])

    def render(self) -> list[str]:
        notes = []
        for what, spans in self._spans.items():
            text = ", ".join(f"{start:.2f}-{end:.2f}" for start, end in spans[: self._limit])
            more = f" (and {len(spans) - self._limit} more spans)" if len(spans) > self._limit else ""
            notes.append(f"{text} s{more}: {what}")
        return notes


def transcript_window(samples: np.ndarray | None, rate: int, min_samples: int, notes: list[str]) -> Window:
    """The one `(start, end, samples, None)` window of an input with a transcript (the transcript belongs to the whole
    utterance): all its audio `samples` at `rate`, or None (noted when there are fewer than `min_samples`)."""
    if samples is not None and len(samples) < min_samples:
        _note(notes, f"the audio is shorter than one model frame ({min_samples} samples); not used")
        samples = None
    return 0.0, 0.0 if samples is None else len(samples) / rate, samples, None


def media_windows(
    audio: _AudioTrack | None,
    video: _VideoTrack | np.ndarray | None,
    window_seconds: float,
    stride_seconds: float,
    min_samples: int,
    notes: list[str],
) -> Iterator[Window]:
    """Time-aligned `(start, end, audio samples, video frames)` windows of the tracks (see `time_windows`); a modality
    with nothing usable in a window (no frames, fewer than `min_samples` samples) is None there, and windows with
    nothing usable are left out; both are noted in `notes` (spans merged) once the windows end. `video` as an array:
    frames of unknown rate without audio, one window."""
    if isinstance(video, np.ndarray):
        yield 0.0, 0.0, None, video
        return
    spans = _SpanNotes()
    for start, end, samples, frames in time_windows(audio, video, window_seconds, stride_seconds):
        has_audio = samples is not None and len(samples) >= min_samples
        if not has_audio and not frames:
            missing = []
            if audio is not None:
                short = samples is not None and len(samples) > 0
                missing.append(f"audio shorter than one model frame ({min_samples} samples)" if short else "no audio")
            if video is not None:
                missing.append("no video frames")
            spans.add(f"{' and '.join(missing)}; window left out", start, end)
            continue
        if audio is not None and not has_audio:
            spans.add("no audio; used video only", start, end)
        if video is not None and not frames:
            spans.add("no video frames; used audio only", start, end)
        yield start, end, samples if has_audio else None, np.stack(frames) if frames else None
    for note in spans.render():
        _note(notes, note)


__all__ = [
    "MIN_WINDOW_SECONDS",
    "audio_windows",
    "media_windows",
    "time_windows",
    "transcript_window",
    "video_windows",
]
