"""Parallel preprocessing for a chunk pipeline: worker processes turn inputs into model-input windows (decoding, face
detection, cropping, resampling) while the main process runs the model; the windows come back in input order.

transformers runs a `ChunkPipeline`'s `preprocess` in at most one DataLoader worker (it forces `num_workers=1`), so
decoding and face detection of many clips run one at a time. `PreprocessPool` runs `preprocess` in N processes:

- Inputs are pulled lazily (a generator may be infinite) and given to the worker with the fewest pending inputs, at
  most `inputs_ahead` each; the main process reads each input's windows from its worker in input order.
- Each worker runs ahead by at most `windows_ahead` windows (a bounded queue feeding a sender thread), so memory stays
  bounded whatever the inputs' lengths: a long input's windows stream through.
- Windows travel through a pipe: tensors as NumPy buffers, pickled out of band (no copy on the sending side, one into
  the receiving buffer). Shared memory would save that copy, but a 12 s window of 30 fps face crops is ~50 MB (uint8;
  the pipeline normalises them where the model runs) and CI containers often have a 64 MB /dev/shm; pipes work
  everywhere (see bench/bench_video_preprocess.py).
- Workers are forked (Linux, macOS): they inherit the pipeline (processor, model spec) and the items of an indexable
  source (a list: `PreprocessPool` reads them by index in the worker), which are then never pickled. The items of any
  other iterable (a generator; the pipeline reads a `datasets.Dataset` or a `KeyDataset` as a stream too) are pulled in
  the main process and pickled to their worker; an item that cannot be pickled raises a `TypeError` naming it in its
  turn, after the results before it, and ends the run (it is not a problem of the input's media, so it is raised
  whatever the pipeline's `errors`; pass such inputs with `num_workers=0`). A worker uses one torch and one OpenCV
  thread and never touches CUDA: it makes CPU tensors only (after a fork, PyTorch refuses CUDA calls in the child).
  It closes its copies of the other workers' and of other live pools' pipe ends, so that each pipe's end is seen.
- An exception other than those `preprocess` turns into error items is re-raised in the main process, naming the
  input; a worker that dies is reported the same way. A worker that hangs (does not die) blocks the results: there is
  no timeout. Workers exit at the end (asked to stop), and are terminated at once when the results are closed early
  (generator `close()` or garbage collection: the remaining work is discarded) or on an exception; they exit when the
  main process dies.
"""

from __future__ import annotations

import collections
import contextlib
import math
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["PreprocessPool", "WorkerError", "can_fork"]

_FROM_SOURCE = "source"  # a task naming an item of the (inherited) indexable source by its index
_STOP = None
_POLL_SECONDS = 1.0  # how often an idle worker checks that the main process is alive
_STOP_SECONDS = 2.0  # how long all the workers together get to exit (asked to, then terminated) before being killed
_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()  # whose pipe ends a newly forked worker closes (see `_inherited`)


class WorkerError(RuntimeError):
    """An input's preprocessing failed in a worker process (an unexpected exception, or the worker died)."""


def can_fork() -> bool:
    """Whether worker processes can be forked here (not on Windows)."""
    return "fork" in multiprocessing.get_all_start_methods()


@dataclass
class _PackedTensor:
    """A CPU tensor sent as its NumPy array (pickled out of band; torch's own pickling would use shared memory)."""

    array: np.ndarray


