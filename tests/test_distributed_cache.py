"""`cache_features` / `avemotion cache-features` over several processes (`accelerate launch`, CPU): the same bits as
one process, one error stops all, a killed run resumes with only the missing chunks, an up-to-date output is kept."""

import subprocess
import sys

import datasets
import pytest
import torch
from distributed_testing import ROOT, launch, process_env, save_backbone_model

from avemotion.cli import main as avemotion
from avemotion.data import load_corpus
from avemotion.data.cache import cache_features
from avemotion.data.synthetic import SyntheticFeatureExtractor
from avemotion.utils import distributed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed-cache")
    load_corpus("synthetic", root / "corpus", num_clips=16, seed=3, unpaired_fraction=0.25, cache_dir=root / "hf")
    return root


def _tables_equal(left: datasets.DatasetDict, right: datasets.DatasetDict) -> None:
    assert list(left) == list(right)
    for name in left:
        assert left[name].num_rows == right[name].num_rows > 0
        assert left[name].data.table.equals(right[name].data.table), name  # bit for bit, in row order


def test_two_processes_write_the_same_features_as_one(corpus, tmp_path, monkeypatch, capsys):
    model = save_backbone_model(tmp_path / "model")
    common = [
        "--model",
        str(model),
        "--dataset",
        "synthetic",
        "--data_dir",
        str(corpus / "corpus"),
        "--batch_size",
        "2",
        "--chunk_size",
        "3",
    ]  # fmt: skip  (chunks of 4 rows: whole batches)
    done = launch(2, "-m", "avemotion.cli", "cache-features", *common, "--output_dir", str(tmp_path / "two"),
                  tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # the main process saves
    for name, value in process_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process: a thread count can change the last bits of a product
    try:
        assert avemotion(["cache-features", *common, "--output_dir", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    one, two = datasets.load_from_disk(str(tmp_path / "one")), datasets.load_from_disk(str(tmp_path / "two"))
    _tables_equal(one, two)
    assert set(one["train"].column_names) == {"id", "label", "arousal", "valence", "dominance", "audio_features",
                                              "visual_features"}  # fmt: skip
    assert any(row is None for row in one["train"]["visual_features"])  # unpaired rows stay None
    assert not (tmp_path / "two" / "chunks").exists() and (tmp_path / "two" / "cache_features.json").is_file()

    # the same command again: up to date, nothing computed (a backbone run would fail here)
    capsys.readouterr()
    monkeypatch.setattr("avemotion.data.cache._BackboneExtractor.extract_batch", _fail)
    assert avemotion(["cache-features", *common, "--output_dir", str(tmp_path / "two")]) == 0
    assert "up to date" in capsys.readouterr().out
    # other splits into that folder: refused, not mixed
    assert avemotion(["cache-features", *common, "--split", "test", "--output_dir", str(tmp_path / "two")]) == 2
    assert "holds another dataset" in capsys.readouterr().err


def _fail(*args, **kwargs):
    raise AssertionError("the backbones ran although the output is up to date")


FAILING_RANK = """
import datasets, torch
from avemotion.data.cache import cache_features
from avemotion.data.synthetic import SyntheticFeatureExtractor
from avemotion.utils.distributed import process_state

class Extractor(SyntheticFeatureExtractor):
    def extract_batch(self, batch):
        if process_state().process_index == 1:
            raise RuntimeError("disk full on this machine")
        return super().extract_batch(batch)

rows = datasets.load_from_disk({rows!r})
cache_features(rows, Extractor(), batch_size=2, chunk_size=2, cache_dir={cache!r})
"""


def test_an_error_in_one_process_stops_every_process_naming_it(corpus, tmp_path):
    rows = load_corpus("synthetic", corpus / "corpus", cache_dir=corpus / "hf")["test"]
    rows.save_to_disk(str(tmp_path / "rows"))
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK.format(rows=str(tmp_path / "rows"), cache=str(tmp_path / "cache")))
    done = launch(2, str(script), tmp_path=tmp_path)
    assert done.returncode != 0
    # process 0 stops at the end of the round with the other's error; process 1 shows its own traceback
    assert "DistributedWorkError: Caching backbone features: process 1 of 2 failed: RuntimeError: disk full" in (
        done.stderr
    ), done.stderr[-3000:]
    assert "RuntimeError: disk full on this machine" in done.stderr


KILLED_MIDWAY = """
import os, signal, datasets
from avemotion.data.cache import cache_features
from avemotion.data.synthetic import SyntheticFeatureExtractor

class Extractor(SyntheticFeatureExtractor):
    calls = 0
    def extract_batch(self, batch):
        Extractor.calls += 1
        if Extractor.calls == 3:  # the first batch of the second chunk (of 2 batches)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().extract_batch(batch)

cache_features(datasets.load_from_disk({rows!r}), Extractor(), batch_size=2, chunk_size=4, cache_dir={cache!r})
"""


class CountingExtractor(SyntheticFeatureExtractor):
    def __init__(self):
        self.rows = 0

    def extract_batch(self, batch):
        self.rows += len(batch["id"])
        return super().extract_batch(batch)


def test_a_killed_run_started_again_computes_only_the_missing_chunks(corpus, tmp_path):
    rows = load_corpus("synthetic", corpus / "corpus", cache_dir=corpus / "hf")["train"]
    assert len(rows) > 4
    rows.save_to_disk(str(tmp_path / "rows"))
    rows = datasets.load_from_disk(str(tmp_path / "rows"))
    script = tmp_path / "killed.py"
    script.write_text(KILLED_MIDWAY.format(rows=str(tmp_path / "rows"), cache=str(tmp_path / "cache")))
    done = subprocess.run([sys.executable, str(script)], env=process_env(tmp_path), capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]
    (folder,) = (tmp_path / "cache").iterdir()
    committed = sorted(path.name for path in folder.glob("rows-*.arrow"))
    assert committed == ["rows-000000000-000000004-batch2.arrow"]  # the first chunk only; the second was cut

    resumed_extractor = CountingExtractor()
    resumed = cache_features(rows, resumed_extractor, batch_size=2, chunk_size=4, cache_dir=tmp_path / "cache")
    assert resumed_extractor.rows == len(rows) - 4  # only what was missing
    assert sorted(path.name for path in folder.iterdir()) == [  # the cut chunk's temporary file is cleared
        "rows-000000000-000000004-batch2.arrow", f"rows-000000004-{len(rows):09d}-batch2.arrow"]  # fmt: skip
    fresh = cache_features(rows, SyntheticFeatureExtractor(), batch_size=2, chunk_size=4, cache_dir=tmp_path / "new")
    assert resumed.data.table.equals(fresh.data.table)
    # done: a third run computes nothing
    again = CountingExtractor()
    cache_features(rows, again, batch_size=2, chunk_size=4, cache_dir=tmp_path / "cache")
    assert again.rows == 0


def test_processes_that_disagree_on_the_fingerprint_stop_before_any_work(corpus, monkeypatch):
    rows = load_corpus("synthetic", corpus / "corpus", cache_dir=corpus / "hf")["test"]
    monkeypatch.setattr(distributed, "gather", lambda value: [value, "0" * 32])  # another process's fingerprint
    extractor = CountingExtractor()
    with pytest.raises(ValueError, match=r"disagree on the feature cache's fingerprint .*process 1: '0{32}'"):
        cache_features(rows, extractor)
    assert extractor.rows == 0


def test_several_processes_need_a_shared_cache_folder(monkeypatch):
    class TwoProcesses:
        num_processes, process_index, is_main_process = 2, 0, True

    monkeypatch.setattr("avemotion.data.cache.process_state", lambda: TwoProcesses())
    monkeypatch.setattr(distributed, "gather", lambda value: [value, value])
    rows = datasets.Dataset.from_dict({"id": ["a"], "audio": [None], "video": [None], "label": [0]})
    with pytest.raises(ValueError, match="needs cache_dir"):
        cache_features(rows, SyntheticFeatureExtractor())


def test_chunks_are_whole_batches_and_a_chunk_size_below_one_is_refused(tmp_path):
    rows = datasets.Dataset.from_dict({"id": list("abcdefg"), "audio": [None] * 7, "video": [None] * 7})
    cached = cache_features(rows, SyntheticFeatureExtractor(), batch_size=3, chunk_size=4, cache_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "rows-000000000-000000006-batch3.arrow", "rows-000000006-000000007-batch3.arrow"]  # fmt: skip
    assert cached["id"] == list("abcdefg")
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        cache_features(rows, SyntheticFeatureExtractor(), chunk_size=0)
    empty = cache_features(rows.select([]), SyntheticFeatureExtractor(), cache_dir=tmp_path / "empty")
    assert len(empty) == 0 and "audio_features" in empty.column_names
