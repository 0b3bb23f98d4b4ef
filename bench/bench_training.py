"""Training throughput of VAVL (the trainer's declared visual, acoustic and fusion steps per batch).

1. Per-batch overhead proxy (issue 14): a TINY VAVL on cached features, batch 16, fp32, where compute is negligible
   and the time per batch is dispatch: the trainer's Python work, the optimizer's kernel launches, data collation.
   Reported per batch: the trainer's time, the "floor" (the same steps' forward and backward alone on pre-collated,
   pre-selected sub-batches: the model's own cost) and the overhead (trainer - floor). With `--baseline_src DIR` (the
   `src/` of another checkout, e.g. `git worktree add /tmp/base 63a021b`), the same measurement runs on that code
   too, in separate processes taking turns (old, new, old, new; the best of each), and the losses of the first epoch
   (same data, same seed) are compared: max |loss difference|. Target: overhead at least halved, losses equal to 1e-6.
2. Paper sizes (skipped with `--proxy_only`): samples/s of an epoch of the paper-sized VAVL (Conformer width 512,
   1024-d audio and 1408-d visual features) on cached audio features, in fp32 and, on CUDA, bf16; on CPU, also with
   a frozen wav2vec2-large recomputed per step ("recompute", no_grad) and as the original code did ("original",
   gradients flowing into its transformer layers), against the cached features. Target on a GPU: >= 400 samples/s
   at batch 16 (cached), bf16 >= fp32.

    python bench/bench_training.py [--device auto|cpu|cuda] [--proxy_only] [--baseline_src /tmp/base/src]

Timings on a CPU shared with other work vary by tens of percent: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_device_argument, resolve_device, synchronize, write_results  # noqa: E402

VIDEO_FPS = 30
AUDIO_FRAME_RATE = 50
TINY = dict(audio_feature_dim=16, visual_feature_dim=12, projection_dim=8, hidden_size=16, num_attention_heads=2,
            intermediate_size=32, conv_kernel_size=3, num_modality_layers=1, num_shared_layers=1,
            head_hidden_sizes=[16], max_position_embeddings=64, num_labels=3)  # fmt: skip


def _use_device(device: torch.device) -> None:
    """The trainer takes accelerate's device: CUDA when there is one, unless told to use the CPU."""
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"


# ------------------------------------------------------------------------------------------------ 1. proxy


def tiny_rows(batches: int, batch_size: int, seed: int = 0):
    """Cached features of short clips (8-16 audio frames, 4-8 video frames): compute is negligible."""
    import datasets

    rng = np.random.default_rng(seed)
    n = batches * batch_size
    columns = {
        "audio_features": [rng.normal(size=(int(rng.integers(8, 17)), 16)).astype("float32") for _ in range(n)],
        "visual_features": [rng.normal(size=(int(rng.integers(4, 9)), 12)).astype("float32") for _ in range(n)],
        "label": [i % 3 for i in range(n)],
    }
    return datasets.Dataset.from_dict(columns).with_format("numpy")


def _floor_batches(data, batch_size: int, device: torch.device) -> list[dict]:
    from avemotion.data.collators import AvEmotionCollator

    collate = AvEmotionCollator()
    batches = []
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, start + batch_size)])
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def _floor(model, batches: list[dict], device: torch.device) -> float:
    """Seconds per batch of the steps' forward and backward alone (no trainer, no optimizer, no collation)."""
    audio = ("audio_features", "audio_features_mask", "labels")
    video = ("visual_features", "visual_features_mask", "labels")
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        model(**{k: batch[k] for k in video})["visual_loss"].backward()
        model(**{k: batch[k] for k in audio})["audio_loss"].backward()
        model.fusion_step_loss(**batch).backward()
        model.zero_grad(set_to_none=True)
    synchronize(device)
    return (time.perf_counter() - start) / len(batches)


def proxy_worker(device_name: str, batches: int, batch_size: int, repeats: int, **options) -> dict:
    """One process, one checkout: the tiny model's epoch losses (first epoch) and best seconds per batch. `options`:
    more `TrainingArguments`."""
    from avemotion import VavlConfig, VavlForEmotionRecognition
    from avemotion.training import EmotionTrainer, TrainingArguments

    device = resolve_device(device_name)
    _use_device(device)
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(VavlConfig(**TINY))
    data = tiny_rows(batches, batch_size)
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(output_dir=output, num_train_epochs=1, per_device_train_batch_size=batch_size,
                                 learning_rate=1e-3, disable_tqdm=True, seed=0, save_strategy="no", **options)  # fmt: skip
        trainer = EmotionTrainer(model, args, data)
        trainer._prepare()
        losses = []
        train_batch = trainer._training_batch

        def recorded(batch, boundary):
            result = train_batch(batch, boundary)
            losses.append({k: float(v) for k, v in result.items()})
            return result

        trainer._training_batch = recorded
        trainer._train_epoch(0)  # the compared losses; also the warm-up
        del trainer._training_batch
        best = floor = float("inf")
        floor_batches = _floor_batches(data, batch_size, device)
        for epoch in range(1, repeats + 1):  # the trainer and the floor taking turns
            trainer.state["step_in_epoch"] = 0
            synchronize(device)
            start = time.perf_counter()
            trainer._train_epoch(epoch)
            synchronize(device)
            best = min(best, (time.perf_counter() - start) / batches)
            floor = min(floor, _floor(trainer.accelerator.unwrap_model(trainer.model), floor_batches, device))
    import avemotion

    return {"per_batch_s": best, "floor_s": floor, "overhead_s": best - floor, "losses": losses,
            "device": str(trainer.accelerator.device), "code": str(Path(avemotion.__file__).parent)}  # fmt: skip


