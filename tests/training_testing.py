"""Tiny datasets with a learnable signal for the trainer tests."""

import datasets
import numpy as np
from vavl_testing import AUDIO_DIM, VISUAL_DIM

from avemotion.training import EmotionTrainer


def toy_dataset(n: int, seed: int, unpaired: float = 0.0, strength: float = 2.0) -> datasets.Dataset:
    """Rows of `audio_features` (T, AUDIO_DIM) and `visual_features` (T, VISUAL_DIM) whose dimension `label` is
    shifted by `strength`; a share `unpaired` of rows lacks one modality (half audio only, half video only)."""
    rng = np.random.default_rng(seed)
    rows = {"audio_features": [], "visual_features": [], "label": []}
    for index in range(n):
        label = index % 3
        audio = rng.normal(0, 1, (int(rng.integers(5, 9)), AUDIO_DIM)).astype("float32")
        visual = rng.normal(0, 1, (int(rng.integers(3, 6)), VISUAL_DIM)).astype("float32")
        audio[:, label] += strength
        visual[:, label] += strength
        draw = rng.random()
        rows["audio_features"].append(None if draw < unpaired / 2 else audio)
        rows["visual_features"].append(None if unpaired / 2 <= draw < unpaired else visual)
        rows["label"].append(label)
    features = datasets.Features(
        {
            "audio_features": datasets.List(datasets.List(datasets.Value("float32"))),
            "visual_features": datasets.List(datasets.List(datasets.Value("float32"))),
            "label": datasets.ClassLabel(names=["angry", "happy", "neutral"]),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


class Killed(RuntimeError):
    """Raised by `KilledTrainer` to simulate a run killed mid-epoch."""


class KilledTrainer(EmotionTrainer):
    """Stops after update 5, like a process killed mid-epoch (for resume tests)."""

    def _training_batch(self, batch, boundary):
        if self.state.global_step == 5:
            raise Killed
        return super()._training_batch(batch, boundary)
