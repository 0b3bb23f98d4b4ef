"""RAVDESS, MSP-IMPROV and IEMOCAP builders on miniature corpora written in their official layouts."""

import csv

import pytest
from data_testing import write_video, write_wav

from avemotion.data import corpus_metadata, load_corpus


def _speakers(dataset):
    return {split: set(dataset[split]["speaker"]) for split in dataset}


def _disjoint(dataset):
    s = _speakers(dataset)
    return not (s["train"] & s["validation"] or s["train"] & s["test"] or s["validation"] & s["test"])


def test_ravdess_pairs_files_by_name_and_folds_by_actor(tmp_path):
    root = tmp_path / "ravdess"
    for actor in range(1, 7):
        folder = root / "Audio_Speech" / f"Actor_{actor:02d}"
        write_wav(folder / f"03-01-05-02-01-01-{actor:02d}.wav")  # angry, strong, speech
        write_wav(folder / f"03-02-03-01-02-01-{actor:02d}.wav")  # happy, song
        write_video(root / "Video_Speech" / f"Actor_{actor:02d}" / f"01-01-05-02-01-01-{actor:02d}.mp4")
    write_video(root / "Video_Speech" / "Actor_01" / "02-01-08-01-01-02-01.mp4")  # video only, surprised
    write_wav(root / "Audio_Speech" / "Actor_01" / "03-01-09-01-01-01-01.wav")  # emotion 09 does not exist
    dataset, report = load_corpus("ravdess", root, cache_dir=tmp_path / "cache", return_report=True)
    rows = {r["id"]: r for split in dataset.values() for r in split.remove_columns("audio")}
    assert len(rows) == 13
    angry = rows["01-05-02-01-01-03"]
    assert angry["label"] == 4 and angry["video"].endswith("01-01-05-02-01-01-03.mp4") and angry["gender"] == "Male"
    assert angry["text"] == "Kids are talking by the door." and angry["intensity"] == "strong"
    assert rows["02-03-01-02-01-02"]["vocal_channel"] == "song" and rows["02-03-01-02-01-02"]["video"] is None
    assert report.unpaired == {"video_only": 1, "audio_only": 6}
    assert report.num_malformed == 1 and "bad file name" in report.malformed[0][1]
    assert _disjoint(dataset)
    speech = load_corpus("ravdess", root, vocal_channel="speech", cache_dir=tmp_path / "cache")
    assert sum(d.num_rows for d in speech.values()) == 7


def test_msp_improv_attributes_and_session_partitions(tmp_path):
    root, labels = tmp_path / "msp", tmp_path / "labels_consensus_3.csv"
    split_of = {1: "Train", 2: "Train", 3: "Train", 4: "Development", 5: "Test", 6: "Train"}
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for session in range(1, 7):
            for sex in "FM":
                stem = f"MSP-IMPROV-S01A-{sex}{session:02d}-R-FF01"
                write_wav(root / "Audio" / f"session{session}" / "S01A" / "R" / f"{stem}.wav")
                writer.writerow([f"{stem}.wav", 1 + session / 2, 2.5, 3, session, "x", split_of[session]])
        writer.writerow(["MSP-IMPROV-S02A-F01-R-FF01.wav", 3, 3, 3, 1, "Female", "Train"])  # not on disk
    write_video(root / "Video" / "session1" / "MSP-IMPROV-S01A-F01-R-FF01.avi")
    write_wav(root / "Audio" / "session1" / "MSP-IMPROV-S09A-F01-R-FF01.wav")  # on disk, not labelled
    dataset, report = load_corpus(
        "msp-improv", root, labels_csv=tmp_path, partition=3, cache_dir=tmp_path / "cache", return_report=True
    )
    assert (dataset["train"].num_rows, dataset["validation"].num_rows, dataset["test"].num_rows) == (8, 2, 2)
    assert set(dataset["test"]["speaker"]) == {"F05", "M05"} and _disjoint(dataset)
    row = dataset["test"][0]
    assert row["arousal"] == pytest.approx(3.5) and row["valence"] == pytest.approx(2.5) and "label" not in row
    assert dataset["train"].filter(lambda r: r["speaker"] == "F01")[0]["video"].endswith(".avi")
    assert report.num_missing == 1 and report.excluded["not in the labels file"] == 1
    assert corpus_metadata(dataset)["attribute_scale"] == [1.0, 5.0]
    with pytest.raises(ValueError, match="needs labels_csv"):
        load_corpus("msp-improv", root)


