"""Segment pooling of the multi-level fusion model, and the IEMOCAP forced-alignment reader and segment padding of
`avemotion.processing.segments`."""

import logging

import pytest
import torch

from avemotion.models.mlfusion import segments as model_segments
from avemotion.models.mlfusion.segments import (
    check_segments,
    frame_centers,
    frame_geometry,
    pool_segments,
    segment_frame_bounds,
    segment_pooling_matrix,
)
from avemotion.processing import segments as data_segments
from avemotion.processing.segments import (
    load_iemocap_segments,
    pad_segments,
    parse_iemocap_alignment,
    read_iemocap_alignment,
)

BASE_KERNELS, BASE_STRIDES = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


def test_frame_geometry_of_wav2vec2_base():
    assert frame_geometry(BASE_KERNELS, BASE_STRIDES) == (320, 400)
    stride, field = frame_geometry(BASE_KERNELS, BASE_STRIDES)
    centers = frame_centers(3, stride, field, 16000)
    torch.testing.assert_close(centers, torch.tensor([0.0125, 0.0325, 0.0525], dtype=torch.float64))


def _hand_example():
    # 8 frames of which 6 are real; frame i has the feature (i, -2 i). Centres: 0.0125 + 0.02 i s.
    hidden = torch.stack([torch.arange(8.0), -2 * torch.arange(8.0)], dim=-1).unsqueeze(0)
    frames_mask = torch.tensor([[True] * 6 + [False] * 2])
    segments = torch.tensor(
        [
            [
                [0.00, 0.05],  # centres 0.0125, 0.0325 -> frames 0, 1 -> 0.5
                [0.05, 0.10],  # 0.0525, 0.0725, 0.0925 -> frames 2, 3, 4 -> 3
                [0.10, 0.11],  # no centre inside; midpoint 0.105 is nearest to frame 5 (0.1125) -> 5
                [0.10, 0.20],  # frames 5, 6, 7, ... but only frame 5 is real -> 5
                [0.00, 0.20],  # masked -> 0
            ]
        ]
    )
    segments_mask = torch.tensor([[True, True, True, True, False]])
    expected = torch.tensor([[[0.5, -1.0], [3.0, -6.0], [5.0, -10.0], [5.0, -10.0], [0.0, 0.0]]])
    return hidden, frames_mask, segments, segments_mask, expected


@pytest.mark.parametrize("method", ["matrix", "cumsum"])
def test_segment_pooling_hand_computed(method):
    hidden, frames_mask, segments, segments_mask, expected = _hand_example()
    centers = frame_centers(8, 320, 400, 16000)
    pooled = pool_segments(hidden, segments, segments_mask, frames_mask, centers, method)
    torch.testing.assert_close(pooled, expected)


def test_pooling_matrix_and_bounds_hand_computed():
    _, frames_mask, segments, segments_mask, _ = _hand_example()
    centers = frame_centers(8, 320, 400, 16000)
    matrix = segment_pooling_matrix(segments, segments_mask, frames_mask, centers)
    assert matrix.shape == (1, 5, 8)
    torch.testing.assert_close(matrix[0, 1], torch.tensor([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0], dtype=torch.float64))
    bounds = segment_frame_bounds(segments, segments_mask, frames_mask, centers)
    assert bounds[0].tolist() == [[0, 2], [2, 5], [5, 6], [5, 6], [0, 0]]


def test_matrix_and_cumsum_forms_agree_on_random_segments():
    generator = torch.Generator().manual_seed(1)
    batch, frames, dim = 3, 120, 5
    hidden = torch.randn(batch, frames, dim, generator=generator)
    lengths = torch.tensor([120, 77, 31])
    frames_mask = torch.arange(frames) < lengths.unsqueeze(-1)
    durations = (lengths * 320 + 80) / 16000
    # random segments, many shorter than a frame step, some reaching past the last real frame centre
    starts = torch.rand(batch, 40, generator=generator) * durations.unsqueeze(-1) * 0.999
    lengths_s = torch.rand(batch, 40, generator=generator) * 0.2 + 0.001
    segments = torch.stack([starts, torch.minimum(starts + lengths_s, durations.unsqueeze(-1))], dim=-1)
    segments_mask = torch.rand(batch, 40, generator=generator) > 0.2
    centers = frame_centers(frames, 320, 400, 16000)
    by_matrix = pool_segments(hidden, segments, segments_mask, frames_mask, centers, "matrix")
    by_cumsum = pool_segments(hidden, segments, segments_mask, frames_mask, centers, "cumsum")
    torch.testing.assert_close(by_matrix, by_cumsum, atol=1e-5, rtol=1e-5)
    # every real segment pooled at least one real frame, and padded frames never entered
    matrix = segment_pooling_matrix(segments, segments_mask, frames_mask, centers)
    assert bool((matrix.sum(-1)[segments_mask] - 1).abs().max() < 1e-9)
    assert float(matrix.masked_select(~frames_mask.unsqueeze(1)).abs().sum()) == 0.0


