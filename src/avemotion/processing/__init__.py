"""Processors: audio feature extraction, face-video frames, and the joint audio/video/text processor."""

from .audio import AvEmotionFeatureExtractor
from .faces import FaceDetector, HaarCascadeFaceDetector
from .media import load_audio, load_video
from .processor import AvEmotionProcessor
from .video import AvEmotionImageProcessor

__all__ = [
    "AvEmotionFeatureExtractor",
    "AvEmotionImageProcessor",
    "AvEmotionProcessor",
    "FaceDetector",
    "HaarCascadeFaceDetector",
    "load_audio",
    "load_video",
]
