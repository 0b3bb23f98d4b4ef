"""CREMA-D builder and load_corpus: layout errors, labels, folds, VAVL label files, malformed-file reporting."""

import csv
from pathlib import Path

import pytest
from data_testing import write_video, write_wav

from avemotion.data import corpus_metadata, load_corpus
from avemotion.data.common import speaker_folds
from avemotion.data.crema_d import LABEL_NAMES

ACTORS = [str(a) for a in range(1001, 1011)]
EMOTIONS = ["ANG", "SAD", "HAP"]


def make_crema_d(root: Path, with_video: bool = True) -> Path:
    for i, actor in enumerate(ACTORS):
        for j, emotion in enumerate(EMOTIONS):
            stem = f"{actor}_DFA_{emotion}_XX"
            write_wav(root / "AudioWAV" / f"{stem}.wav", seed=i * 10 + j)
            if with_video and j == 0:
                write_video(root / "VideoFlash" / f"{stem}.mp4")
    return root


def splits_by_speaker(dataset):
    return {split: set(dataset[split]["speaker"]) for split in dataset}


def test_labels_from_file_names_and_own_folds(tmp_path):
    root = make_crema_d(tmp_path / "crema")
    dataset = load_corpus("crema-d", root, cache_dir=tmp_path / "cache")
    assert sum(dataset[s].num_rows for s in ("train", "validation", "test")) == len(ACTORS) * len(EMOTIONS)
    label_names = dataset["train"].features["label"].names
    assert label_names == LABEL_NAMES
    for split in dataset.values():
        for row_id, label, text in zip(split["id"], split["label"], split["text"]):
            assert label_names[label][:3].upper() == row_id.split("_")[2]
            assert text == "Don't forget a jacket."
    speakers = splits_by_speaker(dataset)
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["validation"]
    assert not speakers["validation"] & speakers["test"]
    row = dataset["train"][0]
    assert row["audio"]["sampling_rate"] == 16000 and row["audio"]["array"].shape == (4800,)
    videos = [v for s in dataset.values() for v in s["video"] if v is not None]
    assert len(videos) == len(ACTORS) and all(v.endswith(".mp4") for v in videos)
    assert corpus_metadata(dataset)["fold"] == 1


def test_own_folds_test_every_speaker_once():
    speakers = [str(a) for a in range(1001, 1092)]
    tested = []
    for fold in range(1, 6):
        assignment = speaker_folds(speakers, fold)
        tested += [s for s, split in assignment.items() if split == "test"]
        assert set(assignment.values()) == {"train", "validation", "test"}
    assert sorted(tested) == speakers
    assert speaker_folds(list(reversed(speakers)), 3) == speaker_folds(speakers, 3)


def test_vavl_label_file_gives_partition_soft_labels_and_exclusions(tmp_path):
    root = make_crema_d(tmp_path / "crema", with_video=False)
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    split_of = {a: ("Train" if i < 6 else "Development" if i < 8 else "Test") for i, a in enumerate(ACTORS)}
    with open(label_dir / "label_consensus_2.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", *LABEL_NAMES, "SpkrID", "Gender", "Split_Set"])
        for actor in ACTORS:
            # the consensus says "sad" for ANG clips: the file, not the name, decides
            writer.writerow(
                [f"{actor}_DFA_ANG_XX.wav", 0.1, 0.6, 0.1, 0.1, 0.05, 0.05, actor, "Male", split_of[actor]]
            )
        writer.writerow(["1099_DFA_ANG_XX.wav", 0.1, 0.6, 0.1, 0.1, 0.05, 0.05, "1099", "Male", "Train"])
        writer.writerow(["1001_DFA_SAD_XX.wav", "oops", 0.6, 0.1, 0.1, 0.05, 0.05, "1001", "Male", "Train"])
    dataset, report = load_corpus(
        "crema-d", root, labels_csv=label_dir, partition=2, cache_dir=tmp_path / "cache", return_report=True
    )
    assert (dataset["train"].num_rows, dataset["validation"].num_rows, dataset["test"].num_rows) == (6, 2, 2)
    assert set(dataset["test"]["speaker"]) == {"1009", "1010"}
    row = dataset["train"][0]
    assert LABEL_NAMES[row["label"]] == "sad"
    assert row["soft_label"] == pytest.approx([0.1, 0.6, 0.1, 0.1, 0.05, 0.05])
    assert report.excluded["not in the labels file"] == 20  # the SAD and HAP clips
    assert report.missing == [("1099_DFA_ANG_XX", "named in label_consensus_2.csv but no AudioWAV/VideoFlash file")]
    assert any("non-numeric" in reason for _, reason in report.malformed)
    assert corpus_metadata(dataset)["partition"] == 2
    with pytest.raises(ValueError, match="label_consensus_2.csv"):
        load_corpus(
            "crema-d", root, labels_csv=label_dir, partition=2, on_malformed="raise", cache_dir=tmp_path / "c2"
        )


def test_real_vavl_partition_file_is_read(tmp_path):
    shared = Path("/work/shared/data/vavl_partitions/crema-d")
    if not shared.is_dir():
        pytest.skip("VAVL partition files not available")
    root = tmp_path / "crema"
    with open(shared / "label_consensus_1.csv") as handle:
        first = [row for _, row in zip(range(12), csv.DictReader(handle))]
    for row in first:
        write_wav(root / "AudioWAV" / row["FileName"])
    dataset, report = load_corpus(
        "crema-d", root, labels_csv=shared, partition=1, cache_dir=tmp_path / "cache", return_report=True
    )
    expected = {{"Train": "train", "Development": "validation", "Test": "test"}[r["Split_Set"]] for r in first}
    assert {s for s in dataset if dataset[s].num_rows} == expected
    assert sum(d.num_rows for d in dataset.values()) == 12
    assert report.num_missing == 5820 - 12


