"""The synthetic corpus: layout, determinism, balance, unpaired clips, the documented accuracy ceilings, the CLI."""

import hashlib
import os
import time

import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from avemotion.cli import main as cli_main
from avemotion.data import corpus_metadata, load_corpus
from avemotion.data import synthetic as syn

NUM_CLIPS = 96


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    start = time.perf_counter()
    syn.write_synthetic_corpus(root / "corpus", num_clips=NUM_CLIPS, seed=3)
    seconds = time.perf_counter() - start
    dataset = load_corpus("synthetic", root / "corpus", cache_dir=root / "cache")
    return root / "corpus", dataset, seconds


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".wav", ".csv"))
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def test_layout_labels_and_speed(corpus):
    root, dataset, seconds = corpus
    assert seconds < 30  # 200 clips take about 5 s here
    assert len(list((root / "AudioWAV").glob("*.wav"))) == NUM_CLIPS
    assert len(list((root / "VideoFlash").glob("*.mp4"))) == NUM_CLIPS
    rows = [row for split in dataset.values() for row in split.remove_columns("audio")]
    assert len(rows) == NUM_CLIPS
    assert np.bincount([r["label"] for r in rows]).tolist() == [NUM_CLIPS // 6] * 6
    for row in rows:
        assert 1 <= row["arousal"] <= 5 and 1 <= row["valence"] <= 5 and 1 <= row["dominance"] <= 5
        assert abs(row["arousal"] - (1.5 + 1.5 * syn.audio_group(row["label"]))) <= 0.25
        assert abs(row["valence"] - (2 + 2 * syn.visual_group(row["label"]))) <= 0.25
        assert row["text"] and row["video"].endswith(".mp4")
    speakers = {split: set(dataset[split]["speaker"]) for split in dataset}
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["validation"])
    assert corpus_metadata(dataset)["attribute_scale"] == [1.0, 5.0]
    waveform, rate = sf.read(next((root / "AudioWAV").glob("*.wav")))
    assert rate == 16000 and 1.5 <= len(waveform) / rate <= 2.0
    frames = syn.read_video_frames(next((root / "VideoFlash").glob("*.mp4")))
    assert frames.shape[1:] == (64, 64, 3) and 12 <= frames.shape[0] <= 16


def test_deterministic_by_seed(tmp_path):
    a = syn.write_synthetic_corpus(tmp_path / "a", num_clips=8, seed=1)
    b = syn.write_synthetic_corpus(tmp_path / "b", num_clips=8, seed=1)
    c = syn.write_synthetic_corpus(tmp_path / "c", num_clips=8, seed=2)
    assert _digest(a) == _digest(b) != _digest(c)
    with pytest.raises(ValueError, match="already holds"):
        syn.write_synthetic_corpus(a, num_clips=8)


def test_unpaired_share(tmp_path):
    root = syn.write_synthetic_corpus(tmp_path / "u", num_clips=20, seed=0, unpaired_fraction=0.3)
    dataset, report = load_corpus("synthetic", root, cache_dir=tmp_path / "cache", return_report=True)
    rows = [r for split in dataset.values() for r in split.remove_columns("audio")]
    audio_paths = {p.stem for p in (root / "AudioWAV").glob("*.wav")}
    video_only = [r for r in rows if r["id"] not in audio_paths]
    audio_only = [r for r in rows if r["video"] is None]
    assert len(rows) == 20 and len(video_only) == 3 and len(audio_only) == 3
    assert report.unpaired == {"video_only": 3, "audio_only": 3}


def _pooled_features(root, dataset):
    audio, video, labels = [], [], []
    for split in dataset.values():
        for row in split.remove_columns("audio"):
            waveform, rate = sf.read(root / "AudioWAV" / f"{row['id']}.wav")
            audio.append(syn.extract_audio_features(waveform, rate).mean(0))
            video.append(syn.extract_visual_features(syn.read_video_frames(row["video"], gray=True)).mean(0))
            labels.append(row["label"])
    return np.array(audio), np.array(video), np.array(labels)


def _accuracy(features, targets):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return cross_val_score(model, features, targets, cv=4).mean()


def test_documented_ceilings_hold_for_a_linear_probe(corpus):
    root, dataset, _ = corpus
    audio, video, labels = _pooled_features(root, dataset)
    assert audio.shape[1] == syn.AUDIO_FEATURE_DIM and video.shape[1] == syn.VISUAL_FEATURE_DIM
    # each modality carries its cue perfectly ...
    assert _accuracy(audio, labels // 2) >= 0.95
    assert _accuracy(video, labels % 2) >= 0.95
    # ... and nothing beyond it: accuracy stays near the documented ceiling (sampling noise ~0.05 at 96 clips)
    assert abs(_accuracy(audio, labels) - syn.CEILINGS["audio"]) <= 0.12
    assert abs(_accuracy(video, labels) - syn.CEILINGS["video"]) <= 0.12
    # together they separate all classes: fusing the two cue probes reaches the audio-visual ceiling
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    fused = 2 * cross_val_predict(probe, audio, labels // 2, cv=4) + cross_val_predict(probe, video, labels % 2, cv=4)
    assert (fused == labels).mean() >= syn.CEILINGS["audio-visual"] - 0.05
    assert _accuracy(np.hstack([audio, video]), labels) >= 0.85  # even one joint linear model beats both ceilings


def test_cheap_features_shapes_and_errors():
    features = syn.extract_audio_features(np.zeros(16000, dtype=np.float32))
    assert features.shape == (1 + (16000 - 400) // 320, 32) and np.isfinite(features).all()
    assert syn.extract_audio_features(np.ones(8000), sampling_rate=8000).shape == features.shape
    assert syn.extract_visual_features(np.zeros((4, 64, 64, 3), dtype=np.uint8)).shape == (4, 256)
    with pytest.raises(ValueError, match="frames must be"):
        syn.extract_visual_features(np.zeros((4, 64), dtype=np.uint8))


def test_cli_and_missing_corpus_error(tmp_path):
    assert cli_main(["synth", "--output-dir", str(tmp_path / "s"), "--num-clips", "6", "--seed", "4"]) == 0
    assert len(list((tmp_path / "s" / "AudioWAV").glob("*.wav"))) == 6
    with pytest.raises(ValueError, match="avemotion synth"):
        load_corpus("synthetic", tmp_path / "empty")
    dataset = load_corpus("synthetic", tmp_path / "gen", num_clips=12, seed=0, cache_dir=tmp_path / "cache")
    assert sum(d.num_rows for d in dataset.values()) == 12


def test_synth_into_a_file_or_an_unwritable_place_is_one_value_error(tmp_path):
    """Issue 10 item 14: FileExistsError / NotADirectoryError / PermissionError tracebacks."""
    existing = tmp_path / "notes.txt"
    existing.write_text("x")
    for target, message in [
        (existing, "is a file, not a directory"),
        (existing / "corpus", "cannot write the corpus"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            syn.write_synthetic_corpus(target, num_clips=2)
        assert str(target) in str(error.value)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write the corpus into .*locked"):
            syn.write_synthetic_corpus(locked / "corpus", num_clips=2)
