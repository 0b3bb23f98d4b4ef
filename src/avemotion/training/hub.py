"""Model cards from `hub_cards/<model_type>.md` (the package `avemotion.hub_cards`), their figures (the confusion
matrix of the selected branch and the training curves, written next to the card: `write_card_figures`) and pushing a
trained model (+ processor + card + figures) to the Hub.

Nothing uploaded names a local path: `sanitize_local_paths` replaces every string that is one (config fields such as
`_name_or_path` or `audio_backbone_name`, processor fields, hyper-parameters like `resume_from_checkpoint`) by the Hub
id it came from when that is known, else by its base name. The user's own files are never rewritten.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from avemotion.utils.json_files import read_json, read_json_object

from .run_files import CARD_FIGURES as CARD_FIGURES  # the figures' names, importable from here as before
from .run_files import (
    CARD_FILE,
    CONFIG_FILE,
    CONFUSION_MATRIX_FILE,
    TRAINING_CURVES_FILE,
    load_model,
    run_log_candidates,
)

logger = logging.getLogger(__name__)

_TABLE_METRICS = ("accuracy", "unweighted_accuracy", "macro_f1", "micro_f1")
_BRANCH_TITLES = {"combined": "combined (per-row best available)", "audio_visual": "audio-visual (fusion head)"}


# huggingface_hub's cache layout: <cache>/models--org--name/snapshots/<revision>/... ("--" is not allowed in repo ids)
_HUB_CACHE_SNAPSHOT = re.compile(
    r"(?:^|[\\/])(?:models|datasets|spaces)--([^\\/]+)[\\/]snapshots[\\/][^\\/]+(?:[\\/](.*))?$"
)
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
# subtrees of saved JSON files that hold tokens, not settings
_SANITIZE_SKIP_KEYS = frozenset({"added_tokens_decoder", "added_tokens"})


def is_local_path(value: Any) -> bool:
    """Whether a string names a local file or directory: absolute (POSIX or Windows), `~/`, `./`, `../`, `file://`,
    or a relative path with a separator that exists here. Hub ids (`org/name`) and plain words are not."""
    if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value:
        return False
    if value.startswith(("~/", "~\\", "./", "../", ".\\", "..\\", "file://")) or _WINDOWS_ABSOLUTE.match(value):
        return True
    if value.startswith("/"):
        return any(part for part in value.split("/"))  # "/" alone is not a path worth hiding
    return ("/" in value or os.sep in value) and os.path.exists(value)


def _normalise_path(value: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.expanduser(value.removeprefix("file://"))))


def local_path_replacement(value: str, hub_ids: Mapping[str | os.PathLike, str] | None = None) -> str:
    """What a local path becomes in uploaded files: the Hub id of a directory listed in `hub_ids` (local directory ->
    repo id, e.g. the directory being pushed), or of a huggingface_hub cache snapshot (`models--org--name/snapshots/`,
    plus the path inside the repo), else its base name."""
    normalised = _normalise_path(value)
    for directory, repo_id in (hub_ids or {}).items():
        if _normalise_path(str(directory)) == normalised:
            return repo_id
    for candidate in (value, normalised):
        match = _HUB_CACHE_SNAPSHOT.search(candidate.replace("\\", "/").rstrip("/"))
        if match:
            repo_id = match[1].replace("--", "/")
            return f"{repo_id}/{match[2]}" if match[2] else repo_id
    name = re.split(r"[\\/]+", value.rstrip("\\/"))[-1]
    return Path(normalised).name if name in ("", ".", "..", "~") else name


def sanitize_local_paths(value: Any, hub_ids: Mapping[str | os.PathLike, str] | None = None) -> Any:
    """A copy of `value` (nested dicts, lists, tuples, strings) in which every string that `is_local_path` is replaced
    by `local_path_replacement`: for configs, processor settings, hyper-parameters and metrics that are uploaded or
    published in a model card. Dict keys are kept; token lists of tokenizer configs are left alone."""
    if isinstance(value, str):
        return local_path_replacement(value, hub_ids) if is_local_path(value) else value
    if isinstance(value, os.PathLike):
        return local_path_replacement(os.fspath(value), hub_ids)
    if isinstance(value, Mapping):
        return {
            key: item if key in _SANITIZE_SKIP_KEYS else sanitize_local_paths(item, hub_ids)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(sanitize_local_paths(item, hub_ids) for item in value)
    return value


def sanitize_saved_configs(folder: str | Path, hub_ids: Mapping[str | os.PathLike, str] | None = None) -> list[str]:
    """Rewrite, in place, the `*config.json` files of a `save_pretrained` folder (model, processor, feature extractor,
    tokenizer, generation configs) through `sanitize_local_paths`. Meant for a copy about to be uploaded; returns the
    names of the files changed."""
    changed = []
    for path in sorted(Path(folder).rglob("*config.json")):
        data = read_json(path)  # a ValueError naming the file for one that is not JSON
        clean = sanitize_local_paths(data, hub_ids)
        if clean != data:
            path.write_text(json.dumps(clean, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path.name)
    return changed


def card_template(model_type: str) -> Traversable | None:
    """The model-card template of `model_type`: `<model_type>.md` of the package `avemotion.hub_cards` (the top-level
    `hub_cards/` folder, installed with its templates as package data); None when there is none."""
    try:
        templates = importlib.resources.files("avemotion.hub_cards")
    except ModuleNotFoundError:  # an install without it (an editable install made before it existed: reinstall)
        logger.warning("avemotion.hub_cards is not installed; reinstall avemotion to get its model-card templates")
        return None
    template = templates.joinpath(f"{model_type}.md")
    return template if template.is_file() else None


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


def selected_branch(metrics: Mapping[str, Any] | None, metric_name: str | None = None) -> str | None:
    """The branch a model was selected on: the `<branch>` of `metric_for_best_model` (`"<branch>/<metric>"`) when
    the report has it, else `combined`, else the report's first branch; None for a report without branches."""
    branches = [name for name, values in (metrics or {}).items() if isinstance(values, Mapping)]
    if metric_name and "/" in metric_name and metric_name.split("/")[0] in branches:
        return metric_name.split("/")[0]
    return "combined" if "combined" in branches else (branches[0] if branches else None)


