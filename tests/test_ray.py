"""The Ray back-end: same numbers as the local one, runs survive a killed worker, errors reach the caller."""

import collections
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray back-end needs the optional extra: pip install 'quanta-probe[ray]'")

# Imported after the skip above (ruff's E402 is off for this file in pyproject.toml).
import probe
from probe import api
from probe.backends import executor_for
from probe.backends import ray_cluster as ray_backend
from probe.engine.run import run_one
from probe.results import RunSpec, run_grid
from probe.results.store import ResultsFolder
from probe.util.interrupt import graceful_interrupts

pytestmark = pytest.mark.ray

LAYERS = ["conv1", "conv2"]
GRID = dict(runs=2, epochs=3)  # 4 runs of 3 epochs: about half a second each on one core


@pytest.fixture(scope="module")
def local_scan(tiny_source):
    """The reference: the same grid on the local back-end, one run after another on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return probe.scan(tiny_source, layers=LAYERS, **GRID)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def shared_ray(_ray_teardown):
    """A loopback-only Ray instance with 2 CPUs (started as execute_ray starts its own), shared by the tests."""
    if not ray.is_initialized():
        ray_backend.start_local(num_cpus=2)
    return ray


@pytest.fixture(scope="module")
def _ray_teardown():
    yield
    ray.shutdown()


def _histories(measurement):
    return {run.spec.key: run.history for run in measurement.runs}


# Processes and sockets, read from /proc (Linux)


def _ancestors(pid):
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state is the parent's pid
        yield pid


def _descendants():
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if me in _ancestors(int(entry.name)):
                    found.append(int(entry.name))
    return found


def _worker_running(spec):
    """The pid of the Ray worker (a descendant of this test process) now running ``spec``, or None."""
    title = f"ray::{ray_backend.ray_task_name(spec)}".encode()  # Ray's process title while it runs the task
    for pid in _descendants():
        with contextlib.suppress(OSError):  # the process may end while we look
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].split(b" ")[0] == title:
                return pid
    return None


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::1


def _listening_addresses(pids):
    """The local addresses of the TCP sockets in LISTEN state that processes ``pids`` hold, as hex from /proc/net."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


def test_ray_scan_equals_local_scan(tiny_source, local_scan, shared_ray):
    events = []
    measurement = probe.scan(
        tiny_source, layers=LAYERS, backend="ray", backend_options={"cpus_per_run": 1}, progress=events.append, **GRID
    )
    assert ray.is_initialized()  # an instance the caller started is left running
    assert [run.spec for run in measurement.runs] == [run.spec for run in local_scan.runs]
    assert _histories(measurement) == _histories(local_scan)  # bit for bit: same seeds, one thread per run
    assert all(run.ok and run.final == ref.final for run, ref in zip(measurement.runs, local_scan.runs, strict=False))
    # every epoch of every run was reported live, in epoch order within a run, with its grid index
    by_run = collections.defaultdict(list)
    for event in events:
        by_run[(event.spec.key, event.run_index, event.total_runs)].append(event.epoch)
    expected = {(run.spec.key, index, 4): [1, 2, 3] for index, run in enumerate(local_scan.runs)}
    assert dict(by_run) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads sockets from /proc")
def test_the_local_instance_listens_on_loopback_only(shared_ray):
    addresses = _listening_addresses(_descendants())
    assert addresses and addresses <= LOOPBACK, addresses


def test_probe_error_in_a_run_reaches_the_caller_unchanged(tiny_source, shared_ray):
    context = api.prepare(tiny_source, settings=probe.RunSettings(epochs=1)).context
    bad = RunSpec("no_such_layer", 0.9, "AnB", 0)
    with pytest.raises(probe.LayerError) as raised:
        list(ray_backend.execute_ray(context, [bad]))
    with pytest.raises(probe.LayerError) as local:
        run_one(context, bad)
    assert str(raised.value) == str(local.value)


