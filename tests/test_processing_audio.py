"""Audio reading and the audio feature extractor: files, sound tracks, resampling, mono mixing, errors."""

import numpy as np
import pytest
import soundfile
import soxr
from media_testing import face_frames, tone, write_video

from avemotion import AvEmotionFeatureExtractor, AvEmotionProcessor
from avemotion.processing import load_audio

RATE = 16000


def dominant_frequency(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()])


@pytest.fixture(scope="module")
def stereo_44k(tmp_path_factory):
    """1 s stereo 44.1 kHz tone: left amplitude 0.5, right 0.25."""
    signal = tone(1.0, 44100, channels=2)
    folder = tmp_path_factory.mktemp("audio")
    paths = {}
    for suffix in ("wav", "flac", "mp3"):
        paths[suffix] = folder / f"tone.{suffix}"
        soundfile.write(paths[suffix], signal.T, 44100)
    return signal, paths


def test_wav_is_mixed_to_mono_and_resampled_with_soxr(stereo_44k):
    signal, paths = stereo_44k
    waveform = load_audio(paths["wav"])
    expected = soxr.resample(signal.mean(axis=0), 44100, RATE, quality="HQ")
    assert waveform.dtype == np.float32 and waveform.shape == (RATE,)
    np.testing.assert_allclose(waveform, expected, atol=1e-4)  # wav is 16-bit PCM
    assert np.sqrt(np.mean(waveform[1000:-1000] ** 2)) == pytest.approx(0.375 / np.sqrt(2), rel=1e-2)


@pytest.mark.parametrize("suffix", ["flac", "mp3"])
def test_flac_and_mp3_are_read(stereo_44k, suffix):
    _, paths = stereo_44k
    waveform = load_audio(paths[suffix])
    assert abs(len(waveform) - RATE) < 0.05 * RATE  # mp3 adds encoder delay and padding
    assert dominant_frequency(waveform, RATE) == pytest.approx(440, abs=2)
    assert np.abs(waveform).max() == pytest.approx(0.375, rel=0.1)


def test_sound_track_of_a_video_is_read(tmp_path):
    frames, _ = face_frames(10, height=64, width=64, face_size=48)
    path = write_video(tmp_path / "clip.mp4", frames, fps=10, audio=tone(1.0, 44100, channels=2, frequency=300))
    waveform = load_audio(path)
    assert abs(len(waveform) - RATE) < 0.1 * RATE  # AAC priming and padding
    assert dominant_frequency(waveform, RATE) == pytest.approx(300, abs=2)


def test_feature_extractor_takes_paths_dicts_and_arrays_at_any_rate(stereo_44k):
    _, paths = stereo_44k
    extractor = AvEmotionFeatureExtractor(normalization="none")
    at_8k = np.sin(np.arange(4000) / 8000 * 2 * np.pi * 200).astype(np.float32)
    from_array = extractor(at_8k, sampling_rate=8000, return_tensors="np")
    from_dict = extractor({"array": at_8k, "sampling_rate": 8000}, return_tensors="np")
    assert from_array["input_values"].shape == (1, 8000)
    np.testing.assert_array_equal(from_array["input_values"], from_dict["input_values"])
    np.testing.assert_allclose(from_array["input_values"][0], soxr.resample(at_8k, 8000, RATE, quality="HQ"))

    batch = extractor([str(paths["wav"]), at_8k], sampling_rate=8000, return_tensors="np")
    assert batch["input_values"].shape == (2, RATE)
    np.testing.assert_array_equal(batch["attention_mask"].sum(axis=1), [RATE, 8000])
    assert np.all(batch["input_values"][1, 8000:] == 0)


