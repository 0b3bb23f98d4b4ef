"""Benchmark of pipeline("audio-visual-emotion") with a paper-sized VAVL (random weights).

1. Overhead: 8 four-second clips given as arrays (16 kHz audio + 30 fps face crops, `face_detector=None`), through
   the pipeline versus the bare model forward on the same pre-processed tensors. Target: overhead <= 15 %.
2. Long input: a 10-minute wav file against a 1-minute one (12 s windows, streamed decoding), each in a fresh
   process: wall time and peak RSS. Targets: time ratio within 10-12x, peak RSS under 2.5 GB.

Prints a table and writes bench/results/pipeline.json. Run: `python bench/bench_pipeline.py [--quick]`.
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

RESULTS = Path(__file__).resolve().parent / "results"


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


def overhead(model_dir: Path, clips: int, seconds: float, fps: int, batch_size: int) -> dict:
    from transformers import pipeline

    pipe = pipeline("audio-visual-emotion", model=str(model_dir))
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
    encoded = [
        pipe.processor(audio=i["audio"]["array"], video=i["video"], sampling_rate=16000, return_tensors="pt")
        for i in inputs
    ]
    with torch.no_grad():
        pipe(inputs[:1], batch_size=1)  # warm-up
        start = time.perf_counter()
        for first in range(0, clips, batch_size):
            group = encoded[first : first + batch_size]
            pipe.model(
                input_values=torch.cat([g["input_values"] for g in group]),
                attention_mask=torch.cat([g["audio_attention_mask"] for g in group]),
                pixel_values_videos=torch.cat([g["pixel_values_videos"] for g in group]),
                visual_features_mask=torch.cat([g["visual_features_mask"] for g in group]),
            )
        bare = time.perf_counter() - start
    start = time.perf_counter()
    pipe(inputs, batch_size=batch_size, window_seconds=seconds + 1)
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


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM is reset by exec, unlike getrusage's ru_maxrss, which would
    report the parent's peak in a child started by subprocess."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(model_dir: str, wav: str) -> None:
    """Run in a fresh process: load the pipeline, predict on one long file, report time and peak RSS."""
    from transformers import pipeline

    import avemotion  # noqa: F401

    pipe = pipeline("audio-visual-emotion", model=model_dir)
    start = time.perf_counter()
    result = pipe(wav)
    elapsed = time.perf_counter() - start
    peak = _peak_rss_mib()
    windows = len(result["windows"]) if isinstance(result, dict) else 1
    print(json.dumps({"seconds": elapsed, "peak_rss_mib": peak, "windows": windows}))


def long_audio(model_dir: Path, directory: Path, minutes: list[float]) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for length in minutes:
        wav = directory / f"speech_{length:g}min.wav"
        with soundfile.SoundFile(wav, "w", samplerate=16000, channels=1) as sound:
            for _ in range(int(length * 6)):  # 10 s blocks: the file is never held in memory here either
                sound.write((rng.standard_normal(160000) * 0.1).astype(np.float32))
        command = [sys.executable, __file__, "--child", str(model_dir), str(wav)]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
        measured = json.loads(output.strip().splitlines()[-1])
        rows.append({"minutes": length, **{k: round(v, 2) for k, v in measured.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 clips and 0.5/1-minute files (a smoke run)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "vavl"
        build_model_dir(model_dir)
        clips, minutes = (2, [0.5, 1.0]) if args.quick else (8, [1.0, 10.0])
        result = {"overhead": overhead(model_dir, clips=clips, seconds=4.0, fps=30, batch_size=clips)}
        result["long_audio"] = long_audio(model_dir, Path(tmp), minutes)
    short, long = result["long_audio"]
    result["long_audio_time_ratio"] = round(long["seconds"] / short["seconds"], 2)
    result["targets"] = {"overhead_percent_max": 15, "time_ratio": [10, 12], "peak_rss_mib_max": 2560}
    result["device"] = f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"

    o = result["overhead"]
    print(f"\n{'measure':<44} {'value':>12}")
    print(f"{'bare model forward (' + str(o['clips']) + ' clips)':<44} {o['bare_forward_s']:>10.2f} s")
    print(f"{'pipeline, arrays in, results out':<44} {o['pipeline_s']:>10.2f} s")
    print(f"{'pipeline overhead (target <= 15 %)':<44} {o['overhead_percent']:>10.1f} %")
    for row in result["long_audio"]:
        label = f"{row['minutes']:g}-minute wav: time / peak RSS"
        print(f"{label:<44} {row['seconds']:>8.1f} s / {row['peak_rss_mib']:.0f} MiB ({row['windows']} windows)")
    print(f"{'long/short time ratio (target 10-12x)':<44} {result['long_audio_time_ratio']:>10.2f} x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS / 'pipeline.json'}")


if __name__ == "__main__":
    main()
