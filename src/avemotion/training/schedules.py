"""Optimisation schedules: which losses are stepped per batch, and which parameters each step updates.

- `"vavl"` (reference/vavl.md §4.2): per batch a visual step (visual task loss + weighted reconstruction, on the rows
  with video), an acoustic step (the same for audio, on the rows with audio) and a fusion step (the fusion head's
  task loss on the rows with both). Unpaired rows therefore join their modality's step only. As in the original,
  the shared encoder is updated twice per batch and the fusion step updates only the fusion head, on
  representations computed in eval mode after the two unimodal updates.
- `"joint"`: one step on the model's `loss` (e.g. the multi-level fusion model's weighted sum of per-head losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUDIO_KEYS = ("input_values", "attention_mask", "audio_features", "audio_features_mask")
VISUAL_KEYS = ("pixel_values_videos", "visual_features", "visual_features_mask")


@dataclass(frozen=True)
class TrainingStep:
    """One optimisation step of a batch.

    Args:
        name: `"visual"`, `"acoustic"`, `"fusion"` or `"joint"`.
        parameter_prefixes: names (of the unwrapped model's parameters) this step may update; empty: all.
        output_loss: the model output field used as this step's loss (`None` for the fusion step, computed by the
            trainer from detached representations).
        modality: which rows take part: `"visual"`, `"audio"`, `"both"` or `None` (all rows).
    """

    name: str
    parameter_prefixes: tuple[str, ...]
    output_loss: str | None
    modality: str | None

    def owns(self, parameter_name: str) -> bool:
        return not self.parameter_prefixes or parameter_name.startswith(self.parameter_prefixes)


VAVL_STEPS = (
    TrainingStep(
        "visual",
        (
            "vavl.visual_backbone.",
            "vavl.visual_encoder.",
            "vavl.shared_encoder.",
            "visual_head.",
            "visual_reconstruction_head.",
        ),
        "visual_loss",
        "visual",
    ),  # fmt: skip
    TrainingStep(
        "acoustic",
        (
            "vavl.audio_backbone.",
            "vavl.audio_encoder.",
            "vavl.shared_encoder.",
            "audio_head.",
            "audio_reconstruction_head.",
        ),
        "audio_loss",
        "audio",
    ),  # fmt: skip
    TrainingStep("fusion", ("fusion_head.",), None, "both"),
)
JOINT_STEPS = (TrainingStep("joint", (), "loss", None),)


def resolve_schedule(name: str, model: torch.nn.Module) -> tuple[TrainingStep, ...]:
    """The steps of schedule `name` (`"auto"`: `"vavl"` for VAVL models, else `"joint"`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if name == "auto":
        name = "vavl" if model_type == "vavl" else "joint"
    if name == "vavl":
        if model_type != "vavl" or not hasattr(model, "fusion_head"):
            raise ValueError(f"schedule 'vavl' needs a VavlForEmotionRecognition model, got {type(model).__name__}")
        return VAVL_STEPS
    if name == "joint":
        return JOINT_STEPS
    raise ValueError(f"Unknown schedule {name!r}; expected 'auto', 'vavl' or 'joint'")


def rows_with(batch: dict, modality: str | None) -> torch.Tensor | None:
    """(B,) bool: rows of `batch` that have the modality (`"audio"`, `"visual"` or `"both"`); None for all rows."""
    if modality is None:
        return None
    labels = batch["labels"]
    size = labels.shape[0]

    def present(mask_keys: tuple[str, ...], value_keys: tuple[str, ...]) -> torch.Tensor:
        for key in mask_keys:
            if batch.get(key) is not None:
                return batch[key].bool().any(dim=-1)
        if any(batch.get(key) is not None for key in value_keys):
            return torch.ones(size, dtype=torch.bool, device=labels.device)
        return torch.zeros(size, dtype=torch.bool, device=labels.device)

    mask_key = "audio_features_mask" if batch.get("audio_features") is not None else "attention_mask"
    audio = present((mask_key,), ("audio_features", "input_values"))
    visual = present(("visual_features_mask",), ("visual_features", "pixel_values_videos"))
    return {"audio": audio, "visual": visual, "both": audio & visual}[modality]


def select_rows(batch: dict, rows: torch.Tensor, modality: str | None) -> dict:
    """The sub-batch of `rows` with the inputs of `modality` only (`"both"`: audio and video) and the labels."""
    keys = {"audio": AUDIO_KEYS, "visual": VISUAL_KEYS, "both": AUDIO_KEYS + VISUAL_KEYS, None: tuple(batch)}
    wanted = set(keys[modality]) | {"labels"}
    return {
        key: value[rows]
        for key, value in batch.items()
        if key in wanted and isinstance(value, torch.Tensor) and value is not None
    }


def placeholder_batch(batch: dict, modality: str) -> dict:
    """A one-row batch whose loss is multiplied by 0: a process with no row for a step still runs the step's
    forward and backward, so that every process joins the same gradient all-reduces."""
    row = torch.zeros_like(batch["labels"][:, 0] if batch["labels"].dim() > 1 else batch["labels"], dtype=torch.bool)
    row[0] = True
    sub = select_rows(batch, row, modality)
    for key in ("audio_features_mask", "attention_mask", "visual_features_mask"):
        if key in sub:
            sub[key] = sub[key].clone()
            sub[key][0, 0] = 1
    return sub
