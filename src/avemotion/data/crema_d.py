"""CREMA-D (Cao et al., 2014) from the user's copy.

Layout: `DATA_DIR/AudioWAV/*.wav` and/or `DATA_DIR/VideoFlash/*.flv|*.mp4`, file names
`ACTOR_SENTENCE_EMOTION_LEVEL` (e.g. `1001_DFA_ANG_XX`); optional `DATA_DIR/VideoDemographics.csv` (`ActorID`, `Sex`).

Labels:
- default: the intended emotion from the file name;
- `labels_csv`: a label file in VAVL's format (`FileName,angry,sad,disgust,fear,neutral,happy,SpkrID,Gender,
  Split_Set`), or a folder of VAVL's `label_consensus_{1..5}.csv` with `partition` choosing one. The hard label is the
  argmax of the class proportions, which are kept in `soft_label`; clips the file does not name are excluded (and
  counted). Optional `arousal`/`valence`/`dominance` columns are read too (the synthetic corpus writes them).

Splits: the file's `Split_Set` when it has one (VAVL's speaker-independent partitions), else our own five
speaker-independent folds (`fold`, 1..5; `speaker_folds`: actors sorted by sex then id, dealt round-robin into five
groups; fold k tests group k-1 and validates on group k mod 5).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .common import (
    CorpusBuilder,
    CorpusIndex,
    CorpusReport,
    attribute_columns,
    check_audio,
    check_video,
    empty_row,
    group_rows,
    read_label_rows,
    require_directory,
    resolve_label_file,
    speaker_folds,
    split_from_label_file,
)

LABEL_NAMES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]  # VAVL's class order
EMOTION_CODES = {"ANG": "angry", "SAD": "sad", "DIS": "disgust", "FEA": "fear", "NEU": "neutral", "HAP": "happy"}
SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
NAME_PATTERN = re.compile(r"^(\d+)_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
VIDEO_EXTENSIONS = (".mp4", ".flv")  # preferred first when both exist
LAYOUT = (
    "AudioWAV/*.wav and/or VideoFlash/*.flv|*.mp4 with names ACTOR_SENTENCE_EMOTION_LEVEL "
    "(e.g. AudioWAV/1001_DFA_ANG_XX.wav)"
)


def _list_media(root: Path, report: CorpusReport) -> dict[str, dict[str, Path]]:
    media: dict[str, dict[str, Path]] = {}
    audio_dir, video_dir = root / "AudioWAV", root / "VideoFlash"
    candidates = [("audio", p) for p in sorted(audio_dir.glob("*.wav"))] if audio_dir.is_dir() else []
    if video_dir.is_dir():
        for extension in reversed(VIDEO_EXTENSIONS):  # mp4 last so it wins over flv
            candidates += [("video", p) for p in sorted(video_dir.glob(f"*{extension}"))]
    for kind, path in candidates:
        if not NAME_PATTERN.match(path.stem):
            report.malformed.append((str(path), "bad file name: expected ACTOR_SENTENCE_EMOTION_LEVEL"))
            continue
        media.setdefault(path.stem, {})[kind] = path
    return media


def _read_actor_sexes(root: Path) -> dict[str, str]:
    path = root / "VideoDemographics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["ActorID"].strip(): row["Sex"].strip() for row in csv.DictReader(handle) if row.get("ActorID")}


def _read_labels(path: Path, report: CorpusReport) -> tuple[dict[str, dict[str, Any]], bool]:
    header, rows = read_label_rows(path, ("FileName", *LABEL_NAMES), unique="FileName")
    attributes = attribute_columns(header)
    has_split = "Split_Set" in header
    labels = {}
    for line_number, row in rows:
        where = f"{path}:{line_number}"
        try:
            probs = np.array([float(row[name]) for name in LABEL_NAMES])
            values = {attr: float(row[column]) for attr, column in attributes.items()}
        except (ValueError, TypeError, KeyError):
            report.malformed.append((where, "bad row: non-numeric or missing label value"))
            continue
        split = split_from_label_file(row.get("Split_Set", "")) if has_split else None
        if has_split and split is None:
            report.malformed.append((where, f"bad row: unknown Split_Set {row.get('Split_Set')!r}"))
            continue
        if not np.isfinite(probs).all() or probs.sum() <= 0:
            report.malformed.append((where, "bad row: class proportions must be finite with a positive sum"))
            continue
        stem = Path(row["FileName"]).stem
        labels[stem] = {
            "label": int(probs.argmax()),
            "soft_label": (probs / probs.sum()).tolist(),
            "speaker": row.get("SpkrID") or None,
            "gender": row.get("Gender") or None,
            "_split": split,
            **values,
        }
    return labels, has_split


def scan(
    data_dir: str | Path,
    labels_csv: str | Path | None = None,
    partition: int = 1,
    fold: int = 1,
    check_media: bool = True,
    corpus: str = "crema-d",
) -> CorpusIndex:
    """Index a CREMA-D-layout directory (see the module docstring). Raises ValueError on a wrong or empty directory."""
    root = require_directory(data_dir, corpus, LAYOUT)
    report = CorpusReport(corpus=corpus, data_dir=str(root))
    media = _list_media(root, report)
    if not media and not report.malformed:
        raise ValueError(f"{corpus}: no media found in {str(root)!r}. Expected layout: {LAYOUT}")

    labels, from_file = ({}, False)
    label_file = None
    if labels_csv is not None:
        label_file = resolve_label_file(labels_csv, partition)
        labels, from_file = _read_labels(label_file, report)
        for stem in sorted(set(labels) - set(media)):
            report.missing.append((stem, f"named in {label_file.name} but no AudioWAV/VideoFlash file"))
    sexes = _read_actor_sexes(root)

    rows = []
    for stem in sorted(media):
        files = dict(media[stem])
        for kind, check in (("audio", check_audio), ("video", check_video)):
            if kind in files and check_media:
                reason = check(files[kind])
                if reason:
                    report.malformed.append((str(files[kind]), reason))
                    del files[kind]
        if not files:
            continue  # every file of the clip is reported as malformed above
        actor, sentence, emotion, level = NAME_PATTERN.match(stem).groups()
        if labels_csv is not None:
            if stem not in labels:
                report.excluded["not in the labels file"] += 1
                continue
            info = dict(labels[stem])
        else:
            if emotion not in EMOTION_CODES:
                report.malformed.append((stem, f"unknown emotion code {emotion!r}: expected {sorted(EMOTION_CODES)}"))
                continue
            info = {"label": LABEL_NAMES.index(EMOTION_CODES[emotion]), "soft_label": None}
        info["speaker"] = info.get("speaker") or actor
        info["gender"] = info.get("gender") or sexes.get(actor)
        if sentence not in SENTENCES:
            report.malformed.append((stem, f"unknown sentence code {sentence!r}: transcript left empty"))
        rows.append(
            empty_row(
                id=stem,
                audio=str(files["audio"]) if "audio" in files else None,
                video=str(files["video"]) if "video" in files else None,
                text=SENTENCES.get(sentence),
                intensity=level,
                **info,
            )
        )
    if not rows:
        raise ValueError(f"{corpus}: no usable clip in {str(root)!r}.\n{report.summary()}")

    if from_file:
        split_of: dict[str, str] = {}
        rule = f"Split_Set column of {label_file.name}"
    else:
        genders = {row["speaker"]: row["gender"] for row in rows}
        split_of = speaker_folds([row["speaker"] for row in rows], fold, genders=genders)
        rule = f"avemotion speaker-independent fold {fold} of 5"
    for row in rows:
        if not from_file:
            row["_split"] = None
    grouped = group_rows(rows, split_of, report)
    metadata = {"split_rule": rule, "fold": None if from_file else fold, "partition": partition if from_file else None}
    return CorpusIndex(rows=grouped, report=report, metadata=metadata)


class CremaDBuilder(CorpusBuilder):
    corpus = "crema-d"
    layout = LAYOUT
    label_names = LABEL_NAMES
    attribute_scale = None

    @classmethod
    def scan(cls, data_dir: str | Path, **options: Any) -> CorpusIndex:
        return scan(data_dir, corpus=cls.corpus, **options)

    @classmethod
    def extra_features(cls) -> dict[str, Any]:
        return {
            "intensity": datasets.Value("string"),  # LO, MD, HI or XX (unspecified)
            "soft_label": datasets.Sequence(datasets.Value("float32")),  # class proportions from a label file
        }
