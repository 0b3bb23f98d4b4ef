"""Media generated for tests and benchmarks: a real face photo (scikit-image's astronaut) pasted into frames."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data


def astronaut_face(size: int = 120) -> np.ndarray:
    """The astronaut's head and shoulders, (size, size, 3) uint8; the face sits near the centre."""
    image = data.astronaut()
    crop = image[20:240, 110:330]  # the Haar cascade finds the face at [177, 66, 95, 95] in the full image
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def face_frames(
    num_frames: int,
    height: int = 240,
    width: int = 320,
    face_size: int = 120,
    without_face: Iterable[int] = (),
    seed: int = 0,
    speed: float = 1 / 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames with the face moving left and right (phase `speed * t`, plus 2 px of jitter) over a smooth background.

    Returns:
        frames (T, H, W, 3) uint8 and the pasted face square per frame (T, 4) as (x0, y0, x1, y1) (-1 where absent).
    """
    rng = np.random.default_rng(seed)
    face = astronaut_face(face_size)
    ramp = np.linspace(60, 160, width, dtype=np.float32)[None, :, None]
    background = np.broadcast_to(ramp + np.zeros((height, 1, 3), np.float32), (height, width, 3)).astype(np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0).copy()
    squares = np.full((num_frames, 4), -1, dtype=np.int64)
    skip = set(without_face)
    span = width - face_size
    for t in range(num_frames):
        if t in skip:
            continue
        x = int(span / 2 + span / 3 * np.sin(speed * t)) + int(rng.integers(-2, 3))
        y = (height - face_size) // 2
        frames[t, y : y + face_size, x : x + face_size] = face
        squares[t] = (x, y, x + face_size, y + face_size)
    return frames, squares


def tone(seconds: float, rate: int, channels: int = 1, frequency: float = 440.0) -> np.ndarray:
    """A sine tone, (channels, samples) float32; channel c has amplitude 0.5 / (c + 1)."""
    t = np.arange(int(seconds * rate)) / rate
    wave = np.sin(2 * np.pi * frequency * t).astype(np.float32)
    return np.stack([wave * 0.5 / (c + 1) for c in range(channels)])


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 25,
    audio: np.ndarray | None = None,
    audio_rate: int = 44100,
    faststart: bool = False,
) -> Path:
    """Write H.264 frames (and an AAC sound track from `audio` (channels, samples)) to an mp4 with PyAV."""
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=audio_rate)
            sound.layout = "stereo" if audio.shape[0] == 2 else "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            for start in range(0, audio.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(audio[:, start : start + 1024]), format="fltp", layout=sound.layout.name
                )
                chunk.sample_rate = audio_rate
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    return path


# Integer PCM scale of each sample format (values are float / scale); float formats are written as they are.
_INT_SCALES = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0}


def write_audio(
    path: str | Path,
    signal: np.ndarray,
    rate: int,
    codec: str,
    sample_format: str,
    layout: str,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
    bit_rate: int | None = None,
) -> Path:
    """Encode `signal` (channels, samples) float in [-1, 1] with PyAV: any codec, sample format (packed or planar,
    int or float) and channel layout its encoders take, in the container named by the suffix (or
    `container_format`). Integers are `round(x * scale)` clipped to the format's range."""
    path = Path(path)
    signal = np.asarray(signal, dtype=np.float64)
    audio_format = av.AudioFormat(sample_format)
    base = audio_format.packed.name
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        stream.format = sample_format
        if options:
            stream.options = options
        if bit_rate:
            stream.bit_rate = bit_rate
        stream.codec_context.options = {"strict": "experimental"}  # FFmpeg's native vorbis/opus encoders
        chunk = stream.codec_context.frame_size or 1024
        for start in range(0, signal.shape[1], chunk):
            part = signal[:, start : start + chunk]
            if base in _INT_SCALES:
                scale = _INT_SCALES[base]
                info = np.iinfo({"u8": np.int16, "s16": np.int16, "s32": np.int32}[base])
                offset = 128.0 if base == "u8" else 0.0
                low, high = (0, 255) if base == "u8" else (info.min, info.max)
                dtype = {"u8": np.uint8, "s16": np.int16, "s32": np.int32}[base]
                data = np.clip(np.round(part * scale + offset), low, high).astype(dtype)
            else:
                data = part.astype(np.float64 if base == "dbl" else np.float32)
            if not audio_format.is_planar:
                data = data.T.reshape(1, -1)  # interleaved: one plane, channel after channel per sample
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format, layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def channel_tones(seconds: float, rate: int, channels: int) -> np.ndarray:
    """(channels, samples) float: channel c a sine at 300 + 170 c Hz (the LFE of 5.1, channel 3, at 90 Hz), peak
    0.375 for c = 0 and 0.3 / (c + 1) after, all under a 2 Hz envelope (0.6 to 1) so that the mix is not periodic
    within a codec's delay and cross-correlation finds the one true alignment. A wrong mix or scale shows."""
    t = np.arange(int(round(seconds * rate))) / rate
    envelope = 0.8 + 0.2 * np.cos(2 * np.pi * 2.0 * t)
    rows = []
    for c in range(channels):
        frequency = 90.0 if (channels == 6 and c == 3) else 300.0 + 170.0 * c
        amplitude = 0.375 if c == 0 else 0.3 / (c + 1)
        rows.append(amplitude * envelope * np.sin(2 * np.pi * frequency * t))
    return np.stack(rows)
