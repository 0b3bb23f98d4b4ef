"""Face detection, tracking and VAVL's face crop.

Boxes are float arrays `(x_min, y_min, x_max, y_max)` in pixels of the frame they were found in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

# Two boxes show the same face when their centres are closer than this fraction of the mean box side and their
# sides differ by less than this ratio (IoU alone breaks down when a face moves by half its width between frames).
SAME_FACE_MAX_SHIFT = 0.75
SAME_FACE_MAX_SCALE = 1.5
# An interpolated box is kept only where its content correlates at least this much with the face at a key frame.
MIN_PATCH_CORRELATION = 0.6


class NoFaceFoundError(ValueError):
    """No frame of a video shows a face (the pipeline falls back to the other modalities on this error)."""


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with `detect(frame_rgb) -> boxes` can find faces for the processor.

    `frame_rgb` is one (H, W, 3) uint8 RGB frame; the result is an (N, 4) float array of
    `(x_min, y_min, x_max, y_max)` boxes in that frame's pixels (N may be 0).
    """

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FaceDetections:
    """The faces a detector found in one frame, in that frame's pixels.

    Attributes:
        boxes: (N, 4) float32 `(x_min, y_min, x_max, y_max)`.
        scores: (N,) float32 confidences, or `None` when the detector gives none.
        landmarks: (N, 5, 2) float32 `(x, y)` of the two eye centres (left then right in the image), the nose tip
            and the two mouth corners (left then right), or `None` when the detector gives none.
    """

    boxes: np.ndarray
    scores: np.ndarray | None = None
    landmarks: np.ndarray | None = None


class HaarCascadeFaceDetector:
    """OpenCV's frontal-face Haar cascade (shipped in opencv-python-headless < 5, so it works offline).

    Detection runs on a grey copy of the frame downscaled so that its longer side is at most `max_side` pixels,
    which bounds the cost per frame; boxes are mapped back to the full frame.

    Args:
        max_side: longest side of the image the cascade sees (`None`: full resolution).
        scale_factor, min_neighbors: `cv2.CascadeClassifier.detectMultiScale` settings.
        min_face_fraction: ignore faces smaller than this fraction of the frame's shorter side.
        cascade: file name inside `cv2.data.haarcascades`, or a path to a cascade XML file.
    """

    def __init__(
        self,
        max_side: int | None = 320,
        scale_factor: float = 1.15,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.08,
        cascade: str = "haarcascade_frontalface_default.xml",
    ):
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascades out of the main package
            raise ValueError(
                f"face_detector='haar' needs cv2.CascadeClassifier, which OpenCV {cv2.__version__} does not have "
                "(OpenCV 5 moved the cascades out of opencv-python-headless). Install opencv-python-headless<5, or "
                "pass another detector: any object with `detect(frame_rgb) -> (N, 4) boxes` (see FaceDetector), or "
                "face_detector=None for videos that are already face crops"
            )
        data_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = cascade if data_dir is None or "/" in cascade else data_dir + cascade
        self.classifier = cv2.CascadeClassifier(path)
        if self.classifier.empty():
            raise ValueError(
                f"Cannot load the Haar cascade {path!r} with OpenCV {cv2.__version__}: opencv-python-headless < 5 "
                "ships it in cv2.data.haarcascades; OpenCV 5 wheels do not. Pass a path to a cascade XML file, "
                "or another detector (see FaceDetector)"
            )
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
        height, width = gray.shape
        scale = 1.0
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        min_side = max(12, int(self.min_face_fraction * min(gray.shape)))
        found = self.classifier.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        if len(found) == 0:
            return np.zeros((0, 4), dtype=np.float32)
        boxes = np.asarray(found, dtype=np.float32)
        boxes[:, 2:] += boxes[:, :2]
        return boxes / scale


def box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of `boxes` (N, 4)."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    return inter / np.maximum(box_area(box) + box_area(boxes) - inter, 1e-9)


