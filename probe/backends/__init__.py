"""Back-ends: where the runs of a scan execute, all behind one interface (:class:`~probe.backends.base.Executor`):
serial (this process), processes (worker processes on this machine) and Ray (a cluster)."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from ..errors import SettingsError
from ..settings import RunSettings
from .base import Executor
from .processes import default_jobs, execute_parallel
from .ray_cluster import RAY_OPTIONS, execute_ray, import_ray
from .serial import execute_serial

BACKENDS = ("local", "ray")

__all__ = ["BACKENDS", "Executor", "check_backend", "default_jobs", "executor_for"]


def check_backend(backend: str, options: Mapping | None) -> None:
    """A SettingsError for an unknown back-end, options it does not take, or Ray not installed (before any work)."""
    if backend not in BACKENDS:
        raise SettingsError(f"unknown backend '{backend}': use {' or '.join(BACKENDS)}")
    unknown = sorted(set(options or {}) - (set(RAY_OPTIONS) if backend == "ray" else set()))
    if unknown:
        option = unknown[0].replace("_", "-")
        if backend != "ray" and unknown[0] in RAY_OPTIONS:
            raise SettingsError(f"--{option} needs --backend ray")
        raise SettingsError(f"unknown option '{unknown[0]}' for the {backend} backend")
    if backend == "ray":
        import_ray()  # installed? (a SettingsError with the install line if not)


def executor_for(backend: str, settings: RunSettings, runs: int, options: Mapping | None = None) -> Executor:
    """The executor of ``backend``: ``local`` runs in this process (jobs = 1) or in worker processes; ``ray`` on Ray."""
    check_backend(backend, options)
    if backend == "ray":
        return functools.partial(execute_ray, **dict(options or {}))
    if settings.jobs > 1 and runs > 1:
        return execute_parallel
    return execute_serial
