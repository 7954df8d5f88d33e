"""Run the independent runs of a scan in worker processes on this machine.

A run is a pure function of (context, spec), so ``jobs`` workers can train ``jobs`` targets at once.
Each worker is a fresh *spawned* process (never a fork of a process that holds torch's thread pools);
it receives the :class:`~probe.engine.context.ProbeContext` once, when it starts — tensors travel through shared
memory, so the data set is not copied per worker — and then trains one spec after another. With the
same number of threads per run, a run's numbers are bit for bit those of ``jobs=1``.

Each worker talks to the parent through its own pipe, in order: epoch events, then the result (or
the error). The parent turns events into live ``progress`` calls, yields results as they finish and
hands the finished worker its next spec. Ctrl-C is the parent's alone: workers ignore SIGINT, and the
parent terminates them on any exit that is not a normal finish (an error, an interrupt, or a caller
that stops iterating).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler

import torch

from ..engine.context import ProbeContext
from ..engine.progress import Progress, ProgressEvent
from ..engine.run import run_one
from ..errors import ProbeError
from ..results.schema import RunResult, RunSpec
from ..training.trainer import EpochEvent
from ..util.allocator import retain_freed_memory
from ..util.device import available_cores


def default_jobs(runs: int | None = None, device: str | torch.device = "auto") -> int:
    """How many runs to train at once by default: one per CPU core on CPU, one on a GPU.

    On CPU separate runs scale almost linearly, better than the threads of one run at batch 32 do
    (see docs/performance.md); so one worker per core, each with one thread (more threads each when
    there are fewer runs than cores). On CUDA one process already keeps the device busy, and
    every extra process costs its own CUDA context (~0.5 GB) and competes for the same device.
    """
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind != "cpu":
        return 1
    jobs = available_cores()
    return max(1, min(jobs, runs)) if runs is not None else jobs


# -------------------------------------------------------------------------------------- worker side


class RemoteTraceback(Exception):
    """The traceback of an error raised in a worker, attached as the ``__cause__`` of the re-raised error."""

    def __str__(self) -> str:
        return f"\n\nin the worker process:\n{self.args[0]}"


def _pack(context: ProbeContext) -> tuple[str, bytes]:
    """The context as bytes for one worker: tensors in shared memory, or a private copy if that fails."""
    context = context.without_cache()  # each worker builds its own
    try:
        return "shared", bytes(ForkingPickler.dumps(context))
    except Exception:  # e.g. a /dev/shm too small for the data (Docker's default is 64 MB)
        pass
    try:
        buffer = io.BytesIO()
        torch.save(context, buffer)
        return "copy", buffer.getvalue()
    except Exception as error:
        raise ProbeError(f"the model or data cannot be sent to worker processes ({error}); run with jobs=1") from error


def _unpack(payload: tuple[str, bytes]) -> ProbeContext:
    kind, data = payload
    if kind == "shared":
        return pickle.loads(data)
    return torch.load(io.BytesIO(data), weights_only=False)  # bytes this program's parent just wrote


def _sendable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (type and message intact), else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _send_epoch(conn: Connection, position: int, event: EpochEvent) -> None:
    conn.send(("epoch", position, event))


def _worker(payload: tuple[str, bytes], threads: int, conn: Connection) -> None:
    """A worker's life: load the context once, then train the specs the parent sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    torch.set_num_threads(threads)
    retain_freed_memory()  # a process of ours: keep freed tensors' memory for the next step
    try:
        context = _unpack(payload)
    except Exception as error:
        message = (
            f"a worker process could not load the model and data ({type(error).__name__}: {error}); run with jobs=1"
        )
        conn.send(("error", None, ProbeError(message), traceback.format_exc()))
        return
    del payload
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone
            task = None
        if task is None:
            # Everything was sent (Connection.send writes synchronously); skip the interpreter's slow
            # teardown of torch, which the parent would otherwise wait for at the end of every scan.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        position, spec = task
        try:
            result = run_one(context, spec, functools.partial(_send_epoch, conn, position))
        except Exception as error:
            conn.send(("error", position, _sendable(error), traceback.format_exc()))
        else:
            conn.send(("done", position, result))


