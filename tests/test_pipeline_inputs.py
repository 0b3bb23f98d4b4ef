"""pipeline("audio-visual-emotion") on odd and bad inputs: time-aligned windows (VFR video, unequal stream lengths),
mistyped paths, window bounds, error attribution (`errors="raise"|"skip"`), parameter and array validation."""

from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import torch
from media_testing import face_frames, tone
from test_pipeline import _save, _vavl
from transformers import pipeline

from avemotion.pipelines.audio_visual_emotion import (
    MIN_WINDOW_SECONDS,
    _AudioTrack,
    _VideoTrack,
    looks_like_path,
    normalize_input,
    time_windows,
)

RATE = 16000
MARK = 40  # the top-left MARK x MARK block of frame i has the value 10 + 10 * i, to see which frames a window used


def write_vfr_video(
    path, frames: np.ndarray, times: list[float], audio: np.ndarray | None = None, start: float = 0.0
) -> str:
    """An mp4 whose frame i is presented at `start + times[i]` seconds (variable frame rate / gaps), with mono AAC
    audio starting at `start` (a container need not start at 0: MPEG-TS, cut streams)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=RATE)
            sound.layout = "mono"
        for frame, time in zip(frames, times):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = int(round((start + time) * 1000)), Fraction(1, 1000)
            container.mux(video.encode(picture))
        container.mux(video.encode())
        if sound is not None:
            for offset in range(0, audio.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(audio[:, offset : offset + 1024]), format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.time_base, chunk.pts = RATE, Fraction(1, RATE), int(start * RATE) + offset
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    return str(path)


def _marked_frames(count: int) -> np.ndarray:
    frames, _ = face_frames(count)
    for index in range(count):
        frames[index, :MARK, :MARK] = 10 + 10 * index
    return frames


def _marks(frames) -> list[int]:
    """The frame indices whose marks a window's frames carry (H.264 keeps each mark within a few levels)."""
    return [int(round((float(frame[:MARK, :MARK].mean()) - 10) / 10)) for frame in frames]


@pytest.fixture(scope="module")
def vavl_dir(tmp_path_factory):
    torch.manual_seed(0)
    return _save(_vavl(), tmp_path_factory.mktemp("vavl"))


