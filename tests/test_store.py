"""Results folders without training: atomic run files, checksums, fingerprints, --fresh, partial reads, signals."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from probe.errors import ResultsError
from probe.results import Measurement, RunResult, RunSpec, run_grid
from probe.results.reading import load_folder
from probe.results.store import (
    CorruptRunFile,
    CorruptRunWarning,
    ResultsFolder,
    canonical_json,
    expected_specs,
    read_run_file,
)
from probe.settings import RunSettings
from probe.util.files import atomic_write_bytes
from probe.util.interrupt import graceful_interrupts, resume_hint


def _fingerprint(**changes) -> dict:
    settings = {"epochs": 12, "lr": 1e-3, "gate_lr": 0.03, "init": [0.9], "runs": 2, "seed": 0, "batch_size": 32}
    settings.update(changes.pop("settings", {}))
    fingerprint = {
        "arch": "paper-cnn",
        "arch_options": {"width": 0.25},
        "source_sha256": "a" * 64,
        "source_dataset": "digits[0-4]",
        "tasks": {"AnB": "digits[5-9]"},
        "layers": ["conv1", "conv2"],
        "settings": settings,
    }
    fingerprint.update(changes)
    return fingerprint


def _run(layer: str = "conv1", seed: int = 0, failed: bool = False, lam: float = 0.8125) -> RunResult:
    history = [
        {"epoch": 1, "lambda_source": 0.9, "top1": 0.5, "top3": 0.75, "loss": 1.25, "precision": 0.5, "recall": 0.5},
        {
            "epoch": 2,
            "lambda_source": lam,
            "top1": 0.625 + seed / 64,
            "top3": 0.875,
            "loss": 1.0,
            "precision": 0.625,
            "recall": 0.6,
        },
    ]
    if failed:
        history[-1]["loss"] = math.nan
        return RunResult(
            RunSpec(layer, 0.9, "AnB", seed),
            history,
            {"loss": math.nan, "top1": 0.6},
            40,
            0.03,
            "failed",
            "test loss became nan in epoch 2",
            0.5,
        )
    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    return RunResult(RunSpec(layer, 0.9, "AnB", seed), history, final, 40, 0.03, seconds=0.5)


def _listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------- runs


def test_a_saved_run_reads_back_identically(tmp_path):
    store = ResultsFolder(tmp_path / "out", _fingerprint())
    run = _run(seed=1, lam=0.1 + 0.2)  # a float whose repr has 17 digits
    path = store.save_run(run)
    assert path == tmp_path / "out" / "runs" / f"{run.spec.key}.json"
    again = ResultsFolder(tmp_path / "out", _fingerprint())
    assert again.finished()[run.spec.key].to_dict() == run.to_dict()
    assert again.corrupt == []


def test_a_run_file_is_strict_json_with_the_checksum_of_its_run(tmp_path):
    store = ResultsFolder(tmp_path, _fingerprint())
    path = store.save_run(_run(failed=True))

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    document = json.loads(path.read_text(), parse_constant=no_constants)
    assert document["schema"] == "quanta-probe/run/1"
    expected = hashlib.sha256(json.dumps(document["run"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert document["checksum"] == expected
    assert document["run"]["history"][-1]["loss"] is None  # NaN is stored as null


def test_failed_runs_count_as_finished_and_keep_their_reason(tmp_path):
    store = ResultsFolder(tmp_path, _fingerprint())
    store.save_run(_run(failed=True))
    finished = ResultsFolder(tmp_path, _fingerprint()).finished()
    (run,) = finished.values()
    assert run.status == "failed" and run.failure == "test loss became nan in epoch 2"
    assert len(run.history) == 2


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit_value(path):
    path.write_text(path.read_text().replace("0.8125", "0.9125"))


def _other_schema(path):
    document = json.loads(path.read_text())
    document["schema"] = "quanta-probe/run/0"
    path.write_text(json.dumps(document))


def _renamed(path):
    path.write_bytes(path.with_name(f"{_run(seed=1).spec.key}.json").read_bytes())


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "not valid JSON"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "not UTF-8"),
        (_edit_value, "checksum mismatch"),
        (_other_schema, "schema"),
        (lambda p: p.write_text("[1, 2]"), "not a run file"),
        (_renamed, "holds run AnB__conv1__init0.9__seed1"),
    ],
)
def test_a_damaged_run_file_is_reported_set_aside_and_left_to_redo(tmp_path, damage, reason):
    store = ResultsFolder(tmp_path, _fingerprint())
    damaged = store.save_run(_run(seed=0))
    store.save_run(_run(seed=1))
    damage(damaged)
    store = ResultsFolder(tmp_path, _fingerprint())
    with pytest.warns(CorruptRunWarning, match="will be redone"):
        finished = store.finished()
    assert list(finished) == [_run(seed=1).spec.key]
    assert [name for name, _ in store.corrupt] == [damaged.name]
    assert reason in store.corrupt[0][1]
    assert not damaged.exists() and damaged.with_name(damaged.name + ".corrupt").exists()
    with pytest.raises(CorruptRunFile, match="unusable"):
        read_run_file(damaged.with_name(damaged.name + ".corrupt"))


def test_leftover_temporary_files_of_a_killed_write_are_removed(tmp_path):
    ResultsFolder(tmp_path, _fingerprint()).save_run(_run())
    leftovers = [tmp_path / "runs" / ".AnB__conv2__init0.9__seed0.json.k3j2.tmp", tmp_path / ".results.json.x1.tmp"]
    for path in leftovers:
        path.write_text('{"schema": "quanta-pro')
    store = ResultsFolder(tmp_path, _fingerprint())
    assert not any(path.exists() for path in leftovers)
    assert list(store.finished()) == [_run().spec.key] and store.corrupt == []


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_bytes(target, b"old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_the_measurement_is_written_as_strict_json_and_csv(tmp_path):
    store = ResultsFolder(tmp_path, _fingerprint())
    measurement = Measurement(
        {"epochs": 2}, {"arch": "paper-cnn"}, "digits[5-9]", ["conv1"], [_run(), _run(seed=1, failed=True)]
    )
    store.save_measurement(measurement)
    data = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert Measurement.from_dict(data).runs[0].to_dict() == measurement.runs[0].to_dict()
    assert (tmp_path / "results.csv").read_text() == measurement.to_csv()


# ---------------------------------------------------------------------------------------- fingerprint


def test_a_folder_of_another_scan_is_refused_naming_what_differs(tmp_path):
    ResultsFolder(tmp_path, _fingerprint()).save_run(_run())
    changed = _fingerprint(settings={"epochs": 20}, tasks={"AnB": "digits[0-4]"})
    with pytest.raises(
        ResultsError, match=r"tasks\.AnB: digits\[5-9\] → digits\[0-4\]; settings\.epochs: 12 → 20\)"
    ) as info:
        ResultsFolder(tmp_path, changed)
    assert "--fresh" in str(info.value) and "--out" in str(info.value) and "\n" not in str(info.value)
    assert (tmp_path / "runs" / f"{_run().spec.key}.json").exists()  # nothing was touched


def test_a_list_or_new_key_difference_is_named(tmp_path):
    ResultsFolder(tmp_path, _fingerprint())
    with pytest.raises(ResultsError, match=r"layers: \[conv1, conv2\] → \[conv1\]; extra: \(absent\) → 1"):
        ResultsFolder(tmp_path, _fingerprint(layers=["conv1"], extra=1))


def test_fresh_starts_over_and_keeps_foreign_files(tmp_path):
    store = ResultsFolder(tmp_path, _fingerprint())
    store.save_run(_run())
    store.save_measurement(Measurement({}, {}, "digits[5-9]", ["conv1"], [_run()]))
    (tmp_path / "transferability.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("mine")
    store = ResultsFolder(tmp_path, _fingerprint(settings={"epochs": 20}), fresh=True)
    assert store.finished() == {}
    assert _listing(tmp_path) == [".lock", "fingerprint.json", "notes.txt", "runs"]
    assert json.loads((tmp_path / "fingerprint.json").read_text())["fingerprint"]["settings"]["epochs"] == 20


def test_the_same_scan_resumes(tmp_path):
    ResultsFolder(tmp_path, _fingerprint()).save_run(_run())
    fingerprint = _fingerprint()
    fingerprint["settings"]["init"] = (0.9,)  # a tuple, as RunSettings holds it, equals the stored list
    assert list(ResultsFolder(tmp_path, fingerprint).finished()) == [_run().spec.key]


def test_a_folder_of_other_files_is_refused_even_with_fresh(tmp_path):
    (tmp_path / "thesis.tex").write_text("keep me")
    for fresh in (False, True):
        with pytest.raises(ResultsError, match="not a quanta-probe results folder.*thesis.tex"):
            ResultsFolder(tmp_path, _fingerprint(), fresh=fresh)
    assert (tmp_path / "thesis.tex").read_text() == "keep me"
    assert not (tmp_path / "fingerprint.json").exists()


def test_runs_without_a_fingerprint_are_not_adopted(tmp_path):
    ResultsFolder(tmp_path, _fingerprint()).save_run(_run())
    (tmp_path / "fingerprint.json").unlink()
    with pytest.raises(ResultsError, match="no fingerprint.json, so they cannot be checked.*--fresh"):
        ResultsFolder(tmp_path, _fingerprint())
    assert ResultsFolder(tmp_path, _fingerprint(), fresh=True).finished() == {}


def test_an_unreadable_fingerprint_is_refused_unless_fresh(tmp_path):
    ResultsFolder(tmp_path, _fingerprint())
    (tmp_path / "fingerprint.json").write_text('{"schema": "quanta')
    with pytest.raises(ResultsError, match="fingerprint.json' is unreadable.*--fresh"):
        ResultsFolder(tmp_path, _fingerprint())
    ResultsFolder(tmp_path, _fingerprint(), fresh=True)
    assert json.loads((tmp_path / "fingerprint.json").read_text())["fingerprint"] == _fingerprint()


@pytest.mark.parametrize("below", ["file/out", "file/a/b"])
def test_a_folder_that_cannot_be_created_is_refused_and_nothing_is_made(tmp_path, below):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match=r"cannot write results to .*\(Not a directory\); pick a folder"):
        ResultsFolder(tmp_path / below, _fingerprint())
    assert _listing(tmp_path) == ["file"]


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ResultsError, match="is a file, not a folder"):
        ResultsFolder(tmp_path / "out", _fingerprint())


def test_the_expected_runs_are_the_grid_of_the_scan():
    settings = RunSettings(init=(0.9, 0.5), runs=3, seed=7)
    fingerprint = _fingerprint(tasks={"AnB": "digits[5-9]", "AnA": "digits[0-4]"}, settings=settings.to_dict())
    assert expected_specs(json.loads(json.dumps(fingerprint))) == run_grid(
        ["conv1", "conv2"], settings.init, settings.seed, settings.runs, ["AnB", "AnA"]
    )


# --------------------------------------------------------------------------------------------- locking


_HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("busy", flush=True)
        sys.exit()
    os.pwrite(fd, b"4242\\n", 0)
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def test_a_folder_another_process_writes_to_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsError, match=r"another scan \(pid 4242\) is writing to"):
            ResultsFolder(tmp_path, _fingerprint())
    finally:
        holder.communicate("", timeout=30)
    store = ResultsFolder(tmp_path, _fingerprint())  # the holder is gone: the folder is free
    again = ResultsFolder(tmp_path, _fingerprint())  # the same process may open it again
    probe_lock = subprocess.run(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / ".lock")],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe_lock.stdout.strip() == "busy"
    store.close()
    again.close()
    probe_lock = subprocess.run(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / ".lock")],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe_lock.stdout.strip() == "locked"


# -------------------------------------------------------------------------------------- load_folder


def test_a_partial_folder_is_read_with_what_is_missing(tmp_path):
    store = ResultsFolder(tmp_path, _fingerprint())
    store.save_run(_run("conv1", 0))
    store.save_run(_run("conv1", 1, failed=True))
    _truncate(store.save_run(_run("conv2", 0)))
    before = _listing(tmp_path)
    measurement, status = load_folder(tmp_path)
    assert _listing(tmp_path) == before  # reading writes nothing
    assert (status.expected, status.done, status.finished) == (4, 1, 2)
    assert status.failed == [("AnB__conv1__init0.9__seed1", "test loss became nan in epoch 2")]
    assert status.missing == ["AnB__conv2__init0.9__seed0", "AnB__conv2__init0.9__seed1"]
    assert [name for name, _ in status.corrupt] == ["AnB__conv2__init0.9__seed0.json"]
    assert not status.complete
    assert (
        status.describe()
        == "2 of 4 runs finished (1 failed); 1 unreadable run file; 2 to do, resume with the same command"
    )
    assert [r.spec.key for r in measurement.runs] == ["AnB__conv1__init0.9__seed0", "AnB__conv1__init0.9__seed1"]
    summary = measurement.summary("conv1")
    assert (summary.runs, summary.ok_runs) == (2, 1)
    assert summary.mean["lambda_source"] == _run("conv1", 0).final["lambda_source"]  # the failed run is left out
    assert measurement.target == "digits[5-9]" and measurement.layers == ["conv1", "conv2"]


def test_a_folder_with_no_finished_run_has_no_measurement(tmp_path):
    ResultsFolder(tmp_path, _fingerprint())
    measurement, status = load_folder(tmp_path)
    assert measurement is None and len(status.missing) == status.expected == 4


def test_a_finished_folder_is_read_from_results_json(tmp_path):
    store = ResultsFolder(tmp_path, _fingerprint(layers=["conv1"], settings={"runs": 1}))
    run = _run()
    store.save_run(run)
    store.save_measurement(
        Measurement(
            {"epochs": 2}, {"arch": "paper-cnn"}, "digits[5-9]", ["conv1"], [run], extras={"baselines": {"x": 1}}
        )
    )
    measurement, status = load_folder(tmp_path)
    assert status.complete and (status.expected, status.done, status.missing) == (1, 1, [])
    assert measurement.extras == {"baselines": {"x": 1}}
    from_file, file_status = load_folder(tmp_path / "results.json")
    assert from_file.to_dict() == measurement.to_dict() and file_status.done == 1


def test_what_is_not_a_results_folder_is_a_results_error(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ResultsError, match="not a quanta-probe results folder"):
        load_folder(tmp_path)
    with pytest.raises(ResultsError, match="not a quanta-probe results.json"):
        load_folder(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------------------- interrupts


def test_sigterm_becomes_keyboard_interrupt_and_the_old_handler_returns():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with graceful_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes, at once
                pass
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    "argv, hint",
    [
        (
            ["/venv/bin/probe", "scan", "--out", "my results", "--fresh", "--epochs", "3"],
            "probe scan --out 'my results' --epochs 3",
        ),
        (["/src/probe/__main__.py", "scan", "m.pt", "--fresh=true"], "python -m probe scan m.pt"),
        (["./run.sh", "scan", "--no-fresh"], "./run.sh scan --no-fresh"),
    ],
)
def test_the_resume_hint_is_the_same_command_without_fresh(argv, hint):
    assert resume_hint(argv) == hint


def test_canonical_json_ignores_formatting_and_key_order():
    assert canonical_json({"b": 1, "a": [1.5, "λ"]}) == canonical_json(json.loads('{ "a": [1.5, "λ"], "b": 1 }'))


def test_a_folder_written_before_a_setting_existed_resumes_with_that_settings_default(tmp_path):
    older = _fingerprint()  # no gate_optimizer: written before the setting was added
    ResultsFolder(tmp_path, older).save_run(_run())
    adam = _fingerprint(settings={"gate_optimizer": "adam"})  # the default: what those runs used
    assert list(ResultsFolder(tmp_path, adam).finished()) == [_run().spec.key]
    with pytest.raises(ResultsError, match=r"settings.gate_optimizer: adam → sgd"):
        ResultsFolder(tmp_path, _fingerprint(settings={"gate_optimizer": "sgd"}))
