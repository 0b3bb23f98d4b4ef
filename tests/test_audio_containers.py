"""Every container / codec / channel layout / sample format users have decodes to the right mono waveform.

Each file is written here with PyAV (and, where the `ffmpeg` command-line tool is installed, a few with it) from a known
signal (`channel_tones`: a different tone in each channel), decoded with `load_audio` and compared with the truth: the
mean of the channels resampled to 16 kHz (soxr). Lossy codecs delay and pad the signal, so the comparison first aligns
the two by cross-correlation; then it checks the length, the scale (least-squares gain) and the correlation.
"""

import shutil
import subprocess

import av
import numpy as np
import pytest
import soxr
from media_testing import channel_tones, write_audio

from avemotion.processing import iter_audio_blocks, load_audio
from avemotion.processing.media import TRUNCATION_TOLERANCE_SAMPLES

RATE = 16000
SECONDS = 0.5
EDGE = 800  # 50 ms left out at each end: encoder start-up transients and the fade of the last frame
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}
LOSSY = {"aac", "libmp3lame", "libopus", "vorbis", "libvorbis"}
# FFmpeg's experimental native Vorbis encoder loses more than the others (the ffmpeg tool's own decoder finds a
# correlation of 0.92 with the source too); a wrong scale or mix would still be far outside these bounds.
RELAXED = {"vorbis": (0.9, 0.1)}

# (suffix, codec, sample format, source rate, channel counts)
CASES = [
    ("wav", "pcm_s16le", "s16", 44100, (1, 2, 6)),
    ("wav", "pcm_s32le", "s32", 22050, (1, 2, 6)),
    ("wav", "pcm_f32le", "flt", 48000, (1, 2, 6)),
    ("flac", "flac", "s16", 44100, (1, 2, 6)),
    ("flac", "flac", "s32", 96000, (2,)),
    ("mp3", "libmp3lame", "fltp", 44100, (1, 2)),
    ("mp3", "libmp3lame", "s16p", 32000, (2,)),
    ("m4a", "aac", "fltp", 44100, (1, 2, 6)),
    ("mp4", "aac", "fltp", 48000, (2,)),
    ("mov", "pcm_s16le", "s16", 44100, (1, 2, 6)),
    ("mov", "pcm_s32le", "s32", 48000, (2,)),
    ("mov", "pcm_f32le", "flt", 8000, (2,)),
    # stereo s16 in mkv: the case of issue 10 item 5; 7.1: PyAV 18 reads 9 planes of 8-channel planar frames
    ("mkv", "pcm_s16le", "s16", 44100, (1, 2, 6, 8)),
    ("mkv", "pcm_f32le", "flt", 44100, (2,)),
    ("mkv", "flac", "s32", 44100, (2,)),
    ("mkv", "libopus", "flt", 48000, (2, 6)),
    ("mkv", "vorbis", "fltp", 44100, (2,)),  # FFmpeg's native Vorbis encoder: stereo only
    ("avi", "pcm_s16le", "s16", 44100, (1, 2, 6, 8)),
    ("webm", "libopus", "flt", 48000, (1, 2)),
    ("webm", "libopus", "s16", 48000, (6,)),
    ("ogg", "libopus", "flt", 48000, (2,)),
]
PARAMS = [
    pytest.param(suffix, codec, fmt, rate, channels, id=f"{suffix}-{codec}-{fmt}-{LAYOUTS[channels]}")
    for suffix, codec, fmt, rate, layouts in CASES
    for channels in layouts
]


