"""Benchmark: decode + face detection + VAVL crop of a 10 s, 30 fps, 640x480 clip, in frames per second.

The clip is generated: scikit-image's astronaut face (220 px) swaying over a background (at most 5 px per frame),
absent for 1 s. Timed
stages, best of `--repeats` runs: PyAV decoding to RGB; Haar detection on every `k`-th frame (downscaled to 320 px)
with tracking in between; the 224x224 crops. Also timed: per-frame detection (k = 1) and the whole image processor
(crops + ImageNet normalisation to float tensors). Target: >= 90 frames/s (3x real time) on 2 CPU cores.

    python bench/bench_video_preprocess.py [--repeats 3] [--detect-every 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_testing import face_frames, write_video  # noqa: E402

from avemotion import AvEmotionImageProcessor  # noqa: E402
from avemotion.processing.faces import crop_square, track_main_face, vavl_crop_square  # noqa: E402
from avemotion.processing.media import load_video  # noqa: E402

SECONDS, FPS, HEIGHT, WIDTH = 10, 30, 480, 640
TARGET_FPS = 90.0


def decode_detect_crop(path: Path, processor: AvEmotionImageProcessor, detect_every: int) -> dict[str, float]:
    """Seconds per stage for one pass."""
    detector = processor.get_face_detector()
    start = time.perf_counter()
    frames = load_video(path).frames
    decoded = time.perf_counter()
    boxes = track_main_face(frames, detector, detect_every)
    detected = time.perf_counter()
    crops = [
        crop_square(frame, *vavl_crop_square(box), (224, 224), cv2.INTER_CUBIC)
        for frame, box in zip(frames, boxes)
        if box is not None
    ]
    cropped = time.perf_counter()
    return {
        "frames": len(frames),
        "crops": len(crops),
        "decode_s": decoded - start,
        "detect_track_s": detected - decoded,
        "crop_s": cropped - detected,
        "total_s": cropped - start,
    }


def best_of(repeats: int, run) -> dict[str, float]:
    runs = [run() for _ in range(repeats)]
    return min(runs, key=lambda r: r["total_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--detect-every", type=int, default=AvEmotionImageProcessor.detect_every)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "video_preprocess.json")
    args = parser.parse_args()

    num_frames = SECONDS * FPS
    frames, _ = face_frames(num_frames, HEIGHT, WIDTH, face_size=220, without_face=range(150, 180), speed=1 / 30)
    processor = AvEmotionImageProcessor()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = write_video(Path(folder) / "clip.mp4", frames, fps=FPS)
        processor.get_face_detector()  # load the cascade outside the timings
        for every in (args.detect_every, 1):
            result = best_of(args.repeats, lambda k=every: decode_detect_crop(path, processor, k))
            rows.append({"pipeline": "decode+detect+crop", "detect_every": every, **result})

        def full() -> dict[str, float]:
            start = time.perf_counter()
            out = processor(str(path), return_tensors="pt")
            return {"frames": out["pixel_values_videos"].shape[1], "total_s": time.perf_counter() - start}

        rows.append(
            {
                "pipeline": "image processor (+normalise)",
                "detect_every": args.detect_every,
                **best_of(args.repeats, full),
            }
        )
    for row in rows:
        row["frames_per_s"] = row["frames"] / row["total_s"]
        row["x_real_time"] = row["frames_per_s"] / FPS

    header = f"{'pipeline':<30} {'k':>3} {'frames':>6} {'decode s':>9} {'detect s':>9} {'crop s':>7} {'total s':>8} {'fps':>7} {'x RT':>5}"
    print(
        f"clip: {SECONDS} s, {FPS} fps, {WIDTH}x{HEIGHT}; best of {args.repeats}; torch threads {torch.get_num_threads()}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        stages = [f"{row[key]:>9.3f}" if key in row else f"{'-':>9}" for key in ("decode_s", "detect_track_s")]
        crop = f"{row['crop_s']:>7.3f}" if "crop_s" in row else f"{'-':>7}"
        print(
            f"{row['pipeline']:<30} {row['detect_every']:>3} {row['frames']:>6} {stages[0]} {stages[1]} {crop} "
            f"{row['total_s']:>8.3f} {row['frames_per_s']:>7.1f} {row['x_real_time']:>5.1f}"
        )
    main_row = rows[0]
    verdict = "meets" if main_row["frames_per_s"] >= TARGET_FPS else "MISSES"
    print(
        f"\ndecode+detect+crop at k={main_row['detect_every']}: {main_row['frames_per_s']:.1f} frames/s ({verdict} the {TARGET_FPS:.0f} frames/s target)"
    )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "video_preprocess",
        "clip": {"seconds": SECONDS, "fps": FPS, "width": WIDTH, "height": HEIGHT, "frames_without_face": 30},
        "target_frames_per_s": TARGET_FPS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "opencv": cv2.__version__},
        "rows": rows,
    }
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
