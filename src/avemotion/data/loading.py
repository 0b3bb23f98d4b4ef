"""`load_corpus`: one entry point for every corpus builder (datasets 5 runs no dataset scripts)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Literal

import datasets

from .common import CorpusReport

logger = logging.getLogger(__name__)

# canonical name -> (module, builder class)
CORPORA: dict[str, tuple[str, str]] = {
    "crema-d": ("avemotion.data.crema_d", "CremaDBuilder"),
    "synthetic": ("avemotion.data.synthetic", "SyntheticBuilder"),
    "ravdess": ("avemotion.data.ravdess", "RavdessBuilder"),
    "msp-improv": ("avemotion.data.msp_improv", "MspImprovBuilder"),
    "iemocap": ("avemotion.data.iemocap", "IemocapBuilder"),
}
ALIASES = {"cremad": "crema-d", "crema_d": "crema-d", "msp_improv": "msp-improv", "mspimprov": "msp-improv"}


def load_saved_dataset(path: str | Path) -> datasets.Dataset | datasets.DatasetDict:
    """`datasets.load_from_disk(path)` of a directory a user may have been given: first, every Arrow file that a
    `state.json` of it names must be a plain file name inside its split folder (`datasets` would follow
    `"../../x.arrow"` out of the directory), and each `state.json` a JSON object (a `ValueError` naming the file and
    entry otherwise)."""
    from avemotion.utils.json_files import read_json_object
    from avemotion.utils.paths import contained_file

    for state_path in sorted(Path(path).rglob("state.json")):
        state = read_json_object(state_path)
        files = state.get("_data_files", [])
        if not isinstance(files, list) or not all(isinstance(entry, dict) for entry in files):
            raise ValueError(f"{state_path}: _data_files: expected a list of objects")
        for index, entry in enumerate(files):
            contained_file(
                state_path.parent, entry.get("filename"), f"_data_files[{index}].filename", source=state_path
            )
    return datasets.load_from_disk(str(path))


def builder_class(name: str) -> type:
    """The builder class registered for a corpus name (case and `_`/`-` insensitive)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in CORPORA:
        raise ValueError(f"Unknown corpus {name!r}; expected one of {sorted(CORPORA)}")
    module_name, class_name = CORPORA[key]
    return getattr(importlib.import_module(module_name), class_name)


def load_corpus(
    name: str,
    data_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    return_report: bool = False,
    on_malformed: Literal["warn", "raise"] = "warn",
    download_mode: str | None = None,
    **options: Any,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, CorpusReport]:
    """Read a corpus from the user's copy into a `DatasetDict` with `train`, `validation` and `test` splits.

    Args:
        name: `"crema-d"`, `"ravdess"`, `"msp-improv"`, `"iemocap"` or `"synthetic"`.
        data_dir: the corpus root in its official layout (see each corpus module's docstring).
        cache_dir: where `datasets` keeps the Arrow tables (default: the `datasets` cache). The cache key includes a
            fingerprint of the scanned files and labels, so a changed directory is rebuilt.
        return_report: also return the `CorpusReport` (malformed/missing/excluded files, list via `.problems()`).
        on_malformed: `"warn"` logs the report's summary when files were malformed or missing; `"raise"` raises a
            ValueError listing them.
        download_mode: passed to `download_and_prepare` (e.g. `"force_redownload"` to rebuild).
        **options: corpus options, e.g. `labels_csv`, `partition`, `fold`, `check_media`.

    Rows follow the shared schema (`avemotion.data.common.shared_features`); the corpus metadata (attribute scale,
    split rule, partition or fold) is in the dataset info: `avemotion.data.corpus_metadata(dataset)`.
    """
    if on_malformed not in ("warn", "raise"):
        raise ValueError(f"on_malformed must be 'warn' or 'raise', got {on_malformed!r}")
    cls = builder_class(name)
    index = cls.scan(data_dir, **options)
    report = index.report
    if report.malformed or report.missing:
        if on_malformed == "raise":
            raise ValueError(report.summary() + "\n" + "\n".join(report.problems()))
        logger.warning(report.summary())
    else:
        logger.info(report.summary())
    builder = cls(
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        data_dir=str(Path(data_dir).expanduser().resolve()),
        options={k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
        index_fingerprint=index.fingerprint(),
        index=index,
    )
    builder.download_and_prepare(download_mode=download_mode)
    dataset = builder.as_dataset()
    return (dataset, report) if return_report else dataset


def add_dataset_arguments(parser: Any) -> None:
    """The `--dataset NAME --data-dir DIR` options (plus the common corpus options) for `avemotion` sub-commands."""
    parser.add_argument("--dataset", required=True, help=f"corpus name: {', '.join(sorted(CORPORA))}")
    parser.add_argument("--data-dir", required=True, help="the corpus root in its official layout")
    parser.add_argument("--labels-csv", default=None, help="a VAVL-style label file, or a folder of them")
    parser.add_argument("--partition", type=int, default=None, help="which VAVL label file of a folder (1-5)")
    parser.add_argument("--fold", type=int, default=None, help="which of our own speaker-independent folds")
    parser.add_argument("--dataset-cache-dir", default=None, help="where datasets keeps the Arrow tables")


def load_corpus_from_args(args: Any, **extra: Any) -> datasets.DatasetDict:
    """`load_corpus` with the options of `add_dataset_arguments`; unset options keep the corpus defaults."""
    options = {
        name: getattr(args, name)
        for name in ("labels_csv", "partition", "fold")
        if getattr(args, name, None) is not None
    }
    return load_corpus(args.dataset, args.data_dir, cache_dir=args.dataset_cache_dir, **options, **extra)
