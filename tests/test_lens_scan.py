"""The lenses wired into a scan: names in ``baselines=`` and ``--baselines``, numbers equal to the lens functions
applied to features computed here independently, features computed once per layer, CSV columns, ``probe report``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

import probe
import probe.api.scanning
from probe.api import prepare
from probe.baselines import BASELINES, cka_after_run, lenses, train_alone
from probe.baselines import compare as compare_module
from probe.baselines.scores import h_score, logme
from probe.cli import app
from probe.core.hooks import source_forward
from probe.errors import SettingsError
from probe.report.tables import correlations_table, results_table
from probe.results import Measurement, RunSpec
from probe.settings import RunSettings

LAYERS = ["conv1", "conv4"]
LENSES = ("linear", "knn", "cka", "leep", "nce", "transrate", "hscore", "hscore_plain", "logme")


def _pooled(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's tensors, global-average-pooled over H, W: written here, not taken from probe.baselines."""
    model.eval()
    with torch.no_grad():
        parts = [source_forward(model, layer, x[i : i + 256]).mean(dim=(2, 3)).float() for i in range(0, len(x), 256)]
    return torch.cat(parts)


@pytest.fixture(scope="module")
def lens_scan(tiny_source, tmp_path_factory):
    """A one-epoch, two-layer digits scan with every lens; and how often the baselines computed features."""
    out = tmp_path_factory.mktemp("lens-scan") / "scan"
    calls: Counter = Counter()
    forwards = Counter()
    original_features, original_run = compare_module.layer_features, probe.api.scanning.run_baselines
    state = {"baselines": False}

    def counting_features(model, layer, x, *args, **kwargs):
        if state["baselines"]:
            calls[(model is tiny_source, layer, len(x))] += 1
        return original_features(model, layer, x, *args, **kwargs)

    def counting_run(context, *args, **kwargs):
        state["baselines"] = True
        handle = context.source.register_forward_pre_hook(lambda module, inputs: forwards.update(["source"]))
        try:
            return original_run(context, *args, **kwargs)
        finally:
            handle.remove()
            state["baselines"] = False

    mp = pytest.MonkeyPatch()
    mp.setattr(compare_module, "layer_features", counting_features)
    mp.setattr(probe.api.scanning, "run_baselines", counting_run)
    try:
        m = probe.scan(
            tiny_source, layers=LAYERS, epochs=1, runs=1, lr=1e-3, baselines=LENSES, out=out, device="cpu", jobs=1
        )
    finally:
        mp.undo()
    return m, out, calls, forwards


def test_every_lens_is_a_baseline_name():
    assert set(LENSES) <= set(BASELINES) and {"yosinski", "logme", "hscore"} <= set(BASELINES)


def test_scan_numbers_equal_the_lenses_on_independent_features(lens_scan, tiny_source):
    m, _, _, _ = lens_scan
    settings = RunSettings.from_dict(m.settings)
    context = prepare(tiny_source, "digits[5-9]", settings=settings).context
    train, test = context.tasks["AnB"].train, context.tasks["AnB"].test
    baselines = m.extras["baselines"]
    per_layer = baselines["per_layer"]
    for layer in LAYERS:
        f_train, f_test = _pooled(tiny_source, layer, train.x), _pooled(tiny_source, layer, test.x)
        got = per_layer[layer]
        linear = lenses.linear_probe_accuracy(f_train, train.y, f_test, test.y, seed=settings.seed)["accuracy"]
        assert got["linear"] == pytest.approx(linear, abs=1e-12)
        assert got["knn"] == pytest.approx(lenses.knn_accuracy(f_train, train.y, f_test, test.y)["accuracy"], abs=1e-12)
        eps = baselines["lens_settings"]["transrate_eps"]  # the eps recorded is the one used
        assert got["transrate"] == pytest.approx(lenses.transrate(f_train, train.y, eps=eps), rel=1e-9)
        assert got["hscore"] == pytest.approx(lenses.regularized_h_score(f_train, train.y), rel=1e-9)
        assert got["hscore_plain"] == pytest.approx(lenses.h_score(f_train, train.y), rel=1e-9)
        assert got["hscore"] == pytest.approx(h_score(f_train, train.y, shrinkage=True), rel=1e-9)
        assert got["logme"] == pytest.approx(logme(f_train, train.y), rel=1e-9)
        # CKA with the trained QUANTA target: one value per run, in [0, 1]
        assert got["cka"]["runs"] == 1 and 0.0 <= got["cka"]["mean"] <= 1.0
        (run,) = [r for r in m.runs if r.spec.layer == layer and r.spec.task == "AnB"]
        assert run.measures["cka"] == got["cka"]["mean"]
        # CKA with the target trained alone: retrained here with the same seed
        alone = train_alone(context, "AnB", settings.seed).model
        expected = lenses.linear_cka(f_test, _pooled(alone, layer, test.x))
        assert got["cka_alone"]["mean"] == pytest.approx(expected, rel=1e-6)
    # LEEP and NCE: the source head once per scan, not per layer
    with torch.no_grad():
        tiny_source.eval()
        probs = torch.softmax(tiny_source(train.x).double(), dim=1)
    assert baselines["head"]["leep"] == pytest.approx(lenses.leep(probs, train.y), rel=1e-9)
    assert baselines["head"]["nce"] == pytest.approx(lenses.nce(probs.argmax(1), train.y), rel=1e-9)
    assert not any(key in per_layer[layer] for layer in LAYERS for key in ("leep", "nce"))
    # every per-layer lens has its rank correlation (NaN with two layers)
    assert set(baselines["correlations"]) == {
        "linear", "knn", "transrate", "hscore", "hscore_plain", "logme", "cka", "cka_alone",
    }  # fmt: skip
    assert baselines["lens_settings"]["knn_k"] == lenses.KNN_K
    assert baselines["lens_settings"]["transrate_eps"] == lenses.TRANSRATE_EPS