def test_segments_outside_the_audio_are_clear_errors():
    durations = torch.tensor([1.0, 0.5])
    mask = torch.tensor([[True, True], [True, False]])

    def check(row1_segment, **kwargs):
        segments = torch.tensor([[[0.0, 0.5], [0.5, 1.0]], [row1_segment, [9.0, 9.5]]])  # [9, 9.5) is masked
        check_segments(segments, mask, durations, "word_segments", **kwargs)

    check([0.1, 0.5])
    with pytest.raises(ValueError, match=r"word_segments.*segment 0 of row 1.*starts at or after the end"):
        check([0.5, 0.6])
    with pytest.raises(ValueError, match="starts before 0"):
        check([-0.1, 0.2])
    with pytest.raises(ValueError, match="does not end after it starts"):
        check([0.3, 0.3])
    with pytest.raises(ValueError, match="ends more than 0.05 s after the end"):
        check([0.3, 0.6], max_overrun=0.05)
    check([0.3, 0.54], max_overrun=0.05)  # a small overrun is clipped, not an error
    with pytest.raises(ValueError, match="not finite"):
        check([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"\(batch, num_segments, 2\)"):
        check_segments(torch.zeros(2, 3), mask, durations)


WDSEG = """ SFrm  EFrm    SegAScr Word
    0    16    -93346 <s>
   17    41   -139453 EXCUSE(2)
   42    59    -77645 ME
   60    79    -50000 <sil>
   80   102    -88888 SIR
  103   120    -10000 </s>
 Total score:  -459332
"""
SYSEG = """ SFrm  EFrm    SegAScr Syllable
    0    16    -93346 SIL
   17    30    -5000 IH K
   31    41    -6000 S K Y UW Z
 Total score:  -104346
"""


def test_parse_wdseg_skips_markers_and_strips_variants():
    assert parse_iemocap_alignment(WDSEG) == [(0.17, 0.42, "EXCUSE"), (0.42, 0.60, "ME"), (0.80, 1.03, "SIR")]
    exclusive = parse_iemocap_alignment(WDSEG, end_inclusive=False, frame_offset=2)
    assert exclusive[0] == (0.19, 0.43, "EXCUSE")
    kept = parse_iemocap_alignment(WDSEG, keep_silence=True)
    assert [label for _, _, label in kept] == ["<s>", "EXCUSE", "ME", "<sil>", "SIR", "</s>"]


def test_parse_errors_name_the_file_and_line():
    with pytest.raises(ValueError, match=r"x\.wdseg, line 2: expected"):
        parse_iemocap_alignment(" SFrm EFrm\n 10 20 oops WORD\n", source="x.wdseg")
    with pytest.raises(ValueError, match="line 1: end frame 5 is before start frame 10"):
        parse_iemocap_alignment(" 10 5 -3 WORD\n")


def test_load_iemocap_segments_from_files_with_fallback(tmp_path, caplog):
    (tmp_path / "Ses01F_impro01_F000.wdseg").write_text(WDSEG)
    (tmp_path / "Ses01F_impro01_F000.syseg").write_text(SYSEG)
    (tmp_path / "Ses01F_impro01_F001.wdseg").write_text(" SFrm EFrm SegAScr Word\n 0 30 -1 <s>\n 31 40 -1 </s>\n")
    assert read_iemocap_alignment(tmp_path / "Ses01F_impro01_F000.syseg") == [
        (0.17, 0.31, "IH K"),
        (0.31, 0.42, "S K Y UW Z"),
    ]
    with caplog.at_level(logging.WARNING):
        first = load_iemocap_segments(tmp_path, "Ses01F_impro01_F000")
        second = load_iemocap_segments(tmp_path, "Ses01F_impro01_F001", ["word"])
    assert first["word"][2] == (0.80, 1.03, "SIR") and len(first["syllable"]) == 2
    assert first["phone"] is None  # no .phseg file: masked, not invented
    assert second == {"word": None}  # only sentence markers
    assert "Ses01F_impro01_F000: no phone alignment" in caplog.text
    assert "Ses01F_impro01_F001" in caplog.text and "no speech segment" in caplog.text
    with pytest.raises(ValueError, match="granularity must be one of"):
        load_iemocap_segments(tmp_path, "Ses01F_impro01_F000", ["frame"])

    segments, mask = pad_segments([first["word"], None, first["syllable"]])
    assert segments.shape == (3, 3, 2) and mask.tolist() == [[True] * 3, [False] * 3, [True, True, False]]
    torch.testing.assert_close(segments[2, 1], torch.tensor([0.31, 0.42]))
    assert pad_segments([None])[0].shape == (1, 1, 2)


def test_granularity_names_are_one_set():
    # the model's remote code keeps a `# Copied from` copy of the data side's names
    assert model_segments.GRANULARITIES == data_segments.GRANULARITIES == ("frame", "phone", "syllable", "word")
    assert model_segments.SEGMENT_GRANULARITIES == data_segments.SEGMENT_GRANULARITIES == ("phone", "syllable", "word")
    assert set(data_segments.IEMOCAP_ALIGNMENT_EXTENSIONS) == set(data_segments.SEGMENT_GRANULARITIES)
