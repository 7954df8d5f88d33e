"""End to end: scans killed, interrupted, corrupted, refused and diverging, then resumed to the same numbers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import probe
import probe.engine.run
from probe.errors import ResultsError
from probe.models.checkpoint import save_checkpoint, source_info
from probe.results.reading import load_folder
from probe.results.store import CorruptRunWarning, read_run_file

LAYERS = ["conv1", "conv2"]
TARGET = "digits[5-9]"
SETTINGS = dict(epochs=2, runs=2, lr=1e-3, gate_lr=0.03, jobs=1)  # jobs=1: runs in this process
RUNS = len(LAYERS) * SETTINGS["runs"]

# A scan in its own process, as `probe scan --out` runs it; ``pause`` seconds after each epoch leave
# time to stop it between its first saved run and its last.
SCAN = textwrap.dedent(
    """
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    import probe
    from probe.util.interrupt import graceful_interrupts

    source, out, pause, layers, settings = sys.argv[1], sys.argv[2], float(sys.argv[3]), *map(json.loads, sys.argv[4:])
    try:
        with graceful_interrupts():
            probe.scan(source, layers, "digits[5-9]", out=out, progress=lambda event: time.sleep(pause), **settings)
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


@pytest.fixture(scope="module")
def source_path(tiny_source, tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "source.pt"
    save_checkpoint(tiny_source, source_info(tiny_source), path)
    return path


@pytest.fixture(scope="module")
def uninterrupted(source_path):
    """The reference: the same scan, run in one go in this process."""
    return probe.scan(source_path, LAYERS, TARGET, **SETTINGS)


def _start_scan(source_path, out, pause: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [str(source_path), str(out), str(pause), json.dumps(LAYERS), json.dumps(SETTINGS)]
    return subprocess.Popen(
        [sys.executable, "-c", SCAN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run_files(out) -> list:
    runs = out / "runs"
    return sorted(runs.glob("*.json")) if runs.is_dir() else []


def _stop_mid_scan(process: subprocess.Popen, out, signum: int) -> int:
    """Send ``signum`` once the first run is saved; return how many runs were saved before."""
    deadline = time.monotonic() + 120
    while not _run_files(out):
        assert process.poll() is None, f"the scan ended before its first run was saved: {process.communicate()}"
        assert time.monotonic() < deadline, "no run was saved within two minutes"
        time.sleep(0.01)
    assert process.poll() is None, "the scan ended before it could be stopped"
    process.send_signal(signum)
    return len(_run_files(out))


def _assert_same_runs(measurement, reference) -> None:
    assert [r.spec for r in measurement.runs] == [r.spec for r in reference.runs]
    for run, expected in zip(measurement.runs, reference.runs, strict=False):
        assert run.status == expected.status == "ok"
        differences = [
            f"epoch {got['epoch']} {metric}: {got[metric]!r} != {want[metric]!r}"
            for got, want in zip(run.history, expected.history, strict=False)
            for metric in want
            if got.get(metric) != want[metric]
        ]
        assert run.history == expected.history, f"{run.spec.key}: {differences}"  # every epoch and metric, bit for bit
        assert run.final == expected.final and run.steps == expected.steps


def test_a_killed_scan_resumes_to_the_uninterrupted_results(source_path, uninterrupted, tmp_path):
    out = tmp_path / "out"
    process = _start_scan(source_path, out, pause=0.2)
    _stop_mid_scan(process, out, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = len(_run_files(out))
    assert 1 <= saved < RUNS
    assert all(read_run_file(path).ok for path in _run_files(out))  # what is there is complete

    partial, status = load_folder(out)
    assert (status.expected, status.finished, len(status.missing)) == (RUNS, saved, RUNS - saved)
    assert not status.complete and len(partial.runs) == saved

    measurement = probe.scan(source_path, LAYERS, TARGET, out=out, **SETTINGS)
    assert measurement.environment["resumed_runs"] == saved
    _assert_same_runs(measurement, uninterrupted)
    measurement, status = load_folder(out)
    assert status.complete and status.done == RUNS and not status.missing
    _assert_same_runs(measurement, uninterrupted)


@pytest.mark.parametrize(
    "signum",
    # SIGTERM takes the same path once graceful_interrupts has turned it into KeyboardInterrupt (tested in test_store)
    [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM", marks=pytest.mark.slow)],
)
def test_an_interrupted_scan_stops_cleanly_and_resumes(source_path, uninterrupted, tmp_path, signum):
    out = tmp_path / "out"
    process = _start_scan(source_path, out, pause=0.2)
    _stop_mid_scan(process, out, signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    files = sorted((out / "runs").iterdir())
    assert 1 <= len(files) < RUNS
    for path in files:  # only finished runs, each complete and verified
        document = json.loads(path.read_text())
        canonical = json.dumps(document["run"], sort_keys=True, separators=(",", ":")).encode()
        assert hashlib.sha256(canonical).hexdigest() == document["checksum"]
        assert read_run_file(path).ok
    assert sorted(p.name for p in out.iterdir()) == [".lock", "fingerprint.json", "runs"]

    resumed = probe.scan(source_path, LAYERS, TARGET, out=out, **SETTINGS)
    assert resumed.environment["resumed_runs"] == len(files)
    _assert_same_runs(resumed, uninterrupted)


def test_a_corrupted_run_file_is_detected_and_redone(source_path, uninterrupted, tmp_path):
    out = tmp_path / "out"
    probe.scan(source_path, LAYERS, TARGET, out=out, **SETTINGS)
    damaged = out / "runs" / f"{uninterrupted.runs[1].spec.key}.json"
    damaged.write_bytes(damaged.read_bytes()[:200])
    redone = []
    with pytest.warns(CorruptRunWarning, match=f"{damaged.name}: not valid JSON.*will be redone"):
        measurement = probe.scan(
            source_path, LAYERS, TARGET, out=out, progress=lambda e: redone.append(e.spec.key), **SETTINGS
        )
    assert set(redone) == {damaged.stem}
    assert (out / "runs" / f"{damaged.name}.corrupt").exists()
    assert read_run_file(damaged).to_dict()["history"] == uninterrupted.runs[1].history
    _assert_same_runs(measurement, uninterrupted)
    _assert_same_runs(load_folder(out)[0], uninterrupted)


def test_a_folder_of_other_settings_is_refused_before_training_and_fresh_starts_over(source_path, tmp_path):
    out = tmp_path / "out"
    small = dict(SETTINGS, epochs=1, runs=1)
    probe.scan(source_path, ["conv1"], TARGET, out=out, **small)
    progress = []
    with pytest.raises(ResultsError, match=r"settings\.epochs: 1 → 2.*--fresh") as info:
        probe.scan(source_path, ["conv1"], TARGET, out=out, progress=progress.append, **dict(small, epochs=2))
    assert progress == [] and "\n" not in str(info.value)
    measurement = probe.scan(
        source_path, ["conv1"], TARGET, out=out, fresh=True, progress=progress.append, **dict(small, epochs=2)
    )
    assert len(progress) == 2 and measurement.environment["resumed_runs"] == 0
    assert len(measurement.runs[0].history) == 2
    assert len(_run_files(out)) == 1 and load_folder(out)[1].complete


def test_an_unwritable_out_fails_before_training_and_creates_nothing(source_path, tmp_path):
    (tmp_path / "a-file").write_text("x")
    progress = []
    with pytest.raises(ResultsError, match="cannot write results to .*a-file/out.*--out"):
        probe.scan(source_path, LAYERS, TARGET, out=tmp_path / "a-file" / "out", progress=progress.append, **SETTINGS)
    assert progress == []
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_a_diverging_run_is_saved_as_failed_and_not_redone(source_path, tmp_path):
    out = tmp_path / "out"
    measurement = probe.scan(source_path, ["conv1"], TARGET, out=out, **dict(SETTINGS, lr=1e6, gate_lr=1e6))
    assert [r.status for r in measurement.runs] == ["failed", "failed"]
    assert all("loss became nan in epoch 1" in r.failure for r in measurement.runs)
    summary = measurement.summary("conv1")
    assert (summary.runs, summary.ok_runs) == (2, 0)
    progress = []
    again = probe.scan(
        source_path, ["conv1"], TARGET, out=out, progress=progress.append, **dict(SETTINGS, lr=1e6, gate_lr=1e6)
    )
    assert progress == [] and again.environment["resumed_runs"] == 2
    status = load_folder(out)[1]
    assert (status.done, len(status.failed), status.missing) == (0, 2, [])


def test_a_run_that_turns_nan_is_left_out_of_the_means(source_path, uninterrupted, tmp_path, monkeypatch):
    """NaN logits injected into seed 1 from its second epoch: the trainer stops it; seed 0 alone makes the mean."""
    real_fit = probe.engine.run.fit

    def fit_with_nan_for_seed_1(*, forward, seed, on_epoch=None, **kwargs):
        if seed != 1:
            return real_fit(forward=forward, seed=seed, on_epoch=on_epoch, **kwargs)
        epochs_done = []

        def poisoned(x, idx, split):
            logits = forward(x, idx, split)
            return logits * float("nan") if epochs_done and split == "train" else logits

        def count(event):
            epochs_done.append(event.epoch)
            if on_epoch is not None:
                on_epoch(event)

        return real_fit(forward=poisoned, seed=seed, on_epoch=count, **kwargs)

    monkeypatch.setattr(probe.engine.run, "fit", fit_with_nan_for_seed_1)
    out = tmp_path / "out"
    measurement = probe.scan(source_path, ["conv1"], TARGET, out=out, **SETTINGS)
    ok, failed = measurement.runs
    assert ok.ok and ok.history == uninterrupted.runs[0].history
    assert failed.status == "failed" and failed.failure == "training loss became nan in epoch 2"
    assert len(failed.history) == 1
    summary = measurement.summary("conv1")
    assert (summary.runs, summary.ok_runs) == (2, 1)
    assert summary.mean == {k: v for k, v in ok.final.items()}
    reread, status = load_folder(out)
    assert status.failed == [(failed.spec.key, failed.failure)]
    assert reread.summary("conv1").mean == summary.mean