@pytest.fixture(scope="module")
def pipe(vavl_dir):
    return pipeline("audio-visual-emotion", model=vavl_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    waveform = (np.random.default_rng(0).standard_normal(int(0.8 * RATE)) * 0.1).astype(np.float32)
    soundfile.write(folder / "speech.wav", waveform, RATE)
    # frames 0-9 at 0.0-0.9 s, nothing in [1 s, 2 s) (dropped frames), frames 10-19 at 2.0-2.9 s; 3 s of audio
    times = [i / 10 for i in range(10)] + [2 + i / 10 for i in range(10)]
    vfr = write_vfr_video(folder / "vfr.mp4", _marked_frames(20), times, tone(3.0, RATE))
    return {"wav": str(folder / "speech.wav"), "waveform": waveform, "vfr": vfr, "folder": folder}


def _scores(result) -> dict[str, float]:
    return {item["label"]: item["score"] for item in result}


# -- item 6: windows pair audio and video by time -------------------------------------------------------------------


def test_vfr_video_windows_use_the_frames_of_their_own_time_span(pipe, files):
    item = normalize_input(files["vfr"])
    notes: list[str] = []
    windows = list(pipe._windows(item, ["audio", "video"], 1.0, 1.0, notes))
    spans = [(round(start, 3), round(end, 3)) for start, end, _, _ in windows]
    assert spans[:3] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    # before the fix, [1 s, 2 s] was paired with the frames of [2 s, 3 s] (windows were zipped by position)
    assert _marks(windows[0][3]) == list(range(10))
    assert windows[1][3] is None and len(windows[1][2]) == RATE
    assert _marks(windows[2][3]) == list(range(10, 20))
    for start, end, samples, frames in windows:  # every window: only frames presented within it, one window of audio
        assert len(samples) == round((end - start) * RATE)
        expected = [i for i in range(20) if start - 1e-6 <= (i / 10 if i < 10 else 2 + (i - 10) / 10) < end - 1e-6]
        assert (_marks(frames) if frames is not None else []) == expected
    assert notes == ["1.00-2.00 s: no video frames; used audio only"]
    result = pipe(files["vfr"], window_seconds=1.0)
    assert [w["modalities"] for w in result["windows"]][:3] == [["audio", "video"], ["audio"], ["audio", "video"]]
    assert result["notes"] == notes


def test_windows_count_from_the_start_of_the_file(pipe, tmp_path):
    # both streams start at 10 s (as in MPEG-TS or a cut stream): the first window still pairs frames 0-9 with the
    # first second of audio, instead of audio-only windows followed by video-only ones at 10 s
    times = [i / 10 for i in range(20)]
    late = write_vfr_video(tmp_path / "late.mp4", _marked_frames(20), times, tone(2.0, RATE), start=10.0)
    windows = list(pipe._windows(normalize_input(late), ["audio", "video"], 1.0, 1.0, []))
    assert [(round(s, 3), round(e, 3)) for s, e, _, _ in windows][:2] == [(0.0, 1.0), (1.0, 2.0)]
    # the AAC encoder's 1024 priming samples (64 ms) start the audio stream, so the frames sit 64 ms in
    assert _marks(windows[0][3]) == list(range(10)) and _marks(windows[1][3]) == list(range(10, 20))
    result = pipe(late, window_seconds=1.0)
    assert [w["modalities"] for w in result["windows"]] == [["audio", "video"]] * len(result["windows"])


def _tracks(audio_seconds: float, video_seconds: float, fps: float = 10):
    audio = _AudioTrack(iter(np.array_split(np.ones(int(audio_seconds * 100), np.float32), 7)), rate=100)
    count = int(video_seconds * fps)
    video = _VideoTrack(((i / fps, np.full((2, 2, 3), i, np.uint8)) for i in range(count)), frame_duration=1 / fps)
    return audio, video


def test_time_windows_when_video_is_longer_than_audio():
    windows = list(time_windows(*_tracks(audio_seconds=1.5, video_seconds=3.0), 1.0, 1.0))
    assert [(s, e) for s, e, _, _ in windows] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert [len(a) for _, _, a, _ in windows] == [100, 50, 0]  # the audio ends at 1.5 s
    assert [[int(f[0, 0, 0]) for f in v] for _, _, _, v in windows] == [
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]


def test_time_windows_when_audio_is_longer_than_video():
    windows = list(time_windows(*_tracks(audio_seconds=2.5, video_seconds=1.2), 1.0, 1.0))
    assert [(s, e) for s, e, _, _ in windows] == [(0.0, 1.0), (1.0, 2.0), (1.5, 2.5)]
    assert [len(a) for _, _, a, _ in windows] == [100, 100, 100]
    assert [len(v) for _, _, _, v in windows] == [10, 2, 0]


def test_audio_shorter_than_video_through_the_pipeline(pipe):
    frames, _ = face_frames(30)
    audio = (np.random.default_rng(1).standard_normal(RATE) * 0.1).astype(np.float32)  # 1 s of audio, 3 s of video
    result = pipe({"audio": audio, "sampling_rate": RATE, "video": frames, "fps": 10}, window_seconds=1.0)
    assert [(w["start"], w["end"], w["modalities"]) for w in result["windows"]] == [
        (0.0, 1.0, ["audio", "video"]),
        (1.0, 2.0, ["video"]),
        (2.0, 3.0, ["video"]),
    ]
    assert result["notes"] == ["1.00-3.00 s: no audio; used video only"]  # consecutive spans are merged
    with pytest.raises(ValueError, match="input #0: video frames given as an array need 'fps'"):
        pipe({"audio": audio, "sampling_rate": RATE, "video": frames})


# -- item 7: a mistyped path is an error, a sentence is text --------------------------------------------------------


@pytest.mark.parametrize("name", ["speech.wa", "missing/notes.txt", "notes.txt", "clips/clip", "my recording.wav"])
def test_mistyped_paths_are_errors_naming_them(pipe, name):
    with pytest.raises(ValueError, match=rf"'{name}': no such file"):
        pipe(name)


def test_a_directory_is_an_error(pipe, files):
    with pytest.raises(ValueError, match=rf"'{files['folder']}': is a directory"):
        pipe(str(files["folder"]))
    with pytest.raises(ValueError, match="is a directory"):
        pipe(files["folder"])  # a Path object


@pytest.mark.parametrize("text", ["yes/no, and/or a transcript", "I love it.", "hello", "e.g.", "3.5 stars", "ok!"])
def test_sentences_stay_text(pipe, text):
    assert not looks_like_path(text)
    with pytest.raises(ValueError, match="uses audio and video, but the input has text"):
        pipe(text)  # VAVL has no text branch: the string was taken as a transcript


# -- item 11: window and stride bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_seconds": 1e-9}, "window_seconds must be a finite number of seconds >= 0.025"),
        ({"stride_seconds": 1e-6}, "stride_seconds must be a finite number of seconds >= 0.025"),
        ({"window_seconds": 0}, "window_seconds must be"),
        ({"window_seconds": -1.0}, "window_seconds must be"),
        ({"window_seconds": float("nan")}, "window_seconds must be"),
        ({"stride_seconds": float("inf")}, "stride_seconds must be"),
        ({"window_seconds": "1"}, "window_seconds must be"),
        ({"window_seconds": 1.0, "stride_seconds": 2.0}, r"stride_seconds \(2.0\) must not exceed window_seconds"),
    ],
)
def test_window_and_stride_are_bounded(pipe, files, options, message):
    with pytest.raises(ValueError, match=message):
        pipe(files["wav"], **options)


