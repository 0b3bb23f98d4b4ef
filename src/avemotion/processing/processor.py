"""`AvEmotionProcessor`: audio, face video and text to model inputs, as one `AutoProcessor`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.utils import PROCESSOR_NAME, has_file, resolve_revision

from avemotion.utils.paths import contained_file
from avemotion.utils.transformers_compat import init_processor_subset

from .audio import AvEmotionFeatureExtractor, settings_load_errors
from .video import AvEmotionImageProcessor, _as_video_list, saved_face_detector_weights

logger = logging.getLogger(__name__)

AUDIO_MASK_KEY = "audio_attention_mask"
# Constructor arguments in tokenizer_config.json that transformers opens as a path when they are strings: as it
# stands, relative to the working directory or absolute, not as a file of the directory (`*_file` arguments are
# replaced by the directory's own files by transformers itself). save_pretrained never writes them.
TOKENIZER_PATH_ARGUMENTS = ("vocab", "merges")


class AvEmotionProcessor(ProcessorMixin):
    r"""
    Combines an audio feature extractor, a face-video frame processor and an optional text tokenizer.

    `AvEmotionProcessor()` gives VAVL's settings: 16 kHz mono audio with global waveform normalisation (set
    `global_mean`/`global_std` to the training statistics; converted VAVL checkpoints carry them), native video frame
    rate, the main face cropped by VAVL's rule to 224x224, ImageNet normalisation, and no tokenizer (VAVL has no
    text branch). Long media are not cut here: the pipeline cuts them into windows of `config.window_seconds`.
    `AvEmotionProcessor.from_backbones(audio=..., visual=...)` gives the processor of a model built with
    `VavlForEmotionRecognition.from_backbones`: face crops with the visual backbone's own image settings.

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
        # ProcessorMixin.__init__ requires every sub-processor; the tokenizer is optional here.
        chat_template = kwargs.pop("chat_template", None)
        if kwargs:
            raise TypeError(f"Unexpected keyword arguments: {sorted(kwargs)}")
        init_processor_subset(
            self, chat_template=chat_template, feature_extractor=feature_extractor, image_processor=image_processor
        )

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

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """`ProcessorMixin.save_pretrained`; without a tokenizer, `processor_config.json` (holding the feature
        extractor's and the image processor's settings) is all there is to write."""
        if self.tokenizer is not None:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", str(save_directory).split(os.path.sep)[-1])
            self.save_pretrained(save_directory)
            return self.push_to_hub(repo_id, **kwargs)
        os.makedirs(save_directory, exist_ok=True)
        output_file = os.path.join(save_directory, PROCESSOR_NAME)
        self.to_json_file(output_file)
        logger.info("processor saved in %s", output_file)
        weights = self.image_processor.save_face_detector(save_directory)
        return [output_file] if weights is None else [output_file, weights]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str = "main",
        **kwargs: Any,
    ) -> AvEmotionProcessor:
        """Load the feature extractor and image processor, and the tokenizer only where one was saved.

        A directory holding only a feature extractor (as the VAVL converter writes) gets the default image processor;
        image processor settings in `kwargs` (e.g. `face_detector=None`) override the saved ones.
        """
        lookup: dict[str, Any] = {"cache_dir": cache_dir, "force_download": force_download}
        lookup["local_files_only"] = local_files_only
        # one revision for every file, so that they all come from the same state of the repo
        lookup["revision"] = resolve_revision(
            pretrained_model_name_or_path,
            revision,
            token=token,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
        )
        if token is not None:
            lookup["token"] = token
        path = pretrained_model_name_or_path
        with settings_load_errors(path, PROCESSOR_NAME):
            processor_dict, instantiation_kwargs = cls.get_processor_dict(path, **lookup, **kwargs)
            if not isinstance(processor_dict, dict):
                raise ValueError(
                    f"{path}: {PROCESSOR_NAME}: expected a JSON object of settings, got {type(processor_dict).__name__}"
                )
            processor_class = processor_dict.get("processor_class")
            if processor_class is not None and not isinstance(processor_class, str):
                raise ValueError(
                    f"{path}: {PROCESSOR_NAME}: processor_class = {processor_class!r:.80}: expected a class name"
                )
        args = cls._sub_processors(path, processor_dict, lookup, dict(kwargs))
        with settings_load_errors(path, PROCESSOR_NAME):
            return cls.from_args_and_dict(args, processor_dict, **instantiation_kwargs)

    @classmethod
    def from_backbones(
        cls,
        audio: str | os.PathLike | None = None,
        visual: str | os.PathLike | None = None,
        audio_kwargs: dict[str, Any] | None = None,
        **image_processor_kwargs: Any,
    ) -> AvEmotionProcessor:
        """The processor of a model built with `VavlForEmotionRecognition.from_backbones(audio=..., visual=...)`.

        Args:
            audio: the audio backbone (name or directory). Its saved feature extractor, if any, gives the sampling
                rate; the normalisation stays VAVL's global one (set `global_mean`/`global_std` to the training-set
                statistics, e.g. through `audio_kwargs`).
            visual: the visual backbone (name or directory), e.g. a directory written by `avemotion convert-hsemotion`:
                the face crops take its image processor's size, rescale factor, mean and std
                (`AvEmotionImageProcessor.from_backbone`; crops are cut at that size with bicubic interpolation, as
                VAVL's original crops are), so the backbone sees the pixels it was made for.
            audio_kwargs: `AvEmotionFeatureExtractor` settings that override the defaults and what `audio` gives.
            image_processor_kwargs: `AvEmotionImageProcessor` settings (e.g. `face_detector`, `crop_scale`) that
                override the defaults and what `visual` gives.
        """
        settings: dict[str, Any] = {}
        if audio is not None:
            try:
                with settings_load_errors(audio, "preprocessor_config.json"):
                    saved, _ = AvEmotionFeatureExtractor.get_feature_extractor_dict(audio)
            except OSError as error:
                if (Path(audio) / "preprocessor_config.json").is_file():  # there, but transformers cannot read it
                    raise ValueError(f"{audio}: preprocessor_config.json: cannot be read ({error})") from error
                logger.info("%s has no feature extractor config: using VAVL's audio defaults", audio)
                saved = {}
            if not isinstance(saved, dict):
                raise ValueError(f"{audio}: preprocessor_config.json: expected a JSON object, got {saved!r:.40}")
            settings = {key: saved[key] for key in ("sampling_rate", "padding_value") if key in saved}
        feature_extractor = AvEmotionFeatureExtractor(**{**VAVL_AUDIO_SETTINGS, **settings, **(audio_kwargs or {})})
        if visual is not None:
            image_processor = AvEmotionImageProcessor.from_backbone(visual, **image_processor_kwargs)
        else:
            image_processor = AvEmotionImageProcessor(**image_processor_kwargs)
        return cls(feature_extractor=feature_extractor, image_processor=image_processor)

    @classmethod
    def _sub_processors(
        cls, path: str | os.PathLike, processor_dict: dict[str, Any], lookup: dict[str, Any], kwargs: dict[str, Any]
    ) -> list[Any]:
        """`[feature_extractor, image_processor, tokenizer or None]` of a saved processor."""
        subfolder = kwargs.pop("subfolder", "")
        image_kwargs = {k: kwargs.pop(k) for k in AvEmotionImageProcessor.valid_kwargs.__annotations__ if k in kwargs}
        kwargs = {**kwargs, **lookup}
        if "feature_extractor" in processor_dict:
            saved = processor_dict["feature_extractor"]
            if not isinstance(saved, dict):
                raise ValueError(
                    f"{path}: {PROCESSOR_NAME} feature_extractor: expected an object of settings, got "
                    f"{type(saved).__name__}"
                )
            with settings_load_errors(path, f"{PROCESSOR_NAME} feature_extractor"):
                feature_extractor = AvEmotionFeatureExtractor.from_dict(saved)
        else:
            with settings_load_errors(path, "preprocessor_config.json"):
                feature_extractor = AvEmotionFeatureExtractor.from_pretrained(path, subfolder=subfolder, **kwargs)
        if os.path.isdir(path) and "face_detector_weights" not in image_kwargs:
            image_kwargs["face_detector_weights"] = saved_face_detector_weights(path)
        if "image_processor" in processor_dict:
            image_processor = _saved_image_processor(path, processor_dict["image_processor"], image_kwargs)
        else:
            logger.info("%s has no image processor settings: using VAVL's defaults", path)
            image_processor = AvEmotionImageProcessor(**image_kwargs)
        tokenizer = None
        config_file = f"{subfolder}/tokenizer_config.json" if subfolder else "tokenizer_config.json"
        keys = ("revision", "token", "local_files_only", "cache_dir")
        if has_file(path, config_file, **{key: lookup[key] for key in keys if key in lookup}):
            check_tokenizer_config(path, config_file)
            with settings_load_errors(path, "the tokenizer files (tokenizer.json, tokenizer_config.json, vocab.txt)"):
                tokenizer = AutoTokenizer.from_pretrained(path, subfolder=subfolder, **kwargs)
                tokenizer("a")  # a vocabulary it cannot encode with (e.g. without its [UNK] token) fails here, at load
        return [feature_extractor, image_processor, tokenizer]


