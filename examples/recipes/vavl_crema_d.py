"""VAVL on CREMA-D with the paper's protocol, end to end (Goncalves et al., arXiv 2305.07216; reference/vavl.md).

What a user with the corpus and the weights runs (CREMA-D in its official layout, VAVL's label files
`label_consensus_{1..5}.csv`, HSEmotion's `enet_b2_8_best.pt`):

    python examples/recipes/vavl_crema_d.py --data_dir CREMA-D --labels_csv labels_consensus_6class_M \
        --partition 1 --face_checkpoint enet_b2_8_best.pt --output_dir runs/vavl-crema-d-p1 \
        [--push_to_hub ORG/vavl-crema-d-p1]

Steps (each writes a folder under OUTPUT_DIR; the numbered commands are the public `avemotion` CLI):
 1. `face-model/`: `avemotion convert-hsemotion --checkpoint enet_b2_8_best.pt --output_dir OUTPUT_DIR/face-model
    --image_size 224`: HSEmotion's EfficientNet-B2 (AffectNet) as a transformers `EfficientNetModel` (1408-d pooled features of 224x224 crops).
    Skipped with `--face_model DIR` (an already converted directory).
 2. `base-model/`: `VavlForEmotionRecognition.from_backbones(audio=facebook/wav2vec2-large-robust, visual=face-model,
    audio_num_layers=12, config=VavlConfig.from_preset("crema-d"))` (frozen backbones, wav2vec2 cut to 12 of its 24
    layers) and `AvEmotionProcessor.from_backbones(...)` (face crops with the face model's size, resampling and
    ImageNet mean/std). VAVL's normalisations use training-set statistics: one scalar mean/std of the training
    waveforms (set in the processor), and a per-dimension mean/std of the training frames' face features (set in the
    model, `normalize_visual_features`).
 3. `features/`: `avemotion cache-features --model base-model --dataset crema-d --data_dir DATA_DIR --labels_csv ...
    --partition N --output_dir features`: `load_corpus("crema-d", ...)` (the label file's speaker-independent
    Train/Development/Test split) through the model's frozen backbones and the processor, saved with the splits
    `train`, `validation`, `test` (resumable: a killed run started again computes only what is missing). Then the
    visual statistics go into `base-model/`, and the test clips with one modality only into `test-views/`
    (`test_audio_only`, `test_video_only`).
 4. `model/`: `avemotion train` with the paper's hyper-parameters (§4.3: Adam, lr 5e-5, weight decay 5e-7 (coupled
    L2), betas (0.95, 0.999), eps 1e-8, constant rate, no clipping, batch 32, 20 epochs, no shuffling as the original,
    VAVL's three steps per batch: visual, acoustic, fusion), keeping the epoch with the best development score of the
    fusion head (`audio_visual/macro_f1`; the original selects on the fusion head's development cross-entropy, which
    the trainer does not report per head).
 5. `eval/`: `avemotion evaluate` per modality on the test split: both modalities (`audio_visual.json`: every head,
    as the paper reports audio-visual, audio-only and video-only results on paired clips) and each modality alone
    (`audio_only.json`, `video_only.json`: the model given only that modality). `results.json` sums them up.
 6. with `--push_to_hub ORG/NAME`: `avemotion push` (model, processor, model card with the test metrics).

The paper reports means over the five partitions: run the recipe with `--partition 1` ... `5`.
On N GPUs (or machines), the same command under `accelerate launch --num_processes N examples/recipes/vavl_crema_d.py
...`: the processes share the feature caching, the training and the evaluation; the main process writes the model
directories (on several machines, OUTPUT_DIR must be a shared file system).
For a smoke test on the synthetic corpus (`avemotion synth`, already-cropped faces): `--face_detector none`, tiny
`--config_overrides` and backbones (tests/test_recipe_crema_d.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from avemotion import AvEmotionProcessor, VavlConfig, VavlForEmotionRecognition
from avemotion.cli import main as avemotion_cli
from avemotion.data import load_corpus
from avemotion.processing.media import decode_audio_value
from avemotion.utils.distributed import process_state

logger = logging.getLogger("vavl_crema_d")

# reference/vavl.md §4.3 (the run scripts' values)
PAPER_TRAINING = {
    "num_train_epochs": 20,
    "per_device_train_batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 5e-5,
    "weight_decay": 5e-7,
    "adam_beta1": 0.95,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "lr_scheduler_type": "constant",
}
KEEP_COLUMNS = ("id", "label", "audio_features", "visual_features")
MODALITY_REPORTS = {"audio_visual": "test", "audio_only": "test_audio_only", "video_only": "test_video_only"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="CREMA-D root (AudioWAV/, VideoFlash/)")
    parser.add_argument(
        "--labels_csv", required=True, help="a VAVL label file, or the folder of label_consensus_N.csv"
    )
    parser.add_argument("--partition", type=int, default=1, help="which VAVL partition of a label folder (1-5)")
    parser.add_argument("--output_dir", required=True)
    face = parser.add_mutually_exclusive_group(required=True)
    face.add_argument("--face_checkpoint", help="HSEmotion checkpoint to convert (enet_b2_8_best.pt)")
    face.add_argument("--face_model", help="an already converted face-model directory (avemotion convert-hsemotion)")
    parser.add_argument("--image_size", type=int, default=224, help="face crop size (224 in the paper)")
    parser.add_argument("--audio_backbone", default="facebook/wav2vec2-large-robust", help="hub id or directory")
    parser.add_argument("--audio_num_layers", type=int, default=12, help="wav2vec2 layers kept (12 in the paper)")
    parser.add_argument("--face_detector", default=None, help="processor face detector ('none': frames are crops)")
    parser.add_argument("--config_overrides", default="{}", help="VavlConfig fields as JSON (smoke tests)")
    for name, value in PAPER_TRAINING.items():
        parser.add_argument(f"--{name}", type=type(value), default=value, help=f"paper: {value}")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the training data (the original did not)")
    parser.add_argument("--metric_for_best_model", default="audio_visual/macro_f1")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--cache_batch_size", type=int, default=8, help="clips per backbone call when caching")
    parser.add_argument("--dataset_cache_dir", default=None, help="where datasets keeps the corpus tables")
    parser.add_argument("--push_to_hub", default=None, metavar="ORG/NAME", help="push the trained model there")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: a private repo")
    parser.add_argument("--hub_id", action="append", default=[], metavar="LOCAL_DIR=ORG/NAME",
                        help="with --push_to_hub: name a local backbone directory by its Hub id (repeatable)")  # fmt: skip
    return parser.parse_args(argv)


def run_cli(*argv: Any) -> None:
    """`avemotion ARGV` in this process; a non-zero status stops the recipe."""
    words = [str(word) for word in argv]
    logger.info("avemotion %s", " ".join(words))
    status = avemotion_cli(words)
    if status:
        raise SystemExit(f"avemotion {words[0]} failed (status {status})")


def face_model(args: argparse.Namespace, output: Path) -> Path:
    """Step 1: the converted face model directory."""
    if args.face_model:
        return Path(args.face_model)
    target = output / "face-model"
    run_cli("convert-hsemotion", "--checkpoint", args.face_checkpoint, "--output_dir", target,
            "--image_size", args.image_size)  # fmt: skip
    return target


def waveform_statistics(train: datasets.Dataset, sampling_rate: int) -> tuple[float, float]:
    """VAVL's global audio normalisation: one mean and std over every sample of every training waveform."""
    total = total_sq = count = 0.0
    audio = train.cast_column("audio", datasets.Audio(decode=False)).select_columns(["audio"])
    for row in audio:
        if row["audio"] is None:
            continue
        wave = decode_audio_value(row["audio"], sampling_rate, "training audio").astype(np.float64)
        total, total_sq, count = total + wave.sum(), total_sq + np.square(wave).sum(), count + wave.size
    if not count:
        raise ValueError("the training split holds no audio: cannot compute VAVL's waveform statistics")
    mean = total / count
    return float(mean), float(math.sqrt(max(total_sq / count - mean**2, 0.0)))