def test_stride_from_construction_is_checked_against_the_call_window(vavl_dir, files):
    strided = pipeline("audio-visual-emotion", model=vavl_dir, stride_seconds=0.5)
    with pytest.raises(ValueError, match="must not exceed window_seconds"):
        strided(files["wav"], window_seconds=0.4)
    # the smallest window works and gives one window per 25 ms
    result = strided(files["wav"], window_seconds=MIN_WINDOW_SECONDS, stride_seconds=MIN_WINDOW_SECONDS)
    assert len(result["windows"]) == 32  # 0.8 s / 25 ms


# -- item 13: errors name the position and the file; errors="skip" keeps the others ---------------------------------


def test_list_errors_name_position_and_file(pipe, files):
    missing = str(files["folder"] / "missing.wav")
    with pytest.raises(ValueError, match=rf"^input #2: '{missing}': no such file"):
        pipe([files["wav"], files["waveform"], missing], sampling_rate=RATE)
    with pytest.raises(ValueError, match=r"^audio of input #1: .*NaN"):
        pipe([files["waveform"], np.array([0.1, np.nan] * 500, np.float32)], sampling_rate=RATE)
    with pytest.raises(ValueError, match=r"^input #3: expected a media path"):
        pipe([files["wav"]] * 3 + [object()])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_errors_skip_keeps_the_other_results(pipe, files, batch_size):
    missing = str(files["folder"] / "missing.wav")
    inputs = [files["wav"], missing, files["waveform"], object(), files["wav"]]
    results = pipe(inputs, sampling_rate=RATE, errors="skip", batch_size=batch_size)
    assert len(results) == 5
    assert results[1] == {"error": f"input #1: '{missing}': no such file", "input": missing}
    assert results[3]["input"] == "input #3" and results[3]["error"].startswith("input #3: expected a media path")
    alone = _scores(pipe(files["wav"]))
    for index in (0, 2, 4):
        assert _scores(results[index]) == pytest.approx(alone, abs=1e-5)


