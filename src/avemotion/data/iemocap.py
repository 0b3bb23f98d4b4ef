"""IEMOCAP (Busso et al., 2008) from the user's copy.

Layout: `DATA_DIR/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav`,
`.../dialog/EmoEvaluation/<dialog>.txt` (`[start - end]<TAB>utterance<TAB>emotion<TAB>[V, A, D]`),
`.../dialog/transcriptions/<dialog>.txt` (`utterance [start-end]: text`) and
`.../sentences/ForcedAlignment/<dialog>/<utterance>.{wdseg,syseg,phseg}` (read with
`avemotion.processing.segments.read_iemocap_alignment`: 10 ms frames, silences dropped) into the `words`,
`syllables` and `phones` columns.

Protocol (`four_class=True`, the default): neutral, happy (excited merged in), angry, sad: 5,531 utterances; other
emotions are excluded and counted. With `four_class=False` every evaluated utterance is kept and `label` is None
outside the four classes. Attributes: valence, arousal, dominance on a 1-5 scale. `video` is None: IEMOCAP's videos
are whole dialogs with both speakers, not cut per utterance.

Splits: five leave-one-session-out folds. Fold k tests on all of Session k; the female speaker of the next session
(k mod 5 + 1) is the validation set, so train has the remaining seven speakers and all splits are speaker-disjoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from avemotion.processing.segments import IEMOCAP_ALIGNMENT_EXTENSIONS, read_iemocap_alignment
from avemotion.utils.paths import check_file_name

from .common import CorpusBuilder, CorpusIndex, CorpusReport, check_audio, empty_row, group_rows, require_directory

LABEL_NAMES = ["neutral", "happy", "angry", "sad"]
FOUR_CLASS = {"neu": 0, "hap": 1, "exc": 1, "ang": 2, "sad": 3}
EVALUATION_LINE = re.compile(
    r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses\S+)\s+(\S+)\s+\[\s*([\d.]+),\s*([\d.]+),\s*([\d.]+)\s*\]"
)
TRANSCRIPT_LINE = re.compile(r"^(Ses\S+)\s+\[[^\]]*\]:\s*(.*)$")
SPEAKER = re.compile(r"^Ses(\d{2})[FM]_.*_([FM])\d+$")
# granularity -> the column of its segments, in column order
SEGMENT_COLUMNS = {"word": "words", "syllable": "syllables", "phone": "phones"}
# column -> alignment file suffix
SEGMENT_KINDS = {column: IEMOCAP_ALIGNMENT_EXTENSIONS[granularity] for granularity, column in SEGMENT_COLUMNS.items()}
LAYOUT = (
    "Session1..5/sentences/wav/<dialog>/<utterance>.wav, Session*/dialog/EmoEvaluation/<dialog>.txt, "
    "Session*/dialog/transcriptions/<dialog>.txt, Session*/sentences/ForcedAlignment/<dialog>/<utterance>.wdseg|..."
)


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _segments(alignment_dir: Path, utterance: str, report: CorpusReport) -> dict[str, list[dict] | None]:
    out: dict[str, list[dict] | None] = {}
    for kind, suffix in SEGMENT_KINDS.items():
        path = alignment_dir / f"{utterance}{suffix}"
        if not path.is_file():
            report.missing.append((str(path), f"no {kind} alignment; `{kind}` left empty"))
            out[kind] = None
            continue
        try:
            out[kind] = [{"start": s, "end": e, "label": label} for s, e, label in read_iemocap_alignment(path)]
        except ValueError as error:
            report.malformed.append((str(path), f"bad alignment: {error}"))
            out[kind] = None
    return out


def leave_one_session_out(session: int, gender: str, fold: int) -> str:
    if session == fold:
        return "test"
    return "validation" if session == fold % 5 + 1 and gender == "Female" else "train"


def _transcripts(transcript_file: Path, report: CorpusReport) -> dict[str, str]:
    """utterance -> transcript of one dialog's transcription file (empty, and reported, when it is missing)."""
    transcripts = {}
    if not transcript_file.is_file():
        report.missing.append((str(transcript_file), "no transcription file; `text` left empty"))
        return transcripts
    for line in _read_lines(transcript_file):
        match = TRANSCRIPT_LINE.match(line.strip())
        if match:
            transcripts[match.group(1)] = match.group(2).strip()
    return transcripts


def _evaluations(evaluation: Path, report: CorpusReport, evaluated_at: dict[str, str]) -> Iterator[re.Match]:
    """The utterance evaluation lines of one dialog's evaluation file; malformed lines are reported, an utterance
    evaluated a second time (`evaluated_at`: utterance -> "file:line", across files) raises."""
    for line_number, line in enumerate(_read_lines(evaluation), start=1):
        if not line.startswith("["):
            continue  # header, per-evaluator lines, blank lines
        match = EVALUATION_LINE.match(line)
        if not match:
            report.malformed.append((f"{evaluation}:{line_number}", f"bad evaluation line: {line.strip()[:60]!r}"))
            continue
        utterance, where = match.group(3), f"{evaluation}:{line_number}"
        # the utterance names its wav and alignment files: a plain name, so that a crafted line cannot reach
        # outside the corpus (`Ses01F_x/../../../../etc/passwd` is an error naming the line, not a path to read)
        check_file_name(utterance, "utterance", where)
        if utterance in evaluated_at:
            raise ValueError(
                f"iemocap: utterance {utterance!r} is evaluated twice: {evaluated_at[utterance]} and {where}; "
                "keep one evaluation line per utterance"
            )
        evaluated_at[utterance] = where
        yield match


