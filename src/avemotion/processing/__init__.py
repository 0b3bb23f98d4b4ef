"""Processors: audio feature extraction (and, with later modules, video frames, text and the joint processor)."""

from .audio import AvEmotionFeatureExtractor

__all__ = ["AvEmotionFeatureExtractor"]
