"""Run frozen backbones once and keep their features on disk (`datasets.map`, fingerprinted by model and processor)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import torch

from avemotion.processing.faces import NoFaceFoundError
from avemotion.processing.media import decode_audio_value
from avemotion.utils.distributed import agree, gather, is_main_process, process_state, run_in_rounds, wait_for_everyone

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


DEFAULT_CHUNK_SIZE = 128  # rows per committed unit of work: what a killed run loses at most, per process


def cache_features(
    dataset: datasets.Dataset | datasets.DatasetDict,
    model_or_processor: Any,
    processor: Any = None,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    load_from_cache_file: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
        cache_dir: where to keep the cache, a folder `features-<fingerprint>/` of Arrow files, one per chunk of rows;
            default: next to the dataset's own Arrow files (the `datasets` cache). An in-memory dataset without
            `cache_dir` is not cached on disk (and cannot be shared between processes).
        load_from_cache_file: reuse the chunks already computed under the same fingerprint.
        chunk_size: rows per chunk (rounded up to a multiple of `batch_size`): the unit of work that is committed to
            the cache at once (written to a temporary name, then renamed), so that a killed run started again with
            the same arguments computes only the chunks that are missing.

    Under `accelerate launch` (several processes, GPUs or machines), each process computes a contiguous share of
    the missing chunks with the model on its own device (move the model to `PartialState().device` first) and every
    process returns the same dataset: the chunks concatenated in row order. The rows of a batch do not depend on the
    number of processes (chunks hold whole batches), so the features are the same, bit for bit on CPU, as one
    process computes. The processes must share `cache_dir` (on several machines: a shared file system); they check
    that they agree on the fingerprint, and an error in one process stops all of them, naming it. The main process
    shows one progress bar (rows/s over every process).

    The cache fingerprint combines the dataset's fingerprint with the model class, config and backbone weights and
    the processor's settings, so a changed backbone or processor computes the features again.
    A modality the model has no backbone for, or a row without it, gets None (the collator masks it). A video in
    which no frame shows a face (`NoFaceFoundError`) gets `visual_features=None` too; such rows (a video but no
    visual features) are counted and logged as a warning with their ids, also when the features come from the cache.
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be at least 1, got {batch_size} and {chunk_size}")
    if isinstance(dataset, datasets.DatasetDict):
        options = {"batch_size": batch_size, "cache_dir": cache_dir, "load_from_cache_file": load_from_cache_file}
        return datasets.DatasetDict(
            {
                name: cache_features(split, model_or_processor, processor, chunk_size=chunk_size, **options)
                for name, split in dataset.items()
            }
        )
    extractor = _extractor(model_or_processor, processor)
    fingerprint = feature_cache_fingerprint(dataset, extractor)
    agree(fingerprint, "the feature cache's fingerprint (their dataset, model or processor differ)")
    features = dataset.features.copy()
    # nested lists rather than Array2D: Array2D has no null, and rows without a modality must stay None
    frames = datasets.List(datasets.List(datasets.Value("float32")))
    features["audio_features"] = features["visual_features"] = frames
    # the extractors read audio files with avemotion's own loader (`load_audio`, what the corpus scan probes), not
    # with the `datasets` decoder, which fails on files the loader reads (very short clips, some containers) and
    # names none: hand them the undecoded {"path", "bytes"} values, and restore the column's decoding afterwards
    audio_feature = dataset.features.get("audio")
    undecoded = isinstance(audio_feature, datasets.Audio) and audio_feature.decode
    if undecoded:
        plain = datasets.Audio(sampling_rate=audio_feature.sampling_rate, decode=False)
        dataset = dataset.cast_column("audio", plain)
        features["audio"] = plain
    cache = FeatureCache(dataset, _cache_folder(dataset, cache_dir, fingerprint), fingerprint, batch_size, chunk_size)
    cached = cache.compute(functools.partial(_extract_reporting_bad_files, extractor.extract_batch), features,
                           load_from_cache_file)  # fmt: skip
    if undecoded:
        cached = cached.cast_column("audio", audio_feature)
    # a model without a visual backbone leaves every video without features by design: nothing to report
    has_visual = not isinstance(extractor, _BackboneExtractor) or extractor.model.visual_backbone is not None
    if has_visual and is_main_process():
        _report_videos_without_features(cached)
    return cached


def _extractor(model_or_processor: Any, processor: Any) -> Any:
    if hasattr(model_or_processor, "extract_batch"):
        return model_or_processor
    return _BackboneExtractor(model_or_processor, processor)


def feature_cache_fingerprint(dataset: datasets.Dataset, model_or_processor: Any, processor: Any = None) -> str:
    """The fingerprint under which `cache_features(dataset, model_or_processor, processor)` caches its features:
    the dataset's fingerprint with the extractor's (model class, config, backbone weights, processor settings)."""
    extractor = _extractor(model_or_processor, processor)
    return hashlib.sha256(f"{dataset._fingerprint}|{extractor.fingerprint()}".encode()).hexdigest()[:32]


def _cache_folder(dataset: datasets.Dataset, cache_dir: str | Path | None, fingerprint: str) -> Path | None:
    """`features-<fingerprint>/` in `cache_dir`, else next to the dataset's Arrow files; None for an in-memory
    dataset without `cache_dir` (a `ValueError` when several processes would need to share it)."""
    if cache_dir is None and dataset.cache_files:
        cache_dir = Path(dataset.cache_files[0]["filename"]).parent
    if cache_dir is None:
        if process_state().num_processes > 1:
            raise ValueError(
                "cache_features over several processes needs cache_dir (a folder every process can read and write) "
                "or a dataset stored on disk: each process writes its rows there for the others"
            )
        return None
    return Path(cache_dir) / f"features-{fingerprint}"


class FeatureCache:
    """The chunks of one dataset's cached features: which exist, computing the missing ones across processes, and
    the assembled dataset. Chunk `k` holds rows `[k * chunk_size, (k + 1) * chunk_size)` in
    `rows-<start>-<end>-batch<batch_size>.arrow`; `folder` None keeps everything in memory (one process)."""

    def __init__(
        self, dataset: datasets.Dataset, folder: Path | None, fingerprint: str, batch_size: int, chunk_size: int
    ):
        folder = folder if len(dataset) else None  # nothing to compute: `datasets` writes no file for no rows
        self.dataset, self.folder, self.fingerprint, self.batch_size = dataset, folder, fingerprint, batch_size
        rows = -(-chunk_size // batch_size) * batch_size  # whole batches: a batch's rows never depend on the split
        self.ranges = [(start, min(start + rows, len(dataset))) for start in range(0, len(dataset), rows)]
        self._in_memory: dict[tuple[int, int], datasets.Dataset] = {}

    def path(self, rows: tuple[int, int]) -> Path:
        return self.folder / f"rows-{rows[0]:09d}-{rows[1]:09d}-batch{self.batch_size}.arrow"

    def missing(self, reuse: bool) -> list[tuple[int, int]]:
        """The chunks to compute, as the main process sees them (every process works from the same list)."""
        if self.folder is None or not reuse:
            local = list(self.ranges)
        elif reuse and (self.folder.parent / f"features-{self.fingerprint}.arrow").is_file():
            local = []  # one file written by an earlier release of cache_features: still valid
        else:
            local = [rows for rows in self.ranges if not self.path(rows).is_file()]
        return gather(local)[0]

    def compute(self, extract: Any, features: datasets.Features, reuse: bool) -> datasets.Dataset:
        """Compute the missing chunks (this process: its contiguous share) and return the whole dataset."""
        if self.folder is not None and is_main_process():
            self.folder.mkdir(parents=True, exist_ok=True)
        wait_for_everyone()
        todo = self.missing(reuse)
        if todo:
            logger.info("caching features of %d of %d chunks in %s", len(todo), len(self.ranges), self.folder)

        def work(rows: tuple[int, int]) -> int:
            self._compute_chunk(rows, extract, features)
            return rows[1] - rows[0]

        progress_bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # one bar over every chunk and process, not one per chunk
        try:
            run_in_rounds(todo, work, total=sum(end - start for start, end in todo), desc="Caching backbone features")
        finally:
            if progress_bars:
                datasets.enable_progress_bars()
        wait_for_everyone()
        if self.folder is not None and is_main_process():
            self._remove_unfinished()
        return self._assemble(features)

    def _remove_unfinished(self) -> None:
        """Delete what killed runs left half-written in the folder (`datasets`' `tmp*` files, our `*.partial-*`)."""
        for path in self.folder.iterdir():
            if path.is_file() and (path.name.startswith("tmp") or ".partial-" in path.name):
                path.unlink(missing_ok=True)

    def _compute_chunk(self, rows: tuple[int, int], extract: Any, features: datasets.Features) -> None:
        part = self.dataset.select(range(*rows))
        options = {"batched": True, "batch_size": self.batch_size, "features": features, "load_from_cache_file": False,
                   "new_fingerprint": f"{self.fingerprint}-{rows[0]}-{rows[1]}"}  # fmt: skip
        if self.folder is None:
            self._in_memory[rows] = part.map(extract, keep_in_memory=True, **options)
            return
        target = self.path(rows)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        part.map(extract, cache_file_name=str(partial), **options)
        os.replace(partial, target)  # committed: a killed run never leaves a chunk that looks complete

    def _assemble(self, features: datasets.Features) -> datasets.Dataset:
        info, split = self.dataset.info.copy(), self.dataset.split  # the corpus metadata, with the new columns
        info.features = features
        legacy = None if self.folder is None else self.folder.parent / f"features-{self.fingerprint}.arrow"
        if not self.ranges:  # no rows: `map` would not add the columns
            return datasets.Dataset.from_dict({name: [] for name in features}, features, info, split)
        if self.folder is None:
            parts = [self._in_memory[rows] for rows in self.ranges]
        elif legacy.is_file() and not any(self.path(rows).is_file() for rows in self.ranges):
            return datasets.Dataset.from_file(str(legacy), info=info, split=split)
        else:
            unseen = [self.path(rows) for rows in self.ranges if not self.path(rows).is_file()]
            if unseen:
                raise FileNotFoundError(
                    f"{unseen[0]}: a chunk another process wrote is not visible here; on several machines, cache_dir "
                    "must be a shared file system"
                )
            parts = [datasets.Dataset.from_file(str(self.path(rows)), info=info, split=split) for rows in self.ranges]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts, info=info, split=split)


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
