"""Clips of real face photos over cluttered backgrounds, for measuring face detection (tests and benchmarks).

The photos are the real human faces that installed packages ship: scikit-image's astronaut (Eileen Collins),
matplotlib's Grace Hopper and scikit-image's cameraman (a profile). Each has a face box read off the image once by
eye (`Photo.face`). A clip pastes the head (a feathered ellipse around the face box) rotated, scaled and moving over
a background seen by a panning, zooming camera; the true box of every frame is the hand-made face box carried
through the same transform (`transformed_face_box`).

Backgrounds are collages of scikit-image images with no face in them (coffee, rocket, immunohistochemistry, brick,
gravel, grass, colorwheel, checkerboard tiles, Hubble deep field, coins, retina, text), on a canvas larger than the
frame so that the camera can move. Everything is deterministic for a given seed and offline.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from matplotlib import cbook
from skimage import data

FRAME_SIZE = (480, 640)  # (height, width)
CANVAS_SIZE = (600, 800)  # the background the camera moves over: room for a pan and a zoom of up to 1.25x
MAX_ZOOM = 1.25
# (angles, widths) of the measured clips: the four extremes, upright at a middle size, and two clips that sweep both
# over their whole range (constants, or (first, last) pairs; see `face_clip`)
CONDITIONS = (
    (-25, 70),
    (-25, 200),
    (25, 70),
    (25, 200),
    (0, 120),
    ((-25, 25), (70, 200)),
    ((25, -25), (200, 70)),
)
FRONTAL_PHOTOS = ("astronaut", "grace_hopper")
PROFILE_PHOTOS = ("cameraman",)  # looks sideways into his camera: a profile, beyond a frontal detector's promise


@dataclass(frozen=True)
class Photo:
    """A real face photo: (H, W, 3) uint8 RGB and its face box (x0, y0, x1, y1), eyebrows to chin, ear to ear."""

    name: str
    image: np.ndarray
    face: np.ndarray

    @property
    def face_width(self) -> float:
        return float(self.face[2] - self.face[0])


# The face boxes, read by eye off 2-3x enlargements of the photos with a 10 px grid (str_replace_based_edit_tool's
# `view` of PNGs): top at the eyebrows, bottom at the chin, sides at the ears (or, where hair hides the ears, the
# cheek outline at eye level).
# Astronaut (512x512): eyebrows y~91, chin y~178; cheek outline at eye level x~181 and x~278 (hair covers the ears).
ASTRONAUT_FACE = (181.0, 91.0, 278.0, 178.0)
# Grace Hopper (512x600): eyebrows (behind the top of the glasses frame) y~176, chin y~327; ears x~162 and x~368.
GRACE_HOPPER_FACE = (162.0, 176.0, 368.0, 327.0)
# Cameraman (512x512, grey, profile looking right into a camera): eyebrow y~138, chin y~198; from the back of the
# ear x~180 to the nose tip x~255.
CAMERAMAN_FACE = (180.0, 138.0, 255.0, 198.0)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


@functools.cache
def load_photos() -> dict[str, Photo]:
    """The face photos by name: `astronaut`, `grace_hopper`, `cameraman` (a profile)."""
    grace = cv2.cvtColor(
        cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), cv2.COLOR_BGR2RGB
    )
    photos = [
        Photo("astronaut", _rgb(data.astronaut()), np.array(ASTRONAUT_FACE)),
        Photo("grace_hopper", grace, np.array(GRACE_HOPPER_FACE)),
        Photo("cameraman", _rgb(data.camera()), np.array(CAMERAMAN_FACE)),
    ]
    for photo in photos:
        photo.image.setflags(write=False)
    return {photo.name: photo for photo in photos}


def _cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to cover (width, height) and centre-cropped to it."""
    image = _rgb(image)
    scale = max(width / image.shape[1], height / image.shape[0])
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, size, interpolation=interpolation)
    x0, y0 = (resized.shape[1] - width) // 2, (resized.shape[0] - height) // 2
    return resized[y0 : y0 + height, x0 : x0 + width]


def _mosaic(parts: Iterable[tuple[np.ndarray, tuple[int, int, int, int]]]) -> np.ndarray:
    """A canvas of `CANVAS_SIZE` with each image covering its region (x0, y0, x1, y1)."""
    canvas = np.zeros((*CANVAS_SIZE, 3), np.uint8)
    for image, (x0, y0, x1, y1) in parts:
        canvas[y0:y1, x0:x1] = _cover(image, x1 - x0, y1 - y0)
    return canvas


