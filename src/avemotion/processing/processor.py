"""`AvEmotionProcessor`: audio, face video and text to model inputs, as one `AutoProcessor`."""

from __future__ import annotations

import logging
from typing import Any

from transformers import BatchFeature, ProcessorMixin
from transformers.utils import cached_file

from .audio import AvEmotionFeatureExtractor
from .video import AvEmotionImageProcessor, _as_video_list

logger = logging.getLogger(__name__)

AUDIO_MASK_KEY = "audio_attention_mask"


class AvEmotionProcessor(ProcessorMixin):
    r"""
    Combines an audio feature extractor, a face-video frame processor and an optional text tokenizer.

    `AvEmotionProcessor()` gives VAVL's settings: 16 kHz mono audio with global waveform normalisation (set
    `global_mean`/`global_std` to the training statistics; converted VAVL checkpoints carry them), native video frame
    rate, the main face cropped by VAVL's rule to 224x224, ImageNet normalisation, and no tokenizer (VAVL has no
    text branch). Long media are not cut here: the pipeline cuts them into windows of `config.window_seconds`.

    Args:
        feature_extractor ([`AvEmotionFeatureExtractor`], *optional*): audio; defaults to VAVL's settings.
        image_processor ([`AvEmotionImageProcessor`], *optional*): face-video frames; defaults to VAVL's settings.
        tokenizer ([`BertTokenizerFast`], *optional*): text; `None` for audio-visual models.

    Calling the processor returns a `BatchFeature` with, for the modalities given:
        - audio: `input_values` (batch, samples) and `audio_attention_mask` (batch, samples). The audio mask is
          renamed from the feature extractor's `attention_mask` so that it does not clash with the tokenizer's;
          pass it to VAVL as `attention_mask`.
        - video: `pixel_values_videos` (batch, frames, 3, 224, 224), `visual_features_mask` (batch, frames) and
          `num_frames_without_face` (batch,) (see [`AvEmotionImageProcessor`]).
        - text: the tokenizer's outputs (`input_ids`, `attention_mask`, ...).
    """

    def __init__(
        self,
        feature_extractor: AvEmotionFeatureExtractor | None = None,
        image_processor: AvEmotionImageProcessor | None = None,
        tokenizer: Any = None,
        **kwargs: Any,
    ):
        feature_extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
        image_processor = image_processor if image_processor is not None else AvEmotionImageProcessor()
        if tokenizer is not None:
            super().__init__(feature_extractor, image_processor, tokenizer, **kwargs)
            return
        # ProcessorMixin requires every sub-processor; the tokenizer is optional here.
        self.chat_template = kwargs.pop("chat_template", None)
        if kwargs:
            raise TypeError(f"Unexpected keyword arguments: {sorted(kwargs)}")
        for name, value in (("feature_extractor", feature_extractor), ("image_processor", image_processor)):
            self.check_argument_for_proper_class(name, value)
            setattr(self, name, value)
        self.tokenizer = None

    def __call__(
        self,
        audio: Any = None,
        video: Any = None,
        text: str | list[str] | None = None,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        audio_kwargs: dict[str, Any] | None = None,
        video_kwargs: dict[str, Any] | None = None,
        text_kwargs: dict[str, Any] | None = None,
    ) -> BatchFeature:
        """
        Args:
            audio: one input or a list. An input is a path to an audio file or to a video file (its sound track),
                a mono 1-D float waveform at `sampling_rate`, or a dict `{"array", "sampling_rate"}`.
            video: one video or a list: a file path, a (frames, height, width, 3) uint8 RGB array, or a list of
                (height, width, 3) frames.
            text: a string or a list of strings (needs a tokenizer).
            sampling_rate: rate of the audio arrays; they are resampled to the feature extractor's rate.
            return_tensors: `"pt"`, `"np"` or `None`.
            audio_kwargs, video_kwargs, text_kwargs: extra arguments for the feature extractor, the image processor
                and the tokenizer.
        """
        if audio is None and video is None and text is None:
            raise ValueError("Nothing to process: pass at least one of `audio`, `video` or `text`.")
        sizes = {}
        data: dict[str, Any] = {}
        if audio is not None:
            features = self.feature_extractor(
                audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **(audio_kwargs or {})
            )
            sizes["audio"] = len(features["input_values"])
            data["input_values"] = features["input_values"]
            if "attention_mask" in features:
                data[AUDIO_MASK_KEY] = features["attention_mask"]
        if video is not None:
            sizes["video"] = len(_as_video_list(video))
            data.update(self.image_processor(video, return_tensors=return_tensors, **(video_kwargs or {})))
        if text is not None:
            if self.tokenizer is None:
                raise ValueError("This processor has no tokenizer, so it cannot process `text`.")
            if not (
                isinstance(text, str) or (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text))
            ):
                raise ValueError(f"text: expected a string or a list of strings, got {type(text).__name__}")
            text_kwargs = {"padding": True, **(text_kwargs or {})}
            encoded = self.tokenizer(text, return_tensors=return_tensors, **text_kwargs)
            sizes["text"] = 1 if isinstance(text, str) else len(text)
            data.update(encoded)
        if len(set(sizes.values())) > 1:
            raise ValueError(f"The modalities hold different numbers of samples: {sizes}")
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        names = ["input_values", AUDIO_MASK_KEY, *self.image_processor.model_input_names]
        if self.tokenizer is not None:
            names += [name for name in self.tokenizer.model_input_names if name not in names]
        return names

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs: Any):
        if self.tokenizer is not None:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        # ProcessorMixin saves every sub-processor named in __init__: leave out the absent tokenizer.
        present = [name for name in type(self).get_attributes() if getattr(self, name) is not None]
        self.get_attributes = lambda: present
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            del self.get_attributes

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the feature extractor and image processor, and the tokenizer only where one was saved.

        A directory holding only a feature extractor (as the VAVL converter writes) gets the default image processor.
        """
        processor_dict = processor_dict or {}
        kwargs = dict(kwargs)
        subfolder = kwargs.pop("subfolder", "")
        image_kwargs = {k: kwargs.pop(k) for k in AvEmotionImageProcessor.valid_kwargs.__annotations__ if k in kwargs}
        lookup = {
            key: kwargs[key]
            for key in ("cache_dir", "force_download", "local_files_only", "revision", "token")
            if key in kwargs
        }

        def has_file(name: str) -> bool:
            found = cached_file(
                pretrained_model_name_or_path,
                name,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                subfolder=subfolder,
                **lookup,
            )
            return found is not None

        if "feature_extractor" in processor_dict:
            feature_extractor = AvEmotionFeatureExtractor.from_dict(processor_dict["feature_extractor"])
        else:
            feature_extractor = AvEmotionFeatureExtractor.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        if "image_processor" in processor_dict:
            settings = {k: v for k, v in processor_dict["image_processor"].items() if k != "image_processor_type"}
            image_processor = AvEmotionImageProcessor(**{**settings, **image_kwargs})
        else:
            logger.info("%s has no image processor settings: using VAVL's defaults", pretrained_model_name_or_path)
            image_processor = AvEmotionImageProcessor(**image_kwargs)
        tokenizer = None
        if has_file("tokenizer_config.json"):
            tokenizer = cls._load_tokenizer_from_pretrained(
                "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        return [feature_extractor, image_processor, tokenizer]


def default_feature_extractor() -> AvEmotionFeatureExtractor:
    """VAVL's audio settings: 16 kHz, global normalisation (statistics to be set from the training data)."""
    return AvEmotionFeatureExtractor(sampling_rate=16000, normalization="global", global_mean=0.0, global_std=1.0)


__all__ = ["AUDIO_MASK_KEY", "AvEmotionProcessor"]
