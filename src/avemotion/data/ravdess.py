"""RAVDESS (Livingstone & Russo, 2018) from the user's copy.

Layout: `DATA_DIR/**/Actor_XX/MM-VC-EE-II-SS-RR-AA.{wav,mp4}` (the official zips unpacked into one folder). Fields:
modality (01 audio-video, 02 video only, 03 audio only), vocal channel (01 speech, 02 song), emotion (01..08),
intensity (01 normal, 02 strong), statement (01, 02), repetition, actor (01..24; odd male, even female).

Files of the same recording are paired by name without the modality field: a row takes its audio from the `03` wav
and its video from the `01` mp4 (else the `02` mp4); a recording with only an mp4 is a video-only row (the mp4 sound
track is not read here). Splits: five speaker-independent folds over the 24 actors (`speaker_folds`, by sex then id).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import datasets

from .common import (
    CorpusBuilder,
    CorpusIndex,
    CorpusReport,
    check_audio,
    check_video,
    empty_row,
    group_rows,
    require_directory,
    speaker_folds,
)

LABEL_NAMES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
NAME_PATTERN = re.compile(r"^(0[123])-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d{2})$")
LAYOUT = "Actor_XX/MM-VC-EE-II-SS-RR-AA.wav|.mp4 (e.g. Actor_01/03-01-05-01-02-01-01.wav), in any sub-folder"


def scan(data_dir: str | Path, fold: int = 1, vocal_channel: str = "both", check_media: bool = True) -> CorpusIndex:
    """Index a RAVDESS directory. `vocal_channel`: "speech", "song" or "both"."""
    if vocal_channel not in ("speech", "song", "both"):
        raise ValueError(f"vocal_channel must be 'speech', 'song' or 'both', got {vocal_channel!r}")
    root = require_directory(data_dir, "ravdess", LAYOUT)
    report = CorpusReport(corpus="ravdess", data_dir=str(root))
    recordings: dict[str, dict[str, Path]] = {}
    files = sorted(p for p in root.rglob("*") if p.suffix in (".wav", ".mp4") and p.parent.name.startswith("Actor_"))
    if not files:
        raise ValueError(f"ravdess: no media found in {str(root)!r}. Expected layout: {LAYOUT}")
    for path in files:
        match = NAME_PATTERN.match(path.stem)
        expected_suffix = {"03": ".wav"}.get(match.group(1), ".mp4") if match else None
        if not match or path.suffix != expected_suffix:
            report.malformed.append(
                (str(path), "bad file name: expected MM-VC-EE-II-SS-RR-AA (.wav for 03, .mp4 else)")
            )
            continue
        if check_media:
            reason = (check_audio if path.suffix == ".wav" else check_video)(path)
            if reason:
                report.malformed.append((str(path), reason))
                continue
        recordings.setdefault(path.stem[3:], {})[match.group(1)] = path

    rows = []
    for key, by_modality in sorted(recordings.items()):
        channel, emotion, intensity, statement, _, actor = key.split("-")
        if vocal_channel != "both" and channel != {"speech": "01", "song": "02"}[vocal_channel]:
            report.excluded[f"vocal channel not {vocal_channel}"] += 1
            continue
        audio = by_modality.get("03")
        video = by_modality.get("01") or by_modality.get("02")
        rows.append(
            empty_row(
                id=key,
                audio=str(audio) if audio else None,
                video=str(video) if video else None,
                text=STATEMENTS[statement],
                label=int(emotion) - 1,
                speaker=actor,
                gender="Male" if int(actor) % 2 else "Female",
                vocal_channel="speech" if channel == "01" else "song",
                intensity="normal" if intensity == "01" else "strong",
                _split=None,
            )
        )
    if not rows:
        raise ValueError(f"ravdess: no usable recording in {str(root)!r}.\n{report.summary()}")
    split_of = speaker_folds([r["speaker"] for r in rows], fold, genders={r["speaker"]: r["gender"] for r in rows})
    grouped = group_rows(rows, split_of, report)
    return CorpusIndex(
        grouped, report, {"split_rule": f"avemotion speaker-independent fold {fold} of 5", "fold": fold}
    )


class RavdessBuilder(CorpusBuilder):
    corpus = "ravdess"
    layout = LAYOUT
    label_names = LABEL_NAMES

    @classmethod
    def scan(cls, data_dir: str | Path, **options: Any) -> CorpusIndex:
        return scan(data_dir, **options)

    @classmethod
    def extra_features(cls) -> dict[str, Any]:
        return {"vocal_channel": datasets.Value("string"), "intensity": datasets.Value("string")}
