"""Writers of tiny media files for the corpus-builder tests."""

from pathlib import Path

import av
import numpy as np
import soundfile as sf


def write_wav(path: Path, seconds: float = 0.3, sampling_rate: int = 16000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(seed).normal(0, 0.1, int(seconds * sampling_rate)).astype(np.float32)
    sf.write(path, samples, sampling_rate)
    return path


def write_video(path: Path, frames: int = 3, size: int = 32, fps: int = 5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            image = np.full((size, size, 3), 40 * index, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