def _check_boxes(boxes: np.ndarray, name: str = "face detector output") -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected boxes of shape (N, 4) as (x_min, y_min, x_max, y_max), got {boxes.shape}")
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def same_face(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `boxes` (N, 4): whether it continues the face in `box`, and its centre distance to it."""
    side = np.sqrt(box_area(box))
    sides = np.sqrt(box_area(boxes))
    shift = np.hypot(*(((boxes[:, :2] + boxes[:, 2:]) - (box[:2] + box[2:])) / 2).T)
    ratio = np.maximum(sides, side) / np.maximum(np.minimum(sides, side), 1e-9)
    return (shift <= SAME_FACE_MAX_SHIFT * (sides + side) / 2) & (ratio <= SAME_FACE_MAX_SCALE), shift


def choose_face(boxes: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
    """The face that continues the track (the nearest one that is the same face as `previous`), else the largest."""
    if len(boxes) == 0:
        return None
    if previous is not None:
        matches, shift = same_face(previous, boxes)
        if matches.any():
            return boxes[int(np.where(matches, shift, np.inf).argmin())]
    return boxes[int(box_area(boxes).argmax())]


def detect_frames(detector: FaceDetector, frames: np.ndarray | list[np.ndarray]) -> list[FaceDetections]:
    """The detector's faces in each of `frames`: one batched call when the detector has `detect_faces(frames)`
    (MTCNN), else `detect(frame)` per frame. Boxes that are empty or of the wrong shape are dropped or refused."""
    if len(frames) == 0:
        return []
    if hasattr(detector, "detect_faces"):
        found = list(detector.detect_faces(frames))
    else:
        found = [FaceDetections(boxes=np.asarray(detector.detect(frame))) for frame in frames]
    return [_checked_detections(item) for item in found]


def _checked_detections(found: FaceDetections) -> FaceDetections:
    boxes = np.asarray(found.boxes, dtype=np.float32)
    if boxes.size == 0:
        return FaceDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None)
    checked = _check_boxes(boxes)
    if len(checked) == len(boxes):
        return found
    return _select(found, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))


def _select(found: FaceDetections, index: np.ndarray) -> FaceDetections:
    """The detections at `index` (a mask or an order)."""
    boxes = np.asarray(found.boxes, dtype=np.float32)[index]
    scores = None if found.scores is None else np.asarray(found.scores)[index]
    return FaceDetections(boxes, scores, None if found.landmarks is None else np.asarray(found.landmarks)[index])


def _choose(found: FaceDetections, previous: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """`choose_face` on detections: the chosen box and its landmarks (or None)."""
    box = choose_face(found.boxes, previous)
    if box is None or found.landmarks is None:
        return box, None
    index = int(np.flatnonzero((found.boxes == box).all(axis=1))[0])
    return box, np.asarray(found.landmarks[index], dtype=np.float32)


def track_main_face(
    frames: np.ndarray, detector: FaceDetector, detect_every: int = 1, with_landmarks: bool = False
) -> list:
    """The main face of every frame: the largest face, then the same face followed across frames.

    The detector runs on every `detect_every`-th frame and on the last one (one batched call). Between two key
    frames that found the same face, the box is interpolated linearly and checked: the frame's content in the box must
    still correlate with the face at a key frame (normalised cross-correlation of small grey patches), else that frame
    is detected too. Between key frames that disagree (a face appears, disappears or changes), every frame is
    detected. The frames to detect are detected together, then the track is followed in frame order.

    Args:
        frames: (T, H, W, 3) uint8 RGB.
        detector: a `FaceDetector`.
        detect_every: detection stride (1: every frame).
        with_landmarks: also return each box's (5, 2) landmarks (None where the detector gives none or the box was
            interpolated).

    Returns:
        one box (4,) or `None` (no face) per frame; with `with_landmarks`, `(box, landmarks)` pairs.
    """
    if detect_every < 1:
        raise ValueError(f"detect_every must be >= 1, got {detect_every}")
    num_frames = len(frames)
    keys = list(range(0, num_frames, detect_every))
    if keys[-1] != num_frames - 1:
        keys.append(num_frames - 1)
    boxes: list[np.ndarray | None] = [None] * num_frames
    points: list[np.ndarray | None] = [None] * num_frames
    previous = None
    for t, found in zip(keys, detect_frames(detector, frames[keys])):
        boxes[t], points[t] = _choose(found, previous)
        previous = boxes[t] if boxes[t] is not None else previous
    interpolated, to_detect = {}, []
    for start, end in zip(keys[:-1], keys[1:]):
        first, last = boxes[start], boxes[end]
        interpolate = (
            end - start >= 2 and first is not None and last is not None and same_face(first, last[None])[0][0]
        )
        if interpolate:
            templates = (_face_patch(frames[start], first), _face_patch(frames[end], last))
        for t in range(start + 1, end):
            if interpolate:
                weight = (t - start) / (end - start)
                box = (1 - weight) * first + weight * last
                patch = _face_patch(frames[t], box)
                # keep the interpolated box only where the frame still looks like the face at a key frame
                if max(float(patch @ template) for template in templates) >= MIN_PATCH_CORRELATION:
                    interpolated[t] = box
                    continue
            to_detect.append(t)
    detected = dict(zip(to_detect, detect_frames(detector, frames[to_detect]) if to_detect else []))
    previous = None
    for t in range(num_frames):
        if t in interpolated:
            boxes[t] = interpolated[t]
        elif t in detected:
            boxes[t], points[t] = _choose(detected[t], previous)
        previous = boxes[t] if boxes[t] is not None else previous
    return list(zip(boxes, points)) if with_landmarks else boxes


def _face_patch(frame: np.ndarray, box: np.ndarray, size: int = 24) -> np.ndarray:
    """The box's content as a small grey patch with zero mean and unit norm (for normalised cross-correlation)."""
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(np.ceil(box[2])), frame.shape[1]), min(int(np.ceil(box[3])), frame.shape[0])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros(size * size, dtype=np.float32)
    grey = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    patch = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    patch -= patch.mean()
    return patch / max(float(np.linalg.norm(patch)), 1e-6)