def test_features_are_computed_once_per_layer_and_split(lens_scan, tiny_source):
    m, _, calls, forwards = lens_scan
    n_train = m.extras["baselines"]["lens_settings"]["n_train"]
    n_test = m.extras["baselines"]["lens_settings"]["n_test"]
    expected = {(True, layer, n): 1 for layer in LAYERS for n in (n_train, n_test)}
    expected.update({(False, layer, n_test): 1 for layer in LAYERS})  # the target trained alone (one seed)
    assert dict(calls) == expected
    batches = math.ceil(n_train / 256) + math.ceil(n_test / 256)
    # one pass per layer over both splits, one over the train split for the head (LEEP, NCE together)
    assert forwards["source"] == len(LAYERS) * batches + math.ceil(n_train / 256)


def test_results_csv_has_every_column_of_the_table(lens_scan):
    m, out, _, _ = lens_scan
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [row["layer"] for row in rows] == LAYERS
    for column in ("linear", "knn", "transrate", "hscore", "hscore_plain", "logme", "cka_mean", "cka_std"):
        assert column in rows[0], column
    for column in ("cka_alone_mean", "leep", "nce"):
        assert column in rows[0], column
    header = next(csv.reader(io.StringIO((out / "results.csv").read_text())))
    fixed = ["layer", "init", "task", "runs", "ok_runs", "gate_budget", "lambda_drift", "settled"]
    assert header[: len(fixed) + 12] == fixed + [
        f"{metric}_{kind}" for metric in probe.results.schema.METRICS for kind in ("mean", "std")
    ]  # the baselines are appended after the existing columns
    per_layer = m.extras["baselines"]["per_layer"]
    for row in rows:
        assert float(row["linear"]) == pytest.approx(per_layer[row["layer"]]["linear"], rel=1e-5)
        assert float(row["cka_mean"]) == pytest.approx(per_layer[row["layer"]]["cka"]["mean"], rel=1e-5)
        assert float(row["leep"]) == pytest.approx(m.extras["baselines"]["head"]["leep"], rel=1e-5)


def test_table_and_report_render_every_lens(lens_scan, tmp_path):
    m, out, _, _ = lens_scan
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(results_table(m))
    console.print(correlations_table(m))
    text = console.export_text()
    for label in ("linear probe", "NN top-1", "TransRate", "CKA source–QUANTA target", "LEEP", "NCE"):
        assert label in text, label
    assert "± 0.000" not in text  # one run: plain numbers
    result = CliRunner(env={"OMP_NUM_THREADS": "1"}).invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "TransRate" in result.stdout and "LEEP" in result.stdout
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    reloaded = Measurement.from_dict(json.loads((out / "results.json").read_text()))
    assert reloaded.runs[0].measures["cka"] == m.runs[0].measures["cka"]


def test_cka_after_run_is_the_cka_of_the_two_models(tiny_source):
    context = prepare(tiny_source, "digits[5-9]", settings=RunSettings(epochs=1, device="cpu")).context
    other = probe.train_source("paper-cnn", "digits[0-4]", epochs=1, lr=1e-3, arch_options={"width": 0.25}, seed=1)
    test = context.tasks["AnB"].test
    got = cka_after_run(context, RunSpec("conv4", 0.5, "AnB", 0), other)["cka"]
    assert got == pytest.approx(
        lenses.linear_cka(_pooled(tiny_source, "conv4", test.x), _pooled(other, "conv4", test.x)), rel=1e-9
    )
    assert cka_after_run(context, RunSpec("conv4", 0.5, "AnB", 0), tiny_source)["cka"] == pytest.approx(1.0)


def test_ordinary_runs_measure_nothing(tiny_source):
    m = probe.scan(tiny_source, layers=["conv1"], epochs=1, runs=1, lr=1e-3, device="cpu", jobs=1)
    assert all(run.measures == {} for run in m.runs)


def test_unknown_lens_is_refused_before_any_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never"
    result = CliRunner(env={"OMP_NUM_THREADS": "1"}).invoke(
        app, ["scan", "--baselines", "linear,cca", "--out", str(out), "--epochs", "1"]
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown baseline 'cca'" in lines[0] and "knn" in lines[0]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SettingsError, match="unknown baseline 'cca'"):
        probe.scan(torch.nn.Linear(2, 2), layers=["x"], target="digits[5-9]", baselines=["cca"])


def test_cka_travels_back_from_worker_processes(lens_scan, tiny_source):
    m, _, _, _ = lens_scan
    parallel = probe.scan(
        tiny_source, layers=LAYERS, epochs=1, runs=1, lr=1e-3, baselines=["cka"], device="cpu", jobs=2
    )
    for layer in LAYERS:
        got = parallel.extras["baselines"]["per_layer"][layer]["cka"]
        assert got["runs"] == 1
        assert got["mean"] == pytest.approx(m.extras["baselines"]["per_layer"][layer]["cka"]["mean"], rel=1e-5)


def test_a_lens_that_cannot_score_is_one_typed_line_naming_it():
    x, one_class = torch.randn(6, 3), torch.zeros(6, dtype=torch.long)
    with pytest.raises(SettingsError, match=r"^baseline 'knn' at layer 'conv4': train_y has 1 class; .*2 classes$"):
        compare_module._lens("knn", "conv4", lenses.knn_accuracy, x, one_class, x, one_class)
    with pytest.raises(SettingsError, match=r"^baseline 'logme' at layer 'fc': need at least 2 classes"):
        compare_module._lens("logme", "fc", logme, x, one_class)