# -------------------------------------------------------------------------------------- parent side


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold interrupts while a worker starts (main thread only: elsewhere Python cannot change handlers).

    SIGINT is ignored, and the worker inherits that through exec: a Ctrl-C while it imports torch cannot hit it.
    A SIGTERM (a scheduler's stop, turned into KeyboardInterrupt by the CLI) is kept until the worker has received
    all of its start-up data, then delivered: cut off mid-way, the worker would print a traceback of its own.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # (None: a handler installed outside Python, which could not be put back)
        return
    held: list[int] = []
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
        if held:
            signal.raise_signal(signal.SIGTERM)


@dataclasses.dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    position: int | None = None  # the spec it is training
    last: tuple[str, str] | None = None  # (layer, task) of its last spec: its source cache holds that


def _died(worker: _Worker, spec: RunSpec) -> BaseException:
    """Why a worker's pipe closed: an interrupt when it was told to stop (SIGTERM from a scheduler or
    ``kill``, like Ctrl-C, ends the scan cleanly), else a ProbeError naming the run it was training."""
    worker.process.join(timeout=5)
    code = worker.process.exitcode
    if code in (-signal.SIGTERM, -signal.SIGINT):
        return KeyboardInterrupt(
            f"a worker process was stopped by {signal.Signals(-code).name} while running {spec.key}"
        )
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    hint = ""
    if code == -signal.SIGKILL:
        hint = " (SIGKILL: often the out-of-memory killer; try fewer jobs)"
    elif code == 1:  # an uncaught error, printed above by the worker; most often at start-up:
        hint = " (its traceback is above; a script using jobs > 1 needs an `if __name__ == '__main__':` guard)"
    return ProbeError(
        f"a worker process {how} while running {spec.key}{hint}; run with jobs=1 to see the error in this process"
    )


class _Dispatcher:
    """Hands specs to workers, preferring for each one a spec whose source tensors it has cached."""

    def __init__(self, specs: list[RunSpec]) -> None:
        self.specs = specs
        self.todo = list(range(len(specs)))

    def hand_out(self, worker: _Worker) -> None:
        """Send the worker its next spec; None (no spec left) stops it."""
        worker.position, task = None, None
        if self.todo:
            specs = self.specs
            position = next((p for p in self.todo if (specs[p].layer, specs[p].task) == worker.last), self.todo[0])
            self.todo.remove(position)
            worker.position, worker.last = position, (specs[position].layer, specs[position].task)
            task = (position, specs[position])
        try:
            worker.conn.send(task)
        except OSError:  # the worker is gone: the loop reads why (its last message, then EOF)
            pass


def _start_workers(context: ProbeContext, jobs: int, threads: int, workers: list[_Worker]) -> None:
    """Start ``jobs`` spawned worker processes holding the context, appending each to ``workers`` as it starts
    (so that the caller can stop those already running when a later one fails)."""
    spawn = multiprocessing.get_context("spawn")
    payload = None
    for number in range(jobs):
        if payload is None or payload[0] == "shared":  # shared-memory handles can be received only once
            payload = _pack(context)
        parent_end, child_end = spawn.Pipe()
        process = spawn.Process(
            target=_worker, args=(payload, threads, child_end), name=f"probe-worker-{number}", daemon=True
        )
        with _interrupts_held():
            process.start()
        child_end.close()  # the worker holds the only other end: its death reads as EOF here
        workers.append(_Worker(process, parent_end))


def _stop_workers(workers: list[_Worker], finished: bool) -> None:
    """Let finished workers exit; terminate them after an error, an interrupt or an early stop."""
    for worker in workers:
        if not finished and worker.process.is_alive():
            worker.process.terminate()
    for worker in workers:
        worker.process.join(timeout=10 if finished else 5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def execute_parallel(
    context: ProbeContext,
    specs: Sequence[RunSpec],
    progress: Progress | None = None,
    *,
    offset: int = 0,
    total: int | None = None,
    jobs: int | None = None,
    threads: int | None = None,
) -> Iterator[RunResult]:
    """Train ``specs`` in ``jobs`` (default ``settings.jobs``) spawned worker processes; yield results as they finish.

    ``threads`` per worker defaults to ``available_cores() // jobs`` (at least 1). Progress events carry
    ``run_index = offset + position in specs`` and ``total_runs = total``, as with serial execution. An
    error in a run is re-raised here with its original type and message (its worker traceback as the
    cause) after stopping every worker.
    """
    specs = list(specs)
    total = len(specs) if total is None else total
    if not specs:
        return
    jobs = max(1, min(jobs or context.settings.jobs, len(specs)))
    threads = threads or max(1, available_cores() // jobs)
    dispatcher = _Dispatcher(specs)
    workers: list[_Worker] = []
    finished = False
    try:
        _start_workers(context, jobs, threads, workers)
        for worker in workers:
            dispatcher.hand_out(worker)
        remaining = len(specs)
        while remaining:
            busy = {worker.conn: worker for worker in workers if worker.position is not None}
            for ready in wait(list(busy)):
                worker = busy[ready]  # type: ignore[index]  # wait() returns the connections it was given
                try:
                    kind, position, *message = worker.conn.recv()
                except (EOFError, OSError):
                    raise _died(worker, specs[worker.position or 0]) from None
                if kind == "epoch":
                    if progress is not None:
                        progress(ProgressEvent.of(specs[position], message[0], offset + position, total))
                elif kind == "done":
                    remaining -= 1
                    dispatcher.hand_out(worker)  # keep the worker busy while the caller handles the result
                    yield message[0]
                else:
                    error, remote = message
                    raise error from RemoteTraceback(remote)
        finished = True
    finally:
        _stop_workers(workers, finished)