def _tiles() -> np.ndarray:
    """A grey-and-colour tile floor: scikit-image's checkerboard, tinted by the colour wheel."""
    board = np.tile(_rgb(data.checkerboard()), (2, 2, 1))
    tint = _cover(data.colorwheel(), board.shape[1], board.shape[0]).astype(np.float32)
    return (0.6 * board + 0.4 * tint).astype(np.uint8)


@functools.cache
def load_backgrounds() -> dict[str, np.ndarray]:
    """Cluttered face-free backgrounds by name, (600, 800, 3) uint8 RGB each."""
    h, w = CANVAS_SIZE
    backgrounds = {
        "coffee_rocket_brick": _mosaic(
            [(data.coffee(), (0, 0, 480, h)), (data.rocket(), (480, 0, w, 340)), (data.brick(), (480, 340, w, h))]
        ),
        "ihc_gravel_colorwheel": _mosaic(
            [
                (data.immunohistochemistry(), (0, 0, 420, h)),
                (data.gravel(), (420, 0, w, 300)),
                (data.colorwheel(), (420, 300, 620, h)),
                (_tiles(), (620, 300, w, h)),
            ]
        ),
        "grass_hubble_coins": _mosaic(
            [
                (data.grass(), (0, 0, w, 280)),
                (data.hubble_deep_field(), (0, 280, 420, h)),
                (data.coins(), (420, 280, w, h)),
            ]
        ),
        "rocket": _mosaic([(data.rocket(), (0, 0, w, h))]),
        "textures": _mosaic(
            [
                (data.brick(), (0, 0, 400, 300)),
                (data.gravel(), (400, 0, w, 300)),
                (data.grass(), (0, 300, 400, h)),
                (_tiles(), (400, 300, w, h)),
            ]
        ),
        "retina_text_coffee": _mosaic(
            [(data.retina(), (0, 0, 400, h)), (data.text(), (400, 0, w, 200)), (data.coffee(), (400, 200, w, h))]
        ),
    }
    for image in backgrounds.values():
        image.setflags(write=False)
    return backgrounds


def _ramp(value: float | tuple[float, float], num_frames: int) -> np.ndarray:
    """A constant, or a linear sweep from value[0] to value[1] over the frames."""
    if np.ndim(value) == 0:
        return np.full(num_frames, float(value))
    start, end = value
    return np.linspace(float(start), float(end), num_frames)


def background_clip(
    background: np.ndarray, num_frames: int, seed: int = 0, size: tuple[int, int] = FRAME_SIZE
) -> np.ndarray:
    """A camera panning and zooming (1x to 1.25x) over `background`: (T, H, W, 3) uint8, every frame different."""
    rng = np.random.default_rng(seed)
    height, width = size
    canvas_h, canvas_w = background.shape[:2]
    zooms = np.linspace(*rng.uniform(max(height / canvas_h, width / canvas_w, 1.0), MAX_ZOOM, 2), num_frames)
    ends = rng.uniform(0, 1, (2, 2))  # start and end of the view's centre, as fractions of its free range
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t, zoom in enumerate(zooms):
        fraction = ends[0] + (ends[1] - ends[0]) * (t / max(num_frames - 1, 1))
        view_w, view_h = width / zoom, height / zoom
        cx = view_w / 2 + fraction[0] * (canvas_w - view_w)
        cy = view_h / 2 + fraction[1] * (canvas_h - view_h)
        matrix = np.array([[zoom, 0, width / 2 - zoom * cx], [0, zoom, height / 2 - zoom * cy]])
        frames[t] = cv2.warpAffine(background, matrix, (width, height), flags=cv2.INTER_LINEAR)
    return frames


