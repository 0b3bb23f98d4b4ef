"""`avemotion push`: push a trained model directory (model, processor, generated model card) to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Push a model directory to a Hub repo as one commit: the model, its processor and a generated model card. "
        "The repo then holds exactly these files (files of an earlier push that this one does not contain are "
        "deleted, .gitattributes kept). Local paths in the configs and the card (backbone directories, "
        "resume_from_checkpoint, ...) are replaced by their Hub id when known, else their base name, in the "
        "uploaded copy only."
    )
    parser.add_argument("--model", required=True, help="the model directory (e.g. a training output_dir)")
    parser.add_argument("--repo_id", required=True)
    parser.add_argument("--metrics", help="metrics JSON (default: MODEL/test_results.json, else eval_results.json)")
    parser.add_argument("--split", default=None, help="the split the metrics are on (default: from the file name)")
    parser.add_argument("--training_data", default=None, help="corpus, partition and split description (markdown)")
    parser.add_argument(
        "--private",
        action="store_true",
        help="keep the model private: a new repo is created private, and an existing public repo is made private "
        "before anything is uploaded. Without it a new repo gets the Hub's default visibility and an existing one "
        "keeps its own (a push never makes a private repo public)",
    )
    parser.add_argument(
        "--processor",
        default=None,
        help="directory (or Hub id) to take the processor from when MODEL has none, e.g. the base model the "
        "features were cached with; a push without a processor is refused",
    )
    parser.add_argument(
        "--hub_id",
        action="append",
        default=[],
        metavar="LOCAL_DIR=ORG/NAME",
        help="name a local directory found in the configs or training arguments (e.g. a backbone downloaded into a "
        "local folder) by its Hub id in the upload; repeatable. Other local paths become their base name",
    )
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--template", default=None, help="model card template (default: hub_cards/<model_type>.md)")


def _read_json(path: Path) -> dict:
    from avemotion.utils.json_files import read_json_object

    try:
        return read_json_object(path)
    except OSError as error:
        raise ValueError(f"{path}: cannot be read as JSON ({error})") from error


def run(args: argparse.Namespace) -> str:
    from .hub import push_to_hub
    from .run_files import ARGS_FILE, RESULTS_FILE, TEST_RESULTS_FILE

    model_dir = Path(args.model)
    metrics, split = None, args.split
    candidates = [Path(args.metrics)] if args.metrics else [model_dir / TEST_RESULTS_FILE, model_dir / RESULTS_FILE]
    for path in candidates:
        if path.is_file():
            metrics = _read_json(path)
            if "eval" in metrics and isinstance(metrics["eval"], dict) and "metric_for_best_model" in metrics:
                metrics = metrics["eval"]  # the trainer's eval_results.json
            split = split or ("test" if "test" in path.name else "validation")
            break
    else:
        if args.metrics:
            raise FileNotFoundError(f"--metrics {args.metrics} does not exist")
    hub_ids = {}
    for item in args.hub_id:
        directory, sep, repo = item.partition("=")
        if not sep or not directory or repo.count("/") != 1:
            raise ValueError(f"--hub_id {item!r}: expected LOCAL_DIR=ORG/NAME")
        hub_ids[directory] = repo
    hyperparameters = None
    if (model_dir / ARGS_FILE).is_file():
        hyperparameters = _read_json(model_dir / ARGS_FILE)  # local paths are sanitised by push_to_hub
    url = push_to_hub(
        model_dir, args.repo_id, metrics, args.training_data, hyperparameters, split or "test",
        private=args.private or None, token=args.token, template_path=args.template, processor_dir=args.processor,
        hub_ids=hub_ids,
    )  # fmt: skip
    print(url)
    return url