def detect_all_faces(frames: np.ndarray, detector: FaceDetector) -> list[FaceDetections]:
    """Every face of every frame (VAVL keeps them all), ordered left to right: one `FaceDetections` per frame."""
    faces = []
    for found in detect_frames(detector, frames):
        faces.append(_select(found, np.argsort(found.boxes[:, 0], kind="stable")))
    return faces


# Where face-alignment's 68 landmarks lie relative to MTCNN's five, from the mean 68-point face shape (dlib's, as
# normalised by OpenFace): in a frame where the 68 points' extent is the unit square, the mean of each eye's six
# points, the nose tip (point 30) and the mouth corners (48, 54).
MEAN_SHAPE_FIVE_POINTS = np.array(
    [[0.2774, 0.1673], [0.7061, 0.1590], [0.4921, 0.4221], [0.3071, 0.6418], [0.6954, 0.6341]], dtype=np.float64
)
# A rotated face's 68-point extent, per unit of its upright extent, as a function of s = sin(angle): mean side
# 1 + 0.180|s| - 0.144 s^2, centre shifted by (0.276 s - 0.257 s|s|, -0.111|s|) (least squares over -35..35 degrees;
# each within 0.011 of the mean shape's own rotated extent).
ROTATED_EXTENT_SIDE = (0.180, -0.144)
ROTATED_EXTENT_SHIFT = (0.276, -0.257, -0.111)


