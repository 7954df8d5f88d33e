"""Results folders: every finished run is saved at once, atomically, so a scan can stop at any moment and resume.

Layout of a folder (``probe scan --out DIR``)::

    DIR/fingerprint.json       what the runs depend on: source hash, tasks, layers, settings
    DIR/runs/<run key>.json    one finished run (ok or failed) and the SHA-256 of its content
    DIR/results.json           the whole measurement, written when the scan ends
    DIR/results.csv            one row per (layer, init, task)
    DIR/*.png                  figures (written by the CLI)
    DIR/.lock                  held (flock) while a scan writes to the folder

Every file is written to a temporary file in the same folder, flushed, fsynced and renamed over its
final name, so a reader (or a resume after SIGKILL or power loss) sees either the old file or the
new one, never half of one. Numbers are stored as strict JSON: NaN and ±inf become ``null``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import ResultsError
from ..settings import RunSettings
from ..util.files import atomic_write_bytes, check_writable, fsync_dir
from .assessment import results_document
from .schema import Measurement, RunResult, RunSpec, run_grid, strict_json

FOLDER_SCHEMA = "quanta-probe/folder/1"
RUN_SCHEMA = "quanta-probe/run/1"
FINGERPRINT = "fingerprint.json"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RUNS = "runs"
LOCK = ".lock"
CORRUPT_SUFFIX = ".corrupt"


class CorruptRunWarning(UserWarning):
    """A saved run file was unreadable; it was set aside and its run will be redone."""


class CorruptRunFile(ResultsError):
    """A run file that is truncated, not JSON, of another schema, or whose checksum does not match."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"run file '{path}' is unusable ({reason}); it will be redone")
        self.path, self.reason = path, reason


# --------------------------------------------------------------------------------------------------
# Files


def canonical_json(value: Any) -> bytes:
    """The one byte string a JSON value hashes to: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(strict_json(value), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    )


def run_filename(key: str) -> str:
    """The file name of a run in ``runs/`` (its key; path separators, which no layer name has, made safe)."""
    return key.replace("/", "_").replace("\\", "_") + ".json"


def encode_run(result: RunResult) -> bytes:
    """The bytes of a run file: schema, checksum of the canonical JSON of the run, and the run."""
    run = strict_json(result.to_dict())
    document = {"schema": RUN_SCHEMA, "checksum": hashlib.sha256(canonical_json(run)).hexdigest(), "run": run}
    return (json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def read_run_file(path: str | os.PathLike) -> RunResult:
    """Read and verify one run file; any defect is a :class:`CorruptRunFile` that says which."""
    path = Path(path)
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CorruptRunFile(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        reason = "empty file" if not exc.doc.strip() else f"not valid JSON at character {exc.pos}, truncated?"
        raise CorruptRunFile(path, reason) from None
    if not isinstance(document, dict) or not {"schema", "checksum", "run"} <= document.keys():
        raise CorruptRunFile(path, "not a run file")
    if document["schema"] != RUN_SCHEMA:
        raise CorruptRunFile(path, f"schema {document['schema']!r}, expected {RUN_SCHEMA!r}")
    if hashlib.sha256(canonical_json(document["run"])).hexdigest() != document["checksum"]:
        raise CorruptRunFile(path, "checksum mismatch: the content was changed after it was written")
    try:
        result = RunResult.from_dict(document["run"])
    except (TypeError, KeyError, ValueError) as exc:
        raise CorruptRunFile(path, f"malformed run ({type(exc).__name__}: {exc})") from None
    if run_filename(result.spec.key) != path.name:
        raise CorruptRunFile(path, f"holds run {result.spec.key}")
    return result


# --------------------------------------------------------------------------------------------------
# Fingerprints


def _with_new_settings(recorded: dict, current: dict) -> dict:
    """``recorded`` with every setting that ``current`` has and it lacks set to that setting's default.

    A setting added to RunSettings after a folder was written is recorded there by its absence; its default
    is the behaviour those runs had (e.g. ``gate_optimizer``: Adam, the only optimiser before), so the folder
    still resumes.
    """
    settings = recorded.get("settings")
    if not isinstance(settings, dict) or not isinstance(current.get("settings"), dict):
        return recorded
    defaults = RunSettings().to_dict()
    added = {k: defaults[k] for k in current["settings"] if k not in settings and k in defaults}
    return {**recorded, "settings": {**settings, **added}} if added else recorded


def _normalised(fingerprint: dict) -> dict:
    """The fingerprint as it reads back from JSON (tuples become lists, ...)."""
    # Key order is kept (tasks: AnB before AnA); dict equality ignores it anyway.
    return json.loads(json.dumps(strict_json(fingerprint), allow_nan=False))


_MISSING = object()


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value if len(value) <= 24 else value[:12] + "…"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def fingerprint_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["settings.epochs: 12 → 20", ...]``: every leaf that differs between two fingerprints."""
    lines = []
    for key in list(old) + [k for k in new if k not in old]:
        path = f"{prefix}{key}"
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if isinstance(before, dict) and isinstance(after, dict):
            lines += fingerprint_differences(before, after, f"{path}.")
        elif before != after:
            lines.append(f"{path}: {_short(before)} → {_short(after)}")
    return lines