def test_global_normalisation_and_max_duration(caplog):
    extractor = AvEmotionFeatureExtractor(
        normalization="global", global_mean=0.1, global_std=0.5, max_duration_seconds=0.5
    )
    waveform = np.linspace(-1, 1, RATE, dtype=np.float32)
    with caplog.at_level("WARNING"):
        out = extractor(waveform, sampling_rate=RATE, return_tensors="np")
    assert out["input_values"].shape == (1, RATE // 2)
    np.testing.assert_allclose(out["input_values"][0], (waveform[: RATE // 2] - 0.1) / (0.5 + 1e-6), rtol=1e-6)
    assert "max_duration_seconds" in caplog.text  # the cut is reported, not silent


def test_utterance_normalisation_is_kept():
    extractor = AvEmotionFeatureExtractor()  # the class default: wav2vec2's per-utterance normalisation
    out = extractor(np.linspace(0, 3, 1000, dtype=np.float32), sampling_rate=RATE, return_tensors="np")
    assert abs(out["input_values"].mean()) < 1e-5 and out["input_values"].std() == pytest.approx(1, abs=1e-3)


def test_bad_audio_files_raise_value_errors_that_name_the_file(tmp_path, stereo_44k):
    _, paths = stereo_44k
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(paths["wav"].read_bytes()[:30000])
    silent = write_video(tmp_path / "silent.mp4", face_frames(5, height=64, width=64, face_size=48)[0], fps=5)
    cases = [
        (empty, "empty"),
        (garbage, "cannot decode"),
        (truncated, "truncated"),
        (silent, "no audio stream"),
        (tmp_path / "missing.wav", "no such file"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            load_audio(path)
        assert path.name in str(error.value)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN or infinite"),
        (np.array([0.1, np.inf], dtype=np.float64), "NaN or infinite"),
        (np.zeros((2, 100, 3), dtype=np.float32), "mono 1-D"),
        (np.zeros(100, dtype=np.int16), "floating-point"),
        (np.zeros(0, dtype=np.float32), "empty"),
    ],
)
def test_bad_arrays_raise_value_errors(array, message):
    with pytest.raises(ValueError, match=f"audio #0: .*{message}"):
        AvEmotionFeatureExtractor()(array, sampling_rate=RATE)


@pytest.mark.parametrize("shape", [(RATE, 2), (RATE, 9), (2, RATE), (1, RATE)])
def test_2d_array_is_an_error_not_a_batch(shape):
    """Issue 10 item 15: (2, N) and (N, 9) arrays became batches of 2 and 16,000 waveforms."""
    with pytest.raises(ValueError, match=r"audio #0: got one 2-D array of shape .*list of 1-D waveforms"):
        AvEmotionFeatureExtractor()(np.zeros(shape, dtype=np.float32), sampling_rate=RATE)
    batch = list(np.zeros((2, RATE), dtype=np.float32))  # a batch is a list
    out = AvEmotionFeatureExtractor()(batch, sampling_rate=RATE, return_tensors="np")
    assert out["input_values"].shape == (2, RATE)


@pytest.mark.parametrize("rate", [0, -5, 1, 1e9, float("nan"), 44100.5, "16k"])
def test_bad_sampling_rate_is_a_value_error_naming_it(rate):
    """Issue 10 items 14-15: 0 was taken as 16 kHz, 1e9 gave an empty waveform (StopIteration in the pipeline)."""
    wave = np.zeros(RATE, dtype=np.float32)
    extractor = AvEmotionFeatureExtractor()
    with pytest.raises(ValueError, match=r"sampling_rate must be a (whole )?number of Hz"):
        extractor(wave, sampling_rate=rate)
    with pytest.raises(ValueError, match=r"audio #0: sampling_rate must be"):
        extractor({"array": wave, "sampling_rate": rate})
    with pytest.raises(ValueError, match=r"sampling_rate must be"):
        AvEmotionProcessor()(audio=wave, sampling_rate=rate)


def test_dict_without_sampling_rate_is_a_value_error():
    with pytest.raises(ValueError, match=r"audio #1: a dict input needs 'array' and 'sampling_rate'"):
        AvEmotionFeatureExtractor()(
            [np.zeros(RATE, np.float32), {"array": np.zeros(RATE, np.float32)}], sampling_rate=RATE
        )


def test_float_audio_far_outside_unit_range_warns(caplog):
    wave = (np.sin(np.arange(RATE) / 10) * 20000).astype(np.float32)  # int16 values stored as float
    with caplog.at_level("WARNING", logger="avemotion.processing.media"):
        out = AvEmotionFeatureExtractor(normalization="none")(wave, sampling_rate=RATE, return_tensors="np")
    assert "audio #0: the samples reach 2e+04, far outside [-1, 1]" in caplog.text
    np.testing.assert_allclose(out["input_values"][0], wave)  # used as given
    caplog.clear()
    with caplog.at_level("WARNING", logger="avemotion.processing.media"):
        AvEmotionFeatureExtractor()(wave / 20000 * 1.5, sampling_rate=RATE)  # a little clipping is normal
    assert "far outside" not in caplog.text


def test_audio_shorter_than_one_model_frame_is_an_error():
    extractor = AvEmotionFeatureExtractor()
    with pytest.raises(ValueError, match=r"audio #0: 1 sample\(s\) at 16000 Hz is too short.* at least 400 \(25 ms"):
        extractor(np.zeros(1, np.float32), sampling_rate=RATE)
    with pytest.raises(ValueError, match=r"audio #1: 200 sample\(s\)"):  # 100 samples at 8 kHz
        extractor([np.zeros(RATE, np.float32), np.zeros(100, np.float32)], sampling_rate=8000)
    assert extractor(np.zeros(400, np.float32), sampling_rate=RATE)["input_values"][0].shape == (400,)


def test_video_frames_given_as_audio_say_so():
    frames = np.zeros((4, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"audio #0: a uint8 array of shape \(4, 32, 32\) looks like video frames"):
        AvEmotionFeatureExtractor()(frames, sampling_rate=RATE)
