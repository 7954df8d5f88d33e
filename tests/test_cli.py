"""The ``probe`` command line: every command, its output formats and every user error."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, explain, invoke
from rich.console import Console
from rich.text import Text
from typer.main import get_command

import probe
import probe.baselines.transfer
import probe.engine.run
import probe.engine.sources
from probe.api.listing import DEFAULT_DATA as LISTING_DEFAULT_DATA
from probe.cli import LiveProgress, app
from probe.cli.options import SCAN_DEFAULTS, shown_default
from probe.report.tables import format_mean_std, results_table, to_json
from probe.results import SCHEMA, Measurement, RunResult, RunSpec
from probe.settings import (
    DEFAULT_ARCH,
    DEFAULT_PRESET,
    DEFAULT_SOURCE_DATA,
    DIGITS_PRESET,
    DIGITS_SOURCE_PRESET,
    GATE_BUDGET,
    RunSettings,
)

TINY = ["--width", "0.25", "--device", "cpu"]
PAPER_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    return {"PROBE_CACHE": str(tmp_path_factory.mktemp("probe-cache"))}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, cache):
    """One small end-to-end scan: 2 layers × 2 inits × (AnB, AnA) × 1 run, 2 epochs, cheap baselines."""
    out = tmp_path_factory.mktemp("scan") / "results"
    args = [
        "scan",
        *TINY,
        "--epochs",
        "2",
        "--layers",
        "conv1",
        "--layers",
        "fc",
        "--init",
        "0.9,0.5",
        "--control",
        "--baselines",
        "logme,hscore",
        "--out",
        out,
    ]
    result = invoke(args, env=cache)
    assert result.exit_code == 0, explain(result)
    return out, result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, cache) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("ckpt") / "source.pt"
    result = invoke(["train", *TINY, "--epochs", "1", "--out", path], env=cache)
    assert result.exit_code == 0, explain(result)
    return path, result


# -------------------------------------------------------------------------------- the basics


def test_version():
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"{probe.__version__}\n"


def test_every_option_of_every_command_has_help():
    group = get_command(app)
    assert sorted(group.commands) == ["layers", "recommend", "report", "scan", "train"]
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help and len(param.help) > 10, f"probe {name} {param.opts[0]} has no help"
        result = invoke([name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout


def test_scan_help_lists_every_option_of_the_issue():
    scan = get_command(app).commands["scan"]
    options = {
        opt for param in scan.params for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    }
    wanted = (
        "arch source target source-data layers init runs epochs batch-size lr gate-lr gate-budget gate-optimizer "
        "preset seed device data-dir download control out fresh jobs augment no-augment baselines backend address "
        "gpus-per-run cpus-per-run width pretrained json quiet"
    )
    assert {f"--{name}" for name in wanted.split()} <= options


def _help(command: str, flag: str) -> str:
    params = get_command(app).commands[command].params
    return next(param.help for param in params if flag in getattr(param, "opts", []))


def test_help_defaults_are_the_settings_and_presets_values():
    """Every default a help text shows is RunSettings' or a preset's (it said 'digits: off' for probe train's
    --augment, whose digits source trains with augmentation)."""
    base = RunSettings()
    scan_default = {**RunSettings().to_dict(), **DEFAULT_PRESET}
    digits, source_digits = {**scan_default, **DIGITS_PRESET}, {**base.to_dict(), **DIGITS_SOURCE_PRESET}
    on = {True: "on", False: "off"}
    expected = {
        ("scan", "--epochs"): f"[default: {scan_default['epochs']}; digits: {digits['epochs']}]",
        ("scan", "--lr"): f"[default: {scan_default['lr']:g}; digits: {digits['lr']:g}]",
        ("scan", "--batch-size"): f"[default: {base.batch_size}]",
        ("scan", "--seed"): f"[default: {base.seed}]",
        ("scan", "--device"): f"[default: {base.device}]",
        ("scan", "--runs"): f"[default: {base.runs}]",
        ("scan", "--init"): f"[default: {','.join(f'{v:g}' for v in base.init)}]",
        ("scan", "--augment"): f"[default: {on[scan_default['augment']]}; digits: {on[digits['augment']]}]",
        ("scan", "--gate-budget"): f"[default: {GATE_BUDGET:g}; --preset paper: none]",
        ("scan", "--gate-optimizer"): f"[default: {scan_default['gate_optimizer']}]",
        ("scan", "--lr-schedule"): f"[default: {DEFAULT_PRESET['lr_schedule']}; --preset paper: {base.lr_schedule}]",
        ("scan", "--source-data"): f"[default: the checkpoint's record, else {DEFAULT_SOURCE_DATA}]",
        ("scan", "--arch"): f"[default: {DEFAULT_ARCH}, or the checkpoint's]",
        ("train", "--epochs"): f"[default: {base.epochs}; digits: {source_digits['epochs']}]",
        ("train", "--lr"): f"[default: {base.lr:g}; digits: {source_digits['lr']:g}]",
        ("train", "--augment"): f"[default: {on[base.augment]}]",
        ("layers", "--data"): f"[default: {LISTING_DEFAULT_DATA}]",
    }
    for (command, flag), text in expected.items():
        assert "\\" + text in _help(command, flag), (command, flag, _help(command, flag))
    assert "probe layers" in _help("scan", "--layers") and "every probeable layer" not in _help("scan", "--layers")


def test_a_changed_preset_changes_the_help_it_renders():
    changed = {**SCAN_DEFAULTS, "digits": SCAN_DEFAULTS["digits"].with_(epochs=7, augment=True)}
    assert shown_default("epochs", changed) == f"\\[default: {RunSettings().epochs}; digits: 7]"
    assert shown_default("augment", changed) == "\\[default: on]"  # the same as the default: not repeated


def test_python_m_probe_help():
    result = subprocess.run(
        [sys.executable, "-m", "probe", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    for command in ("train", "scan", "layers", "report"):
        assert command in result.stdout


# ------------------------------------------------------------------------------------- scan


def test_scan_writes_results_table_and_figures(scanned):
    out, result = scanned
    assert "source: trained a paper-cnn on digits[0-4]" in result.stderr
    assert "QUANTA transferability: paper-cnn digits[0-4] → digits[5-9]" in result.stdout
    for header in ("λS (init 0.9)", "λS (init 0.5)", "top-1", "AnA λS (init 0.9)", "LogME", "H-score"):
        assert header in result.stdout
    assert result.stdout.index("conv1") < result.stdout.index("fc")  # forward order

    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == SCHEMA
    # Digits defaults fill the options the user did not give; the given ones win.
    assert (
        data["settings"]["epochs"] == 2
        and data["settings"]["lr"] == DIGITS_PRESET["lr"]
        and data["settings"]["gate_budget"] == DIGITS_PRESET["gate_budget"]
        and data["settings"]["augment"] == DIGITS_PRESET["augment"]
    )
    assert data["settings"]["init"] == [0.9, 0.5]
    assert data["layers"] == ["conv1", "fc"]
    assert data["target"] == "digits[5-9]"
    assert len(data["runs"]) == 2 * 2 * 2
    for run in data["runs"]:
        assert [h["epoch"] for h in run["history"]] == [1, 2]
        assert all(0.0 < h["lambda_source"] < 1.0 for h in run["history"])
    assert set(data["extras"]["baselines"]["per_layer"]["conv1"]) == {"logme", "hscore"}

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["layer"], float(r["init"]), r["task"]) for r in rows) == sorted(
        (layer, init, task) for layer in ("conv1", "fc") for init in (0.9, 0.5) for task in ("AnB", "AnA")
    )
    for name in ("transferability.png", "dynamics.png", "comparison.png"):
        width, height = png_size(out / name)
        assert width >= 400 and height >= 300, (name, width, height)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_scan_reuses_the_cached_source_and_json_is_all_of_stdout(cache, scanned):
    result = invoke(["scan", *TINY, "--epochs", "2", "--layers", "fc", "--json"], env=cache)
    assert result.exit_code == 0, explain(result)
    assert "reused the cached paper-cnn" in result.stderr
    assert list((Path(cache["PROBE_CACHE"]) / "sources").glob("paper-cnn-digits_0-4-*.pt"))  # under $PROBE_CACHE
    data = json.loads(result.stdout)  # nothing else on stdout
    assert data["schema"] == SCHEMA and data["layers"] == ["fc"]
    assert data["source"]["dataset"] == "digits[0-4]" and isinstance(data["source"]["test_top1"], float)


def test_scan_json_quiet_leaves_stderr_empty(cache, scanned):
    result = invoke(
        ["scan", *TINY, "--epochs", "2", "--layers", "conv[64]", "--runs", "1", "--json", "--quiet"], env=cache
    )
    assert result.exit_code == 0, explain(result)
    assert result.stderr == ""
    assert json.loads(result.stdout)["layers"] == ["conv4", "conv6"]  # the glob's matches, in forward order


def test_train_then_scan_a_checkpoint(checkpoint, cache):
    path, result = checkpoint
    assert path.is_file()
    assert "source test top-1" in result.stdout and str(path) in result.stdout
    digest = probe.util.files.file_sha256(path)
    scan = invoke(
        ["scan", "--source", path, "--layers", "conv2", "--epochs", "1", "--no-augment", "--json", "--quiet"], env=cache
    )
    assert scan.exit_code == 0, explain(scan)
    data = json.loads(scan.stdout)
    assert data["target"] == "digits[5-9]"  # the pairing recorded in the checkpoint
    assert data["source"]["checkpoint"] == str(path)
    assert data["settings"]["augment"] is False
    assert probe.util.files.file_sha256(path) == digest  # the source file is never written


def test_interrupted_scan_says_how_to_resume_and_resumes(tmp_path, cache, scanned, monkeypatch):
    import probe.backends.serial

    real_run_one, calls = probe.backends.serial.run_one, []

    def interrupted_after_first(context, spec, on_epoch=None):
        calls.append(spec)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_one(context, spec, on_epoch)

    monkeypatch.setattr(probe.backends.serial, "run_one", interrupted_after_first)
    out = tmp_path / "partial"
    args = ["scan", *TINY, "--epochs", "1", "--layers", "conv1,fc", "--jobs", "1", "--out", out]  # in-process runs
    result = invoke(args, env=cache)
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert f"interrupted: 1 run saved in {out}; resume with: probe scan" in result.stderr
    assert "--layers conv1,fc" in result.stderr

    report = invoke(["report", out, "--no-figures"])
    assert report.exit_code == 0, explain(report)
    assert "partial results: 1 of 2 runs finished" in report.stderr

    monkeypatch.setattr(probe.backends.serial, "run_one", real_run_one)
    resumed = invoke([*args, "--json"], env=cache)
    assert resumed.exit_code == 0, explain(resumed)
    assert json.loads(resumed.stdout)["environment"]["resumed_runs"] == 1


def test_sigterm_stops_a_scan_cleanly(tmp_path, checkpoint):
    source, _ = checkpoint
    out = tmp_path / "terminated"
    # stderr is a terminal, so the live display shows each epoch: the signal follows the first one shown, seconds
    # before the scan's 40 epochs (in this process: --jobs 1) would be done
    env = {**os.environ, "PROBE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    args = ["--source", source, "--epochs", 20, "--layers", "conv1,fc", "--jobs", 1, "--out", out]
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "probe", "scan", *map(str, args)], stdout=subprocess.PIPE, stderr=follower, env=env
    )
    os.close(follower)
    shown = b""

    def read_more(deadline: float) -> bool:
        nonlocal shown
        ready, _, _ = select.select([leader], [], [], max(0.0, deadline - time.monotonic()))
        try:
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # EIO: the scan closed the terminal
            chunk = b""
        shown += chunk
        return bool(chunk)

    try:
        deadline = time.monotonic() + 60
        while not re.search(rb"epoch \d+/20", shown) and read_more(deadline):
            pass
        assert re.search(rb"epoch \d+/20", shown), shown.decode(errors="replace")[-2000:]
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while read_more(deadline):
            pass
        stdout = process.stdout.read()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    stderr = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))  # the display's codes out
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stdout == b""
    assert "resume with: python -m probe scan" in stderr


# ----------------------------------------------------------------------------------- report


def test_report_rerenders_table_and_figures(scanned, tmp_path):
    out, first = scanned
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("transferability.png", "dynamics.png"):
        (copy / name).unlink()
    result = invoke(["report", copy])
    assert result.exit_code == 0, explain(result)
    assert "QUANTA transferability" in result.stdout and "LogME" in result.stdout
    assert "8 of 8 runs finished" in result.stderr
    for name in ("transferability.png", "dynamics.png"):
        assert png_size(copy / name)[0] >= 400

    as_json = invoke(["report", copy, "--json", "--no-figures"])
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert data["status"]["expected"] == 8 and data["status"]["missing"] == 0
    assert data["results"]["schema"] == SCHEMA and len(data["results"]["runs"]) == 8


def test_report_of_a_partial_folder_counts_missing_runs(scanned, tmp_path):
    out, _ = scanned
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "results.json").unlink()
    run_files = sorted((partial / "runs").glob("*.json"))
    run_files[0].unlink()
    result = invoke(["report", partial, "--json", "--no-figures"])
    assert result.exit_code == 0, explain(result)
    status = json.loads(result.stdout)["status"]
    assert (status["expected"], status["done"], status["missing"]) == (8, 7, 1)
    text = invoke(["report", partial, "--no-figures"])
    assert "partial results: 7 of 8 runs finished" in text.stderr and "1 to do" in text.stderr


def test_figures_with_names_the_font_lacks_are_drawn_without_glyph_warnings(tmp_path, recwarn):
    """A class folder or a layer named in Chinese: matplotlib warned 'Glyph … missing from font' on the terminal,
    once per character and figure."""
    history = [{"lambda_source": 0.9 - 0.01 * e, "top1": 0.8, "epoch": e + 1} for e in range(3)]
    runs = [
        RunResult(RunSpec(layer, 0.9, "AnB", 0), history, {"lambda_source": 0.88, "top1": 0.8}, steps=9, gate_lr=0.1)
        for layer in ("层一", "fc")
    ]
    measurement = Measurement(
        {"init": [0.9], "runs": 1, "last_epochs": 3}, {"arch": "paper-cnn", "dataset": "./狗[0-1]"}, "./猫[0-1]",
        ["层一", "fc"], runs, extras={"tasks": {"AnB": "./猫[0-1]"}, "class_names": {"AnB": ["狗", "猫"]},
                                      "baselines": {"per_layer": {"层一": {"logme": 0.1}, "fc": {"logme": 0.3}}}},
    )  # fmt: skip
    (tmp_path / "results.json").write_text(to_json(measurement.to_dict()))
    result = invoke(["report", tmp_path])
    assert result.exit_code == 0, explain(result)
    assert "Glyph" not in result.output
    glyphs = [str(w.message) for w in recwarn if "Glyph" in str(w.message)]
    assert glyphs == []
    for name in ("transferability.png", "dynamics.png", "comparison.png"):
        assert png_size(tmp_path / name)[0] >= 400


# ----------------------------------------------------------------------------------- layers


def test_layers_lists_paper_cnn_in_forward_order():
    result = invoke(["layers", "--json"])
    assert result.exit_code == 0, explain(result)
    data = json.loads(result.stdout)
    assert data["input_shape"] == [1, 8, 8]
    names = [layer["name"] for layer in data["layers"]]
    assert [n for n in names if n in PAPER_LAYERS] == PAPER_LAYERS
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert all(by_name[n]["default"] for n in PAPER_LAYERS)
    assert by_name["conv1"]["shape"][-3:] == [64, 8, 8] and by_name["conv6"]["shape"][-3:] == [512, 2, 2]
    assert by_name["fc"]["shape"][-1] == 2048

    table = invoke(["layers", "--data", "cifar10", "--width", "0.25"])
    assert table.exit_code == 0, explain(table)
    assert "16×32×32" in table.stdout and "conv6" in table.stdout


def test_layers_of_a_checkpoint_use_its_input_size(checkpoint):
    path, _ = checkpoint
    result = invoke(["layers", "--source", path, "--json"])
    assert result.exit_code == 0, explain(result)
    data = json.loads(result.stdout)
    assert data["input_shape"] == [1, 8, 8] and data["arch"] == "paper-cnn"
    assert {layer["name"]: layer["shape"] for layer in data["layers"]}["conv1"][-3:] == [16, 8, 8]


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["scan", "--init", "1.5"], ["init λS must lie strictly between 0 and 1"]),
        (["scan", "--init", "0.9,abc"], ["--init takes numbers"]),
        (["scan", "--epochs", "0"], ["epochs must be a whole number ≥ 1"]),
        (["scan", "--runs", "-1"], ["runs must be a whole number ≥ 1"]),
        (["scan", "--lr", "-1e-3"], ["lr must be a positive number"]),
        (["scan", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["scan", "--width", "0"], ["--width must be a positive number"]),
        (["scan", "--arch", "tv:resnet18", "--width", "0.5"], ["--width only applies to paper-cnn"]),
        (["scan", "--arch", "no-such-net"], ["unknown architecture 'no-such-net'"]),
        (["scan", "--target", "mnist"], ["unknown dataset 'mnist'"]),
        (["scan", "--source-data", "digits[3-1]"], ["descending range"]),
        (["scan", "--source", "missing.pt"], ["does not exist"]),
        (["scan", "--baselines", "logme,accuracy"], ["unknown baseline 'accuracy'"]),
        (["scan", "--backend", "spark"], ["'spark' is not one of"]),
        (["scan", "--address", "ray://head:10001"], ["--address needs --backend ray"]),
        (["scan", "--source", "a.pt", "--pretrained"], ["--pretrained needs --arch"]),
        (["scan", "--pretrained", "--arch", "resnet18"], ["give --target"]),
        (["scan", "--pretrained", "--target", "cifar10"], ["--pretrained needs --arch"]),
        (["scan", "--bogus"], ["No such option", "probe scan --help"]),
        (["scan", "--epochs", "many"], ["Invalid value for '--epochs'"]),
        (["train", "--epochs", "1"], ["Missing option '--out'"]),
        (["train", "--out", "."], ["is a folder"]),
        (["train", "--out", "x.pt", "--lr", "0"], ["lr must be a positive number"]),
        (["layers", "--arch", "no-such-net"], ["unknown architecture"]),
        (["report", "no/such/folder"], ["does not exist"]),
        (["frobnicate"], ["No such command"]),
    ],
)
def test_user_errors_are_one_line_exit_2_and_write_nothing(args, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never"
    if args[0] == "scan":
        args = [*args, "--out", out]
    assert_user_error(invoke(args), *fragments)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a folder


def test_corrupt_checkpoint_and_bad_layer_are_one_line_errors(tmp_path, checkpoint, cache):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert_user_error(invoke(["scan", "--source", bad], env=cache), "corrupt")
    path, _ = checkpoint
    out = tmp_path / "never"
    assert_user_error(invoke(["scan", "--source", path, "--layers", "conv9", "--out", out], env=cache), "conv9")
    assert not out.exists()
    assert_user_error(
        invoke(["scan", "--source", path, "--source-data", "digits[5-9]"], env=cache), "records source task digits[0-4]"
    )


def test_cifar_target_without_data_is_a_one_line_error(tmp_path, checkpoint, cache):
    path, _ = checkpoint
    result = invoke(["scan", "--source", path, "--target", "cifar100", "--data-dir", tmp_path / "empty"], env=cache)
    assert_user_error(result)


def _check_fails_before_training(args, tmp_path, fragment, monkeypatch):
    """``args`` fail with one line and exit 2 before any training starts, and nothing is written (no source cached)."""
    trained: list[dict] = []

    def no_training(**kwargs):
        trained.append(kwargs)
        raise RuntimeError("trained before the check")

    for module in (probe.engine.sources, probe.engine.run, probe.baselines.transfer):  # every caller of fit
        monkeypatch.setattr(module, "fit", no_training)
    env = {"PROBE_CACHE": str(tmp_path / "cache"), "PROBE_DATA": str(tmp_path / "data")}
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(args, env=env)
    assert trained == [], "the check ran after training began"
    assert_user_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_cifar_target_without_the_data_fails_before_a_source_is_trained(tmp_path, monkeypatch):
    _check_fails_before_training(["scan", "--target", "cifar10", *TINY], tmp_path, "CIFAR-10 not found", monkeypatch)


def test_a_checkpoint_that_cannot_be_written_fails_before_training(tmp_path, monkeypatch):
    args = ["train", "--out", "/proc/ck.pt", *TINY]
    _check_fails_before_training(args, tmp_path, "cannot write the checkpoint", monkeypatch)


def test_an_empty_layer_list_is_an_error_not_every_layer(tmp_path, monkeypatch):
    args = ["scan", "--layers", "", *TINY, "--out", tmp_path / "out"]
    _check_fails_before_training(args, tmp_path, "the layer list is empty", monkeypatch)


def test_the_cli_and_the_api_record_the_same_settings_for_the_same_request(tmp_path, checkpoint, cache):
    path, _ = checkpoint
    by_cli = tmp_path / "cli"
    args = ["scan", "--source", path, "--layers", "conv1", "--epochs", "1", "--device", "cpu", "--out", by_cli]
    assert invoke([*args, "--json"], env=cache).exit_code == 0
    by_api = tmp_path / "api"
    probe.scan(path, ["conv1"], epochs=1, device="cpu", out=by_api)
    recorded = [json.loads((folder / "results.json").read_text())["settings"] for folder in (by_cli, by_api)]
    assert recorded[0] == recorded[1]
    assert (recorded[0]["lr"], recorded[0]["gate_budget"]) == (DIGITS_PRESET["lr"], DIGITS_PRESET["gate_budget"])


def test_unwritable_out_fails_before_training(tmp_path):
    (tmp_path / "a-file").write_text("x")
    env = {"PROBE_CACHE": str(tmp_path / "cache")}
    assert_user_error(invoke(["scan", "--out", tmp_path / "a-file" / "results"], env=env), "cannot write results")
    assert_user_error(invoke(["scan", "--out", tmp_path / "a-file"], env=env), "is a file")
    assert not (tmp_path / "cache").exists()  # no source was trained


def test_report_of_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_user_error(invoke(["report", tmp_path]), "not a quanta-probe results folder")


# -------------------------------------------------------------------------------- rendering


def test_format_and_strict_json():
    assert format_mean_std(0.81234, 0.01432, ok_runs=3) == "0.812 ± 0.014"
    assert format_mean_std(0.81234, 0.0, ok_runs=1) == "0.812"
    assert format_mean_std(math.nan, math.nan, ok_runs=0) == "—"
    assert json.loads(to_json({"a": [1.5, math.nan, math.inf]})) == {"a": [1.5, None, None]}


def _render(table) -> str:
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(table)
    return console.export_text()


def test_table_shows_failed_runs_and_baseline_columns(scanned):
    out, _ = scanned
    measurement = Measurement.from_dict(json.loads((out / "results.json").read_text()))
    failed = next(r for r in measurement.runs if r.spec == RunSpec("fc", 0.9, "AnB", 0))
    failed.status, failed.failure = "failed", "training loss became nan in epoch 2"
    measurement.extras["baselines"]["per_layer"]["fc"]["AnB_frozen"] = {"mean": 0.61, "std": 0.02}
    text = _render(results_table(measurement))
    assert "ok / runs" in text and "1 / 2" in text  # fc: the init-0.9 run failed, the init-0.5 run did not
    assert "Yosinski AnB" in text and "0.610 ± 0.020" in text
    assert f"source test top-1 {measurement.source['test_top1']:.3f}" in text
    assert "gate budget" in text


def test_live_progress_tracks_the_whole_scan():
    from probe.engine.progress import ProgressEvent

    def shown(layers: tuple[str, ...]) -> tuple[str, set[int]]:
        """The display's last frame (drawn when it closes) after every epoch of a run per layer, of 2 runs."""
        buffer = io.StringIO()
        live = LiveProgress(enabled=True, console=Console(file=buffer, force_terminal=True, width=200))
        callback = live.phase("scan")
        with live:
            for index, layer in enumerate(layers):
                for epoch in (1, 2, 3):
                    metrics = {"lambda_source": 0.8, "top1": 0.5}
                    callback(ProgressEvent(RunSpec(layer, 0.9, "AnB", 0), epoch, 3, metrics, index, 2))
        return Text.from_ansi(buffer.getvalue()).plain.strip(), live.finished_runs

    half, finished = shown(("conv1",))  # one of two runs: half of the whole scan's epochs
    assert " 50% " in half and half.endswith("run 1/2 · AnB conv1 init 0.9 seed 0 · epoch 3/3 · λS 0.800 · top-1 0.500")
    assert finished == {0}
    whole, finished = shown(("conv1", "fc"))
    assert " 100% " in whole and whole.endswith("run 2/2 · AnB fc init 0.9 seed 0 · epoch 3/3 · λS 0.800 · top-1 0.500")
    assert finished == {0, 1}


@pytest.mark.slow
def test_bare_probe_scan_runs_the_embedded_default(tmp_path, cache):
    result = invoke(["scan", "--json", "--quiet"], env=cache)
    assert result.exit_code == 0, explain(result)
    data = json.loads(result.stdout)
    assert data["layers"] == PAPER_LAYERS and data["target"] == "digits[5-9]"
    assert data["settings"]["epochs"] == probe.settings.DIGITS_PRESET["epochs"]
