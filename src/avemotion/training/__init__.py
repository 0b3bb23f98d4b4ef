"""Training utilities: losses, schedules and the Accelerate trainer.

Light to import (the modeling files import `losses`): the trainer, its arguments and the Hub helpers load on first
use of their names.
"""

from typing import Any

from .losses import concordance_correlation_coefficient, concordance_loss

_LAZY = {
    "EmotionTrainer": "trainer",
    "train_and_evaluate": "trainer",
    "TrainingArguments": "arguments",
    "build_model_card": "hub",
    "push_to_hub": "hub",
}

__all__ = ["concordance_correlation_coefficient", "concordance_loss", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
