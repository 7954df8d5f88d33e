"""Run a scan's grid on a Ray cluster: one Ray task per run, results streamed back as they finish.

The context (frozen source, target factory, dataset tensors, settings) goes into the object store once;
each worker process fetches it on its first run and keeps it (with its per-layer source-tensor cache) for
the runs that follow. Each run is a Ray generator task that streams a ProgressEvent per epoch and then
its RunResult, so the driver's ``progress`` callback sees every epoch of every run live, with no extra
actor to lose. A run whose worker or node dies is retried by Ray; a run that raises (a ProbeError, a bug)
is not, and its error reaches the caller.

See docs/cluster.md for running on an existing cluster, KubeRay and Slurm.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import queue
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from ..engine.context import ProbeContext
from ..engine.progress import Progress, ProgressEvent
from ..engine.run import run_one
from ..errors import DeviceError, ProbeError, SettingsError
from ..results.schema import RunResult, RunSpec
from ..util.device import available_cores

# The options execute_ray takes beside the executor interface (what --backend ray adds to a scan).
RAY_OPTIONS = ("address", "gpus_per_run", "cpus_per_run", "max_retries")
_INSTALL_HINT = "--backend ray needs Ray: pip install 'quanta-probe[ray]'"
_POLL_SECONDS = 0.2  # the longest the driver waits without checking for Ctrl-C


def import_ray():
    try:
        import ray
    except ImportError:
        raise SettingsError(_INSTALL_HINT) from None
    return ray


def ray_task_name(spec: RunSpec) -> str:
    """The Ray task name of a run (shown by ``ray list tasks``, the dashboard and the worker's process title)."""
    return f"probe:{spec.key}"


# --------------------------------------------------------------------------------------------------
# Connecting


@contextlib.contextmanager
def _loopback_only(ray) -> Iterator[None]:
    # Ray binds its servers to the node IP and maps 127.0.0.1 to the machine's outward address, except in
    # its single-node mode (the default on macOS/Windows), where the node IP is loopback. That mode is
    # read from an environment variable at import (the driver) and at start-up (Ray's own processes).
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray without this module: its defaults apply
        yield
        return
    variable = getattr(ray_constants, "ENABLE_RAY_CLUSTERS_ENV_VAR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved_env, saved_flag = os.environ.get(variable), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[variable] = "0"
    if saved_flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved_env
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag


@contextlib.contextmanager
def _keeping_sigterm() -> Iterator[None]:
    # ray.init replaces the SIGTERM handler (Python's and, in its core worker, the C one) with one that
    # exits at once; the caller's handler (the CLI turns SIGTERM into Ctrl-C) must survive, so that a
    # scheduler's SIGTERM still cancels the runs in flight and stops a private instance.
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def start_local(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Start a Ray instance on this machine, reachable from this machine only (no dashboard).

    ``num_cpus`` defaults to the cores this process may use; ``num_gpus`` to the GPUs Ray detects.
    """
    ray = import_ray()
    if num_cpus is None:
        num_cpus = available_cores()
    with _loopback_only(ray), _keeping_sigterm():
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )


def _connect(ray, address: str | None) -> bool:
    """Start or join a Ray instance; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False  # the caller's own ray.init() wins, whatever the address
    if address is None:
        start_local()
        return True
    try:
        with _keeping_sigterm():
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SettingsError(
            f"cannot connect to the Ray cluster at '{address}' ({reason}); start one with `ray start --head` "
            "or pass --address ray://HOST:10001"
        ) from None
    return False


# --------------------------------------------------------------------------------------------------
# Resources


def _check_resources(ray, settings_device: str, gpus_per_run: float | None, cpus_per_run: int, started: bool) -> float:
    """Validate the per-run resources against the device setting and the cluster; return gpus_per_run."""
    if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
        raise SettingsError(f"cpus_per_run must be a whole number ≥ 1, got {cpus_per_run!r}")
    cluster = ray.cluster_resources()
    cluster_gpus, cluster_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if gpus_per_run is None:
        gpus_per_run = 1.0 if settings_device != "cpu" and cluster_gpus > 0 else 0.0
    gpus_per_run = float(gpus_per_run)
    if gpus_per_run < 0 or (gpus_per_run > 1 and not gpus_per_run.is_integer()):
        raise SettingsError(f"gpus_per_run must be a fraction in [0, 1] or a whole number, got {gpus_per_run:g}")
    if settings_device.startswith("cuda") and gpus_per_run == 0:
        raise SettingsError(
            "--device cuda on Ray needs a GPU per run: pass --gpus-per-run 1 (or a fraction such as 0.25)"
        )
    if settings_device == "cpu" and gpus_per_run > 0:
        raise SettingsError("--device cpu and --gpus-per-run > 0 contradict each other: drop one of them")
    shortfalls = [
        f"{need:g} {kind} per run but the cluster has {have:g}"
        for kind, need, have in (("GPU", gpus_per_run, cluster_gpus), ("CPU", cpus_per_run, cluster_cpus))
        if need > have
    ]
    if shortfalls:
        message = f"runs ask for {'; '.join(shortfalls)}"
        if started:  # a local instance cannot grow: the runs would wait forever
            raise SettingsError(f"{message}: lower --gpus-per-run/--cpus-per-run")
        warnings.warn(f"{message}; they will wait until the cluster (autoscaler) provides them", stacklevel=3)
    return gpus_per_run


# --------------------------------------------------------------------------------------------------
# Worker side


def _portable(context: ProbeContext) -> ProbeContext:
    """The context with every tensor on the CPU (any worker can unpickle it) and no source-tensor cache."""
    source = context.source
    if any(t.device.type != "cpu" for t in (*source.parameters(), *source.buffers())):
        source = copy.deepcopy(source).cpu()  # never move the caller's source
    tasks = {name: task.to("cpu") for name, task in context.tasks.items()}
    return context.without_cache(source=source, tasks=tasks, device=torch.device("cpu"))


# One context per worker process: (object id, device type) -> context on that device. Runs of a scan that
# land on the same worker share it, and with it the source-tensor cache of the layer they probe.
_worker_context: dict[tuple[str, str], ProbeContext] = {}


def _context_on_worker(context_ref, use_gpu: bool, task_name: str) -> ProbeContext:
    """The scan's context on this worker's device, with (at least) ``task_name``'s data on that device."""
    import ray

    if use_gpu and not torch.cuda.is_available():
        raise DeviceError(
            f"Ray gave this run a GPU but torch on node {ray.util.get_node_ip_address()} sees no CUDA device"
        )
    device = torch.device("cuda" if use_gpu else "cpu")
    key = (context_ref.hex(), device.type)
    if key not in _worker_context:
        _worker_context.clear()  # drop a previous scan's context before fetching this one
        context = ray.get(context_ref)
        _worker_context[key] = replace(
            context, source=context.source.to(device), tasks=dict(context.tasks), device=device
        )
    context = _worker_context[key]
    if context.tasks[task_name].train.device.type != device.type:  # a task's data moves when a run first needs it
        context.tasks[task_name] = context.tasks[task_name].to(device)
    return context


def _run_task(context_box: list, spec: RunSpec, index: int, total: int, use_gpu: bool, threads: int, report: bool):
    """One run on a Ray worker, as a generator task: a ProgressEvent per epoch (when ``report``), then the RunResult.

    ``context_box`` wraps the ObjectRef so that Ray does not fetch the context for every task. The run
    trains in a thread so that its epoch callback can hand events to this generator as they happen.
    """
    torch.set_num_threads(threads)
    context = _context_on_worker(context_box[0], use_gpu, spec.task)
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def train() -> None:
        try:
            outbox.put(run_one(context, spec, outbox.put if report else None))
        except BaseException as error:  # handed to the generator, which raises it as the task's error
            outbox.put(_Raised(error))

    threading.Thread(target=train, name=f"probe-{spec.key}", daemon=True).start()
    while True:
        item = outbox.get()
        if isinstance(item, _Raised):
            raise item.error
        if isinstance(item, RunResult):
            yield item
            return
        yield ProgressEvent.of(spec, item, index, total)


@dataclass
class _Raised:
    error: BaseException


# --------------------------------------------------------------------------------------------------
# Driver side


def _fetch(ray, ref, spec: RunSpec, attempts: int):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ProbeError):
            raise error.cause from None  # the user's one-line message, as with the local back-end
        raise
    except ray.exceptions.RayError as error:
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        raise ProbeError(
            f"run {spec.key} was lost on the Ray cluster after {attempts} attempt(s) ({reason}); "
            "run the same command again to resume (finished runs are kept with --out)"
        ) from error


def execute_ray(
    context: ProbeContext,
    specs: Sequence[RunSpec],
    progress: Progress | None = None,
    *,
    offset: int = 0,
    total: int | None = None,
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: int = 1,
    max_retries: int = 3,
) -> Iterator[RunResult]:
    """Run ``specs`` as Ray tasks and yield each result as it finishes (in any order).

    ``address``: None starts a private Ray instance on this machine (loopback only, shut down at the end);
    ``"auto"`` joins the cluster this node belongs to; ``"ray://HOST:10001"`` connects a Ray client. An
    instance the caller already started with ``ray.init()`` is used as it is and left running.
    ``gpus_per_run``: None gives each run one GPU when the cluster has GPUs (and the device is not cpu),
    else none; fractions pack several small runs on one GPU. ``cpus_per_run`` is also the run's torch
    thread count. A run whose worker dies is retried up to ``max_retries`` times.
    With one thread per run on CPU, results are bit-identical to the local back-end's.
    """
    ray = import_ray()
    if not specs:
        return
    total = len(specs) if total is None else total
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise SettingsError(f"max_retries must be a whole number ≥ 0, got {max_retries!r}")
    started = _connect(ray, address)
    running: dict = {}  # ObjectRefGenerator -> RunSpec
    try:
        gpus_per_run = _check_resources(ray, context.settings.device, gpus_per_run, cpus_per_run, started)
        context_ref = ray.put(_portable(context))
        # A GPU run gets a fresh worker process: a reused one would keep the CUDA device (and memory) of
        # its first run, whatever GPU Ray assigns next (Ray's own default for GPU tasks).
        remote_run = ray.remote(max_calls=1)(_run_task) if gpus_per_run > 0 else ray.remote(_run_task)
        for index, spec in enumerate(specs, start=offset):
            stream = remote_run.options(
                name=ray_task_name(spec),
                num_returns="streaming",
                num_cpus=cpus_per_run,
                num_gpus=gpus_per_run,
                max_retries=max_retries,
                retry_exceptions=False,
            ).remote([context_ref], spec, index, total, gpus_per_run > 0, cpus_per_run, progress is not None)
            running[stream] = spec
        yield from _stream_results(ray, running, progress, max_retries + 1)
    finally:
        # Reached on completion, on an error, on Ctrl-C and when the caller stops iterating early.
        for stream in running:
            with contextlib.suppress(Exception):
                ray.cancel(stream, force=True)
        if started:
            ray.shutdown()


def _stream_results(ray, running: dict, progress: Progress | None, attempts: int) -> Iterator[RunResult]:
    """Yield each run's result as it arrives and pass its epoch events to ``progress``; finished runs leave
    ``running``."""
    while running:
        # a short timeout keeps Ctrl-C prompt
        ready, _ = ray.wait(list(running), num_returns=len(running), timeout=_POLL_SECONDS)
        for stream in ready:
            spec = running[stream]
            try:
                item = _fetch(ray, next(stream), spec, attempts)
            except StopIteration:  # pragma: no cover - a run always ends with its result or an error
                raise ProbeError(f"run {spec.key} ended on the Ray cluster without a result") from None
            if isinstance(item, RunResult):
                del running[stream]
                yield item
            elif progress is not None:
                progress(item)
