"""`avemotion cache-features`: run a model's frozen backbones once over a corpus and save the features.

    avemotion cache-features --model DIR --dataset crema-d --data_dir CREMA-D --labels_csv FILE \
        --output_dir features [--split train --split test] [--batch_size 8]
    accelerate launch --num_processes 8 -m avemotion.cli cache-features ...   # the same on 8 GPUs

The features (`avemotion.data.cache_features`: `audio_features` (T_a, D_a), `visual_features` (T_v, D_v)) of every
row of the chosen splits are saved with `DatasetDict.save_to_disk(OUTPUT_DIR)`, ready for `avemotion train
--dataset OUTPUT_DIR`: the columns `id`, the labels and the features (`--keep_media_columns` keeps the rest too).
`--dataset` is a corpus name read with `--data_dir` (`avemotion.data.load_corpus`) or a directory written by
`save_to_disk` whose rows hold `audio`/`video`.

Under `accelerate launch` (one or several machines), every process computes a contiguous share of the rows on its
own device and the main process saves the result, which is the same, bit for bit on CPU, as one process writes.
The work is committed in chunks under `--cache_dir` (default `OUTPUT_DIR/chunks`; on several machines a shared
file system): a killed run started again with the same options computes only the missing chunks. Once the dataset
is saved, the chunks are deleted (`--keep_chunks` keeps them) and `OUTPUT_DIR/cache_features.json` records the
fingerprints: the same command again finds the output up to date and computes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import add_dataclass_arguments, dataclass_from_namespace
from .cli_train import FEATURE_DATASET_COLUMNS, CorpusArguments, load_processor
from .run_files import load_model

logger = logging.getLogger(__name__)

MARKER_FILE = "cache_features.json"


@dataclass
class CacheFeaturesArguments:
    """What `avemotion cache-features` computes, and where it writes it."""

    model: str = field(metadata={"help": "a model directory with backbones and its processor"})
    output_dir: str = field(metadata={"help": "where the DatasetDict with the features is saved"})
    split: list[str] | None = field(
        default=None, metadata={"help": "splits to compute (repeat the option, or list them); default: every split"}
    )
    batch_size: int = field(default=8, metadata={"help": "rows per backbone call"})
    chunk_size: int = field(default=128, metadata={"help": "rows committed to the cache at once (resumable unit)"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "where the chunks are kept while computing (default: OUTPUT_DIR/chunks)"}
    )
    keep_chunks: bool = field(default=False, metadata={"help": "keep the chunks once the dataset is saved"})
    keep_media_columns: bool = field(
        default=False, metadata={"help": "keep every column (audio, video, speaker, ...), not only id/labels/features"}
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "with --data_dir: where datasets keeps the corpus tables"}
    )
    device: str | None = field(default=None, metadata={"help": "default: this process's device (accelerate)"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per field of `CacheFeaturesArguments` and `CorpusArguments`."""
    add_dataclass_arguments(parser, CacheFeaturesArguments, CorpusArguments)


def _load_rows(corpus: CorpusArguments, cache_dir: str | None = None) -> Any:
    import datasets

    if corpus.data_dir is not None:
        from avemotion.data import load_corpus

        options = {
            name: getattr(corpus, name) for name in ("labels_csv", "partition", "fold") if getattr(corpus, name)
        }
        return load_corpus(corpus.dataset, corpus.data_dir, cache_dir=cache_dir, **options)
    if not Path(corpus.dataset).is_dir():
        raise FileNotFoundError(
            f"--dataset {corpus.dataset} is not a directory written by save_to_disk (give --data_dir to read a corpus "
            "by name)"
        )
    from avemotion.data.loading import load_saved_dataset

    rows = load_saved_dataset(corpus.dataset)
    return rows if isinstance(rows, datasets.DatasetDict) else datasets.DatasetDict({"train": rows})


def _select_splits(rows: Any, names: list[str] | None) -> Any:
    import datasets

    names = [name for entry in names or [] for name in entry.split(",") if name] or list(rows)
    unknown = [name for name in names if name not in rows]
    if unknown:
        raise ValueError(f"the dataset has no split {unknown[0]!r}; it has {sorted(rows)}")
    return datasets.DatasetDict({name: rows[name] for name in names})


def _up_to_date(output: Path, fingerprints: dict[str, str]) -> bool:
    """Whether `output` already holds these features; a `ValueError` when it holds another dataset."""
    if not (output / "dataset_dict.json").is_file():
        return False
    marker = output / MARKER_FILE
    if marker.is_file():
        from avemotion.utils.json_files import read_json_object

        if read_json_object(marker).get("fingerprints") == fingerprints:
            return True
    raise ValueError(
        f"--output_dir {output} holds another dataset (other features, splits or rows); choose another folder or "
        "delete it"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Compute and save the features as the parsed options say; returns `{"output_dir", "rows", "computed"}`."""
    import datasets

    from avemotion.data.cache import cache_features, feature_cache_fingerprint
    from avemotion.utils.distributed import agree, is_main_process, process_state, wait_for_everyone

    options = dataclass_from_namespace(CacheFeaturesArguments, args)
    if options.batch_size < 1 or options.chunk_size < 1:
        raise ValueError(f"--batch_size and --chunk_size must be at least 1, got {options.batch_size}, "
                         f"{options.chunk_size}")  # fmt: skip
    corpus = dataclass_from_namespace(CorpusArguments, args)
    output = Path(options.output_dir)
    model = load_model(options.model).eval().to(options.device or process_state().device)
    processor = load_processor(options.model, required=True)
    rows = _select_splits(_load_rows(corpus, options.dataset_cache_dir), options.split)
    fingerprints = {name: feature_cache_fingerprint(split, model, processor) for name, split in rows.items()}
    agree(fingerprints, "the features' fingerprints (their dataset, model or processor differ)")
    summary = {"output_dir": str(output), "rows": {name: len(split) for name, split in rows.items()}}
    if _up_to_date(output, fingerprints):
        logger.info("%s is up to date: nothing to compute", output)
        print(f"{output} is up to date (the same features were saved there)")
        return {**summary, "computed": False}
    chunks = Path(options.cache_dir) if options.cache_dir else output / "chunks"
    cached = cache_features(rows, model, processor, batch_size=options.batch_size, cache_dir=chunks,
                            chunk_size=options.chunk_size)  # fmt: skip
    if not options.keep_media_columns:
        cached = datasets.DatasetDict({name: split.select_columns([c for c in split.column_names
                                                                    if c in FEATURE_DATASET_COLUMNS])
                                       for name, split in cached.items()})  # fmt: skip
    if is_main_process():
        cached.save_to_disk(str(output))
        marker = {"fingerprints": fingerprints, "rows": summary["rows"], "model": str(options.model)}
        (output / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        print(f"wrote {output} ({', '.join(f'{name}: {n} rows' for name, n in summary['rows'].items())})")
    wait_for_everyone()
    if is_main_process() and not options.keep_chunks:  # the saved copy is what stays: only our own folders go
        for fingerprint in fingerprints.values():
            shutil.rmtree(chunks / f"features-{fingerprint}", ignore_errors=True)
        if chunks.is_dir() and not any(chunks.iterdir()):
            chunks.rmdir()
    wait_for_everyone()
    return {**summary, "computed": True}
