"""`avemotion push`: push a trained model directory (model, processor, generated model card) to the Hub."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model directory (e.g. a training output_dir)")
    parser.add_argument("--repo_id", required=True)
    parser.add_argument("--metrics", help="metrics JSON (default: MODEL/test_results.json, else eval_results.json)")
    parser.add_argument("--split", default=None, help="the split the metrics are on (default: from the file name)")
    parser.add_argument("--training_data", default=None, help="corpus, partition and split description (markdown)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--template", default=None, help="model card template (default: hub_cards/<model_type>.md)")


def run(args: argparse.Namespace) -> str:
    from .hub import push_to_hub

    model_dir = Path(args.model)
    metrics, split = None, args.split
    candidates = (
        [Path(args.metrics)] if args.metrics else [model_dir / "test_results.json", model_dir / "eval_results.json"]
    )
    for path in candidates:
        if path.is_file():
            metrics = json.loads(path.read_text())
            if "eval" in metrics and isinstance(metrics["eval"], dict) and "metric_for_best_model" in metrics:
                metrics = metrics["eval"]  # the trainer's eval_results.json
            split = split or ("test" if "test" in path.name else "validation")
            break
    else:
        if args.metrics:
            raise FileNotFoundError(f"--metrics {args.metrics} does not exist")
    hyperparameters = None
    if (model_dir / "training_args.json").is_file():
        hyperparameters = json.loads((model_dir / "training_args.json").read_text())
        hyperparameters.pop("output_dir", None)
    url = push_to_hub(
        model_dir, args.repo_id, metrics, args.training_data, hyperparameters, split or "test",
        private=args.private or None, token=args.token, template_path=args.template,
    )  # fmt: skip
    print(url)
    return url
