"""Benchmark of pipeline("audio-visual-emotion") with a paper-sized VAVL (random weights), on `--device`.

1. Overhead: 4-second clips given as arrays (16 kHz audio + 30 fps face crops, `face_detector=None`), through the
   pipeline versus the bare model forward on the same pre-processed tensors (moved to the device batch by batch, as
   the pipeline does). Target: overhead <= 15 %.
2. mp4 clips: generated 3 s, 640x480, 30 fps clips with a face and a sound track, through the pipeline with the
   default face detector at batch size B and `num_workers` 0, 1, 2 (more on CUDA: `--num_workers 0,1,2,4,8`),
   versus the bare model on the same pre-processed tensors at the same batch size: clips/s and the pipeline's share
   of the bare model's throughput (GPU target: >= 50 %).
3. Long input: a 10-minute wav file against a 1-minute one (12 s windows, streamed decoding), each in a fresh
   process: wall time and peak RSS. Targets: time ratio within 10-12x, peak RSS under 2.5 GB.

Prints a table and writes bench/results/pipeline.json (naming the device). Run:
`python bench/bench_pipeline.py [--quick] [--device cuda] [--num_workers 0,1,2,4,8]`.
`--quick` (a smoke run, about 2 minutes on 2 CPU cores): fewer and shorter inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_device_argument, resolve_device, synchronize, write_results  # noqa: E402


def build_model_dir(directory: Path) -> None:
    from avemotion import (
        AvEmotionFeatureExtractor,
        AvEmotionImageProcessor,
        AvEmotionProcessor,
        VavlConfig,
        VavlForEmotionRecognition,
    )

    torch.manual_seed(0)
    model = VavlForEmotionRecognition(VavlConfig.from_preset("crema-d")).eval()  # wav2vec2-large 12 l. + B2
    model.save_pretrained(directory)
    AvEmotionProcessor(
        AvEmotionFeatureExtractor(sampling_rate=16000, normalization="utterance"),
        AvEmotionImageProcessor(face_detector=None),
    ).save_pretrained(directory)


def _bare_forward(pipe, batches: list[dict], device: torch.device) -> float:
    """Seconds for the model on the batches (moved to the device batch by batch, as the pipeline does)."""
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            pipe._run_model({name: value.to(device) for name, value in batch.items()})
    synchronize(device)
    return time.perf_counter() - start


def _batches(encoded: list[dict], batch_size: int) -> list[dict]:
    return [
        {name: torch.cat([e[name] for e in encoded[first : first + batch_size]]) for name in encoded[0]}
        for first in range(0, len(encoded), batch_size)
    ]


def overhead(model, device: torch.device, clips: int, seconds: float, fps: int, batch_size: int) -> dict:
    from transformers import pipeline

    from avemotion import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor

    processor = AvEmotionProcessor(
        AvEmotionFeatureExtractor(sampling_rate=16000, normalization="utterance"),
        AvEmotionImageProcessor(face_detector=None),
    )
    pipe = pipeline("audio-visual-emotion", model=model, processor=processor, device=device)
    rng = np.random.default_rng(0)
    inputs = [
        {
            "audio": {"array": (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32),
                      "sampling_rate": 16000},
            "video": rng.integers(0, 255, (int(seconds * fps), 224, 224, 3), dtype=np.uint8),
            "fps": fps,
        }
        for _ in range(clips)
    ]  # fmt: skip
    # the same tensors the pipeline builds, batched as it batches them
    names = {
        "input_values": "input_values",
        "audio_attention_mask": "attention_mask",
        "pixel_values_videos": "pixel_values_videos",
        "visual_features_mask": "visual_features_mask",
    }
    encoded = []
    for item in inputs:
        features = pipe.processor(
            audio=item["audio"]["array"], video=item["video"], sampling_rate=16000, return_tensors="pt"
        )
        encoded.append({name: features[key] for key, name in names.items()})  # fmt: skip
    batches = _batches(encoded, batch_size)
    pipe(inputs[:batch_size], batch_size=batch_size, window_seconds=seconds + 1)  # warm-up
    bare = _bare_forward(pipe, batches, device)
    synchronize(device)
    start = time.perf_counter()
    pipe(inputs, batch_size=batch_size, window_seconds=seconds + 1)
    synchronize(device)
    full = time.perf_counter() - start
    return {
        "clips": clips,
        "clip_seconds": seconds,
        "fps": fps,
        "batch_size": batch_size,
        "bare_forward_s": round(bare, 3),
        "pipeline_s": round(full, 3),
        "bare_clips_per_s": round(clips / bare, 3),
        "pipeline_clips_per_s": round(clips / full, 3),
        "overhead_percent": round(100 * (full - bare) / bare, 1),
    }


def _mp4_clips(folder: Path, count: int, seconds: float) -> list[str]:
    """`count` paths of generated 640x480, 30 fps clips with a face and a sound track (two distinct files, cycled:
    every path is decoded again)."""
    from media_testing import face_frames, tone, write_video

    files = []
    for seed in range(min(count, 2)):
        frames, _ = face_frames(int(seconds * 30), 480, 640, face_size=220, seed=seed, speed=1 / 30)
        audio = tone(seconds, 44100, channels=2, frequency=220 + 80 * seed)
        files.append(str(write_video(folder / f"clip{seed}.mp4", frames, fps=30, audio=audio)))
    return [files[index % len(files)] for index in range(count)]


def mp4_throughput(
    model,
    device: torch.device,
    folder: Path,
    clips: int,
    batch_size: int,
    worker_counts: list[int],
    repeats: int = 2,
    video_fps: float | None = None,
) -> dict:
    """Clips/s of the pipeline on mp4 files (default face detector) per `num_workers`, and of the bare model on the
    same pre-processed tensors at the same batch size."""
    from transformers import pipeline
    from transformers.pipelines.base import pad_collate_fn

    from avemotion import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor
    from avemotion.pipelines.audio_visual_emotion import _Numbered

    seconds = 3.0
    processor = AvEmotionProcessor(
        AvEmotionFeatureExtractor(sampling_rate=16000, normalization="utterance"),
        AvEmotionImageProcessor(video_fps=video_fps),
    )
    pipe = pipeline("audio-visual-emotion", model=model, processor=processor, device=device)
    paths = _mp4_clips(folder, clips, seconds)
    options = {"batch_size": batch_size, "window_seconds": seconds + 1}
    windows = [w for i, p in enumerate(paths) for w in pipe.preprocess(_Numbered(i, p), window_seconds=seconds + 1)]
    collate = pad_collate_fn(pipe.tokenizer, pipe.feature_extractor)
    batches = [collate(windows[first : first + batch_size]) for first in range(0, len(windows), batch_size)]
    batches = [{k: v for k, v in batch.items() if k not in ("meta", "is_last")} for batch in batches]
    if device.type == "cuda":  # warm-up: first kernels and cuDNN choices at this batch size (a CPU is warm here)
        _bare_forward(pipe, batches[:1], device)
    bare = min(_bare_forward(pipe, batches, device) for _ in range(repeats))
    rows = []
    for workers in worker_counts:
        synchronize(device)
        start = time.perf_counter()
        results = pipe(paths, num_workers=workers, **options)
        synchronize(device)
        elapsed = time.perf_counter() - start
        assert len(results) == clips and all("error" not in r for r in results if isinstance(r, dict))
        rows.append({"num_workers": workers, "seconds": round(elapsed, 3), "clips_per_s": round(clips / elapsed, 3),
                     "share_of_bare": round(bare / elapsed, 3)})  # fmt: skip
    return {"clips": clips, "clip_seconds": seconds, "size": "640x480", "fps": 30, "model_fps": video_fps or 30,
            "batch_size": batch_size,
            "bare_s": round(bare, 3), "bare_clips_per_s": round(clips / bare, 3), "rows": rows}  # fmt: skip


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM is reset by exec, unlike getrusage's ru_maxrss, which would
    report the parent's peak in a child started by subprocess."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(model_dir: str, wav: str, device: str) -> None:
    """Run in a fresh process: load the pipeline, predict on one long file, report time and peak RSS."""
    from transformers import pipeline

    import avemotion  # noqa: F401

    pipe = pipeline("audio-visual-emotion", model=model_dir, device=device)
    start = time.perf_counter()
    result = pipe(wav)
    synchronize(torch.device(device))
    elapsed = time.perf_counter() - start
    peak = _peak_rss_mib()
    windows = len(result["windows"]) if isinstance(result, dict) else 1
    print(json.dumps({"seconds": elapsed, "peak_rss_mib": peak, "windows": windows}))


def long_audio(model_dir: Path, directory: Path, minutes: list[float], device: torch.device) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for length in minutes:
        wav = directory / f"speech_{length:g}min.wav"
        with soundfile.SoundFile(wav, "w", samplerate=16000, channels=1) as sound:
            for _ in range(int(length * 6)):  # 10 s blocks: the file is never held in memory here either
                sound.write((rng.standard_normal(160000) * 0.1).astype(np.float32))
        command = [sys.executable, __file__, "--child", str(model_dir), str(wav), str(device)]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
        measured = json.loads(output.strip().splitlines()[-1])
        rows.append({"minutes": length, **{k: round(v, 2) for k, v in measured.items()}})
    return rows


# per device and mode: overhead (clips, seconds, fps), mp4 (clips, batch size, frames/s the face branch sees: None =
# the clips' 30), long-audio minutes. A CPU runs the paper-sized face branch at ~0.3 s per frame (2 cores): --quick
# there gives it 5 frames/s so that the whole run takes about 2 minutes (a smoke run; the full run is the measure).
SIZES = {
    ("cpu", True): ((2, 2.0, 5), (2, 2, 5.0), [0.25, 0.5]),
    ("cpu", False): ((8, 4.0, 30), (8, 4, None), [1.0, 10.0]),
    ("cuda", True): ((8, 4.0, 30), (16, 8, None), [1.0, 10.0]),
    ("cuda", False): ((32, 4.0, 30), (32, 16, None), [1.0, 10.0]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips and shorter files (a smoke run)")
    parser.add_argument("--num_workers", default=None, help="comma-separated counts (default 0,1,2; CUDA 0,1,2,4,8)")
    parser.add_argument("--output", default=None, help="default: bench/results/pipeline.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    add_device_argument(parser)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    device = resolve_device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    (clips, seconds, fps), (mp4_clips, mp4_batch, mp4_fps), minutes = SIZES[
        ("cuda" if device.type == "cuda" else "cpu", args.quick)
    ]
    default_workers = "0,1,2,4,8" if device.type == "cuda" else "0,1,2"
    worker_counts = [int(n) for n in (args.num_workers or default_workers).split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "vavl"
        build_model_dir(model_dir)
        from avemotion import VavlForEmotionRecognition

        model = VavlForEmotionRecognition.from_pretrained(model_dir).eval()
        result = {"overhead": overhead(model, device, clips, seconds=seconds, fps=fps, batch_size=clips)}
        repeats = 1 if args.quick else 2
        result["mp4"] = mp4_throughput(
            model, device, Path(tmp), mp4_clips, mp4_batch, worker_counts, repeats, video_fps=mp4_fps
        )
        del model
        result["long_audio"] = long_audio(model_dir, Path(tmp), minutes, device)
    short, long = result["long_audio"]
    result["long_audio_time_ratio"] = round(long["seconds"] / short["seconds"], 2)
    result["targets"] = {"overhead_percent_max": 15, "time_ratio": [10, 12], "peak_rss_mib_max": 2560,
                         "mp4_share_of_bare_min_gpu": 0.5}  # fmt: skip
    report(result)
    write_results("pipeline.json", result, device, args.output)


def report(result: dict) -> None:
    o, m = result["overhead"], result["mp4"]
    print(f"\n{'measure':<52} {'value':>12}")
    print(f"{'bare model forward (' + str(o['clips']) + ' clips)':<52} {o['bare_forward_s']:>10.2f} s")
    print(f"{'pipeline, arrays in, results out':<52} {o['pipeline_s']:>10.2f} s")
    print(f"{'pipeline overhead (target <= 15 %)':<52} {o['overhead_percent']:>10.1f} %")
    label = f"mp4 clips: bare model ({m['clips']} clips, batch {m['batch_size']})"
    print(f"{label:<52} {m['bare_clips_per_s']:>6.2f} clips/s")
    for row in m["rows"]:
        label = f"mp4 clips: pipeline, num_workers={row['num_workers']} (share of bare)"
        print(f"{label:<52} {row['clips_per_s']:>6.2f} clips/s ({100 * row['share_of_bare']:.0f} %)")
    for row in result["long_audio"]:
        label = f"{row['minutes']:g}-minute wav: time / peak RSS"
        print(f"{label:<52} {row['seconds']:>8.1f} s / {row['peak_rss_mib']:.0f} MiB ({row['windows']} windows)")
    print(f"{'long/short time ratio (target 10-12x)':<52} {result['long_audio_time_ratio']:>10.2f} x")


if __name__ == "__main__":
    main()
