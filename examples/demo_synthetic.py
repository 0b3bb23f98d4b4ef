"""The main demo (`make demo`): train a small VAVL on the built-in synthetic corpus and show that fusion matters.

1. Write the synthetic audio-visual corpus (CREMA-D layout; 6 classes: the voice's pitch band tells 3 groups, the
   face tells 2, only both together tell all 6) and load it with `avemotion.data.load_corpus`.
2. Compute the corpus's cheap features (32 log-mel bins at 50 Hz, 16x16 grey face grid) through the feature cache.
3. Train a small VAVL with VAVL's three-step schedule (visual, acoustic, fusion step per batch) with the Accelerate
   trainer, selected on the validation split (speaker-independent).
4. Print the per-modality test metrics next to the corpus's accuracy ceilings, and run
   `pipeline("audio-visual-emotion")` on a held-out test clip.
5. Pictures for the README: a 12 s clip of six synthetic speakers' turns (one per class), analysed in 2 s windows,
   drawn with `avemotion.plotting.plot_timeline` (`timeline.png`), and a screenshot of the demo app
   (examples/app.py) analysing it in headless Chromium (`app.png`; skipped, with a note, where Chromium or Playwright
   is not installed).

Runs in a few minutes on 2 CPU cores. `python examples/demo_synthetic.py --help` lists the options.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import soundfile as sf
import torch
from transformers import pipeline

import avemotion  # noqa: F401  (registers the models and the pipeline task)
from avemotion import AvEmotionProcessor, VavlConfig, VavlForEmotionRecognition
from avemotion.data import cache_features, load_corpus
from avemotion.data.synthetic import (
    CEILINGS,
    SAMPLING_RATE,
    SyntheticFeatureExtractor,
    draw_face,
    synth_audio,
    write_mp4,
    write_synthetic_corpus,
)
from avemotion.training import TrainingArguments, train_and_evaluate

BRANCHES = [("audio", "audio only"), ("visual", "video only"), ("audio_visual", "audio-visual (fusion head)")]
CEILING_OF = {"audio": CEILINGS["audio"], "visual": CEILINGS["video"], "audio_visual": CEILINGS["audio-visual"]}


def build_model(id2label: dict[int, str]) -> VavlForEmotionRecognition:
    """VAVL's architecture at a small width, on the synthetic corpus's feature sizes (no backbones)."""
    extractor = SyntheticFeatureExtractor()
    config = VavlConfig(
        audio_feature_dim=extractor.audio_feature_dim,
        visual_feature_dim=extractor.visual_feature_dim,
        projection_dim=32,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        conv_kernel_size=7,
        num_modality_layers=1,
        num_shared_layers=1,
        head_hidden_sizes=[64, 32],
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
        window_seconds=4.0,
    )
    return VavlForEmotionRecognition(config)


def standardize(corpus: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Standardise every feature dimension with the training split's statistics (as VAVL does for its visual
    features; log-mel values are otherwise far from unit scale, which slows learning and inflates the
    reconstruction loss). Returns the corpus and `{feature: (mean, std)}` (saved with the model for the app)."""
    stats = {}
    for name in ("audio_features", "visual_features"):
        frames = np.concatenate([np.asarray(x, np.float32) for x in corpus["train"][name] if x is not None])
        stats[name] = (frames.mean(0), frames.std(0) + 1e-6)

    def apply(row: dict) -> dict:
        for name, (mean, std) in stats.items():
            if row[name] is not None:
                row[name] = ((np.asarray(row[name], np.float32) - mean) / std).tolist()
        return row

    return corpus.map(apply, desc="standardising features"), stats