def _pack(value: Any) -> Any:
    if torch.is_tensor(value):
        try:
            return _PackedTensor(value.detach().contiguous().numpy())
        except TypeError:  # a dtype NumPy lacks (bfloat16): pickled by torch, in band
            return value
    if isinstance(value, dict):
        return {key: _pack(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return _rebuild(value, [_pack(item) for item in value])
    return value


def _rebuild(value: list | tuple, items: list[Any]) -> list | tuple:
    """`value`'s container type holding `items`: a namedtuple by `_make`, another tuple or list subclass (whose
    constructor may not take one iterable) as a plain tuple or list."""
    kind = type(value)
    if kind is list or kind is tuple:
        return kind(items)
    if isinstance(value, tuple):
        return kind._make(items) if hasattr(kind, "_make") and hasattr(kind, "_fields") else tuple(items)
    return list(items)


def _unpack(value: Any) -> Any:
    if isinstance(value, _PackedTensor):
        return torch.from_numpy(value.array)
    if isinstance(value, dict):
        return {key: _unpack(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return _rebuild(value, [_unpack(item) for item in value])
    return value


def _serialize(message: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(_pack(message), protocol=5, buffer_callback=buffers.append)
    return header, buffers


def _send(connection: Any, serialized: tuple[bytes, list[pickle.PickleBuffer]]) -> None:
    """A message: its pickle (with the buffer sizes) as one framed message, then the raw buffers, written straight
    from the arrays' memory."""
    header, buffers = serialized
    raws = [buffer.raw() for buffer in buffers]
    connection.send_bytes(pickle.dumps(([raw.nbytes for raw in raws], header), protocol=5))
    descriptor = connection.fileno()
    for raw in raws:
        written = 0
        while written < raw.nbytes:
            written += os.write(descriptor, raw[written:])


def _receive(connection: Any) -> Any:
    """A message of `_send`; the buffers are read straight into new (writable) memory, which the tensors then use
    (`Connection.recv_bytes_into` would copy every chunk twice more)."""
    sizes, header = pickle.loads(connection.recv_bytes())
    buffers, descriptor = [], connection.fileno()
    for size in sizes:
        buffer = bytearray(size)
        view, received = memoryview(buffer), 0
        while received < size:
            count = os.readv(descriptor, [view[received:]])
            if count == 0:
                raise EOFError("the worker's pipe ended inside a message")
            received += count
        buffers.append(buffer)
    return _unpack(pickle.loads(header, buffers=buffers))


def _sender(connection: Any, outbox: queue.Queue) -> None:
    """Worker thread: send the queued messages; exit the worker when the main process stopped listening."""
    while True:
        message = outbox.get()
        if message is _STOP:
            return
        try:
            _send(connection, message)
        except OSError:  # the main process closed the pipe (results closed early) or died
            os._exit(0)


def _worker(
    preprocess: Callable[[Any], Iterable[Any]],
    source: Any,
    tasks: Any,
    connection: Any,
    others: list[Any],
    windows_ahead: int,
    parent: int,
    current: Any,
) -> None:
    """A worker process: preprocess the inputs of `tasks`, sending `("window", w)`, `("end", None)` or
    `("error", details)` messages in order; `current` holds the number of the input it is preprocessing (so that
    the main process can name it if the worker dies: messages still queued here die with it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it closes the pool)
    for other in others:  # so that each pipe's end is seen when its real holders exit or close it (see `_fork`)
        other.close()
    torch.set_num_threads(1)  # OpenCV was set to one thread before the fork (see `_opencv_threads`)
    outbox: queue.Queue = queue.Queue(maxsize=windows_ahead)
    sender = threading.Thread(target=_sender, args=(connection, outbox), daemon=True)
    sender.start()
    while True:
        try:
            task = tasks.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # the main process died
                os._exit(0)
            continue
        if task is _STOP:
            break
        number, kind, payload = task
        current.value = number
        try:
            item = source[payload] if kind == _FROM_SOURCE else pickle.loads(payload)
            for window in preprocess(item):
                outbox.put(_serialize(("window", window)))
            outbox.put(_serialize(("end", None)))
        except Exception as error:  # noqa: BLE001 - re-raised in the main process, naming the input
            outbox.put(_serialize(("error", _describe_error(error))))
    outbox.put(_STOP)
    sender.join()


def _describe_error(error: BaseException) -> dict[str, Any]:
    details = {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}
    try:
        details["exception"] = pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - an exception that does not pickle is described by its text
        pass
    return details


def _enlarge_pipe(descriptor: int, size: int = 1 << 20) -> None:
    """Ask Linux for a 1 MiB pipe buffer (default 64 KiB): fewer wake-ups per window of crops; ignored elsewhere or
    where the system's limit is lower."""
    try:
        import fcntl

        fcntl.fcntl(descriptor, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass


@contextlib.contextmanager
def _opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's thread count set to `count` in this process for the block. Workers are forked inside it: OpenCV's
    thread pool is not fork-safe (`cv2.setNumThreads` in a child forked while the parent's pool exists hangs on the
    pool's inherited condition variable), so the pool is shut down before the fork and restored after it."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - OpenCV is a dependency of the processing code
        yield
        return
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


class PreprocessPool:
    """Run `preprocess(item) -> iterator of windows` for the items of `inputs` in `num_workers` forked processes;
    iterating the pool yields every item's windows, in input order.

    Args:
        preprocess: the per-item preprocessing (with its parameters bound); it runs in the workers.
        inputs: a list or other indexable sized source (items read by index in the workers, never pickled), or any
            iterable (pulled lazily in the main process; each item is pickled to its worker).
        num_workers: worker processes (>= 1).
        describe: names an item in error messages (e.g. `"input #3 ('clip.mp4')"`).
        windows_ahead: windows a worker may hold ready beyond the one it is making.
        inputs_ahead: inputs given to a worker before the main process has read the earlier ones.
    """

    def __init__(
        self,
        preprocess: Callable[[Any], Iterable[Any]],
        inputs: Iterable[Any],
        num_workers: int,
        describe: Callable[[Any], str] = repr,
        windows_ahead: int = 2,
        inputs_ahead: int = 2,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 for a PreprocessPool, got {num_workers}")
        if not can_fork():
            raise ValueError("parallel preprocessing needs worker processes started by fork (not on this platform)")
        indexable = hasattr(inputs, "__len__") and hasattr(inputs, "__getitem__")
        self._source = inputs if indexable else None
        self._items = iter(range(len(inputs))) if indexable else iter(inputs)
        self._describe, self._inputs_ahead = describe, max(1, inputs_ahead)
        self._pending = [0] * num_workers
        self._labels: dict[int, str] = {}  # number -> label of each input given to a worker and not yet read
        self._assigned = 0
        self._schedule: collections.deque = collections.deque()  # (label, worker) per assigned input, in order
        self._exhausted, self._closed = False, False
        self._start(preprocess, num_workers, max(1, windows_ahead))

    def _start(self, preprocess: Callable[[Any], Iterable[Any]], num_workers: int, windows_ahead: int) -> None:
        context = multiprocessing.get_context("fork")
        if "TOKENIZERS_PARALLELISM" not in os.environ:
            # as transformers' ChunkPipeline.get_iterator: a Rust tokenizer's threads do not survive a fork
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self._tasks = [context.Queue() for _ in range(num_workers)]
        pipes = [context.Pipe(duplex=False) for _ in range(num_workers)]  # (main's end, worker's end)
        for reader, _ in pipes:
            _enlarge_pipe(reader.fileno())
        self._connections = [reader for reader, _ in pipes]
        self._processes = []
        self._current = [context.RawValue("q", -1) for _ in range(num_workers)]
        with _opencv_threads(1):
            self._fork(preprocess, pipes, windows_ahead)
        for _, writer in pipes:  # only the worker holds its writing end: its exit is an end of file here
            writer.close()
        _LIVE_POOLS.add(self)

    def _inherited(self) -> list[Any]:
        """This pool's pipe ends held by the main process (the windows' and the task queues'): a worker of another
        pool forked later closes its copies, so that closing the results here ends a sending worker's pipe."""
        queues = [end for tasks in self._tasks for end in (tasks._reader, tasks._writer)]
        return [*self._connections, *queues]

    def _fork(self, preprocess: Callable[[Any], Iterable[Any]], pipes: list[tuple[Any, Any]], ahead: int) -> None:
        context = multiprocessing.get_context("fork")
        elsewhere = [end for pool in list(_LIVE_POOLS) if pool is not self for end in pool._inherited()]
        for index, (_, writer) in enumerate(pipes):
            others = [end for pair in pipes for end in pair if end is not writer]
            others += [
                end for i, tasks in enumerate(self._tasks) if i != index for end in (tasks._reader, tasks._writer)
            ]
            others += elsewhere
            process = context.Process(
                target=_worker,
                args=(
                    preprocess,
                    self._source,
                    self._tasks[index],
                    writer,
                    others,
                    ahead,
                    os.getpid(),
                    self._current[index],
                ),  # fmt: skip
                name=f"avemotion-preprocess-{index}",
                daemon=True,
            )
            process.start()
            self._processes.append(process)

    @staticmethod
    def windows_ahead_for(batch_size: int, num_workers: int) -> int:
        """Windows each worker may hold ready so that the workers together can fill about one batch while the model
        runs on the previous one (at least 2)."""
        return max(2, math.ceil(batch_size / max(num_workers, 1)))

    def _assign(self) -> None:
        """Give inputs to the least busy workers until each holds `inputs_ahead` of them (or the inputs end)."""
        while not self._exhausted:
            worker = min(range(len(self._pending)), key=self._pending.__getitem__)
            if self._pending[worker] >= self._inputs_ahead:
                return
            try:
                position = next(self._items)
            except StopIteration:
                self._exhausted = True
                return
            except Exception as error:  # noqa: BLE001 - the input stream's own error, raised in its turn
                self._schedule.append((error, None))
                self._exhausted = True
                return
            item = self._source[position] if self._source is not None else position
            if self._source is not None:
                task = (_FROM_SOURCE, position)
            else:
                try:
                    task = ("pickled", pickle.dumps(item, protocol=5))
                except Exception as error:  # noqa: BLE001 - e.g. an open file handle or a lambda
                    # like the stream's own error: raised in its turn (after the results before it), and the run
                    # ends there, so nothing more is pulled (an endless stream would be pulled forever)
                    message = (
                        f"{self._describe(item)}: cannot be pickled to a worker process ({error}); use num_workers=0"
                    )
                    failure = TypeError(message)
                    failure.__cause__ = error
                    self._schedule.append((failure, None))
                    self._exhausted = True
                    return
            label, number = self._describe(item), self._assigned
            self._tasks[worker].put((number, *task))
            self._assigned += 1
            self._labels[number] = label
            self._pending[worker] += 1
            self._schedule.append((label, (worker, number)))

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                self._assign()
                if not self._schedule:
                    return
                label, assigned = self._schedule.popleft()
                if isinstance(label, BaseException):
                    raise label
                worker, number = assigned
                yield from self._windows_of(label, worker)
                self._pending[worker] -= 1
                del self._labels[number]
        finally:
            self.close()

    def _windows_of(self, label: str, worker: int) -> Iterator[Any]:
        while True:
            try:
                kind, payload = _receive(self._connections[worker])
            except (EOFError, OSError) as error:
                process = self._processes[worker]
                process.join(timeout=1.0)
                culprit = self._labels.get(self._current[worker].value, label)
                raise WorkerError(
                    f"{culprit}: the preprocessing worker process {process.pid} exited (code {process.exitcode}) "
                    "while preprocessing this input"
                ) from error
            if kind == "window":
                yield payload
            elif kind == "end":
                return
            else:
                self._raise(label, payload)

    @staticmethod
    def _raise(label: str, details: dict[str, Any]) -> None:
        error = WorkerError(
            f"{label}: preprocessing failed in a worker process: {details['type']}: {details['message']}"
        )
        error.add_note(f"worker traceback:\n{details['traceback']}")
        raise error from details.get("exception")

    def close(self) -> None:
        """Stop the workers (idempotent). At the end of the inputs (every window read) the idle workers are asked to
        stop; closed early (or on an error) the remaining work is discarded and they are terminated at once. One
        shared deadline for all, then SIGKILL: no process is left behind."""
        if self._closed:
            return
        self._closed = True
        _LIVE_POOLS.discard(self)
        finished = self._exhausted and not self._labels
        for connection in self._connections:
            connection.close()
        if finished:
            for tasks in self._tasks:
                with contextlib.suppress(OSError, ValueError):
                    tasks.put(_STOP)
            deadline = time.monotonic() + _STOP_SECONDS
            for process in self._processes:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + _STOP_SECONDS
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():  # SIGTERM handled or blocked by the preprocessing code
                process.kill()
                process.join()
        for tasks in self._tasks:
            tasks.cancel_join_thread()  # inputs never read by a stopped worker must not block the exit
            tasks.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()
