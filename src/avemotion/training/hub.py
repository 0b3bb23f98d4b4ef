"""Model cards from `hub_cards/<model_type>.md` and pushing a trained model (+ processor + card) to the Hub."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_TABLE_METRICS = ("accuracy", "unweighted_accuracy", "macro_f1", "micro_f1")
_BRANCH_TITLES = {"combined": "combined (per-row best available)", "audio_visual": "audio-visual (fusion head)"}


def hub_cards_dir() -> Path:
    """The `hub_cards/` folder of the source tree (next to `src/`)."""
    return Path(__file__).resolve().parents[3] / "hub_cards"


def metrics_table(report: Mapping[str, Any], split: str = "test") -> str:
    """A markdown table of a `branch_metrics` report: one row per branch (modality), one column per metric."""
    branches = {k: v for k, v in report.items() if isinstance(v, Mapping)}
    if not branches:
        return ""
    names = [m for m in _TABLE_METRICS if any(m in v for v in branches.values())]
    names += sorted({m for v in branches.values() for m in v if m.startswith("ccc_")})
    names.append("num_samples")
    lines = [
        f"Results on the {split} split, per output branch:",
        "",
        "| branch | " + " | ".join(n.replace("_", " ") for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for branch, metrics in branches.items():
        cells = []
        for name in names:
            value = metrics.get(name)
            cells.append("" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"| {_BRANCH_TITLES.get(branch, branch)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hyperparameters_table(hyperparameters: Mapping[str, Any]) -> str:
    lines = ["| hyper-parameter | value |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in sorted(hyperparameters.items())]
    return "\n".join(lines)


def build_model_card(
    model_type: str,
    repo_id: str,
    metrics: Mapping[str, Any] | None = None,
    training_data: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    split: str = "test",
    datasets: list[str] | None = None,
    template_path: str | Path | None = None,
    **template_kwargs: Any,
):
    """A `huggingface_hub.ModelCard` rendered from `hub_cards/<model_type>.md`.

    Args:
        model_type: `"vavl"` or `"mlfusion"`; picks the template (`template_path` overrides; without a template file
            huggingface_hub's default card template is used, with a warning).
        repo_id: the Hub repository the card describes.
        metrics: a `branch_metrics` report (branch -> metrics), rendered as the metrics table per modality and
            recorded as `model-index` results.
        training_data: corpus, partition and split description.
        hyperparameters: training options (e.g. `TrainingArguments.to_dict()`), rendered as a table.
        split: the split the metrics were computed on.
        datasets: Hub dataset ids for the card metadata.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    eval_results = []
    for branch, values in (metrics or {}).items():
        if not isinstance(values, Mapping):
            continue
        for name, value in values.items():
            if isinstance(value, float) and (name in _TABLE_METRICS or name.startswith("ccc_")):
                eval_results.append(
                    EvalResult(
                        task_type="audio-classification",
                        dataset_type=(datasets or ["custom"])[0],
                        dataset_name=(datasets or ["custom"])[0],
                        dataset_split=split,
                        metric_type=name,
                        metric_name=f"{name} ({branch})",
                        metric_value=value,
                    )
                )
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        tags=["avemotion", "emotion-recognition", model_type],
        datasets=datasets,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    data_section = training_data or "Not documented."
    if hyperparameters:
        data_section += "\n\n### Hyper-parameters\n\n" + hyperparameters_table(hyperparameters)
    path = Path(template_path) if template_path else hub_cards_dir() / f"{model_type}.md"
    kwargs: dict[str, Any] = dict(
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        training_data=data_section,
        metrics_table=metrics_table(metrics or {}, split),
    )
    kwargs.update(template_kwargs)
    if path.is_file():
        return ModelCard.from_template(card_data, template_path=str(path), **kwargs)
    if template_path:
        raise FileNotFoundError(f"model card template {path} does not exist")
    logger.warning("no model card template %s; using huggingface_hub's default template", path)
    return ModelCard.from_template(card_data, **kwargs)


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    metrics: Mapping[str, Any] | None = None,
    training_data: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    split: str = "test",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload avemotion model",
    template_path: str | Path | None = None,
) -> str:
    """Push a saved model directory (model, config, processor files if saved there) and a generated model card to
    `repo_id` in one commit. Returns the commit URL.

    The model is re-saved through `save_pretrained` (so the upload holds exactly the checkpoint files and `auto_map`
    code), the processor too if the directory has one.
    """
    from huggingface_hub import HfApi

    import avemotion  # noqa: F401
    from avemotion.models.auto import AutoModelForEmotionRecognition

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model (no config.json)")
    model = AutoModelForEmotionRecognition.from_pretrained(model_dir)
    processor = _load_processor(model_dir)
    card = build_model_card(
        model.config.model_type, repo_id, metrics, training_data, hyperparameters, split, template_path=template_path
    )
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)
        card.save(str(Path(folder) / "README.md"))
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))


def _load_processor(model_dir: Path):
    """The processor saved in `model_dir` (`processor_config.json`), else its feature extractor or image processor
    (`preprocessor_config.json`, by the type it names), else None."""
    import json

    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoProcessor

    if (model_dir / "processor_config.json").is_file():
        return AutoProcessor.from_pretrained(model_dir)
    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if "feature_extractor_type" in saved:
        return AutoFeatureExtractor.from_pretrained(model_dir)
    if "image_processor_type" in saved:
        return AutoImageProcessor.from_pretrained(model_dir)
    raise ValueError(f"{path} names neither a feature_extractor_type nor an image_processor_type")
