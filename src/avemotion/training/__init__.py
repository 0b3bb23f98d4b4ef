"""Training: the Accelerate trainer and what it needs, for any model that declares its training steps.

- `trainer`: `EmotionTrainer` (the training loop, the steps, evaluation per branch, model selection);
- `schedules`: the steps of a batch read from `model.training_steps()` / `input_spec()`, and their rows;
- `checkpointing`: the run's files in `output_dir` (model directories, checkpoints, resumption);
- `run_files`: the layout of `output_dir` (file and folder names, a model directory's files) and `load_model`, the
  loader of a trained model directory (train, evaluate, push);
- `resume_state`: what a checkpoint holds besides the model (`TrainerState`, optimizer, scheduler, random states);
- `files`, `batches`: atomic writes and checkpoint-file checks; row-indexed batches with checked labels;
- `arguments`: `TrainingArguments` and their command-line form (`transformers.HfArgumentParser`);
- `cli_train`, `cli_evaluate`, `cli_push`: the `avemotion train` / `evaluate` / `push` commands;
- `hub`: model cards (templates: the package `avemotion.hub_cards`) and pushing to the Hub;
- `losses`: re-export of `avemotion.utils.losses`.

Light to import: the trainer, its arguments and the Hub helpers load on first use of their names.
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