def test_generator_yields_the_results_before_a_bad_item(pipe, files):
    missing = str(files["folder"] / "missing.wav")
    results = []
    with pytest.raises(ValueError, match=rf"input #1: '{missing}': no such file"):
        for result in pipe((x for x in [files["wav"], missing, files["wav"]]), batch_size=2):
            results.append(result)
    assert len(results) == 1 and _scores(results[0]) == pytest.approx(_scores(pipe(files["wav"])), abs=1e-5)


def test_truncated_stream_after_good_windows_is_an_error_record(pipe, files, tmp_path):
    truncated = tmp_path / "truncated.mp4"
    data = open(files["vfr"], "rb").read()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    result = pipe([str(truncated)], window_seconds=1.0, errors="skip")[0]
    assert set(result) == {"error", "input"} and result["input"] == str(truncated)
    assert str(truncated) in result["error"]


# -- items 14, 15: parameters and arrays -----------------------------------------------------------------------------


def test_empty_list_gives_no_results(pipe):
    assert pipe([]) == []
    assert list(pipe(x for x in [])) == []


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True, "2"])
def test_bad_top_k(pipe, files, top_k):
    with pytest.raises(ValueError, match=r"top_k must be a whole number >= 1"):
        pipe(files["wav"], top_k=top_k)


def test_top_k_counts(pipe, files):
    assert len(pipe(files["wav"], top_k=1)) == 1
    assert len(pipe(files["wav"], top_k=100)) == pipe.model.config.num_labels


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        (
            {"array": np.zeros(RATE, np.float32)},
            {},
            r"input #0: the \{'array': ...\} audio dict needs a 'sampling_rate'",
        ),
        ({"audio": {"array": np.zeros(RATE, np.float32)}}, {}, "input #0: .*needs a 'sampling_rate'"),
        (np.zeros(RATE, np.float32), {"sampling_rate": int(1e9)}, r"sampling_rate must be a whole number of Hz"),
        (np.zeros(RATE, np.float32), {"sampling_rate": 0}, r"sampling_rate must be a whole number of Hz"),
        (np.zeros(RATE, np.float32), {"sampling_rate": 16000.5}, r"sampling_rate must be a whole number of Hz"),
        ({"audio": np.zeros(RATE, np.float32), "sampling_rate": 0}, {}, "input #0: sampling_rate must be"),
        ({"video": np.zeros((5, 48, 48, 3), np.uint8), "fps": -1}, {}, "input #0: fps must be a positive number"),
        ({"video": np.zeros((5, 48, 48, 3), np.uint8), "fps": float("nan")}, {}, "input #0: fps must be"),
        (np.zeros((2, RATE), np.float32), {"sampling_rate": RATE}, r"input #0: a 2-D array of shape \(2, 16000\)"),
        (np.zeros((RATE, 9), np.float32), {"sampling_rate": RATE}, r"input #0: a 2-D array of shape \(16000, 9\)"),
        (np.zeros((48, 48, 3), np.uint8), {}, r"video of input #0: got one image of shape \(48, 48, 3\)"),
        (np.zeros((2, 3, 100), np.float32), {}, r"video of input #0: expected uint8 frames"),
        (np.zeros(1, np.float32), {"sampling_rate": RATE}, "audio of input #0: 1 samples at 16000 Hz is shorter"),
        (np.zeros(100, np.float32), {"sampling_rate": 8000}, "shorter than one model frame"),
        (torch.zeros(2, 100), {"sampling_rate": RATE}, r"a 2-D array of shape \(2, 100\)"),
    ],
)
def test_bad_parameters_and_arrays(pipe, inputs, options, message):
    with pytest.raises(ValueError, match=message):
        pipe(inputs, **options)


def test_grayscale_frames_are_video(pipe):
    frames, _ = face_frames(10)
    gray = frames.mean(axis=-1).astype(np.uint8)  # (T, H, W)
    result = pipe(gray)
    assert result[0]["modalities"] == ["video"]
    rgb = _scores(pipe(np.repeat(gray[..., None], 3, axis=-1)))
    assert _scores(result) == pytest.approx(rgb, abs=1e-6)