def visual_statistics(train: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """VAVL's visual normalisation: per-dimension mean and std over every face frame of the training clips."""
    total = total_sq = None
    count = 0
    for batch in train.select_columns(["visual_features"]).with_format("arrow").iter(batch_size=64):
        column = batch.column("visual_features").combine_chunks()
        frames = column.flatten()  # one entry per frame (rows without video have none)
        if len(frames) == 0:
            continue
        values = frames.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(frames), -1)
        total = values.sum(0) if total is None else total + values.sum(0)
        total_sq = np.square(values).sum(0) if total_sq is None else total_sq + np.square(values).sum(0)
        count += len(values)
    if not count:
        raise ValueError("the training split holds no face frames: cannot compute VAVL's visual statistics")
    mean = total / count
    return mean.astype(np.float32), np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)).astype(np.float32)


def build_base_model(args: argparse.Namespace, output: Path, face_dir: Path) -> Path:
    """Step 2 (the main process): the base model with its frozen backbones and the processor with VAVL's waveform
    statistics, saved in `base-model/`."""
    overrides = json.loads(args.config_overrides)
    config = VavlConfig.from_preset("crema-d", audio_backbone_config=None, visual_backbone_config=None, **overrides)
    model = VavlForEmotionRecognition.from_backbones(
        audio=args.audio_backbone, visual=face_dir, audio_num_layers=args.audio_num_layers, config=config
    ).eval()
    image_kwargs = {}
    if args.face_detector is not None:
        image_kwargs["face_detector"] = None if args.face_detector.lower() == "none" else args.face_detector
    processor = AvEmotionProcessor.from_backbones(audio=args.audio_backbone, visual=face_dir, **image_kwargs)
    train_rows = load_corpus("crema-d", args.data_dir, **corpus_options(args))["train"]
    extractor = processor.feature_extractor
    extractor.global_mean, extractor.global_std = waveform_statistics(train_rows, extractor.sampling_rate)
    base_dir = output / "base-model"
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    return base_dir