def write_turns_clip(folder: Path, labels: list[int], seconds: float = 2.0, seed: int = 0) -> tuple[Path, Path]:
    """A clip of synthetic turns, `seconds` each with the class `labels[i]`: `clip.mp4` (64x64 faces at 8 fps) and
    `clip.wav` (16 kHz). Returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    fps, waves, frames = 8, [], []
    for index, label in enumerate(labels):
        rng = np.random.default_rng([seed, 1000 + index])
        waveform, envelope = synth_audio(label, seconds, rng)
        waves.append(waveform)
        frames.append(draw_face(label, envelope(np.arange(int(seconds * fps)) / fps), 64, rng))
    video, audio = folder / "clip.mp4", folder / "clip.wav"
    write_mp4(video, np.concatenate(frames), fps)
    sf.write(audio, np.concatenate(waves), SAMPLING_RATE, subtype="PCM_16")
    return video, audio


def load_app():
    """examples/app.py as a module."""
    spec = importlib.util.spec_from_file_location("avemotion_demo_app", Path(__file__).with_name("app.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_pictures(model_dir: Path, output: Path, label_names: list[str], seed: int, screenshot: bool) -> dict:
    """`timeline.png` and (with Chromium and Playwright) `app.png` of a clip of six turns, one per class."""
    try:
        app = load_app()
    except ImportError as error:  # gradio or matplotlib missing: the `demo` extra
        print(f"\npictures skipped: {error} (pip install 'avemotion[demo]')")
        return {}
    from avemotion.plotting import save_figure

    order = np.random.default_rng(seed).permutation(len(label_names)).tolist()
    video, audio = write_turns_clip(output / "app-clip", order, seconds=2.0, seed=seed)
    analysis = app.analyse(str(model_dir), video=str(video), audio=str(audio), window_seconds=2.0)
    truth = " ".join(label_names[i] for i in order)
    found = " ".join(max(w["predictions"], key=lambda p: p["score"])["label"] for w in analysis.main["windows"])
    print(f"\napp on a 12 s clip of six turns (2 s windows):\n  true:      {truth}\n  predicted: {found}")
    pictures = {
        "timeline": str(save_figure(app.timeline_figure(analysis, "six synthetic turns"), output / "timeline.png"))
    }
    print(f"timeline: {pictures['timeline']}")
    if not screenshot:
        return pictures
    reason = None
    if app.find_chromium() is None:
        reason = "no Chromium installed (`make system-deps` installs Debian's chromium as root)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "playwright is not installed (the `demo` extra)"
    if reason:
        print(f"app screenshot skipped: {reason}")
        return pictures
    with app.serve(str(model_dir)) as url:
        app.capture_screenshot(url, output / "app.png", video=str(video), audio=str(audio), window_seconds=2.0)
    pictures["app"] = str(output / "app.png")
    print(f"app screenshot: {pictures['app']}")
    return pictures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="outputs/demo", help="corpus, feature cache, checkpoints, metrics")
    parser.add_argument("--num-clips", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pictures", action="store_true", help="skip timeline.png and app.png")
    parser.add_argument("--no-screenshot", action="store_true", help="skip app.png (the headless-Chromium screenshot)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    output = Path(args.output_dir)

    corpus_dir = output / f"corpus-{args.num_clips}-seed{args.seed}"
    if not (corpus_dir / "labels.csv").exists():
        print(f"writing {args.num_clips} synthetic clips to {corpus_dir} ...")
        write_synthetic_corpus(corpus_dir, num_clips=args.num_clips, seed=args.seed)
    corpus = load_corpus("synthetic", corpus_dir, cache_dir=output / "datasets-cache")
    print("splits (speaker-independent): " + ", ".join(f"{name} {len(split)}" for name, split in corpus.items()))
    corpus = cache_features(corpus, SyntheticFeatureExtractor(), cache_dir=output / "features-cache")
    columns = ["audio_features", "visual_features", "label"]
    corpus = datasets.DatasetDict({name: split.select_columns(columns) for name, split in corpus.items()})
    corpus, stats = standardize(corpus)

    label_names = corpus["train"].features["label"].names
    model = build_model(dict(enumerate(label_names)))
    training_args = TrainingArguments(
        output_dir=str(output / "vavl"),
        overwrite_output_dir=True,  # a rerun of the demo replaces its previous model
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer="adamw",
        weight_decay=1e-4,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        seed=args.seed,
        metric_for_best_model="audio_visual/unweighted_accuracy",
        save_total_limit=1,
    )
    result = train_and_evaluate(model, corpus["train"], corpus["validation"], training_args, corpus["test"])
    test = result["test"]

    print(f"\nTest split ({test['audio_visual']['num_samples']} clips), model of epoch {result['best_epoch']}:")
    print(f"{'output':<28} {'accuracy':>9} {'UA':>7} {'macro-F1':>9} {'ceiling':>8}")
    for branch, name in BRANCHES:
        metrics = test[branch]
        print(f"{name:<28} {metrics['accuracy']:>9.3f} {metrics['unweighted_accuracy']:>7.3f} "
              f"{metrics['macro_f1']:>9.3f} {CEILING_OF[branch]:>8.3f}")  # fmt: skip
    fusion = test["audio_visual"]["accuracy"]
    beats = fusion > test["audio"]["accuracy"] and fusion > test["visual"]["accuracy"]
    print(f"fusion beats each single modality: {'yes' if beats else 'NO'}")

    # The selected model with a processor, then the pipeline on a held-out test clip (its cheap features).
    model_dir = output / "vavl" / "best"
    trained = VavlForEmotionRecognition.from_pretrained(output / "vavl").eval()
    trained.save_pretrained(model_dir)
    AvEmotionProcessor().save_pretrained(model_dir)
    # the features' standardisation, so that the demo app (examples/app.py) computes the features this model takes
    standardization = {name: {"mean": mean.tolist(), "std": std.tolist()} for name, (mean, std) in stats.items()}
    features = {"extractor": "avemotion.data.synthetic", "standardize": standardization}
    (model_dir / "synthetic_features.json").write_text(json.dumps(features))
    classify = pipeline("audio-visual-emotion", model=str(model_dir))
    clip = corpus["test"][0]
    inputs = {"audio_features": clip["audio_features"], "visual_features": clip["visual_features"]}
    print(f"\npipeline on a held-out clip (true label: {label_names[clip['label']]}):")
    for modalities in (["audio_features", "visual_features"], ["audio_features"], ["visual_features"]):
        prediction = classify({k: inputs[k] for k in modalities}, top_k=2)
        shown = ", ".join(f"{p['label']} {p['score']:.2f}" for p in prediction)
        print(f"  {'+'.join(prediction[0]['modalities']):<12} -> {shown}")

    pictures = {}
    if not args.no_pictures:
        pictures = write_pictures(model_dir, output, label_names, args.seed, screenshot=not args.no_screenshot)

    summary = {"test": test, "best_epoch": result["best_epoch"], "fusion_beats_each_modality": beats,
               "ceilings": CEILINGS, "pictures": pictures, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    (output / "demo_metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"\ndone in {summary['seconds']} s; metrics in {output / 'demo_metrics.json'}, model in {model_dir}")
    return summary


if __name__ == "__main__":
    main()
