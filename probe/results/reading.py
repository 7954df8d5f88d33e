"""Reading a results folder (``probe report DIR``), finished or not, without writing anything."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ResultsError
from .schema import Measurement, RunResult
from .store import FINGERPRINT, RESULTS_JSON, RUNS, CorruptRunFile, expected_specs, read_fingerprint, read_run_file


@dataclass
class FolderStatus:
    """How far the scan of a results folder got."""

    path: Path
    expected: int
    done: int  # finished successfully
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run key, why it failed)
    missing: list[str] = field(default_factory=list)  # run keys still to do (a corrupt file's run included)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    complete: bool = False  # results.json was written

    @property
    def finished(self) -> int:
        return self.done + len(self.failed)

    def to_dict(self) -> dict:
        """Plain JSON data: counts, the failed and missing runs, and :meth:`describe`'s line."""
        return {
            "expected": self.expected,
            "done": self.done,
            "failed": len(self.failed),
            "missing": len(self.missing),
            "corrupt": len(self.corrupt),
            "complete": self.complete,
            "failed_runs": [{"run": key, "reason": reason} for key, reason in self.failed],
            "missing_runs": list(self.missing),
            "description": self.describe(),
        }

    def describe(self) -> str:
        """One line, e.g. ``12 of 16 runs finished (1 failed); 4 to do, resume with the same command``."""
        text = f"{self.finished} of {self.expected} runs finished"
        if self.failed:
            text += f" ({len(self.failed)} failed)"
        if self.corrupt:
            text += f"; {len(self.corrupt)} unreadable run file{'s' if len(self.corrupt) > 1 else ''}"
        if self.missing:
            text += f"; {len(self.missing)} to do, resume with the same command"
        return text


def _status_from_runs(folder: Path, fingerprint: dict) -> tuple[FolderStatus, dict[str, RunResult]]:
    expected = expected_specs(fingerprint)
    saved: dict[str, RunResult] = {}
    corrupt = []
    runs_dir = folder / RUNS
    for path in sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []:
        try:
            result = read_run_file(path)
        except CorruptRunFile as exc:
            corrupt.append((path.name, exc.reason))
            continue
        saved[result.spec.key] = result
    status = FolderStatus(folder, len(expected), 0, corrupt=corrupt, complete=(folder / RESULTS_JSON).is_file())
    for spec in expected:
        found = saved.get(spec.key)
        if found is None:
            status.missing.append(spec.key)
        elif found.ok:
            status.done += 1
        else:
            status.failed.append((spec.key, found.failure or "failed"))
    runs = {spec.key: saved[spec.key] for spec in expected if spec.key in saved}
    return status, runs


def _read_measurement(path: Path) -> Measurement | None:
    try:
        return Measurement.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _status_of(measurement: Measurement, path: Path) -> FolderStatus:
    status = FolderStatus(path, len(measurement.runs), sum(r.ok for r in measurement.runs), complete=True)
    status.failed = [(r.spec.key, r.failure or "failed") for r in measurement.runs if not r.ok]
    return status


def load_folder(path: str | os.PathLike) -> tuple[Measurement | None, FolderStatus]:
    """The measurement in a results folder (or a ``results.json``) and how far its scan got.

    A folder whose scan has not ended (no ``results.json``) is rebuilt from ``fingerprint.json`` and
    the saved runs; the measurement is None when no run has finished yet. Nothing is written.
    """
    path = Path(path)
    if path.is_file():
        measurement = _read_measurement(path)
        if measurement is None:
            raise ResultsError(f"'{path}' is not a quanta-probe results.json (unreadable or another schema)")
        return measurement, _status_of(measurement, path)
    if not path.is_dir():
        raise ResultsError(f"'{path}' does not exist; give a folder written by `probe scan --out`")
    results_file = path / RESULTS_JSON
    if not (path / FINGERPRINT).is_file():
        measurement = _read_measurement(results_file) if results_file.is_file() else None
        if measurement is None:
            raise ResultsError(f"'{path}' is not a quanta-probe results folder (no {FINGERPRINT} or {RESULTS_JSON})")
        return measurement, _status_of(measurement, path)
    fingerprint = read_fingerprint(path)
    try:
        status, runs = _status_from_runs(path, fingerprint)
    except (KeyError, TypeError) as exc:
        raise ResultsError(
            f"'{path / FINGERPRINT}' lacks {exc}; it was not written by this version of quanta-probe"
        ) from None
    measurement = _read_measurement(results_file) if status.complete else None
    if measurement is None:
        status.complete = False
        if not runs:
            return None, status
        tasks = fingerprint["tasks"]
        measurement = Measurement(
            settings=fingerprint["settings"],
            source={
                "arch": fingerprint.get("arch"),
                "arch_options": fingerprint.get("arch_options", {}),
                "dataset": fingerprint.get("source_dataset"),
                "sha256": fingerprint.get("source_sha256"),
            },
            target=tasks.get("AnB", next(iter(tasks.values()), "")),
            layers=list(fingerprint["layers"]),
            runs=list(runs.values()),
            extras={"tasks": tasks, "partial": True},
        )
    return measurement, status
