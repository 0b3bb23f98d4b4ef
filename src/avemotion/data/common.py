"""What every corpus builder shares: the row schema, the file report, label-file reading, speaker folds, the builder.

A corpus module provides a `scan(data_dir, **options) -> CorpusIndex` function (pure Python: it lists the user's
files, checks them, reads the labels and assigns splits) and a `CorpusBuilder` subclass that turns the index into
Arrow tables. Scanning is separate from building so that `load_corpus` can report malformed files even when the
Arrow tables come from the `datasets` cache.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets

from avemotion.processing.media import describe, is_path, probe_audio, probe_video
from avemotion.utils.json_files import parse_json

SAMPLING_RATE = 16000
SPLITS = ("train", "validation", "test")
VAVL_SPLIT_NAMES = {"train": "train", "development": "validation", "dev": "validation", "test": "test"}
ATTRIBUTES = ("arousal", "valence", "dominance")
# Accepted spellings of the attribute columns in label files (VAVL's MSP-IMPROV files use EmoAct/EmoVal/EmoDom).
ATTRIBUTE_COLUMNS = {
    "arousal": ("arousal", "EmoAct", "activation"),
    "valence": ("valence", "EmoVal"),
    "dominance": ("dominance", "EmoDom"),
}
METADATA_PREFIX = "avemotion-metadata: "


@dataclass
class CorpusReport:
    """What a scan found besides the usable rows. Nothing that cannot be used is dropped without an entry here.

    Attributes:
        malformed: `(path, reason)` for files that exist but cannot be used (unreadable, empty, bad name, bad row).
        missing: `(name, reason)` for files a label file names but that are not on disk.
        excluded: reason -> count of usable files left out on purpose (not in the label file, outside the protocol).
        unpaired: `"audio_only"` / `"video_only"` -> number of rows with one modality.
    """

    corpus: str
    data_dir: str
    malformed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)
    unpaired: Counter = field(default_factory=Counter)
    split_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def num_malformed(self) -> int:
        return len(self.malformed)

    @property
    def num_missing(self) -> int:
        return len(self.missing)

    def summary(self) -> str:
        sizes = ", ".join(f"{split} {n}" for split, n in self.split_sizes.items())
        lines = [f"{self.corpus} at {self.data_dir}: {sizes}"]
        if self.malformed:
            reasons = Counter(reason.split(":")[0] for _, reason in self.malformed)
            lines.append(
                f"  {len(self.malformed)} malformed file(s): " + ", ".join(f"{r} ({n})" for r, n in reasons.items())
            )
        if self.missing:
            lines.append(f"  {len(self.missing)} file(s) named in the labels but missing on disk")
        for reason, count in sorted(self.excluded.items()):
            lines.append(f"  {count} excluded: {reason}")
        for kind, count in sorted(self.unpaired.items()):
            lines.append(f"  {count} row(s) {kind.replace('_', ' ')}")
        if self.malformed or self.missing:
            lines.append("  (pass return_report=True to load_corpus and call report.problems() for the list)")
        return "\n".join(lines)

    def problems(self) -> list[str]:
        """Every malformed or missing file with its reason, one line each."""
        return [f"malformed {path}: {reason}" for path, reason in self.malformed] + [
            f"missing {name}: {reason}" for name, reason in self.missing
        ]


@dataclass
class CorpusIndex:
    """The result of a scan: rows per split (dicts in the shared schema), the report, and corpus metadata."""

    rows: dict[str, list[dict[str, Any]]]
    report: CorpusReport
    metadata: dict[str, Any]

    def fingerprint(self) -> str:
        payload = json.dumps([self.rows, self.metadata], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def audio_value_name(value: Any) -> str:
    """How error messages name an audio value (a path, a `datasets` Audio value, an `{"array", ...}` dict): its file
    when it has one (`audio file '...'`), else `audio`."""
    path = value.get("path") if isinstance(value, dict) else value if is_path(value) else None
    return describe(path, kind="audio") if path else "audio"


def empty_row(**values: Any) -> dict[str, Any]:
    """A row of the shared schema with every optional column absent (None)."""
    row: dict[str, Any] = {"id": None, "audio": None, "video": None, "text": None, "label": None}
    row.update({name: None for name in ATTRIBUTES})
    row.update({"speaker": None, "gender": None})
    row.update(values)
    return row


def shared_features(label_names: list[str] | None, extra: dict[str, Any] | None = None) -> datasets.Features:
    """The schema every corpus shares; `label` only when the corpus has categories. `extra` adds corpus columns."""
    columns: dict[str, Any] = {
        "id": datasets.Value("string"),
        "audio": datasets.Audio(sampling_rate=SAMPLING_RATE),
        "video": datasets.Value("string"),  # a path; decoding and face cropping belong to the processor
        "text": datasets.Value("string"),
    }
    if label_names is not None:
        columns["label"] = datasets.ClassLabel(names=list(label_names))
    columns.update({name: datasets.Value("float32") for name in ATTRIBUTES})
    columns["speaker"] = datasets.Value("string")
    columns["gender"] = datasets.Value("string")
    columns.update(extra or {})
    return datasets.Features(columns)


def corpus_metadata(dataset: datasets.Dataset | datasets.DatasetDict) -> dict[str, Any]:
    """The corpus metadata stored in the dataset info (attribute scale, partition, label names, split rule)."""
    if isinstance(dataset, datasets.DatasetDict):
        dataset = next(iter(dataset.values()))
    for line in (dataset.info.description or "").splitlines():
        if line.startswith(METADATA_PREFIX):
            metadata = parse_json(line[len(METADATA_PREFIX) :], "the dataset info's avemotion metadata")
            if not isinstance(metadata, dict):
                raise ValueError(
                    f"the dataset info's avemotion metadata: expected a JSON object, got {metadata!r:.40}"
                )
            return metadata
    raise ValueError("This dataset was not built by avemotion.data: its info has no avemotion metadata.")


# ---------------------------------------------------------------------------------------------------------- media


def _probe_reason(probe: Any, path: Path, kind: str) -> str | None:
    """None if `probe` accepts the file, else the reason, prefixed by its category for the report's summary:
    `empty file`, `truncated: ...` or `unreadable audio|video: ...` (the report lists the path itself)."""
    try:
        probe(path, name="file")
    except ValueError as error:
        message = str(error).removeprefix("file: ")
        if message == "the file is empty":
            return "empty file"
        return f"truncated: {message}" if "truncated" in message else f"unreadable {kind}: {message}"
    return None


def check_audio(path: Path) -> str | None:
    """None if `path` is a readable, non-empty, complete audio file, else the reason.

    Cheap (`avemotion.processing.media.probe_audio`): the header, the declared length against the file size, and
    the last half second read; no full decode. Truncated files are caught here rather than when features are cached.
    """
    return _probe_reason(probe_audio, path, "audio")


def check_video(path: Path) -> str | None:
    """None if `path` has a video stream whose first frame decodes and whose packets reach the declared end."""
    return _probe_reason(probe_video, path, "video")


# ---------------------------------------------------------------------------------------------------- label files


def resolve_label_file(labels_csv: str | Path, partition: int) -> Path:
    """A label file, or the file for `partition` in a folder of VAVL label files (`*_{partition}.csv`)."""
    path = Path(labels_csv)
    if path.is_file():
        return path
    if path.is_dir():
        matches = sorted(p for p in path.glob("*.csv") if re.search(rf"_{partition}\.csv$", p.name))
        if len(matches) != 1:
            raise ValueError(
                f"labels_csv={str(path)!r} is a folder; expected exactly one file named '*_{partition}.csv' in it "
                f"for partition {partition}, found {[p.name for p in matches]}"
            )
        return matches[0]
    raise ValueError(f"labels_csv={str(path)!r} does not exist (expected a label CSV or a folder of them)")


def read_label_rows(
    path: Path, required: tuple[str, ...], unique: str | None = None
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a comma-separated label file with a header; raises if a required column is missing.

    `unique`: a file-name column that must name each file once (compared by stem, so `a.wav` and `a` are the same
    file); a second row for a file is a `ValueError` naming both lines, since which label to keep is not ours to
    guess.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ValueError(f"label file {str(path)!r} is empty (expected a header line)")
        header = [name.strip() for name in header]
        absent = [name for name in required if name not in header]
        if absent:
            raise ValueError(f"label file {str(path)!r} has no column(s) {absent}; its header is {header}")
        rows, first_line = [], {}
        for line_number, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            row = dict(zip(header, [v.strip() for v in values]))
            if unique is not None and row.get(unique):
                stem = Path(row[unique]).stem
                if stem in first_line:
                    raise ValueError(
                        f"label file {str(path)!r} labels {row[unique]!r} twice: {path}:{first_line[stem]} and "
                        f"{path}:{line_number}; keep one row per file"
                    )
                first_line[stem] = line_number
            rows.append((line_number, row))
    return header, rows


def attribute_columns(header: list[str]) -> dict[str, str]:
    """attribute -> the header column that holds it, for the attributes the file has."""
    found = {}
    for attribute, spellings in ATTRIBUTE_COLUMNS.items():
        for spelling in spellings:
            if spelling in header:
                found[attribute] = spelling
                break
    return found


def split_from_label_file(value: str) -> str | None:
    return VAVL_SPLIT_NAMES.get(value.strip().lower())


# ---------------------------------------------------------------------------------------------------------- folds


def natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def speaker_folds(
    speakers: list[str], fold: int, num_folds: int = 5, genders: dict[str, str | None] | None = None
) -> dict[str, str]:
    """Speaker-independent train/validation/test assignment for one of `num_folds` folds.

    Speakers are sorted (by gender when known, then naturally by id) and dealt round-robin into `num_folds` groups,
    so the groups are gender-balanced and the result does not depend on file order. In fold `k` (1-based) group
    `k - 1` is the test set, group `k % num_folds` the validation set, the rest train; over the folds every speaker
    is tested exactly once.
    """
    if not 1 <= fold <= num_folds:
        raise ValueError(f"fold must be in 1..{num_folds}, got {fold}")
    unique = sorted(set(speakers), key=lambda s: ((genders or {}).get(s) or "", natural_key(s)))
    if len(unique) < 3:
        raise ValueError(f"speaker-independent folds need at least 3 speakers, found {len(unique)}: {unique}")
    groups = min(num_folds, len(unique))
    test_group, validation_group = (fold - 1) % groups, fold % groups
    assignment = {}
    for index, speaker in enumerate(unique):
        group = index % groups
        assignment[speaker] = "test" if group == test_group else "validation" if group == validation_group else "train"
    return assignment


def group_rows(rows: list[dict[str, Any]], split_of: dict[str, str], report: CorpusReport) -> dict[str, list]:
    """Place rows (each with a `_split` key, or a `speaker` found in `split_of`) into the three splits."""
    out: dict[str, list] = {split: [] for split in SPLITS}
    for row in rows:
        split = row.pop("_split", None) or split_of[row["speaker"]]
        out[split].append(row)
    for split in SPLITS:
        out[split].sort(key=lambda r: natural_key(r["id"]))
        report.split_sizes[split] = len(out[split])
    for row in (r for split_rows in out.values() for r in split_rows):
        if row["audio"] is None:
            report.unpaired["video_only"] += 1
        elif row.get("video") is None and row.get("_video_expected", True):
            report.unpaired["audio_only"] += 1
        row.pop("_video_expected", None)
    return out


def require_directory(data_dir: str | Path, corpus: str, layout: str) -> Path:
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ValueError(f"{corpus}: data_dir={str(path)!r} is not a directory. Expected layout: {layout}")
    return path


# -------------------------------------------------------------------------------------------------------- builder


class CorpusConfig(datasets.BuilderConfig):
    """Builder options. `options` holds the corpus-specific scan options (`labels_csv`, `fold`, ...)."""

    def __init__(self, options: dict[str, Any] | None = None, index_fingerprint: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.options = dict(options or {})
        self.index_fingerprint = index_fingerprint


class CorpusBuilder(datasets.GeneratorBasedBuilder):
    """Turns a `CorpusIndex` into Arrow tables. Subclasses set `corpus`, `layout`, `label_names` and `scan`.

    Instantiate through `avemotion.data.load_corpus`, or directly:
    `b = CremaDBuilder(data_dir=..., options={...}); b.download_and_prepare(); b.as_dataset()`.
    """

    BUILDER_CONFIG_CLASS = CorpusConfig
    corpus: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    label_names: ClassVar[list[str] | None] = None
    attribute_scale: ClassVar[tuple[float, float] | None] = None

    def __init__(self, *args: Any, index: CorpusIndex | None = None, **kwargs: Any):
        self._index = index
        super().__init__(*args, **kwargs)

    @classmethod
    def scan(cls, data_dir: str | Path, **options: Any) -> CorpusIndex:
        raise NotImplementedError

    @classmethod
    def extra_features(cls) -> dict[str, Any]:
        return {}

    @property
    def index(self) -> CorpusIndex:
        if self._index is None:
            self._index = self.scan(self.config.data_dir, **self.config.options)
        return self._index

    def _info(self) -> datasets.DatasetInfo:
        metadata = {
            "corpus": self.corpus,
            "label_names": self.label_names,
            "attribute_scale": self.attribute_scale,
            "options": {k: str(v) for k, v in self.config.options.items()},
        }
        if self._index is not None:
            metadata.update(self._index.metadata)
        return datasets.DatasetInfo(
            description=f"{self.corpus} read by avemotion.data\n{METADATA_PREFIX}{json.dumps(metadata)}",
            features=shared_features(self.label_names, self.extra_features()),
        )

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"rows": self.index.rows[split]})
            for split in SPLITS
            if self.index.rows[split]
        ]

    def _generate_examples(self, rows: list[dict[str, Any]]):
        for row in rows:
            yield row["id"], row