def test_a_list_of_waveforms_is_still_a_batch(pipe, files):
    results = pipe([files["waveform"], files["waveform"][: RATE // 2]], sampling_rate=RATE)
    assert len(results) == 2 and all(r[0]["modalities"] == ["audio"] for r in results)


def test_the_call_sampling_rate_fills_a_dict_without_one(pipe, files):
    from_dict = _scores(pipe({"array": files["waveform"]}, sampling_rate=RATE))
    assert from_dict == pytest.approx(_scores(pipe(files["wav"])), abs=1e-5)


def test_bad_errors_mode(pipe, files):
    with pytest.raises(ValueError, match=r"errors must be one of \('raise', 'skip'\)"):
        pipe(files["wav"], errors="ignore")


def test_a_window_inside_a_gap_of_a_silent_video_is_left_out_and_noted(pipe, tmp_path):
    times = [i / 10 for i in range(10)] + [2 + i / 10 for i in range(10)]
    silent = write_vfr_video(tmp_path / "silent_vfr.mp4", _marked_frames(20), times)
    result = pipe(silent, window_seconds=1.0)
    assert [(w["start"], w["end"], w["modalities"]) for w in result["windows"]] == [
        (0.0, 1.0, ["video"]),
        (2.0, 3.0, ["video"]),
    ]
    assert result["notes"] == ["1.00-2.00 s: no video frames; window left out"]


def test_span_notes_merge_and_stay_short():
    from avemotion.pipelines.audio_visual_emotion import _SpanNotes

    spans = _SpanNotes(limit=2)
    for start in [0, 1, 2, 5, 8, 11]:
        spans.add("no video frames; used audio only", start, start + 1)
    assert spans.render() == ["0.00-3.00, 5.00-6.00 s (and 2 more spans): no video frames; used audio only"]


def test_audio_text_model_skips_errors_in_batches_and_drops_too_short_audio(tmp_path):
    from mlfusion_testing import tiny_config, tiny_tokenizer

    from avemotion import MultiLevelFusionForEmotionRecognition

    tokenizer = tiny_tokenizer(tmp_path)
    torch.manual_seed(0)
    model = MultiLevelFusionForEmotionRecognition(tiny_config(fusion_members=["audio_frame", "text"])).eval()
    mlfusion = pipeline("audio-visual-emotion", model=_save(model, tmp_path / "mlf", tokenizer))
    waveform = (np.random.default_rng(0).standard_normal(RATE) * 0.1).astype(np.float32)
    inputs = [
        {"audio": waveform, "sampling_rate": RATE, "text": "i am so happy"},
        "missing.wav",
        {"text": "sad and angry today"},
        {"audio": waveform[:1], "sampling_rate": RATE, "text": "i am so happy"},
    ]
    single = mlfusion(inputs, errors="skip", batch_size=1)
    batched = mlfusion(inputs, errors="skip", batch_size=2)
    assert single[1] == batched[1] == {"error": "input #1: 'missing.wav': no such file", "input": "missing.wav"}
    for index in (0, 2, 3):
        assert _scores(batched[index]) == pytest.approx(_scores(single[index]), abs=1e-5)
    # one sample of audio next to a transcript: the transcript alone is used, and the note says why
    assert single[3][0]["modalities"] == ["text"]
    assert single[3][0]["notes"] == ["the audio is shorter than one model frame (400 samples); not used"]
    assert _scores(single[3]) == pytest.approx(_scores(mlfusion({"text": "i am so happy"})), abs=1e-5)


def test_one_frame_video_is_one_window():
    frame = np.full((2, 2, 3), 7, np.uint8)
    windows = list(time_windows(None, _VideoTrack(iter([(0.0, frame)])), 1.0, 1.0))
    assert [(s, e, len(v)) for s, e, _, v in windows] == [(0.0, 0.0, 1)]
    late = list(time_windows(None, _VideoTrack(iter([(3.5, frame)])), 1.0, 1.0))  # a stream starting late
    assert [(s, e, len(v)) for s, e, _, v in late if v] == [(2.5, 3.5, 1)]