def test_malformed_files_are_counted_and_listed(tmp_path, caplog):
    root = make_crema_d(tmp_path / "crema", with_video=False)
    (root / "AudioWAV" / "1001_DFA_NEU_XX.wav").write_bytes(b"")
    (root / "AudioWAV" / "1002_DFA_NEU_XX.wav").write_bytes(b"RIFF....garbage")
    (root / "AudioWAV" / "notes.wav").write_bytes(b"")
    (root / "VideoFlash").mkdir()
    (root / "VideoFlash" / "1003_DFA_NEU_XX.flv").write_bytes(b"not a video")
    dataset, report = load_corpus("crema-d", root, cache_dir=tmp_path / "cache", return_report=True)
    assert report.num_malformed == 4
    reasons = dict(report.malformed)
    assert reasons[str(root / "AudioWAV" / "1001_DFA_NEU_XX.wav")] == "empty file"
    assert reasons[str(root / "AudioWAV" / "1002_DFA_NEU_XX.wav")].startswith("unreadable audio")
    assert reasons[str(root / "AudioWAV" / "notes.wav")].startswith("bad file name")
    assert reasons[str(root / "VideoFlash" / "1003_DFA_NEU_XX.flv")].startswith("unreadable video")
    assert sum(d.num_rows for d in dataset.values()) == 30
    assert "4 malformed file(s)" in report.summary() and len(report.problems()) == 4
    assert "4 malformed" in caplog.text


@pytest.mark.parametrize("make", ["missing", "empty", "wrong"])
def test_wrong_or_empty_directory_says_what_layout_was_expected(tmp_path, make):
    root = tmp_path / "x"
    if make != "missing":
        root.mkdir()
    if make == "wrong":
        write_wav(root / "clips" / "a.wav")
    with pytest.raises(ValueError, match="AudioWAV/\\*.wav"):
        load_corpus("crema-d", root, cache_dir=tmp_path / "cache")


def test_unknown_corpus_name():
    with pytest.raises(ValueError, match="Unknown corpus 'foo'"):
        load_corpus("foo", ".")


def test_truncated_wav_and_mp4_are_caught_by_the_scan_not_by_cache_features(tmp_path):
    """Issue 10 item 16: cut files passed the scan and stopped `cache_features` at the first one."""
    from media_testing import face_frames
    from media_testing import write_video as write_mp4

    from avemotion.data.cache import cache_features
    from avemotion.data.synthetic import SyntheticFeatureExtractor, write_synthetic_corpus

    root = write_synthetic_corpus(tmp_path / "syn", num_clips=12, num_speakers=4, seed=1)
    wavs, mp4s = sorted((root / "AudioWAV").glob("*.wav")), sorted((root / "VideoFlash").glob("*.mp4"))
    cut_wav, cut_mp4 = wavs[0], mp4s[1]
    cut_wav.write_bytes(cut_wav.read_bytes()[: cut_wav.stat().st_size * 6 // 10])
    frames, _ = face_frames(40, height=64, width=64, face_size=48)
    write_mp4(cut_mp4, frames, fps=8, faststart=True)  # the index first, as cameras and web videos have it
    cut_mp4.write_bytes(cut_mp4.read_bytes()[: cut_mp4.stat().st_size * 8 // 10])  # the first frame stays whole
    dataset, report = load_corpus("synthetic", root, cache_dir=tmp_path / "cache", return_report=True)
    reasons = dict(report.malformed)
    assert reasons[str(cut_wav)].startswith("truncated: the file is truncated (its data chunk is shorter")
    assert reasons[str(cut_mp4)].startswith("truncated: the file is truncated or corrupt (its video packets end at")
    assert report.num_malformed == 2 and "2 malformed file(s): truncated (2)" in report.summary()
    cached = cache_features(dataset, SyntheticFeatureExtractor(), cache_dir=tmp_path / "features")
    assert sum(d.num_rows for d in cached.values()) == 12  # each clip keeps its other modality
    rows = [r for d in cached.values() for r in d]
    assert sum(r["audio_features"] is None for r in rows) == 1 and sum(r["visual_features"] is None for r in rows) == 1


def _write_labels(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", *LABEL_NAMES, "SpkrID", "Gender"])
        writer.writerows(rows)
    return path


def test_duplicate_label_rows_are_an_error_naming_both_lines(tmp_path):
    root = make_crema_d(tmp_path / "crema", with_video=False)
    one_hot = [0, 1, 0, 0, 0, 0]
    labels = _write_labels(
        tmp_path / "labels.csv",
        [
            ["1001_DFA_ANG_XX.wav", *one_hot, "1001", "Male"],
            ["1002_DFA_ANG_XX.wav", *one_hot, "1002", "Male"],
            ["1001_DFA_ANG_XX", *one_hot[::-1], "1001", "Male"],  # the same clip, without its suffix
        ],
    )
    with pytest.raises(ValueError, match=rf"labels '1001_DFA_ANG_XX' twice: {labels}:2 and {labels}:4"):
        load_corpus("crema-d", root, labels_csv=labels, cache_dir=tmp_path / "cache")
