"""Work over a whole corpus, split across the processes of `accelerate launch` (torch.distributed), in steps.

`accelerate` starts the processes and owns the process group (`PartialState`: one process when not launched); this
module only splits a list of work units contiguously between them (`PartialState.split_between_processes`) and runs
them in lock-step rounds. After each round every process learns how much the others did and whether one of them
failed (`accelerate.utils.gather_object`), so that

- the main process shows one progress bar for all processes (units or rows per second over every rank),
- an error in one process stops every process at the end of the round, each raising a `DistributedWorkError` that
  names the failing process and its message (instead of the others hanging in the next collective),
- all processes agree on inputs that must be equal (`agree`: e.g. a cache fingerprint) before any work starts.

A process killed outright (out of memory, `kill -9`) cannot report; `accelerate launch` / `torchrun` then stop the
others. Work is resumable because its callers commit each unit atomically and skip committed units on a restart.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Unit = TypeVar("Unit")


class DistributedWorkError(RuntimeError):
    """Raised in every other process when one process's unit of work failed (the message names the process)."""

    one_line = True  # the `avemotion` command prints it as one line: the failing process shows its traceback


def process_state() -> Any:
    """accelerate's `PartialState` (one process, `process_index` 0, when not started by `accelerate launch`).

    `PartialState` alone (unlike `Accelerator`) does not read `accelerate launch --cpu` (`ACCELERATE_USE_CPU`) and
    finds no process group for CPU processes: both are passed here, so that CPU processes share the work too."""
    import os

    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if launched and state.num_processes == 1:  # each process would do all the work and overwrite the others'
        raise RuntimeError(
            f"started as {os.environ['WORLD_SIZE']} processes, but accelerate found no process group for them; "
            "on machines without a GPU, launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu ...` or "
            "`torchrun`"
        )
    return state


def gather(value: Any) -> list[Any]:
    """`value` of every process, in process order (`[value]` in a single process)."""
    from accelerate.utils import gather_object

    process_state()  # set up first: `gather_object` would make a `PartialState` that misses CPU process groups
    return list(gather_object([value]))


def agree(value: Any, what: str) -> Any:
    """`value`, after checking that every process holds the same one (a `ValueError` on every process otherwise,
    listing each process's value): e.g. ranks that loaded different datasets or models."""
    values = gather(value)
    if any(other != values[0] for other in values):
        listed = ", ".join(f"process {rank}: {other!r}" for rank, other in enumerate(values))
        raise ValueError(f"the processes disagree on {what} ({listed}); give every process the same arguments")
    return value


def split_contiguously(units: Sequence[Unit]) -> list[Unit]:
    """This process's contiguous share of `units` (the first processes take one more when they do not divide)."""
    state = process_state()
    if state.num_processes == 1:
        return list(units)
    with state.split_between_processes(list(units)) as share:
        return list(share)


def run_in_rounds(
    units: Sequence[Unit],
    work: Callable[[Unit], int],
    *,
    total: int,
    desc: str,
    unit: str = "rows",
    disable_progress: bool = False,
) -> None:
    """Run `work(u)` for this process's share of `units` (`split_contiguously`), one unit per round.

    `work` returns how many `unit`s (rows, files) it did; the main process's progress bar counts them over every
    process, out of `total`. Every process takes part in every round (a process whose share is done waits), so a
    failure is seen by all at the end of its round: the failing process raises its own exception, every other one a
    `DistributedWorkError` naming the failed process and its error.
    """
    state = process_state()
    share = split_contiguously(units)
    rounds = max(gather(len(share)))
    progress = tqdm(
        total=total, desc=desc, unit=unit, disable=disable_progress or not state.is_main_process, dynamic_ncols=True
    )
    try:
        for step in range(rounds):
            done, failure, error = 0, None, None
            if step < len(share):
                try:
                    done = work(share[step])
                except Exception as exc:  # reported to every process below, then raised
                    error = exc
                    failure = f"{type(exc).__name__}: {exc}"
                    logger.debug("process %d failed:\n%s", state.process_index, traceback.format_exc())
            reports = gather((done, failure))
            progress.update(sum(count for count, _ in reports))
            failed = [(rank, message) for rank, (_, message) in enumerate(reports) if message is not None]
            if error is not None:
                raise error  # this process's own exception, unchanged (the only one in a single process)
            if failed:
                rank, message = failed[0]
                raise DistributedWorkError(f"{desc}: process {rank} of {state.num_processes} failed: {message}")
    finally:
        progress.close()


def wait_for_everyone() -> None:
    """A barrier over every process (nothing in a single process)."""
    process_state().wait_for_everyone()


def is_main_process() -> bool:
    return bool(process_state().is_main_process)


__all__ = [
    "DistributedWorkError",
    "agree",
    "gather",
    "is_main_process",
    "process_state",
    "run_in_rounds",
    "split_contiguously",
    "wait_for_everyone",
]
