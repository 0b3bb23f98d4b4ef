"""Benchmark of the corpus jobs over several processes: `cache_features` (rows/s) and `predict_corpus` (files/s)
with 1 and 2 processes under `accelerate launch`, and the one-process overhead of the sharded, chunked
`cache_features` against the single `datasets.map` of the previous release on the same rows.

The model is small but not trivial (a 4-layer, 256-wide wav2vec2 and an EfficientNet at 64x64 on 2 s synthetic
clips at 8 fps) so that the backbones, not the bookkeeping, take the time. On CPU every process runs one torch thread
(as each would own one device); `--threads_per_process` changes that. On a machine with one GPU, `--device cuda`
runs every process on it (they share it: the numbers say how much one GPU gains from overlapping two processes'
preprocessing, not the scaling over GPUs).

Targets (issue 23): 2 processes >= 1.6x one; the new `cache_features` in one process within 5 % of the old one.
Prints a table and writes bench/results/distributed.json. Run: `python bench/bench_distributed.py [--quick]`.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import resolve_device, write_results  # noqa: E402

TARGET_SPEEDUP, TARGET_OVERHEAD = 1.6, 0.05
WAV2VEC2 = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
            "conv_dim": (128, 128, 128, 128, 128, 128, 128), "feat_extract_norm": "layer", "do_stable_layer_norm": True,
            "conv_bias": True, "num_conv_pos_embeddings": 32, "num_conv_pos_embedding_groups": 4}  # fmt: skip


def build_model_dir(directory: Path, image_size: int) -> None:
    import torch
    from transformers import EfficientNetConfig, Wav2Vec2Config

    from avemotion import VavlConfig, VavlForEmotionRecognition
    from avemotion.processing import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor

    torch.manual_seed(0)
    from transformers.models.efficientnet.modeling_efficientnet import round_filters

    visual = EfficientNetConfig(width_coefficient=0.5, depth_coefficient=0.5, image_size=image_size)
    visual.hidden_dim = round_filters(visual, 1280)  # the pooled feature width
    config = VavlConfig.from_preset(
        "crema-d", audio_backbone_config=Wav2Vec2Config(**WAV2VEC2).to_dict(), visual_backbone_config=visual.to_dict(),
        audio_feature_dim=256, visual_feature_dim=visual.hidden_dim, hidden_size=64, intermediate_size=128,
        num_attention_heads=4,
    )  # fmt: skip
    VavlForEmotionRecognition(config).eval().save_pretrained(directory)
    size = {"height": image_size, "width": image_size}
    AvEmotionProcessor(feature_extractor=AvEmotionFeatureExtractor(),
                       image_processor=AvEmotionImageProcessor(face_detector=None, size=size)).save_pretrained(directory)  # fmt: skip


def build_rows(root: Path, num_clips: int, image_size: int) -> Path:
    """The synthetic corpus (audio + video per clip) as one saved dataset, and a JSON-lines table of its files."""
    import datasets

    from avemotion.data import load_corpus, write_synthetic_corpus

    write_synthetic_corpus(root / "corpus", num_clips=num_clips, seed=0, image_size=image_size)
    corpus = load_corpus("synthetic", root / "corpus", cache_dir=root / "hf")
    rows = datasets.concatenate_datasets([corpus[name] for name in corpus])
    rows.save_to_disk(str(root / "rows"))
    with open(root / "inputs.jsonl", "w") as table:
        for row in rows.cast_column("audio", datasets.Audio(decode=False)):
            table.write(json.dumps({"id": row["id"], "audio": row["audio"]["path"], "video": row["video"]}) + "\n")
    return root / "rows"


# --------------------------------------------------------------------------------------- one timed run (a worker)


def worker(args: argparse.Namespace) -> None:
    import torch

    from avemotion.utils.distributed import is_main_process, process_state, wait_for_everyone

    torch.set_num_threads(args.threads_per_process)
    state = process_state()
    device = args.device if args.device != "auto" else str(state.device)
    if args.job == "predict":
        from avemotion.pipelines.cli_predict import load_pipeline
        from avemotion.pipelines.corpus_prediction import predict_corpus, read_inputs

        pipe = load_pipeline(args.model, device=device)
        inputs = read_inputs(args.inputs)
        wait_for_everyone()
        start = time.perf_counter()
        predict_corpus(pipe, inputs, args.output_file, batch_size=args.batch_size)
        count = len(inputs)
    else:
        import datasets

        from avemotion.data.cache import cache_features
        from avemotion.training.cli_train import load_processor
        from avemotion.training.run_files import load_model

        model, processor = load_model(args.model).eval().to(device), load_processor(args.model, required=True)
        rows = datasets.load_from_disk(args.rows)
        count = len(rows)
        wait_for_everyone()
        start = time.perf_counter()
        if args.job == "cache-old":  # the previous release: one datasets.map over every row
            _old_cache_features(rows, model, processor, args.batch_size, args.cache_dir)
        else:
            cache_features(rows, model, processor, batch_size=args.batch_size, cache_dir=args.cache_dir,
                           chunk_size=args.chunk_size)  # fmt: skip
    wait_for_everyone()
    seconds = time.perf_counter() - start
    if is_main_process():
        Path(args.report).write_text(json.dumps({"seconds": seconds, "count": count,
                                                 "processes": state.num_processes}))  # fmt: skip


def _old_cache_features(rows, model, processor, batch_size: int, cache_dir: str) -> None:
    """`cache_features` as the previous release ran it: one `datasets.map` over the dataset into one Arrow file."""
    import functools

    import datasets

    from avemotion.data.cache import _BackboneExtractor, _extract_reporting_bad_files

    extractor = _BackboneExtractor(model, processor)
    features = rows.features.copy()
    features["audio_features"] = features["visual_features"] = datasets.List(datasets.List(datasets.Value("float32")))
    plain = datasets.Audio(sampling_rate=rows.features["audio"].sampling_rate, decode=False)
    rows, features["audio"] = rows.cast_column("audio", plain), plain
    rows.map(functools.partial(_extract_reporting_bad_files, extractor.extract_batch), batched=True,
             batch_size=batch_size, features=features, new_fingerprint="old-release",
             cache_file_name=str(Path(cache_dir) / "features-old.arrow"), load_from_cache_file=False)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ the driver


def timed_run(processes: int, job: str, args: argparse.Namespace, scratch: Path, **options: object) -> dict:
    """One launch of this script as `processes` workers; returns the worker's report plus the launch's wall time."""
    report = scratch / f"report-{job}-{processes}-{time.monotonic_ns()}.json"
    cache = scratch / f"cache-{time.monotonic_ns()}"
    words = ["--worker", "--job", job, "--model", str(scratch / "model"), "--rows", str(scratch / "rows"),
             "--inputs", str(scratch / "inputs.jsonl"), "--output_file", str(cache) + ".jsonl", "--cache_dir",
             str(cache), "--report", str(report), "--batch_size", str(args.batch_size), "--threads_per_process",
             str(args.threads_per_process), "--device", args.device]  # fmt: skip
    for name, value in options.items():
        words += [f"--{name}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads_per_process),
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(scratch / "hf")}  # fmt: skip
    if resolve_device(args.device).type == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              *(["--multi_gpu"] if processes > 1 else [])]  # fmt: skip
    command = [*launch, __file__, *words] if job != "cache-old" else [sys.executable, __file__, *words]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{job} with {processes} processes failed:\n{done.stderr[-3000:]}")
    return {**json.loads(report.read_text()), "wall_seconds": time.perf_counter() - start}


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda run: run["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips and one repeat (a smoke run)")
    parser.add_argument("--num_clips", type=int, default=None, help="default 96 (--quick: 24)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per setting, the fastest kept (default 2)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--chunk_size", type=int, default=16, help="rows per chunk in the multi-process runs")
    parser.add_argument("--threads_per_process", type=int, default=1)
    parser.add_argument("--device", default="auto", help="cpu or cuda (auto: cuda when available)")
    parser.add_argument("--output", default=None, help="JSON report (default bench/results/distributed.json)")
    for name in ("--worker", "--job", "--model", "--rows", "--inputs", "--output_file", "--cache_dir", "--report"):
        parser.add_argument(name, **({"action": "store_true"} if name == "--worker" else {"default": None}),
                            help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    num_clips = args.num_clips or (24 if args.quick else 96)
    repeats = args.repeats or (1 if args.quick else 2)
    device = resolve_device(args.device)
    args.device = device.type
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        build_model_dir(scratch / "model", 64)
        build_rows(scratch, num_clips, 64)
        runs: dict[str, dict] = {}
        for processes in (1, 2):
            runs[f"cache_{processes}"] = best([timed_run(processes, "cache", args, scratch,
                                                         chunk_size=args.chunk_size) for _ in range(repeats)])  # fmt: skip
            runs[f"predict_{processes}"] = best([timed_run(processes, "predict", args, scratch)
                                                 for _ in range(repeats)])  # fmt: skip
        runs["cache_old"] = best([timed_run(1, "cache-old", args, scratch) for _ in range(repeats)])
        runs["cache_new_default_chunks"] = best([timed_run(1, "cache", args, scratch, chunk_size=128)
                                                 for _ in range(repeats)])  # fmt: skip
    report(runs, num_clips, args, device)


def report(runs: dict[str, dict], num_clips: int, args: argparse.Namespace, device: object) -> None:
    rate = {name: run["count"] / run["seconds"] for name, run in runs.items()}
    speedup = {job: rate[f"{job}_2"] / rate[f"{job}_1"] for job in ("cache", "predict")}
    overhead = {f"chunks_{size}": runs[name]["seconds"] / runs["cache_old"]["seconds"] - 1
                for size, name in ((args.chunk_size, "cache_1"), (128, "cache_new_default_chunks"))}  # fmt: skip
    print(f"{num_clips} clips, batch {args.batch_size}, {args.threads_per_process} thread(s) per process, {device}")
    print(f"{'run':<40} {'seconds':>9} {'per second':>11} {'launch wall s':>14}")
    for name, run in runs.items():
        print(f"{name:<40} {run['seconds']:>9.2f} {rate[name]:>11.2f} {run['wall_seconds']:>14.1f}")
    for job, value in speedup.items():
        verdict = "meets" if value >= TARGET_SPEEDUP else "BELOW"
        print(f"{job}: 2 processes / 1 = {value:.2f}x ({verdict} the {TARGET_SPEEDUP}x target)")
    for name, value in overhead.items():
        verdict = "meets" if value <= TARGET_OVERHEAD else "ABOVE"
        print(f"cache_features one process ({name}) vs the previous release: {value:+.1%} ({verdict} the 5 % target)")
    result = {"num_clips": num_clips, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
              "threads_per_process": args.threads_per_process, "runs": runs, "per_second": rate,
              "speedup_2_over_1": speedup, "one_process_overhead": overhead,
              "targets": {"speedup": TARGET_SPEEDUP, "overhead": TARGET_OVERHEAD}}  # fmt: skip
    write_results("distributed.json", result, device, args.output)


if __name__ == "__main__":
    main()