def write_card_figures(
    directory: str | Path,
    metrics: Mapping[str, Any] | None = None,
    *,
    class_names: list[str] | None = None,
    metric_name: str | None = None,
    log_records: list[dict[str, Any]] | None = None,
    split: str = "test",
) -> str:
    """Write the model card's figures into `directory` and return the markdown that embeds them (by file name, so
    the card shows them wherever the folder goes, the Hub included): `confusion_matrix.png`, the confusion matrix of
    the selected branch (`selected_branch`; categorical models), and `training_curves.png`, the losses and the
    selection metric per epoch from the run's `training_log.jsonl` records. Returns "" (nothing written) without
    matplotlib or without data to draw."""
    from avemotion.plotting import plot_confusion_matrix, plot_training_curves, require_matplotlib, save_figure

    try:
        require_matplotlib()
    except ImportError as error:
        logger.info("model card without figures: %s", error)
        return ""
    directory, parts = Path(directory), []
    branch = selected_branch(metrics, metric_name)
    values = metrics[branch] if branch else {}
    try:
        if class_names and "confusion_matrix" in values:
            title = f"{branch} branch, {split} split"
            save_figure(plot_confusion_matrix(values["confusion_matrix"], class_names, title=title),
                        directory / CONFUSION_MATRIX_FILE)  # fmt: skip
            parts.append(f"Confusion matrix of the `{branch}` branch (the one the model was selected on) on the {split} "
                         f"split (counts, and the share of each true class):\n\n![confusion matrix, {branch} branch]"
                         f"({CONFUSION_MATRIX_FILE})")  # fmt: skip
        if any(isinstance(record, Mapping) and "epoch" in record for record in log_records or ()):
            save_figure(plot_training_curves(log_records, metric_name), directory / TRAINING_CURVES_FILE)
            parts.append(f"Training curves (loss per training step, and `{metric_name or 'the evaluation metric'}` "
                         f"per epoch):\n\n![training curves]({TRAINING_CURVES_FILE})")  # fmt: skip
    except ValueError as error:  # figures that cannot be drawn never stop a save or a push
        logger.warning("model card figures left out: %s", error)
    return "\n\n".join(parts)


def training_log_records(model_dir: str | Path) -> list[dict[str, Any]] | None:
    """The `training_log.jsonl` records of the run `model_dir` comes from: the run's output directory itself, its
    `best_model/`, or one of its `checkpoints/`; None when there is no log (or it cannot be read)."""
    from avemotion.plotting import read_training_log

    for path in run_log_candidates(model_dir):
        if path.is_file():
            try:
                return read_training_log(path)
            except (OSError, ValueError) as error:
                logger.warning("%s: not used for the training curves (%s)", path, error)
    return None