def corpus_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"labels_csv": args.labels_csv, "partition": args.partition, "cache_dir": args.dataset_cache_dir}


def cache(args: argparse.Namespace, base_dir: Path, features_dir: Path) -> None:
    """Step 3 (every process): `avemotion cache-features`, shared by the processes of `accelerate launch`."""
    dataset_cache = ["--dataset_cache_dir", args.dataset_cache_dir] if args.dataset_cache_dir else []
    run_cli("cache-features", "--model", base_dir, "--dataset", "crema-d", "--data_dir", args.data_dir,
            "--labels_csv", args.labels_csv, "--partition", args.partition, "--output_dir", features_dir,
            "--batch_size", args.cache_batch_size, *dataset_cache)  # fmt: skip


def finish_base_model(base_dir: Path, features_dir: Path, views_dir: Path) -> None:
    """Step 3, the main process's end: VAVL's visual statistics of the training frames into the base model, and the
    test clips with one modality only (`test_audio_only`, `test_video_only`) in `views_dir`."""
    import torch

    splits = datasets.load_from_disk(str(features_dir))
    test = splits["test"]
    views = {
        "test_audio_only": test.filter(lambda row: row["audio_features"] is not None).map(
            lambda row: {"visual_features": None}, features=test.features
        ),
        "test_video_only": test.filter(lambda row: row["visual_features"] is not None).map(
            lambda row: {"audio_features": None}, features=test.features
        ),
    }
    datasets.DatasetDict(views).save_to_disk(str(views_dir))
    mean, std = visual_statistics(splits["train"])
    model = VavlForEmotionRecognition.from_pretrained(base_dir)
    model.config.normalize_visual_features = True
    model.vavl.visual_features_mean.copy_(torch.from_numpy(mean))
    model.vavl.visual_features_std.copy_(torch.from_numpy(std))
    model.save_pretrained(base_dir)


def train(args: argparse.Namespace, base_dir: Path, features_dir: Path, model_dir: Path) -> None:
    """Step 4: `avemotion train` with the paper's hyper-parameters."""
    options = [f"--{name}={getattr(args, name)}" for name in PAPER_TRAINING]
    run_cli("train", "--dataset", features_dir, "--model_name_or_path", base_dir, "--output_dir", model_dir,
            "--overwrite_output_dir", "--schedule", "auto", *options, "--shuffle", str(args.shuffle).lower(),
            "--metric_for_best_model", args.metric_for_best_model, "--seed", args.seed,
            "--mixed_precision", args.mixed_precision, "--disable_tqdm", "true")  # fmt: skip


def evaluate(model_dir: Path, features_dir: Path, views_dir: Path, output: Path) -> dict[str, Any]:
    """Step 5: per-modality test reports; returns the summary written to `results.json`."""
    summary: dict[str, Any] = {}
    for name, split in MODALITY_REPORTS.items():
        folder = features_dir if split == "test" else views_dir
        if len(datasets.load_from_disk(str(folder / split))) == 0:
            logger.warning("no test clip has %s: skipped", name)
            continue
        report_file = output / "eval" / f"{name}.json"
        run_cli("evaluate", "--model", model_dir, "--dataset", folder, "--split", split,
                "--output", report_file)  # fmt: skip
        report = json.loads(report_file.read_text())
        if name == "audio_visual":  # every head on the paired clips, as the paper reports them
            summary.update({f"{branch}_heads_on_paired_clips": report.get(branch) for branch in ("audio", "visual")})
            summary["audio_visual"] = report.get("audio_visual")
        else:
            summary[name] = report.get("combined")
    (output / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    # under `accelerate launch`, every process runs the recipe: the main process writes the model directories,
    # all of them share the feature caching, the training and the evaluation
    state = process_state()  # accelerate's PartialState (one process without `accelerate launch`)
    base_dir = output / "base-model"
    features_dir, views_dir, model_dir = output / "features", output / "test-views", output / "model"
    if state.is_main_process:
        build_base_model(args, output, face_model(args, output))
    state.wait_for_everyone()
    cache(args, base_dir, features_dir)
    if state.is_main_process:
        finish_base_model(base_dir, features_dir, views_dir)
    state.wait_for_everyone()
    train(args, base_dir, features_dir, model_dir)
    summary = evaluate(model_dir, features_dir, views_dir, output)
    if not state.is_main_process:
        return summary
    if args.push_to_hub:
        description = (f"CREMA-D, VAVL label partition {args.partition} (speaker-independent Train/Development/Test); "
                       "metrics on its test split.")  # fmt: skip
        hub_ids = [word for pair in args.hub_id for word in ("--hub_id", pair)]
        run_cli("push", "--model", model_dir, "--repo_id", args.push_to_hub, "--training_data", description,
                *hub_ids, *(["--private"] if args.private else []))  # fmt: skip
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
