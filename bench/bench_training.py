"""Samples/s of VAVL training at the paper's sizes: cached audio features vs recomputing a frozen wav2vec2 per step.

Both runs use the trainer's VAVL schedule (visual, acoustic and fusion step per batch) on the paper's layer sizes
(Conformer width 512, 3 modality + 2 shared blocks, 1024-d audio and 1408-d visual features) and cached visual
features (the original code also caches the face features). "recompute" runs a frozen 12-layer wav2vec2-large-robust
(random weights: only the cost matters) on the waveform in the acoustic and the fusion steps, as the original does;
"cached" reads its `last_hidden_state` from the dataset. Kept short for 2 CPU cores: few rows, small batches.

    python bench/bench_training.py [--rows 4] [--batch_size 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from avemotion import VavlConfig, VavlForEmotionRecognition
from avemotion.models.vavl.configuration_vavl import wav2vec2_large_robust_config
from avemotion.training import EmotionTrainer, TrainingArguments

VIDEO_FPS = 30
AUDIO_FRAME_RATE = 50


def make_rows(rows: int, seconds: float, raw: bool, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    columns = {"visual_features": [], "label": []}
    columns["input_values" if raw else "audio_features"] = []
    for index in range(rows):
        columns["visual_features"].append(rng.normal(size=(int(seconds * VIDEO_FPS), 1408)).astype("float32"))
        if raw:
            columns["input_values"].append(rng.normal(size=int(seconds * 16000)).astype("float32"))
        else:
            frames = int((seconds * 16000 - 400) // 320) + 1
            columns["audio_features"].append(rng.normal(size=(frames, 1024)).astype("float32"))
        columns["label"].append(index % 6)
    return datasets.Dataset.from_dict(columns).with_format("numpy")


def time_epoch(raw: bool, rows: int, batch_size: int, seconds: float) -> float:
    torch.manual_seed(0)
    config = VavlConfig.from_preset(
        "crema-d",
        audio_backbone_config=wav2vec2_large_robust_config() if raw else None,
        visual_backbone_config=None,
        audio_backbone_name=None,
    )
    model = VavlForEmotionRecognition(config)
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(
            output_dir=output, num_train_epochs=1, per_device_train_batch_size=batch_size, disable_tqdm=True
        )
        trainer = EmotionTrainer(model, args, make_rows(rows, seconds, raw))
        trainer._prepare()
        warm = trainer._dataloader(make_rows(batch_size, seconds, raw, seed=1), train=True)
        trainer._training_batch(trainer._prepare_labels(next(iter(warm))), boundary=True)  # warm-up step
        start = time.perf_counter()
        trainer._train_epoch(0)
        return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_training.json"))
    args = parser.parse_args()
    cached = time_epoch(False, args.rows, args.batch_size, args.seconds)
    recompute = time_epoch(True, args.rows, args.batch_size, args.seconds)
    result = {
        "samples_per_second": {"cached_features": cached, "recompute_wav2vec2": recompute},
        "speed_up": cached / recompute,
        "target_speed_up": 10.0,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "seconds_per_clip": args.seconds,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print("| audio input | samples/s |\n|---|---|")
    print(f"| cached wav2vec2 features | {cached:.3f} |\n| frozen wav2vec2 recomputed each step | {recompute:.3f} |")
    print(f"speed-up: {result['speed_up']:.1f}x (target >= 10x)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
