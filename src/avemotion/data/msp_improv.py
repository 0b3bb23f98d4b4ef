"""MSP-IMPROV (Busso et al., 2017) from the user's copy, with attributes from VAVL-style label files.

Layout: `DATA_DIR/**/MSP-IMPROV-*.wav` (audio) and `DATA_DIR/**/MSP-IMPROV-*.avi|.mp4` (video), in any sub-folders
(the release's `Audio/session1/...` and `Video/session1/...`). Names `MSP-IMPROV-S01A-F02-R-FF01`: the token after the
sentence (`F02`) is the speaker's sex and session.

`labels_csv` (required): VAVL's `labels_consensus_{1..5}.csv` format (`FileName,EmoAct,EmoVal,EmoDom,SpkrID,Gender,
Split_Set`), a file or a folder with `partition` choosing one. Attributes are consensus means on a 1-5 scale, stored
as given (`EmoAct` -> arousal; VAVL flips arousal in training, see reference/vavl.md §5.2; we do not). Splits: the
file's session-independent `Split_Set`; without that column, our own session-independent folds (`fold` 1..6: test
session k, validation session k mod 6 + 1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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

NAME_PATTERN = re.compile(r"^MSP-IMPROV-S\d{2}[A-Z]-([FM])(\d{2})-[A-Z]-[A-Z]{2}\d{2}$")
LAYOUT = "MSP-IMPROV-*.wav (and optional MSP-IMPROV-*.avi|.mp4) in any sub-folder, e.g. Audio/session1/S01A/P/"


def scan(
    data_dir: str | Path,
    labels_csv: str | Path | None = None,
    partition: int = 1,
    fold: int = 1,
    check_media: bool = True,
) -> CorpusIndex:
    root = require_directory(data_dir, "msp-improv", LAYOUT)
    if labels_csv is None:
        raise ValueError("msp-improv needs labels_csv: a VAVL-style labels_consensus CSV (or a folder of them)")
    report = CorpusReport(corpus="msp-improv", data_dir=str(root))
    media: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("MSP-IMPROV-*")):
        kind = "audio" if path.suffix == ".wav" else "video" if path.suffix in (".avi", ".mp4") else None
        if kind is None or not path.is_file():
            continue
        if not NAME_PATTERN.match(path.stem):
            report.malformed.append((str(path), "bad file name: expected MSP-IMPROV-SxxX-Fxx-X-XXxx"))
            continue
        reason = (check_audio if kind == "audio" else check_video)(path) if check_media else None
        if reason:
            report.malformed.append((str(path), reason))
            continue
        media.setdefault(path.stem, {})[kind] = path
    if not media and not report.malformed:
        raise ValueError(f"msp-improv: no media found in {str(root)!r}. Expected layout: {LAYOUT}")

    label_file = resolve_label_file(labels_csv, partition)
    header, label_rows = read_label_rows(label_file, ("FileName",), unique="FileName")
    attributes = attribute_columns(header)
    if set(attributes) != {"arousal", "valence", "dominance"}:
        raise ValueError(f"label file {str(label_file)!r} needs EmoAct, EmoVal and EmoDom columns; header {header}")
    has_split = "Split_Set" in header
    rows, labelled = [], set()
    for line_number, values in label_rows:
        stem = Path(values["FileName"]).stem
        match = NAME_PATTERN.match(stem)
        try:
            attrs = {name: float(values[column]) for name, column in attributes.items()}
        except (ValueError, TypeError):
            report.malformed.append((f"{label_file}:{line_number}", "bad row: non-numeric attribute"))
            continue
        split = split_from_label_file(values.get("Split_Set", "")) if has_split else None
        if not match or (has_split and split is None):
            report.malformed.append((f"{label_file}:{line_number}", "bad row: file name or Split_Set not understood"))
            continue
        labelled.add(stem)
        if stem not in media:
            report.missing.append((stem, f"named in {label_file.name} but not found under {root}"))
            continue
        sex, session = match.groups()
        files = media[stem]
        rows.append(
            empty_row(
                id=stem,
                audio=str(files["audio"]) if "audio" in files else None,
                video=str(files["video"]) if "video" in files else None,
                speaker=f"{sex}{session}",
                gender="Female" if sex == "F" else "Male",
                session=int(session),
                _split=split,
                **attrs,
            )
        )
    report.excluded["not in the labels file"] += len(set(media) - labelled)
    if not rows:
        raise ValueError(f"msp-improv: no usable utterance in {str(root)!r}.\n{report.summary()}")
    split_of: dict[str, str] = {}
    if not has_split:
        by_session = speaker_folds([str(r["session"]) for r in rows], fold, num_folds=6)
        split_of = {r["speaker"]: by_session[str(r["session"])] for r in rows}
    for row in rows:
        row.pop("session")
    grouped = group_rows(rows, split_of, report)
    rule = f"Split_Set column of {label_file.name}" if has_split else f"avemotion session fold {fold} of 6"
    return CorpusIndex(grouped, report, {"split_rule": rule, "partition": partition if has_split else None})


class MspImprovBuilder(CorpusBuilder):
    corpus = "msp-improv"
    layout = LAYOUT
    label_names = None  # attributes only
    attribute_scale = (1.0, 5.0)

    @classmethod
    def scan(cls, data_dir: str | Path, **options: Any) -> CorpusIndex:
        return scan(data_dir, **options)
