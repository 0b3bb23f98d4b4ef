"""The default face detector on real face photos (`face_clips`): rotated -25..+25 degrees, 70-200 px wide, moving over
cluttered backgrounds under a moving camera. Targets: the face found, with the box on it (IoU >= 0.5 against the
hand-made face box carried through the clip's transform), in >= 95 % of frames; <= 1 % of face-free frames give a
face; the processor's `face_crops` (default `detect_every`) marks >= 95 % of frames as faces, and a face that
appears halfway through gives a mask of 0s then 1s.

Per-frame detection is measured with `detect_every=1`, so that every frame is a detection (none interpolated).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from face_clips import (
    FRONTAL_PHOTOS,
    PROFILE_PHOTOS,
    background_clip,
    face_clip,
    load_backgrounds,
    load_photos,
    real_face_cases,
    score_boxes,
)

from avemotion.processing import AvEmotionImageProcessor
from avemotion.processing.faces import track_main_face

MIN_DETECTION_RATE = 0.95
MIN_IOU = 0.5
MAX_FALSE_POSITIVE_RATE = 0.01
NUM_FRAMES = 16

BACKGROUNDS = tuple(load_backgrounds())


def _id(case) -> str:
    photo, angles, widths, background, _ = case
    show = lambda v: f"{v[0]}to{v[1]}" if isinstance(v, tuple) else str(v)  # noqa: E731
    return f"{photo}-{show(angles)}deg-{show(widths)}px-{background}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: MTCNN's small convolutions lose badly to a second thread when the 2 cores are shared (16
    frames in 0.8 s with 1 thread, 1.8-6.6 s with 2, measured under load; this file took 199 s with 2 threads and 27 s
    with 1 there), and gain only 1.6x on idle cores (bench: 23 vs 37 frames/s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def processor() -> AvEmotionImageProcessor:
    return AvEmotionImageProcessor()


@pytest.fixture(scope="module")
def detector(processor):
    return processor.get_face_detector()


def _detection_score(detector, photo, angles, widths, background, seed):
    frames, boxes = face_clip(photo, background, NUM_FRAMES, angles=angles, widths=widths, seed=seed)
    return score_boxes(track_main_face(frames, detector, detect_every=1), boxes, MIN_IOU)


@pytest.mark.parametrize("case", real_face_cases(FRONTAL_PHOTOS), ids=_id)
def test_face_found_on_the_face(detector, case) -> None:
    score = _detection_score(detector, *case)
    assert score.detection_rate >= MIN_DETECTION_RATE, (
        f"face found with IoU >= {MIN_IOU} in {score.hits}/{score.face_frames} frames; IoUs {np.round(score.ious, 2)}"
    )


# Measured with the default processor (MTCNN, thresholds 0.6/0.7/0.9, 320 px), 16 frames a clip: the cameraman's
# profile is found on the face in every frame upright (0 deg, 120 px) and at +25 deg, 200 px; not at -25 deg (0-60 %),
# +25 deg, 70 px (13/16) or in the sweeps. Kept as expected failures against the unchanged target, not as passes.
PROFILE_MISSES = {(-25, 70), (-25, 200), (25, 70), ((-25, 25), (70, 200)), ((25, -25), (200, 70))}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.xfail(reason="MTCNN misses the tilted profile (measured)", strict=True))
        if case[1:3] in PROFILE_MISSES
        else case
        for case in real_face_cases(PROFILE_PHOTOS)
    ],
    ids=_id,
)
def test_profile_face_found_on_the_face(detector, case) -> None:
    score = _detection_score(detector, *case)
    assert score.detection_rate >= MIN_DETECTION_RATE, (
        f"face found with IoU >= {MIN_IOU} in {score.hits}/{score.face_frames} frames; IoUs {np.round(score.ious, 2)}"
    )


def test_no_face_on_face_free_clips(detector) -> None:
    counts = {}
    for seed, name in enumerate(BACKGROUNDS):
        frames = background_clip(load_backgrounds()[name], NUM_FRAMES, seed=100 + seed)
        counts[name] = sum(box is not None for box in track_main_face(frames, detector, detect_every=1))
    rate = sum(counts.values()) / (NUM_FRAMES * len(BACKGROUNDS))
    assert rate <= MAX_FALSE_POSITIVE_RATE, f"frames with a face, per background of {NUM_FRAMES}: {counts}"


@pytest.mark.parametrize("photo", FRONTAL_PHOTOS)
def test_face_crops_mark_the_face_frames(processor, photo) -> None:
    frames, _ = face_clip(photo, "coffee_rocket_brick", 30, angles=(-25, 25), widths=(200, 70), seed=7)
    mask = processor.face_crops(frames, return_tensors="np")["visual_features_mask"][0]
    assert mask.shape == (30,)
    assert mask.mean() >= MIN_DETECTION_RATE, f"mask {mask.tolist()}"


def test_face_appearing_halfway_gives_a_mask_of_zeros_then_ones(processor) -> None:
    frames, boxes = face_clip("grace_hopper", "textures", 24, angles=12, widths=110, seed=3, absent=range(12))
    assert np.isnan(boxes[:12]).all() and not np.isnan(boxes[12:]).any()
    mask = processor.face_crops(frames, return_tensors="np")["visual_features_mask"][0]
    assert mask.tolist() == [0] * 12 + [1] * 12


def test_clips_are_deterministic_and_the_truth_follows_the_transform() -> None:
    first, boxes = face_clip("astronaut", "rocket", 6, angles=(-25, 25), widths=(70, 200), seed=1)
    again, same = face_clip("astronaut", "rocket", 6, angles=(-25, 25), widths=(70, 200), seed=1)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(boxes, same)
    assert first.shape == (6, 480, 640, 3) and first.dtype == np.uint8
    assert len({frame.tobytes() for frame in background_clip(load_backgrounds()["rocket"], 6, seed=1)}) == 6
    # an upright face keeps the photo's box shape, scaled to the asked width; a turned one keeps its area
    photo = load_photos()["astronaut"]
    aspect = (photo.face[3] - photo.face[1]) / photo.face_width
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    np.testing.assert_allclose(width * height, np.linspace(70, 200, 6) ** 2 * aspect, rtol=1e-6)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 640).all() and (boxes[:, 3] <= 480).all()
