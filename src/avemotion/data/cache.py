"""Run frozen backbones once and keep their features on disk (`datasets.map`, fingerprinted by model and processor)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import datasets
import torch

from avemotion.processing.faces import NoFaceFoundError
from avemotion.processing.media import decode_audio_value

from .common import audio_value_name

logger = logging.getLogger(__name__)


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _hash_module(module: torch.nn.Module | None) -> str:
    digest = hashlib.sha256()
    if module is not None:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _BackboneExtractor:
    """Adapts a VAVL model with backbones + an `AvEmotionProcessor` to the `extract_batch` protocol."""

    def __init__(self, model: Any, processor: Any):
        base = getattr(model, "base_model", model)
        if not hasattr(base, "get_audio_features"):
            raise ValueError(
                f"cache_features needs a VAVL model (with get_audio_features/get_visual_features) or an object with "
                f"extract_batch(batch) and fingerprint(), got {type(model).__name__}"
            )
        if processor is None:
            from avemotion.processing import AvEmotionProcessor

            processor = AvEmotionProcessor()
        self.model, self.processor = base, processor

    def fingerprint(self) -> str:
        processors = {
            name: getattr(self.processor, name).to_dict()
            for name in ("feature_extractor", "image_processor")
            if getattr(self.processor, name, None) is not None
        }
        parts = [
            type(self.model).__name__,
            _hash_json(self.model.config.to_dict()),
            _hash_module(self.model.audio_backbone),
            _hash_module(self.model.visual_backbone),
            _hash_json(processors),
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def extract_batch(self, batch: dict[str, list]) -> dict[str, list]:
        training = self.model.training
        self.model.eval()  # no dropout in cached features; the caller's mode is restored below
        try:
            with torch.no_grad():
                return self._extract(batch)
        finally:
            self.model.train(training)

    def _extract(self, batch: dict[str, list]) -> dict[str, list]:
        size = len(batch["id"])
        audio_out: list = [None] * size
        visual_out: list = [None] * size
        with_audio = [i for i, value in enumerate(batch.get("audio", [None] * size)) if value is not None]
        if with_audio and self.model.audio_backbone is not None:
            rate = self.processor.feature_extractor.sampling_rate
            waveforms = [
                decode_audio_value(batch["audio"][i], rate, audio_value_name(batch["audio"][i])) for i in with_audio
            ]
            inputs = self.processor.feature_extractor(waveforms, sampling_rate=rate, return_tensors="pt")
            features, mask = self.model.get_audio_features(inputs["input_values"], inputs.get("attention_mask"))
            for row, index in enumerate(with_audio):
                length = int(mask[row].sum()) if mask is not None else features.shape[1]
                audio_out[index] = features[row, :length].float().numpy()
        with_video = [i for i, value in enumerate(batch.get("video", [None] * size)) if value is not None]
        if with_video and self.model.visual_backbone is not None:
            try:
                self._visual(batch["video"], with_video, visual_out)
            except NoFaceFoundError:
                # the processor rejects a whole call for one faceless video: redo the videos one by one so that only
                # the faceless ones get None (the collator masks their video; cache_features reports them)
                for index in with_video:
                    try:
                        self._visual(batch["video"], [index], visual_out)
                    except NoFaceFoundError as error:
                        logger.info("%s: %s", batch["id"][index], error)
        return {"audio_features": audio_out, "visual_features": visual_out}

    def _visual(self, videos: list, indices: list[int], out: list) -> None:
        # faces are detected in batches of frames, on the model's GPU when it has one
        device = self.model.device if self.model.device.type == "cuda" else None
        inputs = self.processor.image_processor([videos[i] for i in indices], return_tensors="pt", device=device)
        frames_mask = inputs["visual_features_mask"].bool()
        features = self.model.get_visual_features(inputs["pixel_values_videos"], frames_mask)
        for row, index in enumerate(indices):
            out[index] = features[row][frames_mask[row]].float().numpy()  # frames with a face


def cache_features(
    dataset: datasets.Dataset | datasets.DatasetDict,
    model_or_processor: Any,
    processor: Any = None,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    load_from_cache_file: bool = True,
) -> datasets.Dataset | datasets.DatasetDict:
    """Add `audio_features` (T_a, D_a) and `visual_features` (T_v, D_v) columns computed by frozen backbones.

    Args:
        dataset: rows in the shared schema (`audio`, `video` path; either may be None).
        model_or_processor: a VAVL model with backbones (`VavlModel` or `VavlForEmotionRecognition`; its
            `get_audio_features` / `get_visual_features` run), or any extractor with `extract_batch(batch) ->
            {"audio_features": [...], "visual_features": [...]}`, and `fingerprint() -> str` (e.g.
            `avemotion.data.synthetic.SyntheticFeatureExtractor`).
        processor: for a model, the `AvEmotionProcessor` that prepares its inputs (default: `AvEmotionProcessor()`).
            Visual features keep only frames in which the processor found a face.
        batch_size: rows per backbone call.
        cache_dir: where to write the Arrow cache (`features-<fingerprint>.arrow`); default: next to the dataset's
            own Arrow files (the `datasets` cache). An in-memory dataset without `cache_dir` is not cached on disk.
        load_from_cache_file: reuse a cache whose fingerprint matches.

    The cache fingerprint combines the dataset's fingerprint with the model class, config and backbone weights and
    the processor's settings, so a changed backbone or processor computes the features again.
    A modality the model has no backbone for, or a row without it, gets None (the collator masks it). A video in
    which no frame shows a face (`NoFaceFoundError`) gets `visual_features=None` too; such rows (a video but no
    visual features) are counted and logged as a warning with their ids, also when the features come from the cache.
    """
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {
                name: cache_features(split, model_or_processor, processor, batch_size, cache_dir, load_from_cache_file)
                for name, split in dataset.items()
            }
        )
    if hasattr(model_or_processor, "extract_batch"):
        extractor = model_or_processor
    else:
        extractor = _BackboneExtractor(model_or_processor, processor)
    fingerprint = hashlib.sha256(f"{dataset._fingerprint}|{extractor.fingerprint()}".encode()).hexdigest()[:32]
    features = dataset.features.copy()
    # nested lists rather than Array2D: Array2D has no null, and rows without a modality must stay None
    frames = datasets.List(datasets.List(datasets.Value("float32")))
    features["audio_features"] = features["visual_features"] = frames
    cache_file_name = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file_name = str(Path(cache_dir) / f"features-{fingerprint}.arrow")
    # the extractors read audio files with avemotion's own loader (`load_audio`, what the corpus scan probes), not
    # with the `datasets` decoder, which fails on files the loader reads (very short clips, some containers) and
    # names none: hand them the undecoded {"path", "bytes"} values, and restore the column's decoding afterwards
    audio_feature = dataset.features.get("audio")
    undecoded = isinstance(audio_feature, datasets.Audio) and audio_feature.decode
    if undecoded:
        plain = datasets.Audio(sampling_rate=audio_feature.sampling_rate, decode=False)
        dataset = dataset.cast_column("audio", plain)
        features["audio"] = plain
    cached = dataset.map(
        functools.partial(_extract_reporting_bad_files, extractor.extract_batch),
        batched=True,
        batch_size=batch_size,
        features=features,
        new_fingerprint=fingerprint,
        cache_file_name=cache_file_name,
        load_from_cache_file=load_from_cache_file,
        desc="Caching backbone features",
    )
    if undecoded:
        cached = cached.cast_column("audio", audio_feature)
    # a model without a visual backbone leaves every video without features by design: nothing to report
    if not isinstance(extractor, _BackboneExtractor) or extractor.model.visual_backbone is not None:
        _report_videos_without_features(cached)
    return cached


def _extract_reporting_bad_files(extract: Any, batch: dict[str, list]) -> dict[str, list]:
    """`extract(batch)`; when a file cannot be decoded (a `ValueError` naming it: corruption that the corpus scan's cheap
    probe cannot see), the batch is redone row by row and modality by modality, so that only the unreadable modality
    of that row gets None, with a warning naming the file, instead of stopping the caching."""
    try:
        return extract(batch)
    except ValueError:
        pass
    size = len(batch["id"])
    out: dict[str, list] = {"audio_features": [None] * size, "visual_features": [None] * size}
    for index in range(size):
        row = {key: values[index : index + 1] for key, values in batch.items()}
        try:
            one = extract(row)
            out["audio_features"][index], out["visual_features"][index] = (
                one["audio_features"][0],
                one["visual_features"][0],
            )
            continue
        except ValueError:
            pass
        for keep, drop, column in (("audio", "video", "audio_features"), ("video", "audio", "visual_features")):
            if row.get(keep, [None])[0] is None:
                continue
            try:
                out[column][index] = extract({**row, drop: [None]})[column][0]
            except ValueError as error:
                logger.warning("%s: %s; its %s is left out (no features)", row["id"][0], error, keep)
    return out


def _report_videos_without_features(dataset: datasets.Dataset) -> list[str]:
    """Warn about (and return the ids of) rows that have a video but no visual features (no face found)."""
    if "video" not in dataset.column_names:
        return []
    # Arrow null checks on two columns: the features are not decoded
    table = dataset.select_columns(["video", "visual_features"]).with_format("arrow")[:]
    video = table.column("video").is_valid().to_numpy(zero_copy_only=False)
    lost = video & table.column("visual_features").is_null().to_numpy(zero_copy_only=False)
    names = dataset["id"] if "id" in dataset.column_names else range(len(dataset))
    ids = [str(name) for name, flag in zip(names, lost) if flag]
    if ids:
        logger.warning(
            "%d of %d rows have a video but no visual features (no face found in any frame); their video is masked: %s",
            len(ids),
            len(dataset),
            ", ".join(ids),
        )
    return ids