def _write_iemocap(root):
    emotions = ["neu", "exc", "ang", "fru", "sad", "hap"]
    for session in range(1, 6):
        base = root / f"Session{session}"
        for gender in "FM":
            dialog = f"Ses{session:02d}{gender}_impro01"
            evaluation, transcript = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], []
            for index, emotion in enumerate(emotions):
                speaker = "FM"[index % 2]
                utterance = f"{dialog}_{speaker}{index:03d}"
                write_wav(base / "sentences" / "wav" / dialog / f"{utterance}.wav", seed=index)
                evaluation += [
                    f"[{index}.0000 - {index}.9000]\t{utterance}\t{emotion}\t[2.5000, 3.0000, 3.5000]",
                    "C-E1:\tNeutral;\t()",
                    "",
                ]
                transcript.append(f"{utterance} [{index}.0000-{index}.9000]: hello number {index}.")
                align = base / "sentences" / "ForcedAlignment" / dialog
                align.mkdir(parents=True, exist_ok=True)
                (align / f"{utterance}.wdseg").write_text(
                    " SFrm  EFrm    SegAScr Word\n     0     9    -100 <s>\n    10    49   -2000 HELLO\n"
                    "    50    89   -3000 NUMBER(2)\n Total score:    -5100\n"
                )
                (align / f"{utterance}.phseg").write_text(" SFrm  EFrm    SegAScr Phone\n    10    19   -10 HH B\n")
                if index != 0:
                    (align / f"{utterance}.syseg").write_text(" SFrm EFrm SegAScr Syllable\n 10 29 -5 hh ah\n")
            (base / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
            (base / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(evaluation))
            (base / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
            (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(transcript))
    return root


def test_iemocap_four_class_protocol_segments_and_sessions(tmp_path):
    root = _write_iemocap(tmp_path / "iemocap")
    dataset, report = load_corpus("iemocap", root, fold=2, cache_dir=tmp_path / "cache", return_report=True)
    rows = [r for split in dataset.values() for r in split.remove_columns("audio")]
    assert len(rows) == 50  # 5 sessions x 2 dialogs x 5 four-class utterances (fru excluded)
    assert report.excluded == {"emotion 'fru' outside the 4-class protocol": 10}
    names = dataset["train"].features["label"].names
    assert sorted({names[r["label"]] for r in rows if r["emotion"] in ("exc", "hap")}) == ["happy"]
    assert {r["speaker"][:5] for r in dataset["test"]} == {"Ses02"}
    assert set(dataset["validation"]["speaker"]) == {"Ses03F"} and _disjoint(dataset)
    row = next(r for r in rows if r["id"] == "Ses01F_impro01_M001")
    assert (row["valence"], row["arousal"], row["dominance"]) == (2.5, 3.0, 3.5)
    assert row["text"] == "hello number 1."
    assert row["words"] == [
        {"start": pytest.approx(0.1), "end": pytest.approx(0.5), "label": "HELLO"},
        {"start": pytest.approx(0.5), "end": pytest.approx(0.9), "label": "NUMBER"},
    ]
    assert row["phones"][0]["label"] == "HH B" and row["syllables"][0]["label"] == "hh ah"
    no_syllables = next(r for r in rows if r["id"] == "Ses01F_impro01_F000")
    assert no_syllables["syllables"] is None
    assert report.num_missing == 10 and all("syllables alignment" in reason for _, reason in report.missing)
    everything = load_corpus("iemocap", root, four_class=False, segments=False, cache_dir=tmp_path / "cache")
    all_rows = [r for split in everything.values() for r in split.remove_columns("audio")]
    assert len(all_rows) == 60 and sum(r["label"] is None for r in all_rows) == 10
    with pytest.raises(ValueError, match="Session1..5"):
        load_corpus("iemocap", tmp_path)