def _utterance_row(
    match: re.Match,
    session_dir: Path,
    dialog: str,
    transcripts: dict[str, str],
    transcript_file: Path,
    report: CorpusReport,
    fold: int,
    four_class: bool,
    check_media: bool,
) -> dict[str, Any] | None:
    """The row of one evaluated utterance, without its segments; None (counted or reported) when it is left out."""
    utterance, emotion = match.group(3), match.group(4)
    valence, arousal, dominance = (float(match.group(i)) for i in (5, 6, 7))
    label = FOUR_CLASS.get(emotion)
    if label is None and four_class:
        report.excluded[f"emotion {emotion!r} outside the 4-class protocol"] += 1
        return None
    wav = session_dir / "sentences" / "wav" / dialog / f"{utterance}.wav"
    if not wav.is_file():
        report.missing.append((str(wav), "evaluated utterance without a wav"))
        return None
    reason = check_audio(wav) if check_media else None
    if reason:
        report.malformed.append((str(wav), reason))
        return None
    speaker_match = SPEAKER.match(utterance)
    if not speaker_match:
        report.malformed.append((str(wav), "utterance name not SesNN[FM]_..._[FM]NNN"))
        return None
    session, sex = int(speaker_match.group(1)), speaker_match.group(2)
    gender = "Female" if sex == "F" else "Male"
    if utterance not in transcripts and transcript_file.is_file():
        report.missing.append((utterance, f"no transcript line in {transcript_file.name}"))
    return empty_row(
        id=utterance,
        audio=str(wav),
        text=transcripts.get(utterance),
        label=label,
        arousal=arousal,
        valence=valence,
        dominance=dominance,
        speaker=f"Ses{session:02d}{sex}",
        gender=gender,
        emotion=emotion,
        _split=leave_one_session_out(session, gender, fold),
        _video_expected=False,
    )


def scan(
    data_dir: str | Path, fold: int = 1, four_class: bool = True, segments: bool = True, check_media: bool = True
) -> CorpusIndex:
    if not 1 <= fold <= 5:
        raise ValueError(f"fold must be in 1..5 (the held-out session), got {fold}")
    root = require_directory(data_dir, "iemocap", LAYOUT)
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise ValueError(f"iemocap: no Session1..5 folder in {str(root)!r}. Expected layout: {LAYOUT}")
    report = CorpusReport(corpus="iemocap", data_dir=str(root))
    rows, evaluated_at = [], {}  # utterance -> "file:line" of its evaluation, to refuse a second one
    for session_dir in sessions:
        evaluations = sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt"))
        if not evaluations:
            report.missing.append((str(session_dir / "dialog" / "EmoEvaluation"), "no evaluation files"))
        for evaluation in evaluations:
            dialog = evaluation.stem
            transcript_file = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
            transcripts = _transcripts(transcript_file, report)
            for match in _evaluations(evaluation, report, evaluated_at):
                row = _utterance_row(
                    match, session_dir, dialog, transcripts, transcript_file, report, fold, four_class, check_media
                )
                if row is None:
                    continue
                if segments:
                    alignment_dir = session_dir / "sentences" / "ForcedAlignment" / dialog
                    row.update(_segments(alignment_dir, match.group(3), report))
                else:
                    row.update({kind: None for kind in SEGMENT_KINDS})
                rows.append(row)
    if not rows:
        raise ValueError(f"iemocap: no usable utterance in {str(root)!r}.\n{report.summary()}")
    grouped = group_rows(rows, {}, report)
    rule = f"leave-one-session-out fold {fold}: test Session{fold}, validation Session{fold % 5 + 1} female"
    return CorpusIndex(grouped, report, {"split_rule": rule, "fold": fold, "four_class": four_class})


SEGMENT_FEATURE = datasets.List(
    {"start": datasets.Value("float32"), "end": datasets.Value("float32"), "label": datasets.Value("string")}
)


class IemocapBuilder(CorpusBuilder):
    corpus = "iemocap"
    layout = LAYOUT
    label_names = LABEL_NAMES
    attribute_scale = (1.0, 5.0)

    @classmethod
    def scan(cls, data_dir: str | Path, **options: Any) -> CorpusIndex:
        return scan(data_dir, **options)

    @classmethod
    def extra_features(cls) -> dict[str, Any]:
        return {"emotion": datasets.Value("string"), **{kind: SEGMENT_FEATURE for kind in SEGMENT_KINDS}}
