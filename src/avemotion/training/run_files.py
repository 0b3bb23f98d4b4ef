"""The layout of a training run's `output_dir`, in one place: its file and folder names, the files a model directory
holds (the output itself, `best_model/`, each checkpoint: all loadable by `from_pretrained` and the pipeline), and
`load_model`, the one loader of a trained model directory (`avemotion train --model_name_or_path`, `evaluate`,
`push`).

Light to import (names and `pathlib` only): `checkpointing` (which writes the run) and `hub` (which reads it back for a
push) both import it, and neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------------------ the run directory

STATE_FILE = "trainer_state.json"  # in each checkpoint: the trainer's counters, best metric and log
RESULTS_FILE = "eval_results.json"
TEST_RESULTS_FILE = "test_results.json"
LOG_FILE = "training_log.jsonl"
ARGS_FILE = "training_args.json"
BEST_DIR = "best_model"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"  # + the update it holds, 7 digits: sorted by name is sorted by update
SAVING_DIR = ".saving.tmp"  # save_model's staging folder inside the directory it saves to
# the staging folders of an interrupted save: save_model's, and best_model's (written aside, then swapped in by
# replace_directory, which renames the previous one to .best_model.old meanwhile)
STAGING_DIRS = (SAVING_DIR, f".{BEST_DIR}.tmp", f".{BEST_DIR}.old")

# ------------------------------------------------------------------------------------------ a model directory

CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
# the figures a model card embeds, written into the output directory's model directory (and so uploaded with it)
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TRAINING_CURVES_FILE = "training_curves.png"
CARD_FIGURES = (CONFUSION_MATRIX_FILE, TRAINING_CURVES_FILE)
# save_pretrained's weights: one file, or shards and their index; pytorch_model*.bin from older transformers
WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
# the processor's settings (processor_config.json: an AvEmotionProcessor; preprocessor_config.json: a feature
# extractor or image processor alone; tokenizer_config.json: a text processor's tokenizer)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
# the weights file from_pretrained reads: one of these (the index names the shards)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# what a model directory written by the trainer holds: the config, the weights (or shards and their index), the
# model card, the processor's files when it has one, and in the output directory the card's figures
MODEL_DIR_FILES = (CONFIG_FILE, *WEIGHT_FILES[:2], CARD_FILE, *PROCESSOR_FILES, *CARD_FIGURES)

# what a previous run leaves in output_dir (refused without overwrite_output_dir; deleted with it)
RUN_ARTIFACTS = (CHECKPOINTS_DIR, BEST_DIR, LOG_FILE, RESULTS_FILE, TEST_RESULTS_FILE, ARGS_FILE, CONFIG_FILE,
                 *WEIGHT_FILES[:2], *CARD_FIGURES, *STAGING_DIRS)  # fmt: skip


def checkpoint_name(global_step: int) -> str:
    """The folder name of the checkpoint written after update `global_step`: `checkpoint-0000004`."""
    return f"{CHECKPOINT_PREFIX}{global_step:07d}"


def run_log_candidates(model_dir: str | Path) -> list[Path]:
    """Where the `training_log.jsonl` of the run `model_dir` comes from may be: in `model_dir` (the run's output
    directory), next to it (`best_model/`) or two levels up (a checkpoint in `checkpoints/`)."""
    model_dir = Path(model_dir)
    candidates = [model_dir / LOG_FILE]
    if model_dir.name == BEST_DIR:
        candidates.append(model_dir.parent / LOG_FILE)
    if model_dir.parent.name == CHECKPOINTS_DIR:
        candidates.append(model_dir.parent.parent / LOG_FILE)
    return candidates


# ------------------------------------------------------------------------------------------ loading


def load_model(path: str | Path) -> Any:
    """`AutoModelForEmotionRecognition.from_pretrained(path)`, with a `ValueError` naming the directory or the file
    that cannot be read (a missing directory, no config.json, truncated weights) instead of a library traceback."""
    from avemotion.models.auto import AutoModelForEmotionRecognition

    from .files import file_problem

    directory = Path(path)
    if directory.exists() and not (directory / CONFIG_FILE).is_file():
        raise ValueError(f"{path} is not a saved model directory (no {CONFIG_FILE})")
    if directory.is_dir():
        for file in sorted(directory.glob("*.safetensors")):
            problem = file_problem(file)
            if problem:
                raise ValueError(f"cannot load the model: {problem}")
    try:
        return AutoModelForEmotionRecognition.from_pretrained(path)
    except OSError as error:  # a missing directory / hub id offline
        raise ValueError(f"cannot load a model from {path}: {error}") from error