def test_per_run_resources_are_checked_against_settings_and_cluster(tiny_source, shared_ray):
    context = api.prepare(tiny_source, settings=probe.RunSettings(epochs=1, device="cpu")).context
    spec = RunSpec("conv1", 0.9, "AnB", 0)
    with pytest.raises(probe.SettingsError, match="contradict"):
        list(ray_backend.execute_ray(context, [spec], gpus_per_run=1))
    with pytest.raises(probe.SettingsError, match="cpus_per_run must be a whole number"):
        list(ray_backend.execute_ray(context, [spec], cpus_per_run=0))
    # more CPUs than the 2-CPU instance has: refused when we started it (it cannot grow), a warning when
    # joining a cluster (its autoscaler may add nodes)
    with pytest.raises(probe.SettingsError, match="3 CPU per run but the cluster has 2"):
        ray_backend._check_resources(ray, "auto", None, 3, started=True)
    with pytest.warns(UserWarning, match="3 CPU per run but the cluster has 2"):
        assert ray_backend._check_resources(ray, "auto", None, 3, started=False) == 0.0  # no GPU here


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker's pid through /proc")
def test_a_killed_worker_has_its_run_redone_once(tiny_source, local_scan, shared_ray, tmp_path, monkeypatch):
    saved = collections.Counter()
    save_run = ResultsFolder.save_run

    def counting_save_run(folder, result):
        saved[result.spec.key] += 1
        return save_run(folder, result)

    monkeypatch.setattr(ResultsFolder, "save_run", counting_save_run)
    killed, epochs_seen = {}, collections.defaultdict(list)

    def kill_one_worker(event):
        epochs_seen[event.spec.key].append(event.epoch)
        if event.epoch == 1 and not killed:  # SIGKILL the first run still in progress, as a lost node would
            pid = _worker_running(event.spec)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed[event.spec.key] = pid

    out = tmp_path / "results"
    measurement = probe.scan(tiny_source, layers=LAYERS, backend="ray", out=out, progress=kill_one_worker, **GRID)

    assert len(killed) == 1, "no run was still in progress after its first epoch"
    (victim,) = killed
    assert epochs_seen[victim][-2:] == [2, 3]  # the epochs after the kill came from Ray's retry...
    keys = [run.spec.key for run in local_scan.runs]
    assert saved == {key: 1 for key in keys}  # ...and every run was saved exactly once
    assert sorted(path.name for path in (out / "runs").iterdir()) == sorted(f"{key}.json" for key in keys)
    assert _histories(measurement) == _histories(local_scan)  # the redone run is the run it would have been


def test_missing_ray_is_a_settings_error_with_the_install_line(tiny_source, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    context = api.prepare(tiny_source, settings=probe.RunSettings(epochs=1)).context
    with pytest.raises(probe.SettingsError, match=r"pip install 'quanta-probe\[ray\]'"):
        list(executor_for("ray", context.settings, 1)(context, run_grid(["conv1"], (0.9,), 0, 1, ["AnB"])))


def test_interrupt_on_the_driver_cancels_the_runs_in_flight(tiny_source, shared_ray):
    settings = probe.RunSettings(epochs=100, runs=2)  # each run would hold its CPU for far more than 10 s
    context = api.prepare(tiny_source, settings=settings).context
    specs = run_grid(LAYERS, settings.init, settings.seed, settings.runs, ["AnB"])

    def interrupt(event):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(ray_backend.execute_ray(context, specs, interrupt))
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2  # both CPUs free again: the runs were cancelled


def test_sigterm_stops_a_scan_that_started_its_own_instance(tiny_source, _ray_teardown):
    ray.shutdown()  # so that execute_ray starts (and must stop) its own instance
    context = api.prepare(tiny_source, settings=probe.RunSettings(epochs=30)).context
    events = []

    def terminate(event):  # what a batch scheduler does; Ray's own handler would abort the process
        events.append(event)
        os.kill(os.getpid(), signal.SIGTERM)

    with graceful_interrupts(), pytest.raises(KeyboardInterrupt):  # the CLI's SIGTERM handling
        list(ray_backend.execute_ray(context, [RunSpec("conv1", 0.9, "AnB", 0)], terminate, address=None))
    assert len(events) == 1 and not ray.is_initialized()
