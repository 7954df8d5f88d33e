"""Runs in worker processes: the same numbers as in this process, live progress, errors, interrupts."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import torch
from torch import nn

from probe import api
from probe.backends.processes import RemoteTraceback, default_jobs, execute_parallel
from probe.backends.serial import execute_serial
from probe.engine.context import ProbeContext
from probe.errors import LayerError, ProbeError
from probe.models.paper_cnn import PaperCNN
from probe.results import RunSpec, run_grid
from probe.settings import RunSettings
from probe.util.device import available_cores


def _workers_alive() -> list[str]:
    return [p.name for p in multiprocessing.active_children() if p.name.startswith("probe-worker")]


@pytest.fixture(scope="module")
def context(tiny_source):
    settings = RunSettings(epochs=2, lr=1e-3, gate_lr=0.03, runs=2, jobs=2)
    return api.prepare(tiny_source, "digits[5-9]", settings=settings).context


def test_workers_give_the_serial_numbers_bit_for_bit_and_stream_progress_in_order(context):
    specs = run_grid(["conv1", "fc"], (0.9,), 0, 2, ["AnB"])  # 4 runs: each worker trains two
    assert torch.get_num_threads() == 1  # serial runs with the workers' thread count (tests/conftest.py)
    serial = {result.spec: result for result in execute_serial(context, specs)}

    seen: list[tuple] = []
    progress = lambda event: seen.append(("epoch", event.spec, event.epoch, event.run_index, event.total_runs))  # noqa: E731
    parallel = {}
    for result in execute_parallel(context, specs, progress, offset=3, total=10, threads=1):
        seen.append(("done", result.spec))
        parallel[result.spec] = result

    assert parallel.keys() == serial.keys()
    for spec, result in parallel.items():
        assert result.history == serial[spec].history  # every metric of every epoch
        assert (result.steps, result.final, result.status) == (
            serial[spec].steps,
            serial[spec].final,
            serial[spec].status,
        )
    for position, spec in enumerate(specs):
        events = [entry for entry in seen if entry[1] == spec]
        assert events == [("epoch", spec, 1, 3 + position, 10), ("epoch", spec, 2, 3 + position, 10), ("done", spec)]
    assert _workers_alive() == []


def test_an_error_in_a_worker_is_raised_here_with_its_type_and_message(context):
    specs = [RunSpec("conv1", 0.9, "AnB", 0), RunSpec("nope", 0.9, "AnB", 0)]
    with pytest.raises(LayerError, match="no layer named 'nope'") as raised:
        list(execute_parallel(context, specs, threads=1))
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "resolve_layer" in str(raised.value.__cause__)  # the worker's traceback travels with it
    assert _workers_alive() == []


def test_ctrl_c_is_the_parents_and_stops_every_worker_at_once(context):
    long = context.settings.with_(epochs=500)
    specs = run_grid(["conv1", "fc"], long.init, long.seed, long.runs, ["AnB"])
    slow_context = ProbeContext(context.source, context.target_factory, context.tasks, long, context.device)
    events = []

    def progress(event):
        events.append(event)
        workers = [p for p in multiprocessing.active_children() if p.name.startswith("probe-worker")]
        if len(events) == 1:
            for worker in workers:  # a Ctrl-C that reaches the workers too (a terminal signals the whole group)
                os.kill(worker.pid, signal.SIGINT)
        elif len(events) == 5:
            assert len(workers) == 2 and all(worker.is_alive() for worker in workers), "workers must ignore SIGINT"
            os.kill(os.getpid(), signal.SIGINT)  # now a real Ctrl-C in this process

    with pytest.raises(KeyboardInterrupt):
        list(execute_parallel(slow_context, specs, progress, threads=1))
    assert len(events) >= 5
    assert _workers_alive() == []


def test_a_worker_stopped_by_sigterm_ends_the_scan_as_an_interrupt(context):
    long = context.settings.with_(epochs=500)
    slow_context = ProbeContext(context.source, context.target_factory, context.tasks, long, context.device)
    specs = [RunSpec("conv1", 0.9, "AnB", 0), RunSpec("fc", 0.9, "AnB", 0)]

    def progress(event):  # a scheduler stopping the job signals the workers too
        if event.epoch == 1:
            worker = next(p for p in multiprocessing.active_children() if p.name.startswith("probe-worker"))
            os.kill(worker.pid, signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match="stopped by SIGTERM while running AnB__"):
        list(execute_parallel(slow_context, specs, progress, threads=1))
    assert _workers_alive() == []


def test_a_caller_that_stops_iterating_stops_the_workers(context):
    specs = run_grid(["conv1", "fc"], (0.9,), 0, 3, ["AnB"])
    results = execute_parallel(context, specs, threads=1)
    first = next(results)
    results.close()
    assert first.spec in specs
    assert _workers_alive() == []


class _DiesInWorkers(nn.Module):
    """A model that kills any process other than the one that built it, as a crash in native code would."""

    def __init__(self) -> None:
        super().__init__()
        self.net = PaperCNN(num_classes=5, in_chans=1, input_size=(8, 8), width=0.25)
        self.home = os.getpid()

    def forward(self, x):
        if os.getpid() != self.home:
            os._exit(3)
        return self.net(x)


def test_a_worker_that_dies_is_reported_with_the_run_it_was_training():
    context = api.prepare(_DiesInWorkers(), "digits[5-9]", settings=RunSettings(epochs=1, jobs=2)).context
    specs = [RunSpec("net.conv1", 0.9, "AnB", 0)]
    with pytest.raises(ProbeError, match=r"exited with code 3 while running AnB__net\.conv1__init0\.9__seed0"):
        list(execute_parallel(context, specs, jobs=2, threads=1))
    assert _workers_alive() == []


def test_a_model_that_cannot_be_sent_to_workers_says_to_use_one_job():
    torch.manual_seed(0)
    model = PaperCNN(num_classes=5, in_chans=1, input_size=(8, 8), width=0.25)
    model.register_forward_hook(lambda module, args, output: None)  # a lambda cannot be pickled
    context = api.prepare(model, "digits[5-9]", settings=RunSettings(epochs=1, jobs=2)).context
    specs = [RunSpec("conv1", 0.9, "AnB", 0), RunSpec("fc", 0.9, "AnB", 0)]
    with pytest.raises(ProbeError, match="cannot be sent to worker processes.*run with jobs=1"):
        list(execute_parallel(context, specs))
    assert _workers_alive() == []


def test_default_jobs_is_one_per_core_capped_by_runs_and_one_on_cuda(monkeypatch):
    monkeypatch.setattr("probe.backends.processes.available_cores", lambda: 8)
    assert default_jobs() == 8
    assert default_jobs(runs=3) == 3
    assert default_jobs(runs=21, device="cpu") == 8
    assert default_jobs(runs=21, device="cuda") == 1
    assert default_jobs(runs=21, device=torch.device("cuda", 1)) == 1


def test_available_cores_counts_what_this_process_may_use():
    assert 1 <= available_cores() <= (os.cpu_count() or 1)
