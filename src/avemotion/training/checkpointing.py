"""The files of a training run in `output_dir`: model directories (the output, `best_model/`, each checkpoint, all
loadable by `from_pretrained` and the pipeline), checkpoints with their rotation and resumption, the results file,
and the refusal to mix two runs in one `output_dir`.

Why the rotation is not accelerate's `ProjectConfiguration(automatic_checkpoint_naming=True)`: see
`avemotion.training.trainer`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avemotion.utils.json_files import read_json

from .files import atomic_write_text, file_problem, load_weights, recover_directory, replace_directory
from .resume_state import (
    OPTIMIZER_STATE,
    RNG_STATE,
    SCALER_STATE,
    SCHEDULER_STATE,
    CheckpointError,
    TrainerState,
    UnsafeCheckpointError,
    check_like_live,
    check_optimizer_state,
    check_trainer_state,
    refuse_pickles,
    restore,
    rng_state,
    set_rng_state,
    write_state,
)
from .run_files import (  # the run directory's names, importable from here as before
    ARGS_FILE,
    BEST_DIR,
    CARD_FIGURES,
    CARD_FILE,
    CHECKPOINT_PREFIX,
    CHECKPOINTS_DIR,
    LOG_FILE,
    RESULTS_FILE,
    RUN_ARTIFACTS,
    SAVING_DIR,
    STAGING_DIRS,
    STATE_FILE,
    TEST_RESULTS_FILE,
    WEIGHT_PATTERNS,
    checkpoint_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ARGS_FILE", "BEST_DIR", "CHECKPOINTS_DIR", "LOG_FILE", "RESULTS_FILE", "RUN_ARTIFACTS", "SAVING_DIR",
    "STAGING_DIRS", "STATE_FILE", "TEST_RESULTS_FILE", "WEIGHT_PATTERNS", "CheckpointingMixin",
]  # fmt: skip


class CheckpointingMixin:
    """The saving and resuming half of `EmotionTrainer` (which provides `accelerator`, `args`, `model`, `state`,
    `processor`, `output_dir` and `train_dataset`)."""

    state: TrainerState

    def _previous_run(self) -> list[str]:
        return [name for name in RUN_ARTIFACTS if (self.output_dir / name).exists()]

    def _claim_output_dir(self) -> None:
        """Refuse an output_dir that holds another run (mixed checkpoints and logs), unless resuming it or told to
        overwrite it (then its run files are deleted first), as `transformers.Trainer` does."""
        acc, args = self.accelerator, self.args
        found = self._previous_run()
        # every process looks before any of them writes (training_args.json) or deletes: else a later process
        # would take the main process's new files for a previous run
        acc.wait_for_everyone()
        if not found or args.resume_from_checkpoint:
            return
        if not args.overwrite_output_dir:
            raise ValueError(
                f"output_dir {self.output_dir} already holds a training run ({', '.join(found)}); pass "
                "--overwrite_output_dir (overwrite_output_dir=True) to delete it and train anew, --resume "
                "(resume_from_checkpoint='last') to continue it, or another --output_dir"
            )
        if acc.is_main_process:
            self._delete_run_files(found)
            logger.warning(
                "overwrite_output_dir: deleted the previous run's %s in %s", ", ".join(found), self.output_dir
            )
        acc.wait_for_everyone()

    def _delete_run_files(self, found: list[str]) -> None:
        for name in found:
            path = self.output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for pattern in WEIGHT_PATTERNS:
            for path in self.output_dir.glob(pattern):
                path.unlink()

    def _clear_run_files(self) -> None:
        """Delete what an attempt of this run wrote in output_dir (`auto_find_batch_size` starts again); refused
        when resuming, where those files are the resumed run's."""
        if self.args.resume_from_checkpoint:
            raise ValueError(
                "auto_find_batch_size: out of memory while resuming from a checkpoint; resume with the batch size "
                "and gradient_accumulation_steps that fit (the checkpoint's run is kept as it is)"
            )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self._delete_run_files(self._previous_run())
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------ saving

    def save_model(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> None:
        """Save the unwrapped model (`save_pretrained`), the processor (if any) and a model card with its figures (the
        confusion matrix of the selected branch, the training curves: `hub.write_card_figures`) into `directory`
        (from the main process). Each file is written in a staging folder and renamed into place; weight files and
        card figures of an earlier save that this one does not write are removed."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)  # a collective under some distributed back-ends
        if acc.is_main_process:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            staging = directory / SAVING_DIR
            shutil.rmtree(staging, ignore_errors=True)
            self._write_model_dir(staging, state_dict, metrics, figures=True)
            written = {path.name for path in staging.iterdir()}
            for pattern in (*WEIGHT_PATTERNS, *CARD_FIGURES):
                for stale in directory.glob(pattern):
                    if stale.name not in written:
                        stale.unlink()
            for path in staging.iterdir():
                os.replace(path, directory / path.name)
            staging.rmdir()
        acc.wait_for_everyone()

    def _save_best_model(self, metrics: dict[str, Any]) -> None:
        """`best_model/` as a whole: written next to it, then swapped in."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            staging = self.output_dir / f".{BEST_DIR}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            self._write_model_dir(staging, state_dict, metrics)
            replace_directory(staging, self.output_dir / BEST_DIR)
        acc.wait_for_everyone()

    def _write_model_dir(
        self, directory: Path, state_dict: dict, metrics: dict[str, Any] | None, figures: bool = False
    ) -> None:
        """A directory `pipeline`/`from_pretrained` can load: config, weights, processor (if any), model card (with
        its figures for `figures`: the output directory's save, not `best_model/` or checkpoints, which are saved
        more often)."""
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(directory, save_function=self.accelerator.save, state_dict=state_dict)
        if self.processor is not None:
            self.processor.save_pretrained(directory)
        markdown = self._card_figures(directory, metrics) if figures else None
        self.model_card(metrics, figures=markdown).save(str(directory / CARD_FILE))

    def _card_figures(self, directory: Path, metrics: dict[str, Any] | None) -> str:
        """Write the card's figures (`hub.write_card_figures`) into `directory`; returns the markdown embedding them."""
        from .hub import class_names_of, write_card_figures

        config = self.accelerator.unwrap_model(self.model).config
        return write_card_figures(
            directory, metrics, class_names=class_names_of(config), metric_name=self.metric_name,
            log_records=self.state.log_history, split="evaluation",
        )  # fmt: skip

    def model_card(self, metrics: dict[str, Any] | None = None, figures: str | None = None):
        """The model card of a directory this trainer writes (`avemotion.training.hub.build_model_card`): evaluation
        metrics per branch, the training options (local paths reduced to their base names)."""
        from .hub import build_model_card

        config = self.accelerator.unwrap_model(self.model).config
        hyperparameters = self.args.to_dict()
        for key in ("output_dir", "resume_from_checkpoint"):
            if hyperparameters.get(key):
                hyperparameters[key] = Path(hyperparameters[key]).name
        rows = len(self.train_dataset) if self.train_dataset is not None else 0
        training_data = (
            f"Trained with `avemotion.training.EmotionTrainer` on {rows} rows ({self.state.epoch} epochs, "
            f"{self.state.global_step} updates); metrics on the evaluation set it was selected on."
        )
        if self.processor is None:
            training_data += (
                "\n\nNo processor was saved with this model: it takes pre-extracted `audio_features` / "
                '`visual_features` (see `avemotion.data.cache_features`). `pipeline("audio-visual-emotion")` needs '
                "the processor matching those features saved next to the model."
            )
        return build_model_card(
            config.model_type, self.output_dir.name, metrics=metrics, training_data=training_data,
            hyperparameters=hyperparameters, split="evaluation", figures=figures,
        )  # fmt: skip

    def _save_checkpoint(self) -> None:
        """`checkpoints/checkpoint-<update>`: the model directory, the optimizer, scheduler and loss-scaler states
        (`resume_state`: JSON + safetensors, written by the main process) and every process's random states, written
        under a temporary name and renamed when complete (an interrupted save leaves the previous checkpoints as they
        were)."""
        acc = self.accelerator
        checkpoints = self.output_dir / CHECKPOINTS_DIR
        name = checkpoint_name(self.state.global_step)
        staging = checkpoints / f".{name}.tmp"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)  # a collective under some distributed back-ends
        if acc.is_main_process:
            staging.mkdir(parents=True)
            history = self.state.log_history
            self._write_model_dir(staging, state_dict, history[-1].get("eval") if history else None)
            write_state(staging, OPTIMIZER_STATE, self.optimizer.state_dict())
            write_state(staging, SCHEDULER_STATE, self.lr_scheduler.state_dict())
            if getattr(acc, "scaler", None) is not None:
                write_state(staging, SCALER_STATE, acc.scaler.state_dict())
        acc.wait_for_everyone()
        write_state(staging, RNG_STATE.format(rank=acc.process_index), rng_state())
        acc.wait_for_everyone()  # every process's random states are written
        if acc.is_main_process:
            atomic_write_text(staging / STATE_FILE, json.dumps(self.state.to_dict(), indent=2) + "\n")
            replace_directory(staging, checkpoints / name)
            if self.args.save_total_limit:
                for old in sorted(checkpoints.glob(f"{CHECKPOINT_PREFIX}*"))[: -self.args.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _read_trainer_state(self, directory: Path) -> dict[str, Any]:
        """`trainer_state.json`, checked against this run (`resume_state.check_trainer_state`)."""
        path = directory / STATE_FILE
        try:
            state = read_json(path)  # a ValueError naming the file: not JSON, nested too deep, not UTF-8
        except (OSError, ValueError) as error:
            raise CheckpointError(str(error)[:300]) from error
        check_trainer_state(
            state, path, self.args.num_train_epochs, len(self.train_loader), [s.name for s in self.steps]
        )
        return state

    def _read_checkpoint(self, directory: Path) -> list[Callable[[], None]]:
        """Read and check every piece of a checkpoint (nothing is applied yet); returns the functions that restore
        them. A `CheckpointError` names the file that is missing, unreadable or does not fit this run; an
        `UnsafeCheckpointError` a pickle (never loaded)."""
        acc = self.accelerator
        refuse_pickles(directory)
        state = self._read_trainer_state(directory)
        for path in sorted(directory.glob("*.safetensors")):
            problem = file_problem(path)
            if problem:
                raise CheckpointError(problem)
        model = acc.unwrap_model(self.model)
        optimizer = self._plain_optimizer
        # each declared step of an update may step a shared parameter (VAVL: visual, acoustic and fusion)
        max_step = self.updates_per_epoch * self.args.num_train_epochs * len(self.steps)
        pieces = [
            lambda: load_weights(model, directory),
            restore(directory, OPTIMIZER_STATE, lambda s, w: check_optimizer_state(s, optimizer, w, max_step),
                    self.optimizer.load_state_dict),
            restore(directory, SCHEDULER_STATE, lambda s, w: check_like_live(s, self.lr_scheduler.state_dict(), w),
                    self.lr_scheduler.load_state_dict),
            restore(directory, RNG_STATE.format(rank=acc.process_index), lambda s, w: None,
                    lambda s: set_rng_state(s, str(directory / f"{RNG_STATE.format(rank=acc.process_index)}.json"))),
        ]  # fmt: skip
        saved_ranks = sorted(directory.glob(RNG_STATE.format(rank="*") + ".json"))
        if len(saved_ranks) != acc.num_processes:
            raise CheckpointError(
                f"{directory}: written by {len(saved_ranks)} process(es) (rng_state_<rank>.json), this run has "
                f"{acc.num_processes}: resume with the same number of processes"
            )
        scaler = getattr(acc, "scaler", None)
        if scaler is not None:
            pieces.append(restore(directory, SCALER_STATE, lambda s, w: check_like_live(s, scaler.state_dict(), w),
                                  scaler.load_state_dict))  # fmt: skip
        elif (directory / f"{SCALER_STATE}.json").exists():
            raise CheckpointError(f"{directory / SCALER_STATE}.json: a loss scaler's state (fp16), this run has none")
        pieces.append(lambda: self.state.update(state))
        return pieces

    def _restore_checkpoint(self, directory: Path) -> str | None:
        """Restore `directory` whole: None, or why it cannot be resumed from (damaged, incomplete, another run's).
        Raises `UnsafeCheckpointError` (a pickle in it: never skipped)."""
        try:
            for restore_piece in self._read_checkpoint(directory):
                restore_piece()
        except UnsafeCheckpointError:
            raise
        except (CheckpointError, ValueError, OSError) as error:  # load_weights' ValueError names the file
            return str(error)
        return None

    def _load_checkpoint(self, checkpoint: str) -> None:
        """Restore a checkpoint, every piece of it (model, optimizer, scheduler, loss scaler, random states, trainer
        state) or fail. `"last"`: the newest one that every process can read; a damaged or incomplete one is skipped
        with a warning naming the file, and the skip is recorded in `state.resumed_from` (so in every later
        `trainer_state.json`). A checkpoint holding a pickle is refused, never skipped."""
        acc = self.accelerator
        recover_directory(self.output_dir / BEST_DIR)
        if checkpoint == "last":
            candidates = sorted((self.output_dir / CHECKPOINTS_DIR).glob(f"{CHECKPOINT_PREFIX}*"), reverse=True)
            for candidate in candidates:  # a run directory's checkpoints are its own folders, not links elsewhere
                if candidate.is_symlink():
                    raise UnsafeCheckpointError(
                        f"{candidate}: a symlink; --resume last reads only the run's own folders"
                    )
            candidates = [d for d in candidates if d.is_dir()]
            if not candidates:
                raise FileNotFoundError(f"no checkpoint to resume from in {self.output_dir / CHECKPOINTS_DIR}")
        else:
            candidates = [Path(checkpoint)]
            if not (candidates[0] / STATE_FILE).is_file():
                raise FileNotFoundError(f"{checkpoint} is not a trainer checkpoint (no {STATE_FILE})")
        skipped: list[dict[str, str]] = []
        history = list(self.state.resumed_from or [])
        for directory in candidates:
            unsafe = None
            try:
                problem = self._restore_checkpoint(directory)
            except UnsafeCheckpointError as error:
                unsafe, problem = error, str(error)
            if acc.num_processes > 1:  # resume from the same checkpoint everywhere; refuse everywhere
                flags = torch.tensor([float(problem is not None), float(unsafe is not None)], device=acc.device)
                any_problem, any_unsafe = (acc.reduce(flags, reduction="sum") > 0).tolist()
                if any_unsafe and unsafe is None:
                    unsafe = UnsafeCheckpointError(f"{directory}: refused on another process (it holds a pickle)")
                if any_problem and problem is None:
                    problem = f"{directory}: unreadable on another process"
            if unsafe is not None:
                raise unsafe
            if problem is None:
                break
            if checkpoint != "last":
                raise CheckpointError(f"cannot resume from {directory}: {problem}")
            skipped.append({"checkpoint": directory.name, "problem": problem})
            logger.warning("cannot resume from %s (%s); trying the checkpoint before it", directory, problem)
        else:
            raise CheckpointError(
                "no checkpoint to resume from could be read: " + "; ".join(s["problem"] for s in skipped)
            )
        if self.state.epoch_nonfinite_skipped_batches is None:
            self.state.epoch_nonfinite_skipped_batches = 0
        self.state.resumed_from = [*history, {"checkpoint": directory.name, "skipped": skipped}]
        if skipped:
            logger.warning("resumed from the older %s: %d newer checkpoint(s) could not be read (recorded in "
                           "resumed_from of trainer_state.json)", directory.name, len(skipped))  # fmt: skip
        acc.print(f"resumed from {directory}: epoch {self.state.epoch + 1}, batch {self.state.step_in_epoch}")

    def _finish(self, report: dict[str, Any]) -> None:
        """Put the selected model (best evaluation, else the last epoch) into `output_dir` and the model."""
        acc = self.accelerator
        best_dir = self.output_dir / BEST_DIR
        if self.state.best_report is not None and best_dir.is_dir():
            acc.wait_for_everyone()
            load_weights(acc.unwrap_model(self.model), best_dir, allow_missing="backbone")
            report = self.state.best_report
        self.save_model(self.output_dir, metrics=report or None)
        if acc.is_main_process:
            results = {
                "metric_for_best_model": self.metric_name,
                "best_metric": self.state.best_metric,
                "best_epoch": self.state.best_epoch,
                "epochs_trained": self.state.epoch,
                "global_step": self.state.global_step,
                "num_processes": acc.num_processes,
                "distributed_type": str(acc.distributed_type),
                "eval": report,
            }
            atomic_write_text(self.output_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
