"""Samples/s of VAVL training at the paper's sizes: cached audio features vs recomputing a frozen wav2vec2 per step.

Both runs use the trainer's VAVL schedule (visual, acoustic and fusion step per batch) on the paper's layer sizes
(Conformer width 512, 3 modality + 2 shared blocks, 1024-d audio and 1408-d visual features) and cached visual
features (the original code also caches the face features). "recompute" runs a frozen 12-layer wav2vec2-large-robust
(random weights: only the cost matters) under no_grad in the acoustic and the fusion steps; "original" also lets the
gradients flow into wav2vec2's transformer layers (never applied), as the original code does; "cached" reads its
`last_hidden_state` from the dataset. Kept short for 2 CPU cores: few rows, small batches.

    python bench/bench_training.py [--rows 16] [--batch_size 8] [--seconds 3]
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


def time_epoch(mode: str, rows: int, batch_size: int, seconds: float) -> float:
    """Samples/s of one training epoch. `mode`: "cached" (audio features from the dataset), "recompute" (our frozen
    wav2vec2 under no_grad each step), "original" (wav2vec2 recomputed with gradients flowing into its transformer
    layers, which no optimiser steps, as the original code does)."""
    torch.manual_seed(0)
    raw = mode != "cached"
    # dropout, layerdrop and SpecAugment off: the original keeps wav2vec2 in eval mode
    backbone = wav2vec2_large_robust_config(layerdrop=0.0, mask_time_prob=0.0) if raw else None
    config = VavlConfig.from_preset(
        "crema-d", audio_backbone_config=backbone, visual_backbone_config=None, audio_backbone_name=None
    )
    model = VavlForEmotionRecognition(config)
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(
            output_dir=output, num_train_epochs=1, per_device_train_batch_size=batch_size, disable_tqdm=True
        )
        trainer = EmotionTrainer(model, args, make_rows(rows, seconds, raw))
        trainer._prepare()
        if mode == "original":
            # after the optimiser is built: gradients reach the transformer layers but are never applied
            model.config.freeze_audio_backbone = False
            for name, parameter in model.vavl.audio_backbone.named_parameters():
                parameter.requires_grad_(not name.startswith("feature_extractor."))
        warm = trainer._dataloader(make_rows(batch_size, seconds, raw, seed=1), train=True)
        trainer._training_batch(trainer._prepare_labels(next(iter(warm))), boundary=True)  # warm-up step
        start = time.perf_counter()
        trainer._train_epoch(0)
        return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_training.json"))
    args = parser.parse_args()
    cached = time_epoch("cached", args.rows, args.batch_size, args.seconds)
    recompute = time_epoch("recompute", args.rows, args.batch_size, args.seconds)
    original = time_epoch("original", args.rows, args.batch_size, args.seconds)
    result = {
        "samples_per_second": {
            "cached_features": cached,
            "recompute_wav2vec2_no_grad": recompute,
            "recompute_wav2vec2_as_original": original,
        },
        "speed_up_vs_original": cached / original,
        "speed_up_vs_no_grad_recompute": cached / recompute,
        "target_speed_up": 10.0,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "seconds_per_clip": args.seconds,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print("| audio input | samples/s | cached speed-up |\n|---|---|---|")
    print(f"| cached wav2vec2 features | {cached:.3f} | 1.0x |")
    print(
        f"| wav2vec2 recomputed each step, no_grad (our frozen backbone) | {recompute:.3f} | {cached / recompute:.1f}x |"
    )
    print(f"| wav2vec2 recomputed with gradients, as the original code | {original:.3f} | {cached / original:.1f}x |")
    print(f"speed-up against the original's recomputation: {result['speed_up_vs_original']:.1f}x (target >= 10x)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
