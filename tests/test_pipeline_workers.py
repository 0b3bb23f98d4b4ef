"""pipeline("audio-visual-emotion", num_workers=N): preprocessing in worker processes gives the results of in-process
preprocessing (every input form, batched or not, errors attributed to their input), and leaves no process behind."""

import collections
import contextlib
import itertools
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from media_testing import face_frames, tone, write_video
from mlfusion_testing import tiny_config as tiny_mlfusion_config
from mlfusion_testing import tiny_tokenizer
from test_pipeline import _save, _vavl
from transformers import pipeline

from avemotion import AudioVisualEmotionPipeline, AvEmotionProcessor, MultiLevelFusionForEmotionRecognition
from avemotion.pipelines.workers import PreprocessPool, WorkerError

RATE, FPS = 16000, 10


@pytest.fixture(scope="module")
def vavl_dir(tmp_path_factory):
    torch.manual_seed(0)
    return _save(_vavl(), tmp_path_factory.mktemp("vavl"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    frames, _ = face_frames(15)  # 1.5 s at 10 fps: two 1 s windows
    clip = write_video(folder / "clip.mp4", frames, fps=FPS, audio=tone(1.5, 44100, channels=2, frequency=300))
    faceless = write_video(folder / "faceless.mp4", np.full((10, 120, 160, 3), 90, np.uint8), fps=FPS,
                           audio=tone(1.0, 44100))  # fmt: skip
    waveform = (np.random.default_rng(0).standard_normal(int(0.8 * RATE)) * 0.1).astype(np.float32)
    return {"clip": str(clip), "faceless": str(faceless), "waveform": waveform, "frames": frames}


@pytest.fixture(scope="module")
def pipe(vavl_dir):
    return pipeline("audio-visual-emotion", model=vavl_dir)


def _mixed_inputs(media, folder) -> list:
    """Every input form of the visual model, with unusable inputs at #2 (no such file) and #5 (a 2-D array)."""
    return [
        media["clip"],
        media["waveform"],
        str(folder / "missing.wav"),
        {"audio": {"array": media["waveform"], "sampling_rate": RATE}, "video": media["frames"], "fps": FPS},
        media["faceless"],
        np.zeros((3, 4), np.float32),
        {"video": media["frames"], "fps": FPS},
        media["frames"],  # frames of unknown rate: one window
    ]


def assert_same(actual, expected, path="result"):
    """Equal structure, keys, labels, notes and windows; scores and values to 1e-6."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), f"{path}: {actual} != {expected}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual} != {expected}"
        for index, (one, other) in enumerate(zip(actual, expected)):
            assert_same(one, other, f"{path}[{index}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-6), path
    else:
        assert actual == expected, path


def _forked_children() -> list[int]:
    """This process's children that are forks of it (their command line is this one's) or zombies (Linux: /proc);
    helpers that multiprocessing starts with exec, such as its resource tracker, are not counted."""
    own = Path("/proc/self/cmdline").read_bytes()
    found = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state == "Z" or Path(f"/proc/{pid}/cmdline").read_bytes() == own:
                    found.append(int(pid))
            except (OSError, IndexError):  # it has just gone
                pass
    return found


def _no_workers_left() -> bool:
    """No worker is alive or left as a zombie."""
    named = [child for child in multiprocessing.active_children() if child.name.startswith("avemotion-")]
    return not named and not _forked_children()


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 2), (3, 1), (3, 2)])
def test_workers_give_the_in_process_results_for_every_input_form(pipe, media, tmp_path, batch_size, workers):
    inputs = _mixed_inputs(media, tmp_path)
    options = {"batch_size": batch_size, "errors": "skip", "sampling_rate": RATE}
    expected = pipe(inputs, num_workers=0, **options)
    assert expected[2]["input"].endswith("missing.wav") and "input #2" in expected[2]["error"]
    assert "input #5" in expected[5]["error"] and "windows" in expected[0]
    assert_same(pipe(inputs, num_workers=workers, **options), expected)
    assert _no_workers_left()


def test_generator_dataset_and_construction_time_workers(vavl_dir, pipe, media, tmp_path):
    import datasets

    inputs = _mixed_inputs(media, tmp_path)
    expected = pipe(inputs, errors="skip", sampling_rate=RATE, batch_size=2)
    stream = pipe((item for item in inputs), num_workers=2, errors="skip", sampling_rate=RATE, batch_size=2)
    assert not isinstance(stream, list)
    assert_same(list(stream), expected)
    rows = {"audio": [media["clip"], str(tmp_path / "gone.wav"), media["faceless"]], "label": [0, 1, 2]}
    dataset = datasets.Dataset.from_dict(rows)
    parallel = pipeline("audio-visual-emotion", model=vavl_dir, num_workers=2, batch_size=3)
    assert_same(list(parallel(dataset, errors="skip")), list(pipe(dataset, errors="skip")))
    assert_same(parallel(media["waveform"]), pipe(media["waveform"]))  # a single input: in-process
    assert _no_workers_left()


def test_errors_raise_names_the_input_after_the_results_before_it(pipe, media, tmp_path):
    inputs = _mixed_inputs(media, tmp_path)
    with pytest.raises(ValueError, match=r"input #2: '.*missing.wav': no such file"):
        pipe(inputs, num_workers=2, sampling_rate=RATE)
    stream = pipe((item for item in inputs), num_workers=2, batch_size=3, sampling_rate=RATE)
    first, second = next(stream), next(stream)
    assert_same([first, second], pipe(inputs[:2], sampling_rate=RATE))
    with pytest.raises(ValueError, match="input #2"):
        next(stream)
    assert _no_workers_left()


def test_fusion_model_transcripts_and_pre_extracted_features(tmp_path, media):
    tokenizer = tiny_tokenizer(tmp_path)
    config = tiny_mlfusion_config(fusion_members=["audio_frame", "text"], audio_layer="last")
    model = MultiLevelFusionForEmotionRecognition(config).eval()
    fusion = pipeline("audio-visual-emotion", model=_save(model, tmp_path / "mlf", tokenizer))
    dim = fusion.model_spec.modalities["audio"].feature_dim
    features = np.random.default_rng(1).standard_normal((9, dim)).astype(np.float32)
    inputs = [
        {"audio": media["clip"], "text": "i am so happy", "video": media["clip"]},
        "i am so happy",
        {"audio": {"array": media["waveform"], "sampling_rate": RATE}, "text": "not at all"},
        {"text": "fine", "audio": np.zeros(10, np.float32)},  # audio shorter than one model frame: text only
        media["waveform"],
    ]
    # pre-extracted features and media have different model inputs: not batched together (also without workers)
    # (nor are error items, which have the media keys; so the wrong-width features item goes in unbatched)
    cached = [{"audio_features": features, "text": "fine"}, {"audio_features": features[:4]}] * 2
    wrong = {"audio_features": np.zeros((3, 5), np.float32)}
    for batch_size, items in ((1, [*inputs, *cached, wrong]), (3, inputs), (3, cached)):
        expected = fusion(items, batch_size=batch_size, errors="skip", sampling_rate=RATE)
        actual = fusion(items, num_workers=2, batch_size=batch_size, errors="skip", sampling_rate=RATE)
        assert_same(actual, expected)
        if batch_size == 1:
            assert "input #9" in expected[9]["error"] and expected[3][0]["modalities"] == ["text"]
            assert expected[5][0]["modalities"] == ["audio", "text"] and "notes" in expected[3][0]


def test_pre_extracted_features_of_a_model_without_backbones():
    from vavl_testing import tiny_vavl_config

    from avemotion import VavlForEmotionRecognition

    model = VavlForEmotionRecognition(tiny_vavl_config()).eval()
    plain = AudioVisualEmotionPipeline(model=model, processor=AvEmotionProcessor())
    rng = np.random.default_rng(0)
    inputs = [{"audio_features": rng.random((7 + i, 16), np.float32), "visual_features": rng.random((5, 12), np.float32)}
              for i in range(4)]  # fmt: skip
    assert_same(plain(inputs, num_workers=2, batch_size=3), plain(inputs, batch_size=3))


def test_closing_the_results_early_stops_the_workers(pipe, media):
    endless = (media["waveform"] for _ in itertools.count())  # an infinite stream: pulled lazily
    results = pipe(endless, num_workers=2, batch_size=2, sampling_rate=RATE)
    first = [next(results) for _ in range(3)]
    assert_same(first[2], first[0])
    assert not _no_workers_left()
    results.close()
    assert _no_workers_left()
    dropped = pipe((media["clip"] for _ in range(20)), num_workers=2)
    next(dropped)
    del dropped  # garbage collected: the workers stop too
    assert _no_workers_left()


def test_an_unexpected_worker_exception_names_the_input(pipe, media, monkeypatch):
    original = AudioVisualEmotionPipeline._encode_window

    def broken(self, item, audio, video, notes):
        if video is not None and item.name == media["faceless"]:
            raise RuntimeError("decoder exploded")
        return original(self, item, audio, video, notes)

    monkeypatch.setattr(AudioVisualEmotionPipeline, "_encode_window", broken)  # inherited by the forked workers
    inputs = [media["waveform"], media["clip"], media["faceless"], media["waveform"]]
    with pytest.raises(WorkerError, match=r"input #2 \('.*faceless.mp4'\): .*RuntimeError: decoder exploded") as info:
        pipe(inputs, num_workers=2, batch_size=2, errors="skip", sampling_rate=RATE)
    assert isinstance(info.value.__cause__, RuntimeError) and "decoder exploded" in str(info.value.__cause__)
    assert _no_workers_left()


def test_pool_keeps_input_order_and_reports_a_dead_worker():
    def windows(item):
        for index in range(item % 3):  # 0, 1 or 2 windows per input
            yield {"item": item, "window": index, "values": torch.full((2, 3), float(item))}

    pool = PreprocessPool(windows, list(range(10)), num_workers=3, windows_ahead=1, inputs_ahead=1)
    received = list(pool)
    assert [(w["item"], w["window"]) for w in received] == [(i, k) for i in range(10) for k in range(i % 3)]
    assert all(torch.equal(w["values"], torch.full((2, 3), float(w["item"]))) for w in received)

    def dies(item):
        if item == 2:
            import os

            os._exit(3)
        yield {"item": item}

    with pytest.raises(WorkerError, match=r"item 2: the preprocessing worker process \d+ exited \(code 3\)"):
        list(PreprocessPool(dies, range(5), num_workers=2, describe=lambda item: f"item {item}"))
    assert _no_workers_left()


def test_speed_settings_keep_the_results(vavl_dir, pipe, media, monkeypatch):
    expected = pipe(media["clip"])  # channels-last weights (the default)
    assert pipe.model.vavl.visual_backbone.embeddings.convolution.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    plain = pipeline("audio-visual-emotion", model=vavl_dir, channels_last=False)
    assert plain.model.vavl.visual_backbone.embeddings.convolution.weight.is_contiguous()
    assert_same(plain(media["clip"]), expected)  # to 1e-6 (the default layout's outputs, to float rounding)
    half = pipeline("audio-visual-emotion", model=vavl_dir, dtype=torch.bfloat16)
    inputs = [media["waveform"], media["waveform"][:8000], media["waveform"][::2]]
    reference = half(inputs, batch_size=2, sampling_rate=RATE)
    assert_same(half(inputs, batch_size=2, num_workers=2, sampling_rate=RATE), reference)
    with pytest.raises(ValueError, match="num_workers must be a whole number >= 0"):
        pipe([media["clip"]], num_workers=-1)
    compiled = []  # torch.compile itself is slow on a CPU: its options reach Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: compiled.append((self, options)))
    fast = pipeline("audio-visual-emotion", model=vavl_dir, torch_compile="max-autotune")
    assert compiled == [(fast.model, {"mode": "max-autotune"})]
    with pytest.raises(ValueError, match="tf32 must be True, False or None"):
        pipeline("audio-visual-emotion", model=vavl_dir, tf32="yes")


def test_predict_cli_with_workers_prints_the_same(vavl_dir, media, tmp_path, capsys):
    from avemotion.cli import main

    files = [media["clip"], str(tmp_path / "missing.wav"), media["faceless"]]
    outputs = []
    for extra in ([], ["--num_workers", "2"]):
        assert main(["predict", "--model", vavl_dir, "--json", "--batch_size", "2", *extra, *files]) == 1
        outputs.append([json.loads(line) for line in capsys.readouterr().out.strip().splitlines()])
    assert [line["input"] for line in outputs[1]] == files
    assert_same(outputs[1], outputs[0])


class _Alarm(Exception):
    """A test that would hang (pulling an endless stream forever) fails instead."""


@pytest.fixture
def alarm():
    import signal

    def ring(*_):
        raise _Alarm("still running after 20 s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_an_unpicklable_stream_item_is_raised_in_its_turn_and_ends_the_pull(pipe, media, alarm):
    pulled = []

    def endless():
        for index in itertools.count():
            pulled.append(index)
            yield (lambda: None) if index >= 2 else index  # a lambda cannot be pickled to a worker

    pool = PreprocessPool(lambda item: iter([{"item": torch.tensor(item)}]), endless(), 2, describe=lambda item: (
        f"input #{len(pulled) - 1}"))  # fmt: skip
    received = []
    with pytest.raises(TypeError, match=r"input #2: cannot be pickled to a worker process .*num_workers=0"):
        received.extend(int(window["item"]) for window in pool)
    assert received == [0, 1] and pulled == [0, 1, 2]  # the results before it; nothing pulled after it
    # the pipeline: not a media error, so raised with errors="skip" too, after the results before it
    stream = (value for value in itertools.chain([media["waveform"]] * 2, (lambda: 0 for _ in itertools.count())))
    results = pipe(stream, num_workers=2, errors="skip", sampling_rate=RATE)
    assert_same([next(results), next(results)], pipe([media["waveform"]] * 2, sampling_rate=RATE))
    with pytest.raises(TypeError, match=r"input #2: cannot be pickled") as info:
        next(results)
    assert info.value.__cause__ is not None
    assert _no_workers_left()


def test_closing_early_terminates_busy_workers_at_once():
    import time

    started = multiprocessing.get_context("fork").Value("i", 0)  # inherited by the forked workers

    def stuck(item):
        with started.get_lock():
            started.value += 1
        yield {"item": item}
        time.sleep(60)  # a slow decode: the workers are busy when the results are closed
        yield {"item": item}

    pool = PreprocessPool(stuck, list(range(6)), num_workers=3, inputs_ahead=1)
    results = iter(pool)
    assert next(results) == {"item": 0}
    deadline = time.monotonic() + 10
    while started.value < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.value == 3
    begin = time.monotonic()
    results.close()  # e.g. Ctrl-C or a consumer that stops early: the remaining work is discarded
    assert time.monotonic() - begin < 3.0  # not one 2 s grace period per busy worker
    assert _no_workers_left()


Pair = collections.namedtuple("Pair", "values item")  # at module level: pickled by reference


class Strict(tuple):
    def __new__(cls, first, second):  # not tuple(iterable)
        return super().__new__(cls, (first, second))


def test_namedtuples_and_tuple_subclasses_in_windows():
    def windows(item):
        yield {"pair": Pair(torch.full((2,), float(item)), item), "strict": Strict(torch.ones(1), [torch.zeros(1)])}

    received = list(PreprocessPool(windows, [1, 2], num_workers=2))
    assert [type(window["pair"]) for window in received] == [Pair, Pair]
    assert [window["pair"].item for window in received] == [1, 2]
    assert torch.equal(received[1]["pair"].values, torch.full((2,), 2.0))
    strict = received[0]["strict"]  # rebuilt as a plain tuple, its tensors intact
    assert (
        type(strict) is tuple and torch.equal(strict[0], torch.ones(1)) and torch.equal(strict[1][0], torch.zeros(1))
    )


def test_tokenizers_parallelism_is_turned_off_before_forking(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    seen = list(PreprocessPool(lambda item: iter([{"env": os.environ.get("TOKENIZERS_PARALLELISM")}]), [0], 1))
    assert seen == [{"env": "false"}] and os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the user's setting is kept
    assert list(PreprocessPool(lambda item: iter([{"env": os.environ["TOKENIZERS_PARALLELISM"]}]), [0], 1)) == [
        {"env": "true"}
    ]


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="lists open files with Linux's /proc")
def test_a_pools_workers_do_not_hold_another_pools_pipes():
    def open_pipes(item):
        pipes = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone
                pipes.append(os.readlink(f"/proc/self/fd/{fd}"))
        yield {"pipes": pipes}

    first = PreprocessPool(open_pipes, [0, 1], num_workers=2)
    ends = [*first._connections, *(end for tasks in first._tasks for end in (tasks._reader, tasks._writer))]
    first_pipes = {f"pipe:[{os.fstat(end.fileno()).st_ino}]" for end in ends}
    second = list(PreprocessPool(open_pipes, [0, 1], num_workers=2))
    for window in second:
        assert not first_pipes & set(window["pipes"])
    assert len(list(first)) == 2
    assert _no_workers_left()