def build_model_card(
    model_type: str,
    repo_id: str,
    metrics: Mapping[str, Any] | None = None,
    training_data: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    split: str = "test",
    datasets: list[str] | None = None,
    template_path: str | Path | None = None,
    *,
    hub_ids: Mapping[str | os.PathLike, str] | None = None,
    **template_kwargs: Any,
):
    """A `huggingface_hub.ModelCard` rendered from `hub_cards/<model_type>.md`.

    Args:
        model_type: the model's `config.model_type`; picks the template `hub_cards/<model_type>.md`
            (`template_path` overrides; without a template file huggingface_hub's default card template is used, with
            a warning).
        repo_id: the Hub repository the card describes.
        metrics: a `branch_metrics` report (branch -> metrics), rendered as the metrics table per modality and
            recorded as `model-index` results.
        training_data: corpus, partition and split description.
        hyperparameters: training options (e.g. `TrainingArguments.to_dict()`), rendered as a table.
        split: the split the metrics were computed on.
        datasets: Hub dataset ids for the card metadata.
        hub_ids: local directory -> Hub id, for `sanitize_local_paths`: local paths in `metrics` and
            `hyperparameters` (`resume_from_checkpoint`, `output_dir`, backbone directories) become their Hub id when
            known, else their base name, so a card never publishes a local path.
        template_kwargs: more template variables, e.g. `figures`: the markdown of `write_card_figures`.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = sanitize_local_paths(dict(metrics), hub_ids) if metrics else metrics
    hyperparameters = sanitize_local_paths(dict(hyperparameters), hub_ids) if hyperparameters else hyperparameters
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
    template = Path(template_path) if template_path else card_template(model_type)
    kwargs: dict[str, Any] = dict(
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        training_data=data_section,
        metrics_table=metrics_table(metrics or {}, split),
    )
    kwargs.update(template_kwargs)
    if template is not None and template.is_file():
        with importlib.resources.as_file(template) as local:  # a real file, also for a template inside a zip
            return ModelCard.from_template(card_data, template_path=str(local), **kwargs)
    if template_path:
        raise FileNotFoundError(f"model card template {template_path} does not exist")
    logger.warning("no model card template %s.md in avemotion.hub_cards; using huggingface_hub's default template",
                   model_type)  # fmt: skip
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
    *,
    processor_dir: str | Path | None = None,
    hub_ids: Mapping[str | os.PathLike, str] | None = None,
) -> str:
    """Push a saved model directory to `repo_id` as one commit that makes the repo hold exactly: the model
    (re-saved through `save_pretrained`, so the upload has exactly the checkpoint files and `auto_map` code), its
    processor and a generated model card with its figures (`write_card_figures`: the confusion matrix of the branch
    named by `hyperparameters["metric_for_best_model"]` from `metrics`, and the training curves from the run's
    `training_log.jsonl`, when matplotlib is installed). Files of the repo that this upload does not contain are deleted in the
    same commit (`.gitattributes` is kept). Returns the commit URL.

    Args:
        model_dir: a `save_pretrained` directory (a training output, `best_model`, a checkpoint).
        repo_id: `org/name` on the Hub.
        metrics, training_data, hyperparameters, split, template_path: for `build_model_card`.
        private: `True`: the repo is created private, and an existing public repo is made private (through
            `HfApi.update_repo_settings`) before anything is uploaded. `False`: created public; pushing into an
            existing private repo is refused (a private repo is never made public implicitly). `None`: a new repo
            gets the Hub's default visibility; an existing one keeps its own.
        token: Hub token (default: `HF_TOKEN` or the stored login).
        processor_dir: where to take the processor from when `model_dir` has none (a directory or Hub id).
        hub_ids: local directory -> Hub id, for the local paths found in configs and the card (`model_dir` itself
            maps to `repo_id`); other local paths become their base name.

    Raises:
        ValueError: `model_dir` is not a loadable model, no processor is found, or the repo's visibility conflicts
            with `private`. Nothing is uploaded (or created) when the local checks fail.
    """
    from huggingface_hub import HfApi

    model, processor = _load_model_and_processor(Path(model_dir), processor_dir)
    hub_ids = {**(hub_ids or {}), str(Path(model_dir)): repo_id}
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        sanitize_saved_configs(folder, hub_ids)  # the uploaded copy only
        figures = write_card_figures(
            folder, metrics, class_names=class_names_of(model.config), split=split,
            metric_name=(hyperparameters or {}).get("metric_for_best_model"),
            log_records=training_log_records(model_dir),
        )  # fmt: skip
        card = build_model_card(
            model.config.model_type, repo_id, metrics, training_data, hyperparameters, split,
            template_path=template_path, hub_ids=hub_ids, figures=figures,
        )  # fmt: skip
        card.save(str(Path(folder) / CARD_FILE))
        commit, stale = _commit_folder(api, repo_id, folder, private, commit_message)
    if stale:
        logger.info("%s: deleted %d file(s) the new upload does not contain: %s", repo_id, len(stale), stale)
    return str(getattr(commit, "commit_url", commit))


def class_names_of(config: Any) -> list[str] | None:
    """A categorical model's class names in id order; None for a regression model."""
    if getattr(config, "problem_type", None) == "regression" or not getattr(config, "id2label", None):
        return None
    return [config.id2label[key] for key in sorted(config.id2label, key=int)]