def expected_mono(signal: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(signal.mean(axis=0), rate, RATE, quality="HQ").astype(np.float32)


def align(decoded: np.ndarray, expected: np.ndarray, max_lag: int) -> tuple[int, float, float]:
    """The lag (decoded[lag + i] ~ expected[i]) in [-max_lag, max_lag] with the best correlation of the signal's core
    (without its edges); returns (lag, correlation, least-squares gain of decoded over expected)."""
    core = expected[EDGE:-EDGE].astype(np.float64)
    padded = np.concatenate([np.zeros(max_lag), decoded.astype(np.float64), np.zeros(max_lag)])
    best = (0, -2.0, 0.0)
    for lag in range(-max_lag, max_lag + 1):
        start = max_lag + EDGE + lag
        window = padded[start : start + len(core)]
        norm = np.linalg.norm(window) * np.linalg.norm(core)
        corr = float(window @ core / norm) if norm else 0.0
        if corr > best[1]:
            best = (lag, corr, float(window @ core / (core @ core)))
    return best


def check_decoded(decoded: np.ndarray, truth: np.ndarray, lossy: bool, min_corr: float = 0.99, scale_tol=0.1) -> None:
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    if lossy:
        # priming / padding: at most TRUNCATION_TOLERANCE_SAMPLES at the source rate short, a few frames long
        assert -TRUNCATION_TOLERANCE_SAMPLES * RATE / 44100 <= len(decoded) - len(truth) <= 0.15 * RATE
        lag, corr, gain = align(decoded, truth, max_lag=int(0.06 * RATE))
        assert corr > min_corr, f"correlation {corr:.4f} at lag {lag}"
        assert gain == pytest.approx(1.0, abs=scale_tol), f"scale {gain:.4f}"
    else:
        assert abs(len(decoded) - len(truth)) <= 1
        lag, corr, gain = align(decoded, truth, max_lag=2)
        assert lag == 0 and corr > 0.9999, (lag, corr)
        assert gain == pytest.approx(1.0, abs=2e-3), f"scale {gain:.5f}"  # 16-bit rounding at most
        np.testing.assert_allclose(decoded[: len(truth)], truth[: len(decoded)], atol=2e-3)


@pytest.mark.parametrize("suffix, codec, sample_format, rate, channels", PARAMS)
def test_pyav_written_file_decodes_to_the_channel_mean(tmp_path, suffix, codec, sample_format, rate, channels):
    signal = channel_tones(SECONDS, rate, channels)
    bit_rate = 96000 * channels if codec == "aac" else None  # the default 128 kbit/s blurs two tones in stereo
    path = write_audio(
        tmp_path / f"clip.{suffix}", signal, rate, codec, sample_format, LAYOUTS[channels], bit_rate=bit_rate
    )
    decoded = load_audio(path)
    check_decoded(decoded, expected_mono(signal, rate), codec in LOSSY, *RELAXED.get(codec, ()))
    # streaming in blocks gives the same samples (up to the float rounding of soxr's chunked resampling)
    blocks = list(iter_audio_blocks(path, block_seconds=0.1))
    np.testing.assert_allclose(np.concatenate(blocks), decoded, atol=1e-6)


def test_stereo_s16_mkv_is_scaled_and_mixed_not_read_as_planar(tmp_path):
    """Issue 10 item 5: peaks of 11,765-16,384 and a correlation of -0.02 with the source."""
    signal = np.zeros((2, 22050))
    signal[0] = 0.375 * np.sin(2 * np.pi * 440 * np.arange(22050) / 44100)  # right channel silent
    path = write_audio(tmp_path / "speech.mkv", signal, 44100, "pcm_s16le", "s16", "stereo")
    decoded = load_audio(path)
    assert np.abs(decoded).max() == pytest.approx(0.375 / 2, rel=5e-3)
    assert np.corrcoef(decoded, expected_mono(signal, 44100))[0, 1] > 0.9999


def test_5_1_is_the_mean_of_all_six_channels_lfe_included(tmp_path):
    signal = np.zeros((6, 24000))
    signal[3] = 0.6  # a constant in the LFE only: libswresample's own downmix would drop it
    path = write_audio(tmp_path / "surround.wav", signal, 48000, "pcm_f32le", "flt", "5.1")
    other = write_audio(tmp_path / "surround.mkv", signal, 48000, "pcm_f32le", "flt", "5.1")
    for decoded in (load_audio(path), load_audio(other)):
        assert np.median(decoded) == pytest.approx(0.1, abs=1e-4)


def _faststart(source, target):
    """Remux an mp4/mov with its index (moov) first, as `-movflags faststart` does, so that a cut keeps the index."""
    with av.open(str(source)) as inp, av.open(str(target), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.audio[0])
        for packet in inp.demux(inp.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return target


@pytest.mark.parametrize(
    "suffix, codec, fmt", [("mkv", "pcm_s16le", "s16"), ("webm", "libopus", "flt"), ("mov", "pcm_s16le", "s16")]
)
def test_truncated_file_is_reported_with_sample_counts(tmp_path, suffix, codec, fmt):
    rate = 48000
    path = write_audio(tmp_path / f"long.{suffix}", channel_tones(2.0, rate, 2), rate, codec, fmt, "stereo")
    if suffix == "mov":
        path = _faststart(path, tmp_path / "fast.mov")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated or corrupt \(\d+ of the 9[0-9]{4} audio samples") as raised:
        load_audio(path)
    assert str(path) in str(raised.value)


def test_cut_mp4_without_its_index_is_a_value_error(tmp_path):
    path = write_audio(tmp_path / "clip.m4a", channel_tones(1.0, 44100, 2), 44100, "aac", "fltp", "stereo")
    for cut in (_faststart(path, tmp_path / "fast.m4a"), path):
        data = cut.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=r"(truncated or corrupt|cannot decode)") as raised:
            load_audio(cut)
        assert str(cut) in str(raised.value)


def _ffmpeg_tones(path, codec: str, extra: tuple[str, ...] = ()) -> np.ndarray:
    """Write a stereo clip with the ffmpeg tool (left 440 Hz, right 660 Hz, amplitude 1/8, 44.1 kHz) -> the signal."""
    graph = "sine=f=440:r=44100:d=0.5[a];sine=f=660:r=44100:d=0.5[b];[a][b]amerge=inputs=2[out]"
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-filter_complex", graph, "-map", "[out]"]
    subprocess.run([*command, "-c:a", codec, *extra, str(path)], check=True)
    t = np.arange(22050) / 44100
    return np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]) / 8


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg command-line tool is not installed")
@pytest.mark.parametrize(
    "suffix, codec, extra",
    [
        ("m4a", "aac", ()),  # issue 10 item 5: rejected as "44 of 44100 audio frames decode"
        ("mp4", "aac", ()),
        ("mov", "pcm_s16le", ()),
        ("avi", "pcm_s16le", ()),
        ("mkv", "pcm_s16le", ()),
        ("mkv", "libvorbis", ()),
        ("webm", "libopus", ()),
        ("mp3", "libmp3lame", ()),
        ("wav", "pcm_s24le", ()),
    ],
)
def test_ffmpeg_tool_written_file_decodes(tmp_path, suffix, codec, extra):
    path = tmp_path / f"cli.{suffix}"
    signal = _ffmpeg_tones(path, codec, extra)
    check_decoded(load_audio(path), expected_mono(signal, 44100), lossy=codec in LOSSY)
