"""The `audio-visual-emotion` pipeline."""

from .audio_visual_emotion import TASK, AudioVisualEmotionPipeline, normalize_input, register_pipeline

__all__ = ["TASK", "AudioVisualEmotionPipeline", "normalize_input", "register_pipeline"]