def expected_specs(fingerprint: dict) -> list[RunSpec]:
    """Every run a folder's scan consists of, in the order of :func:`~probe.results.schema.run_grid`."""
    settings = fingerprint["settings"]
    return run_grid(fingerprint["layers"], settings["init"], settings["seed"], settings["runs"], fingerprint["tasks"])


def read_fingerprint(folder: Path) -> dict:
    """The fingerprint recorded in ``folder``; ResultsError when it is unreadable."""
    path = folder / FINGERPRINT
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("schema") != FOLDER_SCHEMA or not isinstance(document.get("fingerprint"), dict):
            raise ValueError(f"schema {document.get('schema')!r}")
        return document["fingerprint"]
    except (OSError, ValueError, AttributeError) as exc:
        raise ResultsError(f"'{path}' is unreadable ({exc}); start over with --fresh or pick another --out") from None


# --------------------------------------------------------------------------------------------------
# The lock: one writer per folder. flock is released by the kernel when the process dies, even by
# SIGKILL, so a lock is never stale. Within one process the lock is shared (a resume after an
# exception may open the folder again while the first ResultsFolder still lives in a traceback).

_held_locks: dict[str, list] = {}  # real path -> [fd, users]


def _acquire_lock(folder: Path) -> str | None:
    key = os.path.realpath(folder)
    if key in _held_locks:
        _held_locks[key][1] += 1
        return key
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return None
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ResultsError(
            f"cannot write results to '{folder}' ({exc.strerror}); pick a folder you can write to with --out"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ResultsError(
            f"another scan (pid {holder}) is writing to '{folder}'; wait for it to end or pick another --out"
        ) from None
    except OSError:  # a file system without locks (some network mounts): go on without one
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_locks[key] = [fd, 1]
    return key


def _release_lock(key: str | None) -> None:
    entry = _held_locks.get(key) if key else None
    if key is None or entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held_locks[key]
        os.close(entry[0])


# --------------------------------------------------------------------------------------------------
# The folder a scan writes


def ensure_writable(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (parents too) once :func:`~probe.util.files.check_writable` says it can be."""
    folder = check_writable(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _tool_files(folder: Path) -> list[Path]:
    """The files this tool writes in a results folder (what ``fresh`` removes); nothing else."""
    files = [folder / name for name in (FINGERPRINT, RESULTS_JSON, RESULTS_CSV)]
    files += folder.glob("*.png")
    runs = folder / RUNS
    if runs.is_dir():
        files += runs.glob("*.json")
        files += runs.glob(f"*.json{CORRUPT_SUFFIX}")
    return [f for f in files if f.is_file()]


def _remove_temp_files(folder: Path) -> None:
    for directory in (folder, folder / RUNS):
        if directory.is_dir():
            for entry in directory.iterdir():
                if _is_temp(entry.name) and entry.is_file():
                    entry.unlink(missing_ok=True)


def _foreign_entries(folder: Path) -> list[str]:
    """Names in a folder without fingerprint that this tool did not write."""
    ours = {p.relative_to(folder).parts[0] for p in _tool_files(folder)}
    foreign = []
    for entry in folder.iterdir():
        if entry.name == LOCK or _is_temp(entry.name):
            continue
        if entry.name == RUNS and entry.is_dir():
            if any(
                not _is_temp(f.name) and not f.name.endswith((".json", f".json{CORRUPT_SUFFIX}"))
                for f in entry.iterdir()
            ):
                foreign.append(entry.name)
        elif entry.name not in ours:
            foreign.append(entry.name)
    return foreign


class ResultsFolder:
    """The results folder of one scan: its fingerprint, a file per finished run, and the final results.

    Opening it checks everything that could stop a scan later: the folder can be written, it holds
    results of the same scan (same fingerprint) or nothing, and no other process writes to it.
    ``fresh=True`` removes the files of an earlier scan (only files this tool writes) and starts over.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict, fresh: bool = False):
        self.path = Path(path)
        self.fingerprint = _normalised(fingerprint)
        self.corrupt: list[tuple[str, str]] = []  # (file name, reason) of run files set aside
        self._lock: str | None = None
        ensure_writable(self.path)
        self._lock = _acquire_lock(self.path)
        try:
            self._open(fresh)
        except BaseException:
            _release_lock(self._lock)
            raise

    def _open(self, fresh: bool) -> None:
        _remove_temp_files(self.path)
        if (self.path / FINGERPRINT).exists():
            try:
                recorded = _with_new_settings(_normalised(read_fingerprint(self.path)), self.fingerprint)
            except ResultsError:
                if not fresh:
                    raise
                recorded = None
            if recorded is not None and recorded != self.fingerprint and not fresh:
                differences = fingerprint_differences(recorded, self.fingerprint) or ["fingerprint.json differs"]
                shown = "; ".join(differences[:6]) + (
                    f"; … ({len(differences) - 6} more)" if len(differences) > 6 else ""
                )
                raise ResultsError(
                    f"'{self.path}' holds results of another scan ({shown}); "
                    "start over there with --fresh (fresh=True) or pick another --out"
                )
            if fresh:
                self._clear()
        else:
            foreign = _foreign_entries(self.path)
            if foreign:
                raise ResultsError(
                    f"'{self.path}' is not a quanta-probe results folder (it holds {', '.join(sorted(foreign)[:3])}"
                    f"{', …' if len(foreign) > 3 else ''} and no {FINGERPRINT}); pick a new or empty --out"
                )
            if _tool_files(self.path):
                if not fresh:  # results whose scan is unknown must not be mixed into this one
                    raise ResultsError(
                        f"'{self.path}' holds results but no {FINGERPRINT}, so they cannot be checked; "
                        "start over there with --fresh (fresh=True) or pick another --out"
                    )
                self._clear()
        ensure_writable(self.path / RUNS)
        if not (self.path / FINGERPRINT).exists():
            _write_json(self.path / FINGERPRINT, {"schema": FOLDER_SCHEMA, "fingerprint": self.fingerprint})

    def _clear(self) -> None:
        # The fingerprint goes last: until it is gone the folder is still recognisably ours.
        for path in sorted(_tool_files(self.path), key=lambda p: p.name == FINGERPRINT):
            path.unlink(missing_ok=True)
        fsync_dir(self.path)

    def close(self) -> None:
        """Let other processes write to the folder (also happens when this object is garbage-collected)."""
        _release_lock(self._lock)
        self._lock = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> ResultsFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS

    def finished(self) -> dict[str, RunResult]:
        """Every run saved so far (failed ones included, so they are not redone), by run key.

        An unusable run file is moved aside to ``<name>.corrupt``, recorded in :attr:`corrupt`, warned
        about (:class:`CorruptRunWarning`) and left out, so its run is done again.
        """
        results: dict[str, RunResult] = {}
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                result = read_run_file(path)
            except CorruptRunFile as exc:
                os.replace(path, path.with_name(path.name + CORRUPT_SUFFIX))
                self.corrupt.append((path.name, exc.reason))
                message = f"{path}: {exc.reason}; set aside as {path.name}{CORRUPT_SUFFIX}, the run will be redone"
                warnings.warn(message, CorruptRunWarning, stacklevel=2)
                continue
            results[result.spec.key] = result
        return results

    def save_run(self, result: RunResult) -> Path:
        """Save one finished run (ok or failed) as ``runs/<key>.json``, atomically."""
        path = self.runs_dir / run_filename(result.spec.key)
        atomic_write_bytes(path, encode_run(result))
        return path

    def save_measurement(self, measurement: Measurement) -> None:
        """Write ``results.json`` and ``results.csv`` (each atomically)."""
        _write_json(self.path / RESULTS_JSON, results_document(measurement))
        atomic_write_bytes(self.path / RESULTS_CSV, measurement.to_csv().encode())
