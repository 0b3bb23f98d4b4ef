"""A third model, defined only here: a tiny audio-only emotion model that implements just the declaration methods.

It proves the README's promise that a new model needs no change under `src/avemotion/` outside its own folder: the
collator, the trainer, the evaluation, saving and reloading and the pipeline run it from what it declares. Its keys
(`speech`, `speech_mask`), its report name (`tone`), its shortest input (three 10 ms frames, 480 samples) and its freezing hook differ
from both package models on purpose, so that a table of the package models' keys somewhere would show up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

FRAME = 160  # samples per frame at 16 kHz: 10 ms
MIN_SAMPLES = 3 * FRAME  # its shortest input: three frames, 30 ms
LABELS = ("low", "high")


class ToneEmotionConfig(PreTrainedConfig):
    model_type = "tone-emotion-test"

    def __init__(self, hidden_size: int = 8, freeze_frontend: bool = False, window_seconds: float = 2.0, **kwargs):
        kwargs.setdefault("id2label", dict(enumerate(LABELS)))
        kwargs.setdefault("label2id", {label: index for index, label in enumerate(LABELS)})
        super().__init__(**kwargs)
        self.hidden_size, self.freeze_frontend, self.window_seconds = hidden_size, freeze_frontend, window_seconds
        self.sampling_rate = 16000


@dataclass
class ToneEmotionOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class ToneEmotionForEmotionRecognition(PreTrainedModel):
    """Magnitude spectra of 10 ms frames -> a linear front end -> the mean over the masked frames -> logits."""

    config_class = ToneEmotionConfig
    main_input_name = "speech"
    backbone_freeze_flags = {"freeze_frontend": ()}

    def __init__(self, config: ToneEmotionConfig):
        super().__init__(config)
        self.frontend = nn.Linear(FRAME // 2 + 1, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()
        self.apply_backbone_freezing()

    def apply_backbone_freezing(self) -> None:
        self.frontend.requires_grad_(not self.config.freeze_frontend)

    def input_spec(self) -> dict[str, Any]:
        return {
            "modalities": {
                "audio": {
                    "inputs": ("speech", "speech_mask"),
                    "layout": "waveform",
                    "sampling_rate": self.config.sampling_rate,
                    "min_samples": MIN_SAMPLES,
                }
            },
            "segments": {},
            "window_seconds": self.config.window_seconds,
        }

    def evaluation_branches(self) -> dict[str, str]:
        return {"logits": "tone"}

    def forward(self, speech=None, speech_mask=None, labels=None, **kwargs: Any) -> ToneEmotionOutput:
        frames = speech.float()[:, : speech.shape[1] // FRAME * FRAME].unflatten(1, (-1, FRAME))  # (B, T, FRAME)
        spectra = torch.fft.rfft(frames, dim=-1).abs().log1p()
        hidden = torch.relu(self.frontend(spectra))
        if speech_mask is None:
            valid = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        else:  # a frame is real when its first sample is
            valid = speech_mask[:, : frames.shape[1] * FRAME : FRAME].to(hidden.dtype)
        pooled = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        logits = self.classifier(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ToneEmotionOutput(loss=loss, logits=logits)


def register_tone_model() -> None:
    """Register the config and the model with transformers' and avemotion's Auto classes (idempotent)."""
    from avemotion import AutoModelForEmotionRecognition

    try:
        AutoConfig.register(ToneEmotionConfig.model_type, ToneEmotionConfig)
        AutoModelForEmotionRecognition.register(ToneEmotionConfig, ToneEmotionForEmotionRecognition)
    except ValueError:  # already registered by another test
        pass


def tone(frequency: float, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.5 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.normal(size=t.shape)).astype("float32")


def tone_dataset(n: int, seed: int) -> datasets.Dataset:
    """Rows of `speech` (a 0.2-0.4 s waveform: 300 Hz for `low`, 3 kHz for `high`) and `label`."""
    rng = np.random.default_rng(seed)
    rows = {"speech": [], "label": []}
    for index in range(n):
        label = index % 2
        rows["speech"].append(tone((300.0, 3000.0)[label], float(rng.uniform(0.2, 0.4)), seed * 1000 + index))
        rows["label"].append(label)
    features = datasets.Features(
        {"speech": datasets.List(datasets.Value("float32")), "label": datasets.ClassLabel(names=list(LABELS))}
    )
    return datasets.Dataset.from_dict(rows, features=features)