def _saved_image_processor(path: Any, saved: Any, overrides: dict[str, Any]) -> AvEmotionImageProcessor:
    """The image processor of a saved processor's `image_processor` settings (`overrides` win); bad settings are a
    `ValueError` naming the file and the section."""
    where = f"{path}: {PROCESSOR_NAME} image_processor"
    if not isinstance(saved, dict):
        raise ValueError(f"{where}: expected an object of settings, got {type(saved).__name__}")
    settings = {k: v for k, v in saved.items() if k != "image_processor_type"}
    try:
        return AvEmotionImageProcessor(**{**settings, **overrides})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def check_tokenizer_config(path: str | os.PathLike, config_file: str = "tokenizer_config.json") -> None:
    """Refuse a local directory's `tokenizer_config.json` that would make transformers read a file from outside it:
    a symlink leading out, or a string in one of `TOKENIZER_PATH_ARGUMENTS` (a path transformers opens as it
    stands). A `ValueError` names the file and the field. A Hub id is left to transformers."""
    if not os.path.isdir(path):
        return
    file = Path(path) / config_file
    if not os.path.lexists(file):
        return
    contained_file(file.parent, file.name, "the tokenizer's settings")
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{file}: cannot be read as JSON (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: cannot be read as JSON ({error})") from error
    if not isinstance(saved, dict):
        raise ValueError(f"{file}: expected a JSON object of tokenizer settings, got {type(saved).__name__}")
    for key in TOKENIZER_PATH_ARGUMENTS:
        if isinstance(saved.get(key), str):
            raise ValueError(
                f"{file}: {key} = {saved[key][:200]!r}: a saved tokenizer setting may not name a file (transformers "
                "would open that path as it stands, outside the directory); the vocabulary belongs in tokenizer.json"
            )


# VAVL's audio settings: 16 kHz, global normalisation (statistics to be set from the training data)
VAVL_AUDIO_SETTINGS: dict[str, Any] = {
    "sampling_rate": 16000,
    "normalization": "global",
    "global_mean": 0.0,
    "global_std": 1.0,
}


def default_feature_extractor() -> AvEmotionFeatureExtractor:
    """VAVL's audio settings: 16 kHz, global normalisation (statistics to be set from the training data)."""
    return AvEmotionFeatureExtractor(**VAVL_AUDIO_SETTINGS)


__all__ = ["AUDIO_MASK_KEY", "TOKENIZER_PATH_ARGUMENTS", "AvEmotionProcessor", "check_tokenizer_config"]
