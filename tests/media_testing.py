"""Media generated for tests and benchmarks: a real face photo (scikit-image's astronaut) pasted into frames."""

from __future__ import annotations

from collections.abc import Iterable
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