@functools.cache
def _head(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo's head region: (h, w, 3) float32 patch, (h, w) float32 feathered alpha, its (x0, y0) in the photo.

    The alpha is an ellipse around the face box (1.3x its width, 1.9x its height, raised by a tenth of the height to
    take in the forehead and hair), feathered with a Gaussian of a tenth of the face width."""
    photo = load_photos()[name]
    x0, y0, x1, y1 = photo.face
    fw, fh = x1 - x0, y1 - y0
    centre = ((x0 + x1) / 2, (y0 + y1) / 2 - 0.1 * fh)
    axes = (0.65 * fw, 0.95 * fh)
    sigma = 0.1 * fw
    pad = 3 * sigma
    height, width = photo.image.shape[:2]
    left, top = max(0, int(centre[0] - axes[0] - pad)), max(0, int(centre[1] - axes[1] - pad))
    right, bottom = min(width, int(centre[0] + axes[0] + pad) + 1), min(height, int(centre[1] + axes[1] + pad) + 1)
    alpha = np.zeros((bottom - top, right - left), np.float32)
    cv2.ellipse(alpha, (round(centre[0] - left), round(centre[1] - top)), (round(axes[0]), round(axes[1])), 0, 0,
                360, 1.0, thickness=-1)  # fmt: skip
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    patch = photo.image[top:bottom, left:right].astype(np.float32)
    return patch, alpha, np.array([left, top], np.float64)


def face_matrix(photo: Photo, angle: float, width: float, centre: tuple[float, float]) -> np.ndarray:
    """The 2x3 affine map from photo pixels to frame pixels that puts the face box's centre at `centre`, `width`
    pixels wide, rotated by `angle` degrees (counter-clockwise on screen, as cv2.getRotationMatrix2D)."""
    face_centre = ((photo.face[0] + photo.face[2]) / 2, (photo.face[1] + photo.face[3]) / 2)
    matrix = cv2.getRotationMatrix2D(face_centre, angle, width / photo.face_width)
    matrix[:, 2] += np.asarray(centre) - np.asarray(face_centre)
    return matrix


def transformed_face_box(face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The true box of a face box (x0, y0, x1, y1) after the affine `matrix`: centred on the transformed centre,
    with the aspect ratio of the transformed corners' axis-aligned box and the area of the transformed face box.

    The corners' axis-aligned box overstates a rotated face: at 25 degrees a square face's corner box is 1.33x as
    wide and tall, 1.77x the area, so a detector that boxes the face upright (as detectors do: their box is about the
    un-rotated face's size around the rotated centre) would score IoU 0.57 against it even when exactly right. Shrunk
    to the face's own area it scores 1 for that box, and keeps the corner box's aspect (a tall face turned far gets
    wider)."""
    x0, y0, x1, y1 = face
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]]) @ matrix.T
    low, high = corners.min(axis=0), corners.max(axis=0)
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    area = scale**2 * (x1 - x0) * (y1 - y0)
    shrink = np.sqrt(area / np.prod(high - low))
    centre, half = (low + high) / 2, (high - low) * shrink / 2
    return np.concatenate([centre - half, centre + half])


