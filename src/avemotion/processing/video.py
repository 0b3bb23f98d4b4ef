"""Face-video frame processor: decode, find the face, crop it VAVL's way, resize and normalise every frame.

transformers 5 video processors (`BaseVideoProcessor`) need torchvision, which does not work on this stack, so
this is a PIL/NumPy-backend image processor (`transformers.PilBackend`, public API only) that takes whole videos.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import cv2
import numpy as np
import torch
from transformers import BatchFeature, PilBackend
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs

from avemotion.models.config_limits import check_fields, choice, flag, is_real, is_whole, number, optional, whole
from avemotion.utils.paths import contained_file

from .audio import settings_load_errors
from .faces import (
    FaceDetector,
    HaarCascadeFaceDetector,
    NoFaceFoundError,
    crop_square,
    detect_all_faces,
    track_main_face,
    vavl_crop_square,
)
from .media import check_fps, check_max_frames, check_video_array, describe, is_path, load_video
from .mtcnn import cached_mtcnn_detector

logger = logging.getLogger(__name__)

FACE_SELECTIONS = ("main", "all")
BUILT_IN_DETECTORS = ("mtcnn", "haar")
# the detector's weights saved with a processor (a model directory carries its face detector)
FACE_DETECTOR_WEIGHTS_NAME = "face_detector.safetensors"
_CV2_INTERPOLATION = {
    PILImageResampling.NEAREST: cv2.INTER_NEAREST,
    PILImageResampling.LANCZOS: cv2.INTER_LANCZOS4,
    PILImageResampling.BILINEAR: cv2.INTER_LINEAR,
    PILImageResampling.BICUBIC: cv2.INTER_CUBIC,
    PILImageResampling.BOX: cv2.INTER_AREA,
    PILImageResampling.HAMMING: cv2.INTER_LINEAR,
}


MAX_IMAGE_SIDE = 4096  # pixels per side of a face crop (VAVL: 224)
MAX_PIXEL_STATISTIC = 1000.0  # |mean| and std bound: pixels in [0, 1] after rescaling, or [0, 255] without it
MAX_SCALE = 10.0  # VAVL's crop rule: face_box_scale 1.1, crop_scale 1.25
MAX_DETECT_EVERY = 10000  # frames between key frames
# Resampling filters: PIL's ids (nearest 0, lanczos 1, bilinear 2, bicubic 3, box 4, hamming 5).
RESAMPLING_IDS = tuple(sorted(int(r) for r in PILImageResampling))
# The settings a saved image processor may hold (a processor directory is data): field -> check. Checked at
# construction (so at load) and for the settings of each call.
IMAGE_PROCESSOR_LIMITS = {
    "do_resize": flag(),
    "do_rescale": flag(),
    "do_normalize": flag(),
    "resample": choice(RESAMPLING_IDS),
    "rescale_factor": number(0.0, 1.0, low_open=True),
    "face_selection": choice(FACE_SELECTIONS),
    "detect_every": whole(1, MAX_DETECT_EVERY),
    "detection_max_side": optional(whole(24, 16384)),  # the Haar cascade's window is 24 px
    "min_face_fraction": number(0.0, 1.0, low_open=True),
    "face_box_scale": number(0.1, MAX_SCALE),
    "crop_scale": number(0.1, MAX_SCALE),
}


def _check_statistic(where: str, value: Any, positive: bool) -> None:
    """`image_mean` / `image_std`: one finite number or one per RGB channel; a std above 0."""
    low = 0.0 if positive else -MAX_PIXEL_STATISTIC
    expected = (
        f"3 numbers (one per RGB channel) or one, each {'above 0 and at most' if positive else 'from -1000 to'} "
        f"{MAX_PIXEL_STATISTIC:g}"
    )
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 3 else [value]
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) != 3:
        values = [None]
    for item in values:
        if isinstance(item, np.generic):
            item = item.item()
        inside = is_real(item) and (low < item if positive else low <= item) and item <= MAX_PIXEL_STATISTIC
        if not inside:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise ValueError(f"{where} = {shown}: expected {expected}")


def check_image_settings(where: str, settings: Any) -> None:
    """The pixel and crop settings of `settings` (an image processor, or a dict of some of its settings): a
    `ValueError` naming `where` (the class), the field and the allowed values."""
    check_fields(where, settings, IMAGE_PROCESSOR_LIMITS)
    thresholds = settings.get("face_thresholds", _UNSET) if isinstance(settings, dict) else getattr(
        settings, "face_thresholds", _UNSET)  # fmt: skip
    if thresholds is not _UNSET and not (
        isinstance(thresholds, (list, tuple))
        and len(thresholds) == 3
        and all(is_real(t) and 0 < t < 1 for t in thresholds)
    ):
        raise ValueError(
            f"{where}.face_thresholds = {thresholds!r:.80}: expected 3 numbers above 0 and below 1 (MTCNN's P-Net, "
            "R-Net and O-Net face-probability thresholds)"
        )
    for name, positive in (("image_mean", False), ("image_std", True)):
        value = settings.get(name, _UNSET) if isinstance(settings, dict) else getattr(settings, name, _UNSET)
        if value is not _UNSET:
            _check_statistic(f"{where}.{name}", value, positive)


_UNSET = object()


class AvEmotionImageProcessorKwargs(ImagesKwargs, total=False):
    face_detector: Any
    face_selection: str
    detect_every: int
    detection_max_side: int
    min_face_fraction: float
    face_thresholds: list[float]
    device: Any
    face_box_scale: float
    crop_scale: float
    video_fps: float | None
    max_frames: int | None


@functools.lru_cache(maxsize=4)
def _haar_detector(max_side: int | None) -> HaarCascadeFaceDetector:
    return HaarCascadeFaceDetector(max_side=max_side)


class AvEmotionImageProcessor(PilBackend):
    r"""
    Turns face videos into `pixel_values_videos` for VAVL's per-frame visual backbone.

    Per video: decode (PyAV; native frame rate or `video_fps`; at most `max_frames`), find the face in each frame,
    crop the square VAVL uses (reference/vavl.md §1.2: centred on the face box, side
    `crop_scale * face_box_scale * (w + h) / 2` = 1.25 * 1.1 * the mean box side), resize it to `size` (224x224),
    rescale to [0, 1] and normalise with the ImageNet mean/std.

    Args:
        face_detector (`str`, `FaceDetector` or `None`, defaults to `"mtcnn"`): `"mtcnn"` is MTCNN (Zhang et al.
            2016) with facenet-pytorch's trained weights (MIT; `avemotion download-face-detector` installs them, and
            `save_pretrained` writes them into the directory as `face_detector.safetensors`, so a saved processor
            carries its detector); it gives boxes, scores and five landmarks and runs batched, on `device`.
            `"haar"` is OpenCV's frontal-face Haar cascade (only where cv2 still has it: not OpenCV 5); any object with `detect(frame_rgb) -> (N, 4) boxes` works; `None` means the
            frames already are face crops (they are only resized and normalised). A custom detector object is not
            saved by `save_pretrained`: pass it again to `from_pretrained(..., face_detector=...)`.
        face_selection (`str`, defaults to `"main"`): `"main"`: one row per frame with the main face (the largest
            face, then that face followed across frames). `"all"`: one row per detected face, like VAVL, which keeps
            every face; this detects on every frame.
        detect_every (`int`, defaults to 5): in `"main"` mode, run the detector on every k-th frame and follow the
            face in between (frames between two key frames that disagree are all detected).
        detection_max_side (`int`, defaults to 320): the detector sees frames downscaled to this longest side.
        min_face_fraction (`float`, defaults to 0.08): MTCNN's smallest face, as a fraction of the shorter side of
            the image it sees (never below 12 pixels there).
        face_thresholds (`list[float]`, defaults to `[0.6, 0.7, 0.9]`): MTCNN's P-Net, R-Net and O-Net thresholds
            (the original's O-Net threshold, 0.7, finds more faces in clutter that are not faces).
        face_box_scale (`float`, defaults to 1.1), crop_scale (`float`, defaults to 1.25): VAVL's crop rule. VAVL
            cuts a square of side `int(1.25 * 1.1 * (w + h) / 2)` around the box of face-alignment's 68 landmarks.
            With MTCNN that box is estimated from the five landmarks: the mean 68-point face shape is fitted to them
            by a similarity transform (scale, rotation, shift) and its extent taken, with a correction for the extent
            of a rotated face (`faces.landmark_extent_square`); so the crop covers the same face region, brows to
            chin and jaw to jaw. A detector without landmarks uses its box in place of the 68-point box.
        device (*optional*): where MTCNN runs for a call (e.g. the model's GPU); defaults to the CPU. Not saved.
        video_fps (`float`, *optional*): sample decoded videos at this rate; `None` keeps the native rate (VAVL).
            Arrays are taken as already sampled.
        max_frames (`int`, *optional*): keep at most the first `max_frames` frames of each video (logged).
        size, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std: as in other image
            processors (224x224, bicubic, ImageNet mean/std). With a face detector the crops are always resized to
            `size`.

    Returns a `BatchFeature` with
        - `pixel_values_videos` (batch, frames, 3, height, width) float32, zero on masked rows;
        - `visual_features_mask` (batch, frames) int64: 1 on rows holding a face crop, 0 on frames without a face
          and on padding;
        - `num_frames_without_face` (batch,) int64: frames of each video in which no face was found.
    A video in which no frame shows a face raises a `ValueError`. The first two keys are `model_input_names`, VAVL's
    by default; a processor for another model takes that model's declared video `inputs` pair
    (`AvEmotionImageProcessor(model_input_names=[values key, mask key])`, saved with the other settings).
    """

    valid_kwargs = AvEmotionImageProcessorKwargs
    model_input_names = ["pixel_values_videos", "visual_features_mask"]

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True
    face_detector = "mtcnn"
    face_selection = "main"
    detect_every = 5
    detection_max_side = 320
    min_face_fraction = 0.08
    face_thresholds = [0.6, 0.7, 0.9]
    device = None
    face_box_scale = 1.1
    crop_scale = 1.25
    video_fps = None
    max_frames = None

    def __init__(self, **kwargs: Any):
        # None is meaningful here (pre-cropped faces), so keep it from being replaced by the class default
        face_detector = kwargs.pop("face_detector", type(self).face_detector)
        # a weights file read by `from_pretrained` (never saved as a setting: the file sits next to the settings)
        self.face_detector_weights = kwargs.pop("face_detector_weights", None)
        kwargs.pop("device", None)
        owner = type(self).__name__
        size = kwargs.get("size", 1)
        if isinstance(size, bool) or not isinstance(size, (int, dict, SizeDict, list, tuple)):
            raise ValueError(
                f"{owner}.size = {size!r:.80}: expected {{'height': H, 'width': W}} or one side, each a "
                f"whole number from 1 to {MAX_IMAGE_SIDE}"
            )
        try:
            super().__init__(**kwargs)
        except (TypeError, ValueError) as error:  # transformers' conversions (e.g. of `size`) name no class
            raise ValueError(f"{owner}: {' '.join(str(error).split())[:300]}") from error
        self.face_detector = face_detector
        check_image_settings(owner, self)
        self._check_settings(self.face_detector, self.face_selection, self.detect_every)
        self._check_frame_settings(self.video_fps, self.max_frames, self.size)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """`PilBackend.from_pretrained`, with any failure to read the directory's settings (bad JSON, a structure
        of the wrong shape, a bad value) a `ValueError` naming the directory."""
        if os.path.isdir(pretrained_model_name_or_path) and "face_detector_weights" not in kwargs:
            kwargs["face_detector_weights"] = saved_face_detector_weights(pretrained_model_name_or_path)
        with settings_load_errors(pretrained_model_name_or_path, "preprocessor_config.json"):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @staticmethod
    def _check_frame_settings(video_fps: Any, max_frames: Any, size: Any) -> None:
        """`video_fps` None or > 0, `max_frames` None or >= 1, `size` with a height and width from 1 to
        `MAX_IMAGE_SIDE` pixels."""
        check_fps(video_fps, "AvEmotionImageProcessor.video_fps")
        check_max_frames(max_frames, "AvEmotionImageProcessor.max_frames")
        height, width = (size.get("height"), size.get("width")) if isinstance(size, dict) else (
            getattr(size, "height", None), getattr(size, "width", None))  # fmt: skip
        if not all(is_whole(side) and 1 <= side <= MAX_IMAGE_SIDE for side in (height, width)):
            shown = dict(size) if isinstance(size, (dict, SizeDict)) else size
            raise ValueError(
                f"AvEmotionImageProcessor.size = {shown!r:.160}: size must give a height and a width of at least 1 "
                f"pixel, each a whole number from 1 to {MAX_IMAGE_SIDE}"
            )

    @staticmethod
    def _check_settings(face_detector: Any, face_selection: str, detect_every: int) -> None:
        if face_selection not in FACE_SELECTIONS:
            raise ValueError(f"face_selection must be one of {FACE_SELECTIONS}, got {face_selection!r}")
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if not (face_detector is None or isinstance(face_detector, (str, FaceDetector))):
            raise ValueError(
                "face_detector must be 'mtcnn', 'haar', None (frames are face crops) or an object with "
                f"`detect(frame_rgb) -> boxes`, got {type(face_detector).__name__}"
            )
        # a saved processor's setting is data: the name of the built-in detector, or the record `to_dict` writes for
        # a custom one ("custom:module.Class", never imported); a path or any other name is refused here, at load
        if (
            isinstance(face_detector, str)
            and face_detector not in BUILT_IN_DETECTORS
            and not face_detector.startswith("custom:")
        ):
            raise ValueError(
                f"face_detector = {face_detector[:200]!r}: expected 'mtcnn', 'haar', None or a detector object (a saved "
                "processor names no file or class to load for it)"
            )

    def get_face_detector(
        self, face_detector: Any = "default", device: Any = None, settings: dict | None = None
    ) -> FaceDetector | None:
        """Resolve the `face_detector` setting to a detector object (None for pre-cropped faces); MTCNN on `device`
        (default: the CPU), with this processor's settings or a call's `settings`."""
        detector = self.face_detector if face_detector == "default" else face_detector
        if detector is None or isinstance(detector, FaceDetector):
            return detector
        settings = settings or {}
        if detector == "mtcnn":
            weights = self.face_detector_weights
            return cached_mtcnn_detector(
                None if weights is None else str(weights),
                tuple(float(t) for t in settings.get("face_thresholds", self.face_thresholds)),
                float(settings.get("min_face_fraction", self.min_face_fraction)),
                settings.get("detection_max_side", self.detection_max_side),
                str(torch.device(device if device is not None else "cpu")),
            )
        if detector == "haar":
            return _haar_detector(self.detection_max_side)
        raise ValueError(
            f"face_detector {detector!r} cannot be built from its name (a custom detector is not saved with the "
            "processor): pass the detector object, e.g. `from_pretrained(path, face_detector=MyDetector())`"
        )

    @classmethod
    def from_backbone(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> AvEmotionImageProcessor:
        """The processor whose crops are what a visual backbone's own image processor prepares: its `size` (square),
        `resample`, `rescale_factor`, `image_mean` and `image_std` (see `backbone_image_settings`), e.g. of a directory
        written by `avemotion convert-hsemotion` (224x224, bilinear, ImageNet mean/std). Face detection and VAVL's
        crop rule stay as configured; `kwargs` (any constructor setting) override everything read.

        Note: VAVL's original pipeline cuts the 224x224 crop from the frame with bicubic interpolation; HSEmotion's
        transform (what the converted directory records) resizes with bilinear. Pass `resample=3` for the former.
        """
        try:
            with settings_load_errors(pretrained_model_name_or_path, "preprocessor_config.json"):
                settings, _ = cls.get_image_processor_dict(pretrained_model_name_or_path)
        except OSError as error:  # a file that is there but not a settings object (JSON null) is not a missing one
            if not os.path.isfile(os.path.join(pretrained_model_name_or_path, "preprocessor_config.json")):
                raise
            message = " ".join(str(error).split())[:200]
            raise ValueError(
                f"{pretrained_model_name_or_path}: preprocessor_config.json: cannot be read ({message})"
            ) from error
        if not isinstance(settings, dict):
            raise ValueError(f"{pretrained_model_name_or_path}: preprocessor_config.json: expected a JSON object")
        return cls(**{**backbone_image_settings(settings, str(pretrained_model_name_or_path)), **kwargs})

    def to_dict(self) -> dict[str, Any]:
        detector = self.face_detector
        if not (detector is None or isinstance(detector, str)):
            self.face_detector = f"custom:{type(detector).__module__}.{type(detector).__qualname__}"
        try:
            output = super().to_dict()
        finally:
            self.face_detector = detector
        output.pop("face_detector_weights", None)
        output.pop("device", None)
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`PilBackend.save_pretrained`, plus MTCNN's weights as `face_detector.safetensors` (`save_face_detector`)."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        self.save_face_detector(save_directory)
        return saved

    def save_face_detector(self, save_directory: str | os.PathLike) -> str | None:
        """Write the built-in detector's weights into `save_directory` (MTCNN only: the Haar cascade ships with
        OpenCV, a custom detector is the caller's). Returns the file written, or None."""
        if self.face_detector != "mtcnn":
            return None
        from safetensors.torch import save_file

        from .face_weights import MTCNN_METADATA

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, FACE_DETECTOR_WEIGHTS_NAME)
        state = self.get_face_detector().state_dict()
        save_file(state, path, metadata=MTCNN_METADATA)
        return path

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(self, videos: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """
        Args:
            videos: one video or a list of videos. A video is a file path, a (frames, height, width, 3) uint8 RGB
                array, or a list of (height, width, 3) uint8 frames. Grayscale frames ((frames, height, width) or
                (..., 1)) are repeated into RGB and RGBA frames lose their alpha (see `check_video_array`).
            return_tensors: `"pt"`, `"np"` or `None` (NumPy arrays).
            kwargs: any setting of the constructor, for this call only.

        Returns:
            `pixel_values_videos` (B, T, 3, H, W) float32, `visual_features_mask` (B, T) (1: a face, 0: a frame
            without one or padding) and `num_frames_without_face` (B,).
        """
        settings, crops, masks = self._face_crops_of(videos, kwargs)
        rows = [self._normalize(row, settings) for row in crops]
        return BatchFeature(data=self._batch(self.model_input_names[0], rows, masks), tensor_type=return_tensors)

    def face_crops(self, videos: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """`preprocess` without the rescaling and normalisation: `face_crops` (B, T, 3, H, W) uint8, a quarter of
        the bytes of the float pixels to move between processes or to the accelerator, where `normalize_crops`
        turns them into `preprocess`'s `pixel_values_videos` (the same values). Same arguments and masks."""
        _, crops, masks = self._face_crops_of(videos, kwargs)
        rows = [np.ascontiguousarray(row.transpose(0, 3, 1, 2)) for row in crops]
        return BatchFeature(data=self._batch("face_crops", rows, masks), tensor_type=return_tensors)

    def normalize_crops(self, crops: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """(..., 3, H, W) uint8 face crops (`face_crops`) -> float32 pixels on the crops' device, rescaled and
        normalised with this processor's settings (or `kwargs`) exactly as `preprocess` does."""
        names = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
        settings = {name: kwargs.get(name, getattr(self, name, None)) for name in names}
        return normalize_pixels(crops, settings)

    def _face_crops_of(self, videos: Any, kwargs: dict[str, Any]) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
        """The call's settings, and per video its (T, H, W, 3) uint8 face crops and (T,) mask."""
        names = list(self.valid_kwargs.__annotations__)
        unknown = set(kwargs) - set(names)
        if unknown:
            raise ValueError(f"Unexpected arguments for {type(self).__name__}: {sorted(unknown)}")
        face_detector = kwargs.pop("face_detector", "default")
        device = kwargs.pop("device", None)
        settings = {name: kwargs.get(name, getattr(self, name, None)) for name in names}
        if settings["size"] is not None and not isinstance(settings["size"], SizeDict):
            settings["size"] = SizeDict(
                **get_size_dict(size=settings["size"], default_to_square=settings.get("default_to_square", True))
            )
        check_image_settings(type(self).__name__, {name: settings[name] for name in _CALL_CHECKED if name in kwargs})
        detector = self.get_face_detector(face_detector, device, settings)
        self._check_settings(detector, settings["face_selection"], settings["detect_every"])
        self._check_frame_settings(settings["video_fps"], settings["max_frames"], settings["size"])
        crops, masks = [], []
        for index, video in enumerate(_as_video_list(videos)):
            name = describe(video, index, kind="video")
            frames = self._frames(video, name, settings)
            video_crops, mask = self._faces(frames, name, detector, settings)
            crops.append(video_crops)
            masks.append(mask)
        return settings, crops, masks

    def _batch(self, key: str, rows: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, np.ndarray]:
        """`{key: (B, T_max, ...) zero-padded rows, mask key: (B, T_max), "num_frames_without_face"}`; the mask key is
        the second of `model_input_names` (the model's, see `model_input_names`)."""
        mask_key = self.model_input_names[1]
        # each frame without a face is exactly one masked row
        missing = np.asarray([int((mask == 0).sum()) for mask in masks], dtype=np.int64)
        if len(rows) == 1:  # one video (the pipeline's case): no padded copy
            return {key: rows[0][None], mask_key: masks[0][None], "num_frames_without_face": missing}
        max_len = max(len(r) for r in rows)
        batch = np.zeros((len(rows), max_len, *rows[0].shape[1:]), dtype=rows[0].dtype)
        batch_mask = np.zeros((len(rows), max_len), dtype=np.int64)
        for i, (row, mask) in enumerate(zip(rows, masks)):
            batch[i, : len(row)] = row
            batch_mask[i, : len(mask)] = mask
        return {key: batch, mask_key: batch_mask, "num_frames_without_face": missing}

    def _frames(self, video: Any, name: str, settings: dict) -> np.ndarray:
        max_frames = settings["max_frames"]
        if is_path(video):
            return load_video(video, fps=settings["video_fps"], max_frames=max_frames, name=name).frames
        frames = check_video_array(video, name)
        if max_frames is not None and len(frames) > max_frames:
            logger.warning("%s: kept the first %d of %d frames (max_frames)", name, max_frames, len(frames))
            frames = frames[:max_frames]
        return frames

    def _faces(
        self, frames: np.ndarray, name: str, detector: FaceDetector | None, settings: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """Face crops (rows, height, width, 3) uint8 and the row mask (1: a face, 0: a frame without one)."""
        size: SizeDict = settings["size"]
        out_size = (size.height, size.width)
        interpolation = _CV2_INTERPOLATION.get(PILImageResampling(settings["resample"]), cv2.INTER_CUBIC)
        if detector is None:  # already face crops
            if not settings["do_resize"] or frames.shape[1:3] == out_size:
                return frames, np.ones(len(frames), dtype=np.int64)
            crops = np.stack([cv2.resize(f, out_size[::-1], interpolation=interpolation) for f in frames])
            return crops, np.ones(len(frames), dtype=np.int64)

        def crop(frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
            centre_x, centre_y, side = vavl_crop_square(
                box, settings["face_box_scale"], settings["crop_scale"], landmarks
            )
            return crop_square(frame, centre_x, centre_y, side, out_size, interpolation)

        blank = np.zeros((*out_size, 3), dtype=np.uint8)
        if settings["face_selection"] == "main":
            tracked = track_main_face(frames, detector, int(settings["detect_every"]), with_landmarks=True)
            crops = [
                blank if box is None else crop(frame, box, points) for frame, (box, points) in zip(frames, tracked)
            ]
            mask = np.asarray([box is not None for box, _ in tracked], dtype=np.int64)
        else:
            crops, mask = [], []
            for frame, found in zip(frames, detect_all_faces(frames, detector)):
                points = [None] * len(found.boxes) if found.landmarks is None else found.landmarks
                crops.extend(crop(frame, box, landmarks) for box, landmarks in zip(found.boxes, points))
                mask.extend([1] * len(found.boxes))
                if len(found.boxes) == 0:
                    crops.append(blank)
                    mask.append(0)
            mask = np.asarray(mask, dtype=np.int64)
        if not mask.any():
            raise NoFaceFoundError(f"{name}: no face found in any of its {len(frames)} frames")
        if not mask.all():
            logger.info("%s: no face in %d of %d frames (masked)", name, int((mask == 0).sum()), len(frames))
        return np.stack(crops), mask

    @staticmethod
    def _normalize(crops: np.ndarray, settings: dict) -> np.ndarray:
        """(rows, H, W, 3) uint8 -> (rows, 3, H, W) float32, rescaled and normalised (`normalize_pixels`)."""
        return normalize_pixels(torch.from_numpy(crops).permute(0, 3, 1, 2), settings).numpy()


_CALL_CHECKED = (
    *IMAGE_PROCESSOR_LIMITS,
    "image_mean",
    "image_std",
    "face_thresholds",
)  # a call's own settings, checked


def normalize_pixels(crops: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """(..., 3, H, W) uint8 crops -> float32 `(crops * rescale_factor - image_mean) / image_std`, each step only when
    its `do_*` setting is on. In-place passes over one float copy on the crops' device: the same operations in the
    same order as the NumPy expression `(crops.astype(float32) * factor - mean) / std`, so the same values, at about
    a tenth of its time on a CPU (no temporaries, several threads)."""
    pixels = crops.to(torch.float32, memory_format=torch.contiguous_format)
    if settings["do_rescale"]:
        pixels.mul_(float(np.float32(settings["rescale_factor"])))
    if settings["do_normalize"]:
        mean = torch.tensor(settings["image_mean"], dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(settings["image_std"], dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        pixels.sub_(mean).div_(std)
    return pixels


def saved_face_detector_weights(directory: str | os.PathLike) -> str | None:
    """The face detector's weights saved in a local processor or model directory (`face_detector.safetensors`,
    which must stay inside it), or None where there are none."""
    path = contained_file(directory, FACE_DETECTOR_WEIGHTS_NAME, "the face detector's weights")
    return str(path) if path.is_file() else None


def backbone_image_settings(settings: dict[str, Any], name: str = "the backbone") -> dict[str, Any]:
    """The `AvEmotionImageProcessor` settings that reproduce a backbone image processor's pixels on a face crop.

    Args:
        settings: a saved image processor's dict (`preprocessor_config.json`), e.g. an `EfficientNetImageProcessor`.
        name: named in errors.

    Returns:
        `size` (`{"height", "width"}`), `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean` and `image_std`,
        for those the dict sets. Not `resample`: the face crop is cut from the frame straight at `size` with the
        processor's own interpolation (bicubic, as VAVL's original crop: `reference/vavl.md` §3), after which the
        backbone's resize is a no-op, exactly as in the original feature extraction. A `ValueError` names settings that a resized face crop cannot reproduce
        (a centre crop, EfficientNet's `rescale_offset` or `include_top`) or a size that is not square.
    """
    unsupported = [key for key in ("do_center_crop", "rescale_offset", "include_top") if settings.get(key)]
    if unsupported:
        raise ValueError(
            f"{name}: its image processor sets {', '.join(f'{key}=True' for key in unsupported)}, which the face "
            "crops cannot reproduce; give the image settings yourself (AvEmotionImageProcessor(size=..., ...))"
        )
    out = {key: settings[key] for key in ("do_rescale", "rescale_factor", "do_normalize") if key in settings}
    for key in ("image_mean", "image_std"):
        if settings.get(key) is not None:
            value = settings[key]
            out[key] = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if settings.get("do_resize", True) and settings.get("size") is not None:
        size = get_size_dict(settings["size"], default_to_square=True)
        if "shortest_edge" in size and "height" not in size:
            size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}  # a square crop: both edges
        if size.get("height") is None or size.get("height") != size.get("width"):
            raise ValueError(f"{name}: image size {settings['size']!r} is not a square height x width")
        out["size"] = {"height": int(size["height"]), "width": int(size["width"])}
    return out


def _as_video_list(videos: Any) -> list:
    """One video or a batch of videos -> a list of videos (see `preprocess`)."""
    if is_path(videos) or (isinstance(videos, np.ndarray) and videos.ndim in (3, 4)) or hasattr(videos, "detach"):
        return [videos]  # a 3-D array is one grayscale video (or one image, which check_video_array rejects)
    if isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError("video: expected a video or a list of videos, got an empty list")
        first = videos[0]
        if is_path(first) or isinstance(first, (list, tuple)) or getattr(first, "ndim", 0) == 4:
            return list(videos)
        return [videos]  # a list of frames
    raise ValueError(
        "video: expected a file path, a (frames, height, width, 3) uint8 array, a list of frames, or a list of "
        f"these, got {type(videos).__name__}"
    )


__all__ = ["AvEmotionImageProcessor", "backbone_image_settings", "normalize_pixels"]