def landmark_extent_square(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """The extent of the 68 landmarks face-alignment would find, estimated from MTCNN's five.

    The mean face shape's five points are fitted to `landmarks` (5, 2) by a similarity transform (least squares:
    scale, rotation, shift); the 68 points' extent is the transformed unit square's centre and side, corrected for
    the rotation (`ROTATED_EXTENT_*`).

    Returns:
        (centre_x, centre_y, width, height) of the estimated 68-point extent, in pixels.
    """
    source = MEAN_SHAPE_FIVE_POINTS - MEAN_SHAPE_FIVE_POINTS.mean(axis=0)
    target = np.asarray(landmarks, dtype=np.float64)
    target_mean = target.mean(axis=0)
    target = target - target_mean
    # complex least squares: target = z * source, z = scale * exp(i angle)
    zs, zt = source[:, 0] + 1j * source[:, 1], target[:, 0] + 1j * target[:, 1]
    z = np.vdot(zs, zt) / np.vdot(zs, zs)
    scale, sin = abs(z), np.sin(np.angle(z))
    centre = target_mean + _rotate(z, np.array([0.5, 0.5]) - MEAN_SHAPE_FIVE_POINTS.mean(axis=0))
    side = scale * (1 + ROTATED_EXTENT_SIDE[0] * abs(sin) + ROTATED_EXTENT_SIDE[1] * sin * sin)
    shift = np.array(
        [ROTATED_EXTENT_SHIFT[0] * sin + ROTATED_EXTENT_SHIFT[1] * sin * abs(sin), ROTATED_EXTENT_SHIFT[2] * abs(sin)]
    )
    centre = centre + scale * shift
    return float(centre[0]), float(centre[1]), float(side), float(side)


def _rotate(z: complex, vector: np.ndarray) -> np.ndarray:
    rotated = z * (vector[0] + 1j * vector[1])
    return np.array([rotated.real, rotated.imag])


def vavl_crop_square(
    box: np.ndarray, face_box_scale: float = 1.1, crop_scale: float = 1.25, landmarks: np.ndarray | None = None
) -> tuple[float, float, float]:
    """VAVL's crop (reference/vavl.md §1.2): centre of the 68-landmark box, side
    `int(crop_scale * face_box_scale * (w + h) / 2)`.

    With MTCNN's five `landmarks` (5, 2), the 68-landmark box is estimated from them (`landmark_extent_square`);
    without (a detector that gives only boxes), the detector's box stands in for it.

    Returns:
        (centre_x, centre_y, side) in pixels.
    """
    if landmarks is not None and np.isfinite(landmarks).all():
        centre_x, centre_y, width, height = landmark_extent_square(landmarks)
    else:
        centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        width, height = box[2] - box[0], box[3] - box[1]
    size = face_box_scale * (width + height) / 2
    return float(centre_x), float(centre_y), float(int(crop_scale * size))


def crop_square(
    frame: np.ndarray, centre_x: float, centre_y: float, side: float, output_size: tuple[int, int], interpolation: int
) -> np.ndarray:
    """Cut the axis-aligned square (centre, side) out of `frame` and resize it to `output_size` (height, width).

    Parts of the square outside the frame are black, as in VAVL's skimage warp. Shrinking uses area averaging
    (no aliasing); enlarging uses `interpolation` (a `cv2.INTER_*` flag).
    """
    side = max(int(round(side)), 1)
    x0, y0 = int(round(centre_x - side / 2)), int(round(centre_y - side / 2))
    height, width = frame.shape[:2]
    crop = np.zeros((side, side, frame.shape[2]), dtype=frame.dtype)
    src_x0, src_y0 = max(x0, 0), max(y0, 0)
    src_x1, src_y1 = min(x0 + side, width), min(y0 + side, height)
    if src_x1 > src_x0 and src_y1 > src_y0:
        crop[src_y0 - y0 : src_y1 - y0, src_x0 - x0 : src_x1 - x0] = frame[src_y0:src_y1, src_x0:src_x1]
    out_h, out_w = output_size
    if (side, side) == (out_h, out_w):
        return crop
    flag = cv2.INTER_AREA if side > max(out_h, out_w) else interpolation
    return cv2.resize(crop, (out_w, out_h), interpolation=flag)


__all__ = [
    "FaceDetections",
    "FaceDetector",
    "NoFaceFoundError",
    "HaarCascadeFaceDetector",
    "box_iou",
    "choose_face",
    "crop_square",
    "detect_all_faces",
    "detect_frames",
    "landmark_extent_square",
    "track_main_face",
    "vavl_crop_square",
]