def paste_face(frame: np.ndarray, photo: Photo, matrix: np.ndarray) -> None:
    """Blend the photo's feathered head into `frame` (in place) through the affine `matrix` (photo -> frame)."""
    patch, alpha, origin = _head(photo.name)
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 1:  # shrink with area averaging first (a warp that shrinks aliases), then rotate at scale 1
        size = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
        to_patch = np.array([[1 / scale, 0, origin[0]], [0, 1 / scale, origin[1]], [0, 0, 1]])
    else:
        to_patch = np.array([[1, 0, origin[0]], [0, 1, origin[1]], [0, 0, 1]])
    # patch pixels -> frame pixels, then only the frame's region that the patch covers is warped
    patch_matrix = matrix @ to_patch
    h, w = patch.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]]) @ patch_matrix.T
    left, top = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    right = min(frame.shape[1], int(np.ceil(corners[:, 0].max())))
    bottom = min(frame.shape[0], int(np.ceil(corners[:, 1].max())))
    if right <= left or bottom <= top:
        return
    roi_matrix = patch_matrix.copy()
    roi_matrix[:, 2] -= (left, top)
    size = (right - left, bottom - top)
    flags = cv2.INTER_LINEAR
    face = cv2.warpAffine(patch, roi_matrix, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(alpha, roi_matrix, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    region = frame[top:bottom, left:right].astype(np.float32)
    blended = region + (face - region) * weight[..., None]
    frame[top:bottom, left:right] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def face_clip(
    photo: Photo | str,
    background: np.ndarray | str,
    num_frames: int,
    size: tuple[int, int] = FRAME_SIZE,
    angles: float | tuple[float, float] = 0.0,
    widths: float | tuple[float, float] = 120.0,
    seed: int = 0,
    absent: Iterable[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The photo's face moving over `background` (seen by a moving camera, `background_clip`).

    `angles` (degrees, counter-clockwise) and `widths` (the face box's width in frame pixels) are constants, or
    (first, last) pairs swept linearly over the clip. The face's centre moves in a straight line between two seeded
    points, with a small sway, keeping the face box inside the frame. Frames listed in `absent` show no face.

    Returns:
        frames (T, H, W, 3) uint8 RGB and the true face boxes (T, 4) as (x0, y0, x1, y1) floats (NaN where absent).
    """
    photo = load_photos()[photo] if isinstance(photo, str) else photo
    background = load_backgrounds()[background] if isinstance(background, str) else background
    rng = np.random.default_rng(seed)
    frames = background_clip(background, num_frames, seed=int(rng.integers(2**31)), size=size)
    angle_of, width_of = _ramp(angles, num_frames), _ramp(widths, num_frames)
    height, width = size
    aspect = (photo.face[3] - photo.face[1]) / photo.face_width
    # the largest half-extent of the face's corner box over the clip bounds where its centre may go
    radians = np.deg2rad(np.abs(angle_of))
    half_w = (width_of * (np.cos(radians) + aspect * np.sin(radians))).max() / 2 + 4
    half_h = (width_of * (np.sin(radians) + aspect * np.cos(radians))).max() / 2 + 4
    low, high = np.array([half_w, half_h]), np.array([width - half_w, height - half_h])
    start, end = rng.uniform(low, high), rng.uniform(low, high)
    sway, phase = rng.uniform(3, 8), rng.uniform(0, 2 * np.pi)
    skip = set(absent)
    boxes = np.full((num_frames, 4), np.nan)
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        centre = start + (end - start) * progress + sway * np.array([np.sin(phase + t / 3), np.cos(phase + t / 4)])
        centre = np.clip(centre, low, high)
        if t in skip:
            continue
        matrix = face_matrix(photo, angle_of[t], width_of[t], tuple(centre))
        paste_face(frames[t], photo, matrix)
        boxes[t] = transformed_face_box(photo.face, matrix)
    return frames, boxes


def real_face_cases(photos: Iterable[str]) -> list[tuple]:
    """(photo, angles, widths, background, seed) for every photo and `CONDITIONS` entry, backgrounds taken in turn
    (the clips the tests and the benchmark measure)."""
    backgrounds = list(load_backgrounds())
    cases = [(photo, *condition) for photo in photos for condition in CONDITIONS]
    return [(*case, backgrounds[i % len(backgrounds)], i) for i, case in enumerate(cases)]


def iou(box: np.ndarray, other: np.ndarray) -> float:
    top_left, bottom_right = np.maximum(box[:2], other[:2]), np.minimum(box[2:], other[2:])
    inter = float(np.prod(np.clip(bottom_right - top_left, 0, None)))
    area = float(np.prod(box[2:] - box[:2]) + np.prod(other[2:] - other[:2]))
    return inter / max(area - inter, 1e-9)


@dataclass(frozen=True)
class DetectionScore:
    """How a detector did on a clip: frames with a true face, how many got a box on it (IoU >= `min_iou`), frames
    without a face, how many got a box anyway, and each face frame's IoU (0 where nothing was found)."""

    face_frames: int
    hits: int
    empty_frames: int
    false_positives: int
    ious: np.ndarray

    @property
    def detection_rate(self) -> float:
        return self.hits / self.face_frames if self.face_frames else float("nan")

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / self.empty_frames if self.empty_frames else float("nan")


def score_boxes(found: list, true_boxes: np.ndarray, min_iou: float = 0.5) -> DetectionScore:
    """Score one box or None per frame (`track_main_face`'s output) against the true boxes (NaN: no face)."""
    present = ~np.isnan(true_boxes).any(axis=1)
    ious = np.array([iou(np.asarray(box), truth) if box is not None else 0.0
                     for box, truth, there in zip(found, true_boxes, present) if there])  # fmt: skip
    false_positives = sum(box is not None for box, there in zip(found, present) if not there)
    return DetectionScore(int(present.sum()), int((ious >= min_iou).sum()), int((~present).sum()), false_positives,
                          ious)  # fmt: skip