def _load_model_and_processor(model_dir: Path, processor_dir: str | Path | None) -> tuple[Any, Any]:
    """The model saved in `model_dir` (`run_files.load_model`) and its processor (from `processor_dir` when given); a
    `FileNotFoundError` or `ValueError` naming what is missing or unreadable."""
    from safetensors import SafetensorError

    if not (model_dir / CONFIG_FILE).is_file():
        what = "does not exist" if not model_dir.exists() else f"is not a saved model (no {CONFIG_FILE})"
        raise FileNotFoundError(f"{model_dir} {what}")
    source = model_dir if processor_dir is None else processor_dir
    if Path(source).is_dir():
        source = Path(source)
    elif is_local_path(str(source)):
        raise FileNotFoundError(f"--processor {source} does not exist")
    processor = _load_processor(source)  # a Hub id (a str) is loaded with AutoProcessor
    if processor is None:
        raise ValueError(
            f"{processor_dir or model_dir} has no processor (processor_config.json or preprocessor_config.json): a "
            "pushed model must carry the processor that turns media into its inputs. Save it next to the model "
            "(`processor.save_pretrained(DIR)`) or name one with --processor DIR"
        )
    try:
        model = load_model(model_dir)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:  # e.g. truncated weights
        raise ValueError(f"{model_dir}: the model cannot be loaded ({error})") from error
    return model, processor


def _commit_folder(api, repo_id: str, folder: str, private: bool | None, commit_message: str) -> tuple[Any, list[str]]:
    """One commit that makes `repo_id` hold exactly the files of `folder` (`.gitattributes` kept), after creating the
    repo and settling its visibility (`_ensure_visibility`). Returns the commit and the deleted file names."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    files = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = _ensure_visibility(api, repo_id, private)
        remote = api.list_repo_files(repo_id, revision=info.sha) if info.sha else api.list_repo_files(repo_id)
        operations: list = [CommitOperationAdd(name, f"{folder}/{name}") for name in files]
        stale = [name for name in remote if name not in files and name != ".gitattributes"]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        # one commit (with hf_xet, upload_folder may split a folder into several), on top of the files listed
        commit = api.create_commit(repo_id, operations, commit_message=commit_message, parent_commit=info.sha)
    except HfHubHTTPError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"push to {repo_id} failed: {reason}") from error
    return commit, stale


def _ensure_visibility(api, repo_id: str, private: bool | None):
    """The repo's `ModelInfo`, after making its visibility agree with `private` (see `push_to_hub`)."""
    info = api.model_info(repo_id)
    if private is True and info.private is not True:
        logger.warning("%s is public: making it private before uploading (--private)", repo_id)
        api.update_repo_settings(repo_id, private=True)
        info = api.model_info(repo_id)
        if info.private is not True:
            raise ValueError(f"{repo_id} could not be made private; nothing was uploaded")
    elif private is False and info.private:
        raise ValueError(
            f"{repo_id} is private and private=False was asked: refusing to push (a private repo is never made "
            "public by a push; change its visibility on the Hub first). Nothing was uploaded"
        )
    return info


def _load_processor(model_dir: str | Path):
    """The processor saved in `model_dir` (`processor_config.json`), else its feature extractor or image processor
    (`preprocessor_config.json`, by the type it names), else None. A Hub id is loaded with `AutoProcessor`.
    A processor that exists but cannot be loaded is a `ValueError` naming the directory."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoProcessor

    if not isinstance(model_dir, Path):
        try:
            return AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"processor {model_dir}: cannot be loaded ({error})") from error
    try:
        if (model_dir / "processor_config.json").is_file():
            return AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
        path = model_dir / "preprocessor_config.json"
        if not path.is_file():
            return None
        saved = read_json_object(path)
        if "feature_extractor_type" in saved:
            return AutoFeatureExtractor.from_pretrained(model_dir, trust_remote_code=False)
        if "image_processor_type" in saved:
            return AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as error:  # incomplete processor files, a broken JSON file
        raise ValueError(f"{model_dir}: the processor saved there cannot be loaded ({error})") from error
    raise ValueError(f"{path} names neither a feature_extractor_type nor an image_processor_type")