def run_worker(src: str | None, args: argparse.Namespace, implementation: str | None = None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--_worker", "--device", args.device, "--batches", str(args.batches),
               "--batch_size", str(args.proxy_batch_size), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]  # fmt: skip
    if implementation:
        command += ["--optimizer_implementation", implementation]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"proxy worker ({src or 'this checkout'}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_loss_difference(a: list[dict], b: list[dict]) -> float:
    if len(a) != len(b) or any(set(x) != set(y) for x, y in zip(a, b)):
        return float("inf")
    return max((abs(x[k] - y[k]) for x, y in zip(a, b) for k in x), default=0.0)


def proxy(args: argparse.Namespace) -> dict:
    # the default optimizer implementation (fused Adam: no host read per step) and foreach Adam (bitwise the
    # for-loop's, the baseline's implementation)
    codes = {"this checkout": (None, None), "this checkout, foreach Adam": (None, "foreach")}
    if args.baseline_src:
        codes = {"baseline": (args.baseline_src, None), **codes}
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    for _ in range(args.rounds):  # taking turns: load changes on a shared machine hit both
        for name, (src, implementation) in codes.items():
            runs[name].append(run_worker(src, args, implementation))
    result = {}
    for name, results in runs.items():
        best = min(results, key=lambda r: r["per_batch_s"])
        result[name] = {"per_batch_ms": best["per_batch_s"] * 1e3, "floor_ms": min(r["floor_s"] for r in results) * 1e3,
                        "device": best["device"], "code": best["code"]}  # fmt: skip
        result[name]["overhead_ms"] = result[name]["per_batch_ms"] - result[name]["floor_ms"]
    if "baseline" in result:
        old = result["baseline"]
        for name in ("this checkout", "this checkout, foreach Adam"):
            new = result[name]
            new["overhead_reduction"] = old["overhead_ms"] / new["overhead_ms"]
            new["per_batch_speed_up"] = old["per_batch_ms"] / new["per_batch_ms"]
            new["max_abs_loss_difference"] = max_loss_difference(
                runs["baseline"][0]["losses"], runs[name][0]["losses"]
            )
    result.update(batches=args.batches, batch_size=args.proxy_batch_size, torch_threads=args.threads, config=TINY)
    return result


# ------------------------------------------------------------------------------------------------ 2. paper sizes


def make_rows(rows: int, seconds: float, raw: bool, seed: int = 0):
    import datasets

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


def time_epoch(mode: str, rows: int, batch_size: int, seconds: float, device: torch.device, precision: str = "no",
               **options) -> float:  # fmt: skip
    """Samples/s of one training epoch. `mode`: "cached" (audio features from the dataset), "recompute" (our frozen
    wav2vec2 under no_grad each step), "original" (wav2vec2 recomputed with gradients flowing into its transformer
    layers, which no optimiser steps, as the original code does). `options`: more `TrainingArguments`."""
    from avemotion import VavlConfig, VavlForEmotionRecognition
    from avemotion.models.vavl.configuration_vavl import wav2vec2_large_robust_config
    from avemotion.training import EmotionTrainer, TrainingArguments

    _use_device(device)
    torch.manual_seed(0)
    raw = mode != "cached"
    # dropout, layerdrop and SpecAugment off: the original keeps wav2vec2 in eval mode
    backbone = wav2vec2_large_robust_config(layerdrop=0.0, mask_time_prob=0.0) if raw else None
    config = VavlConfig.from_preset(
        "crema-d", audio_backbone_config=backbone, visual_backbone_config=None, audio_backbone_name=None
    )
    model = VavlForEmotionRecognition(config)
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(output_dir=output, num_train_epochs=1, per_device_train_batch_size=batch_size,
                                 disable_tqdm=True, mixed_precision=precision, save_strategy="no", **options)  # fmt: skip
        trainer = EmotionTrainer(model, args, make_rows(rows, seconds, raw))
        trainer._prepare()
        if mode == "original":
            # after the optimiser is built: gradients reach the transformer layers but are never applied
            model.config.freeze_audio_backbone = False
            for name, parameter in model.vavl.audio_backbone.named_parameters():
                parameter.requires_grad_(not name.startswith("feature_extractor."))
        warm = trainer._dataloader(make_rows(batch_size, seconds, raw, seed=1), train=True)
        # a host batch: the trainer places it on its device, as in training
        trainer._training_batch(trainer._prepare_labels(next(iter(warm))), boundary=True)
        synchronize(device)
        start = time.perf_counter()
        trainer._train_epoch(0)
        synchronize(device)
        return rows / (time.perf_counter() - start)


