"""`avemotion predict --inputs ... --output results.jsonl` / `predict_corpus`: records in input order with per-input
errors, the same from two `accelerate launch` processes as from one, resumable after `kill -9`."""

import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from distributed_testing import ROOT, launch, process_env, save_backbone_model

from avemotion.cli import main as avemotion
from avemotion.data import load_corpus
from avemotion.pipelines.cli_predict import load_pipeline
from avemotion.pipelines.corpus_prediction import predict_corpus, read_inputs


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A model directory and a folder of 12 clips (synthetic videos, one audio file, one corrupt file)."""
    root = tmp_path_factory.mktemp("predict-corpus")
    load_corpus("synthetic", root / "corpus", num_clips=10, seed=5, cache_dir=root / "hf")
    clips = root / "clips"
    clips.mkdir()
    for video in sorted((root / "corpus" / "VideoFlash").iterdir())[:10]:
        shutil.copy(video, clips / video.name)
    shutil.copy(sorted((root / "corpus" / "AudioWAV").iterdir())[0], clips / "speech.wav")
    (clips / "0_corrupt.wav").write_bytes(b"not audio at all")
    return save_backbone_model(root / "model"), clips


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process: the last bits of a product can depend on threads
    return threads


def test_two_processes_write_the_records_of_one_in_input_order(media, tmp_path, monkeypatch, capsys):
    model, clips = media
    done = launch(2, "-m", "avemotion.cli", "predict", "--model", str(model), "--inputs", str(clips), "--output",
                  str(tmp_path / "two.jsonl"), "--batch_size", "2", tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # an input failed: the status says so, the others are written
    assert done.stdout.count("wrote ") == 1 and "12 records, 1 errors" in done.stdout
    for name, value in process_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    threads = _one_thread()
    try:
        status = avemotion(["predict", "--model", str(model), "--inputs", str(clips), "--output",
                            str(tmp_path / "one.jsonl"), "--batch_size", "2"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert status == 1
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    records = _lines(tmp_path / "one.jsonl")
    expected = sorted(str(path) for path in clips.iterdir())
    assert [r["index"] for r in records] == list(range(12)) and [r["input"] for r in records] == expected
    (bad,) = [r for r in records if "error" in r]
    assert bad["input"].endswith("0_corrupt.wav") and "cannot read the file" in bad["error"]
    assert not bad["error"].startswith("input #")  # a position within one process's share would mislead
    speech = next(r for r in records if r["input"].endswith("speech.wav"))
    assert speech["result"][0]["modalities"] == ["audio"] and len(speech["result"]) == 6  # top_k=None: every label
    assert not (tmp_path / "one.jsonl.parts").exists()


KILLED = """
import os, signal
from avemotion.pipelines.cli_predict import load_pipeline
from avemotion.pipelines.corpus_prediction import predict_corpus, read_inputs

pipe = load_pipeline({model!r})

def killing(items, **options):
    for count, result in enumerate(pipe(items, **options)):
        if count == 5:  # five records written, the sixth result is lost with the process
            os.kill(os.getpid(), signal.SIGKILL)
        yield result

predict_corpus(killing, read_inputs({clips!r}), {output!r}, round_size=2)
"""


def test_a_killed_prediction_started_again_predicts_only_the_rest(media, tmp_path):
    model, clips = media
    output = tmp_path / "results.jsonl"
    script = tmp_path / "killed.py"
    script.write_text(KILLED.format(model=str(model), clips=str(clips), output=str(output)))
    done = subprocess.run([sys.executable, str(script)], env=process_env(tmp_path), capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]
    assert not output.exists()
    (part,) = (tmp_path / "results.jsonl.parts").iterdir()
    assert [r["index"] for r in _lines(part)] == [0, 1, 2, 3, 4]

    pipe = load_pipeline(str(model))
    seen = []

    def counting(items, **options):
        items = list(items)
        seen.extend(items)
        return pipe(items, **options)

    inputs = read_inputs(clips)
    resumed = predict_corpus(counting, inputs, output, round_size=2)
    assert seen == [item for _, item in inputs[5:]]  # only what was not written
    assert [r["index"] for r in resumed] == list(range(12)) and _lines(output) == resumed
    fresh = predict_corpus(pipe, inputs, tmp_path / "fresh.jsonl")
    assert [r["input"] for r in fresh] == [r["input"] for r in resumed]
    for left, right in zip(fresh, resumed):
        assert ("error" in left) == ("error" in right)
        if "result" in left:
            assert [p["label"] for p in left["result"]] == [p["label"] for p in right["result"]]
            assert [p["score"] for p in left["result"]] == pytest.approx([p["score"] for p in right["result"]])
    # complete: nothing to predict again; other inputs into the same file are refused
    seen.clear()
    assert predict_corpus(counting, inputs, output) == resumed and seen == []
    with pytest.raises(ValueError, match="holds results of other inputs"):
        predict_corpus(pipe, inputs[::-1], output)


def test_inputs_from_lists_tables_and_datasets(tmp_path):
    import datasets

    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "list.txt").write_text("# clips\na.wav\n\nsub/b.mp4\n")
    assert read_inputs(tmp_path / "list.txt") == [("a.wav", str(tmp_path / "a.wav")),
                                                  ("sub/b.mp4", str(tmp_path / "sub" / "b.mp4"))]  # fmt: skip
    table = pa.table({"id": ["x", "y"], "audio": ["x.wav", None], "video": [None, "y.mp4"], "text": ["hi", None]})
    pq.write_table(table, tmp_path / "rows.parquet")
    expected = [("x", {"audio": "x.wav", "text": "hi"}), ("y", {"video": "y.mp4"})]
    assert read_inputs(tmp_path / "rows.parquet") == expected
    (tmp_path / "rows.csv").write_text("path\nc.wav\n")
    assert read_inputs(tmp_path / "rows.csv") == [("c.wav", "c.wav")]
    (tmp_path / "rows.jsonl").write_text('{"text": "so happy"}\n')
    assert read_inputs(tmp_path / "rows.jsonl") == [("row 0", {"text": "so happy"})]
    splits = datasets.DatasetDict({"test": datasets.Dataset.from_dict({"id": ["z"], "video": ["z.mp4"]}),
                                   "train": datasets.Dataset.from_dict({"id": ["t"], "video": ["t.mp4"]})})  # fmt: skip
    splits.save_to_disk(str(tmp_path / "saved"))
    assert read_inputs(tmp_path / "saved", split="test") == [("z", {"video": "z.mp4"})]
    with pytest.raises(ValueError, match="give --split, one of \\['test', 'train'\\]"):
        read_inputs(tmp_path / "saved")
    (tmp_path / "bad.csv").write_text("label\nsad\n")
    with pytest.raises(ValueError, match="no column audio, video, text, path"):
        read_inputs(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no media files"):
        read_inputs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_inputs(tmp_path / "nowhere")


def test_the_command_refuses_options_that_do_not_fit_a_results_file(media, tmp_path, capsys):
    model, clips = media
    assert avemotion(["predict", "--model", str(model), "--inputs", str(clips)]) == 2
    assert "--inputs needs --output" in capsys.readouterr().err
    assert avemotion(["predict", "--model", str(model), "--inputs", str(clips), "--output", str(tmp_path / "r"),
                      "--plot", str(tmp_path / "p.png")]) == 2  # fmt: skip
    assert "--plot draws single predictions" in capsys.readouterr().err
