"""Prediction over a whole corpus into one JSON-lines file: sharded across `accelerate launch` processes, resumable.

`predict_corpus(pipe, inputs, output)` runs the audio-visual-emotion pipeline on every input and writes one record
per input, in input order:

    {"index": 0, "input": "clips/a.mp4", "result": ...}        # the pipeline's result for that input
    {"index": 1, "input": "clips/b.wav", "error": "..."}        # an input that cannot be used (errors="skip")

Under `accelerate launch` each process takes a contiguous share of the inputs (`split_between_processes`) and runs
the pipeline (with its preprocessing workers) on its own device; the records are the same as one process writes.
While running, each process appends its records to `OUTPUT.parts/` (flushed per record); at the end the main
process writes OUTPUT in input order (a temporary file, renamed) and deletes the parts. A run that is killed and
started again with the same inputs and output skips every input already written (in OUTPUT or in the parts);
errors are kept as written (delete a record's line to predict that input again).

`read_inputs(source)` turns a directory of media files, a list file, a table (Parquet, CSV, JSON lines) or a saved
`datasets` dataset into the `(name, pipeline input)` pairs that `predict_corpus` takes.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from avemotion.utils.distributed import (
    gather,
    is_main_process,
    process_state,
    run_in_rounds,
    split_contiguously,
    wait_for_everyone,
)

TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
MEDIA_COLUMNS = ("audio", "video", "text")
NAME_COLUMNS = ("id", "name", "path")


def read_inputs(source: str | Path, split: str | None = None) -> list[tuple[str, Any]]:
    """`(name, pipeline input)` pairs, in order, from `source`:

    - a directory written by `save_to_disk` (a `Dataset`, or a `DatasetDict` with `split`), or a table file
      (`.parquet`, `.csv`, `.jsonl`/`.json`): one input per row from its `audio`, `video`, `text` columns (or
      `path`, a media file), named by its `id`, `name` or `path` column, else its media file;
    - another directory: every media file under it (by suffix, `avemotion.processing.media.MEDIA_SUFFIXES`), in
      sorted order of their paths;
    - another file: a list with one media path per line (blank lines and `#` comments skipped; relative paths are
      relative to the list's folder).
    """
    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return _dataset_inputs(path, split)
    if path.is_dir():
        from avemotion.processing.media import MEDIA_SUFFIXES

        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        if not files:
            raise ValueError(f"--inputs {source}: no media files in it ({', '.join(sorted(MEDIA_SUFFIXES))})")
        return [(str(file), str(file)) for file in files]
    if not path.is_file():
        raise FileNotFoundError(f"--inputs {source}: no such file or directory")
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _table_inputs(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise ValueError(f"--inputs {source}: the list names no file")
    return [(entry, str(path.parent / entry)) for entry in entries]


def _dataset_inputs(path: Path, split: str | None) -> list[tuple[str, Any]]:
    import datasets

    from avemotion.data.loading import load_saved_dataset

    rows = load_saved_dataset(path)
    if isinstance(rows, datasets.DatasetDict):
        if split is None and len(rows) == 1:
            split = next(iter(rows))
        if split not in rows:
            raise ValueError(f"--inputs {path}: give --split, one of {sorted(rows)}")
        rows = rows[split]
    for name, feature in rows.features.items():
        if isinstance(feature, (datasets.Audio, datasets.Video)):  # their file paths, not decoded media
            rows = rows.cast_column(name, type(feature)(decode=False))
    return _row_inputs(rows.to_list(), str(path))


def _table_inputs(path: Path) -> list[tuple[str, Any]]:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    readers = {".parquet": pyarrow.parquet.read_table, ".csv": pyarrow.csv.read_csv}
    table = readers.get(path.suffix.lower(), pyarrow.json.read_json)(str(path))
    return _row_inputs(table.to_pylist(), str(path))


def _media_value(value: Any) -> Any:
    """A column value as the pipeline takes it: a `datasets` Audio/Video value `{"path", "bytes"}` by its path."""
    return value.get("path") if isinstance(value, dict) else value


def _row_inputs(rows: list[dict[str, Any]], source: str) -> list[tuple[str, Any]]:
    if rows and not any(column in rows[0] for column in (*MEDIA_COLUMNS, "path")):
        raise ValueError(
            f"--inputs {source}: no column {', '.join((*MEDIA_COLUMNS, 'path'))}; it has {sorted(rows[0])}"
        )
    inputs = []
    for index, row in enumerate(rows):
        item = {key: _media_value(row.get(key)) for key in MEDIA_COLUMNS if row.get(key) is not None}
        if not item and row.get("path") is not None:
            item = str(row["path"])
        label = next((row[key] for key in NAME_COLUMNS if row.get(key) is not None), None)
        if label is None:
            label = item if isinstance(item, str) else item.get("video") or item.get("audio") or f"row {index}"
        inputs.append((str(label), item or {}))
    return inputs


def _records_of(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of a JSON-lines file (a line cut by a killed run is not one)."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("index"), int):
                yield record


def _written(output: Path, parts: Path, names: Sequence[str]) -> dict[int, dict[str, Any]]:
    """Records already written for these inputs (a `ValueError` when they were written for other inputs)."""
    files = ([output] if output.is_file() else []) + (sorted(parts.glob("*.jsonl")) if parts.is_dir() else [])
    written: dict[int, dict[str, Any]] = {}
    for file in files:
        for record in _records_of(file):
            index = record["index"]
            if not 0 <= index < len(names) or record.get("input") != names[index]:
                raise ValueError(
                    f"{file} holds results of other inputs (record {index} is {record.get('input')!r}); give another "
                    "--output or delete it"
                )
            written.setdefault(index, record)
    return written


def _record(index: int, name: str, result: Any, position: int) -> dict[str, Any]:
    if isinstance(result, dict) and set(result) == {"error", "input"}:
        # the message counts inputs within this process's share: the record's index is the position that counts
        message = re.sub(rf"^input #{position}(: | )", "", str(result["error"]))
        return {"index": index, "input": name, "error": message}
    return {"index": index, "input": name, "result": result}


def predict_corpus(
    pipe: Any,
    inputs: Sequence[tuple[str, Any]],
    output: str | Path,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    round_size: int = 64,
    **pipeline_options: Any,
) -> list[dict[str, Any]]:
    """Predict every input of `inputs` (`(name, pipeline input)` pairs, e.g. from `read_inputs`) with `pipe` and
    write the records to `output` (JSON lines, input order); returns the records (every process returns them all).

    `pipeline_options` go to the pipeline call (`top_k`, `window_seconds`, ...; `errors` is always `"skip"`: an
    input that cannot be used gets an `error` record). Under `accelerate launch`, each process predicts a contiguous
    share of the missing inputs; every `round_size` inputs per process the processes report progress to the main
    process (one bar, files/s over all) and stop together on an unexpected error. Inputs already written to
    `output` or its parts by an earlier, killed run are skipped.
    """
    output = Path(output)
    parts = output.with_name(output.name + ".parts")
    names = [name for name, _ in inputs]
    if is_main_process():
        parts.mkdir(parents=True, exist_ok=True)
    wait_for_everyone()
    missing = gather([i for i in range(len(inputs)) if i not in _written(output, parts, names)])[0]
    state = process_state()
    # rounds small enough that every process gets a share of a short list
    round_size = max(1, min(round_size, -(-len(missing) // state.num_processes)))
    blocks = [missing[start : start + round_size] for start in range(0, len(missing), round_size)]
    share = [index for block in split_contiguously(blocks) for index in block]
    part_file = parts / f"part-{int(time.time() * 1000)}-{os.getpid()}-rank{state.process_index}.jsonl"
    options = {**pipeline_options, "errors": "skip", "batch_size": batch_size, "num_workers": num_workers}
    results = iter(pipe((inputs[i][1] for i in share), **options)) if share else iter(())
    position = 0

    with open(part_file, "a", encoding="utf-8") as sink:

        def work(block: list[int]) -> int:
            nonlocal position
            for index in block:
                record = _record(index, names[index], next(results), position)
                sink.write(json.dumps(record) + "\n")
                sink.flush()  # a killed run loses at most the line being written
                position += 1
            return len(block)

        run_in_rounds(blocks, work, total=len(missing), desc="predict", unit="files",
                      disable_progress=len(inputs) < 2)  # fmt: skip
    wait_for_everyone()
    if is_main_process():
        records = _written(output, parts, names)
        ordered = [records[index] for index in range(len(inputs))]
        temporary = output.with_name(output.name + ".tmp")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in ordered), encoding="utf-8")
        os.replace(temporary, output)
        for file in parts.glob("*.jsonl"):
            file.unlink()
        parts.rmdir()
    wait_for_everyone()
    return list(_records_of(output))


__all__ = ["predict_corpus", "read_inputs"]
