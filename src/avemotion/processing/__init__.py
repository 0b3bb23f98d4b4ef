"""Processors: audio feature extraction, face-video frames, and the joint audio/video/text processor."""

from .audio import AvEmotionFeatureExtractor
from .faces import FaceDetections, FaceDetector, HaarCascadeFaceDetector, NoFaceFoundError
from .media import iter_audio_blocks, iter_video_frames, load_audio, load_video, media_streams
from .mtcnn import MtcnnFaceDetector
from .processor import AvEmotionProcessor
from .video import AvEmotionImageProcessor

__all__ = [
    "AvEmotionFeatureExtractor",
    "AvEmotionImageProcessor",
    "AvEmotionProcessor",
    "FaceDetections",
    "FaceDetector",
    "HaarCascadeFaceDetector",
    "MtcnnFaceDetector",
    "NoFaceFoundError",
    "iter_audio_blocks",
    "iter_video_frames",
    "load_audio",
    "load_video",
    "media_streams",
]