def paper_sizes(args: argparse.Namespace, device: torch.device) -> dict:
    common = (args.rows, args.batch_size, args.seconds, device)
    result: dict = {"samples_per_second": {}}
    speeds = result["samples_per_second"]
    speeds["cached_features_fp32"] = time_epoch("cached", *common)
    if device.type == "cuda":
        speeds["cached_features_bf16"] = time_epoch("cached", *common, precision="bf16")
        speeds["cached_features_fp32_tf32"] = time_epoch("cached", *common, tf32=True)
        result["bf16_over_fp32"] = speeds["cached_features_bf16"] / speeds["cached_features_fp32"]
        result["target_samples_per_second"] = 400.0
    else:  # the recomputation comparison is a CPU one (its backbone dominates on any device)
        speeds["recompute_wav2vec2_no_grad"] = time_epoch("recompute", *common)
        speeds["recompute_wav2vec2_as_original"] = time_epoch("original", *common)
        result["speed_up_vs_original"] = speeds["cached_features_fp32"] / speeds["recompute_wav2vec2_as_original"]
        result["speed_up_vs_no_grad_recompute"] = speeds["cached_features_fp32"] / speeds["recompute_wav2vec2_no_grad"]
        result["target_speed_up"] = 10.0
    result.update(rows=args.rows, batch_size=args.batch_size, seconds_per_clip=args.seconds)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    parser.add_argument("--proxy_only", action="store_true", help="skip the paper-sized part")
    parser.add_argument("--baseline_src", default=None, help="src/ of the checkout to compare with (proxy)")
    parser.add_argument("--batches", type=int, default=24, help="proxy: batches per epoch")
    parser.add_argument("--proxy_batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="proxy: timed epochs per process (best taken)")
    parser.add_argument("--rounds", type=int, default=2, help="proxy: processes per checkout, taking turns")
    parser.add_argument("--threads", type=int, default=1, help="proxy: torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--rows", type=int, default=None, help="paper sizes: rows (default 16 on CPU, 256 on CUDA)")
    parser.add_argument("--batch_size", type=int, default=None, help="paper sizes (default 8 on CPU, 16 on CUDA)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", default=None)
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--optimizer_implementation", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        torch.set_num_threads(args.threads)
        options = {"optimizer_implementation": args.optimizer_implementation} if args.optimizer_implementation else {}
        print(json.dumps(proxy_worker(args.device, args.batches, args.proxy_batch_size, args.repeats, **options)))
        return
    device = resolve_device(args.device)
    args.rows = args.rows or (256 if device.type == "cuda" else 16)
    args.batch_size = args.batch_size or (16 if device.type == "cuda" else 8)
    result = {"proxy": proxy(args)}
    table = ["| proxy (tiny VAVL, batch 16, fp32) | per batch ms | floor ms | overhead ms |", "|---|---|---|---|"]
    for name in ("baseline", "this checkout", "this checkout, foreach Adam"):
        if name in result["proxy"]:
            entry = result["proxy"][name]
            table.append(f"| {name} | {entry['per_batch_ms']:.2f} | {entry['floor_ms']:.2f} | "
                         f"{entry['overhead_ms']:.2f} |")  # fmt: skip
    print("\n".join(table))
    for name in ("this checkout", "this checkout, foreach Adam"):
        if "overhead_reduction" in result["proxy"][name]:
            p = result["proxy"][name]
            print(f"{name}: overhead {p['overhead_reduction']:.2f}x smaller (target >= 2x), per batch "
                  f"{p['per_batch_speed_up']:.2f}x, max |loss difference| {p['max_abs_loss_difference']:.2e} (target "
                  "<= 1e-6)")  # fmt: skip
    if not args.proxy_only:
        result["paper_sizes"] = paper_sizes(args, device)
        print("| paper-sized VAVL | samples/s |\n|---|---|")
        for name, value in result["paper_sizes"]["samples_per_second"].items():
            print(f"| {name} | {value:.2f} |")
    write_results("training.json", result, device, args.output)


if __name__ == "__main__":
    main()
