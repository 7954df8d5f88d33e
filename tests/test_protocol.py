"""The protocol that makes λS a measurement (docs/protocol.md): the gate budget rule, the gate's own
optimiser, the presets shared by the API and the CLI, the settled/quality record, and the defaults' separation."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from typer.testing import CliRunner

import probe
from probe import api
from probe.cli import app
from probe.core.gate import QuantaGate
from probe.data import load_task
from probe.errors import SettingsError
from probe.report.tables import caption, quality_line, results_table
from probe.results import Measurement, RunResult, RunSpec
from probe.results.assessment import assess, results_document
from probe.results.schema import strict_json
from probe.settings import (
    DIGITS_PRESET,
    DIGITS_SOURCE_PRESET,
    GATE_BUDGET,
    GATE_LR_MAX,
    RunSettings,
    lr_scale,
    lr_scale_sum,
)
from probe.training.trainer import JointOptimizer, make_optimizer


def invoke(args, env=None):
    return CliRunner(env={"OMP_NUM_THREADS": "1", **(env or {})}).invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------
# The budget rule and the gate's optimiser


def test_the_budget_rule_gives_the_same_travel_for_any_run_length():
    settings = RunSettings(epochs=12, gate_budget=27.6)
    assert settings.steps_per_run(717) == 12 * 23  # 717 examples in batches of 32: 23 steps an epoch
    assert settings.gate_lr_for(276) == pytest.approx(0.1)
    longer = settings.with_(epochs=36)
    assert longer.gate_lr_for(longer.steps_per_run(717)) * longer.steps_per_run(717) == pytest.approx(27.6)


def test_gate_lr_wins_over_the_budget_and_lr_is_the_paper_fallback():
    assert RunSettings(gate_lr=0.03, gate_budget=27.6).gate_lr_for(276) == 0.03
    assert RunSettings(lr=2e-4).gate_lr_for(276) == 2e-4
    with pytest.raises(SettingsError, match="gate_budget must be a positive number"):
        RunSettings(gate_budget=-1.0)
    with pytest.raises(SettingsError, match="unknown gate_optimizer 'rmsprop'"):
        RunSettings(gate_optimizer="rmsprop")


def test_a_run_records_the_gate_lr_of_the_budget_rule(tiny_source):
    result = probe.measure(tiny_source, "fc", epochs=2, gate_budget=4.0, lr_schedule="constant", device="cpu", jobs=1)
    run = result.runs[0]
    assert run.steps == 2 * math.ceil(len(load_task("digits[5-9]").train) / 32)
    assert run.gate_lr == pytest.approx(4.0 / run.steps)
    assert run.gate_budget == pytest.approx(4.0)


def test_an_sgd_gate_steps_by_exactly_lr_times_its_gradient():
    target, gate = torch.nn.Linear(3, 2), QuantaGate(0.9)
    optimizer = make_optimizer(target, RunSettings(gate_optimizer="sgd"), gate, gate_lr=0.5)
    assert isinstance(optimizer, JointOptimizer)
    before = gate.v.detach().clone()
    z_source, z_target = torch.randn(4, 2), torch.randn(4, 2)
    loss = gate(z_source, target(torch.randn(4, 3)) + z_target).square().sum()
    optimizer.zero_grad()
    loss.backward()
    grad = gate.v.grad.detach().clone()
    optimizer.step()
    assert torch.equal(gate.v.detach(), before - 0.5 * grad)


def test_the_cosine_schedule_sums_to_the_budget_and_ends_near_zero():
    total = 276
    factors = [lr_scale("cosine", t, total) for t in range(total)]
    assert factors[0] == 1.0 and 0 < factors[-1] < 1e-3
    assert sum(factors) == pytest.approx(lr_scale_sum("cosine", total), rel=1e-12)  # (T + 1) / 2 exactly
    assert all(lr_scale("constant", t, total) == 1.0 for t in range(total))
    cosine = RunSettings(epochs=12, gate_budget=27.6, lr_schedule="cosine")
    assert cosine.gate_lr_for(total) * sum(factors) == pytest.approx(27.6)  # the same travel as constant
    with pytest.raises(SettingsError, match="unknown lr_schedule 'step'"):
        RunSettings(lr_schedule="step")


def _rates_seen(schedule: str) -> tuple[list[list[float]], int]:
    """Every parameter group's learning rate at each optimiser step of a 2-epoch fit on a tiny task."""
    from probe.training.trainer import fit

    task = load_task("digits[0-1]")
    settings = RunSettings(epochs=2, batch_size=64, lr=1e-3, lr_schedule=schedule, augment=False, device="cpu")
    target, gate = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)), QuantaGate(0.9)
    optimizer = make_optimizer(target, settings, gate, gate_lr=0.1)
    seen: list[list[float]] = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return step(*args, **kwargs)

    optimizer.step = recording_step  # type: ignore[method-assign]
    outcome = fit(
        forward=lambda x, idx, split: target(x) + 0 * gate.v.sum(),
        trainable=target,
        optimizer=optimizer,
        task=task,
        settings=settings,
        seed=0,
        device=torch.device("cpu"),
    )
    return seen, outcome.steps


def test_a_cosine_schedule_scales_the_target_and_the_gate_alike_and_constant_leaves_them():
    seen, steps = _rates_seen("cosine")
    assert len(seen) == steps
    for t, (target_lr, gate_lr) in enumerate(seen):
        assert target_lr == pytest.approx(1e-3 * lr_scale("cosine", t, steps), abs=1e-15)
        assert gate_lr == pytest.approx(0.1 * lr_scale("cosine", t, steps), abs=1e-15)
    constant, _ = _rates_seen("constant")
    assert all(rates == [1e-3, 0.1] for rates in constant)


def test_a_cosine_run_records_its_budget_as_the_sum_of_its_rates(tiny_source):
    result = probe.measure(tiny_source, "fc", epochs=2, gate_budget=2.0, lr_schedule="cosine", device="cpu", jobs=1)
    run = result.runs[0]
    assert run.gate_lr == pytest.approx(2.0 / ((run.steps + 1) / 2))
    assert run.gate_budget == pytest.approx(2.0)
    assert RunResult.from_dict(json.loads(json.dumps(run.to_dict()))).gate_budget == pytest.approx(2.0)
    assert f"gate budget (gate lr peak {run.gate_lr:.3g}, cosine, summed over the steps) 2 " in caption(result)
    constant = probe.measure(tiny_source, "fc", epochs=1, gate_lr=0.1, lr_schedule="constant", device="cpu", jobs=1)
    assert f"gate budget (gate_lr 0.1 × steps) {0.1 * constant.runs[0].steps:.3g} " in caption(constant)


# --------------------------------------------------------------------------------------------------
# Presets: one place, the same for the API and the CLI


def test_the_digits_preset_trains_runs_and_source_differently():
    plan = api.plan_scan(api.ScanRequest(target="digits[5-9]"))
    assert plan.settings.lr == DIGITS_PRESET["lr"] and plan.settings.gate_budget == DIGITS_PRESET["gate_budget"]
    assert plan.settings.augment is DIGITS_PRESET["augment"]
    assert plan.source_settings is not None
    assert (plan.source_settings.lr, plan.source_settings.augment) == (
        DIGITS_SOURCE_PRESET["lr"],
        DIGITS_SOURCE_PRESET["augment"],
    )


def test_the_paper_preset_is_the_paper_exactly_even_on_digits():
    settings = api.scan_settings("digits[5-9]", preset="paper", jobs=1)
    assert (settings.lr, settings.gate_lr, settings.gate_budget, settings.epochs, settings.augment) == (
        1e-4,
        None,
        None,
        60,
        True,
    )
    assert settings.gate_lr_for(1000) == settings.lr
    assert api.scan_settings("digits[5-9]", preset="paper", epochs=3).epochs == 3  # given options win


def test_other_data_get_the_paper_protocol_with_the_budget_rule():
    settings = api.scan_settings("cifar10", jobs=1)
    assert (settings.lr, settings.epochs, settings.augment, settings.gate_lr) == (1e-4, 60, True, None)
    steps = settings.steps_per_run(50_000)
    assert steps == 60 * 1563
    assert settings.lr_schedule == "cosine" and settings.last_epochs == 15  # the last quarter of 60 epochs
    assert settings.gate_lr_for(steps) * (steps + 1) / 2 == pytest.approx(GATE_BUDGET)  # Σ of the cosine rates


def test_the_digits_preset_averages_the_settled_end_of_a_cosine_run():
    settings = api.scan_settings("digits[5-9]", jobs=1)
    assert (settings.lr_schedule, settings.last_epochs, settings.epochs) == ("cosine", 3, 12)
    steps = settings.steps_per_run(717)
    assert settings.gate_lr_for(steps) == pytest.approx(0.1, rel=1e-3)  # the peak the experiment chose
    averaged_from = (settings.epochs - settings.last_epochs) * steps // settings.epochs
    assert lr_scale("cosine", averaged_from, steps) < 0.15  # every averaged epoch runs below 15 % of the peak


def test_the_gate_lr_of_a_short_run_is_capped_and_its_travel_is_recorded_as_smaller():
    settings = api.scan_settings("fashion[5-9]", jobs=1, epochs=20, train_size=10)
    steps = settings.steps_per_run(50)  # 10 images per class, 5 classes: 2 steps an epoch
    assert steps == 40 and settings.gate_lr_max == GATE_LR_MAX == 0.1
    assert GATE_BUDGET / lr_scale_sum("cosine", steps) > 0.6  # what the budget alone would set
    assert settings.gate_lr_for(steps) == GATE_LR_MAX
    long = settings.steps_per_run(3200)
    assert settings.gate_lr_for(long) * lr_scale_sum("cosine", long) == pytest.approx(GATE_BUDGET)  # cap not reached
    assert settings.with_(gate_lr=0.5).gate_lr_for(steps) == 0.5  # a gate lr asked for is taken as given
    assert settings.with_(gate_lr_max=None).gate_lr_for(steps) == pytest.approx(GATE_BUDGET / 20.5)
    assert api.scan_settings("fashion[5-9]", preset="paper", jobs=1).gate_lr_max is None
    with pytest.raises(SettingsError, match="gate_lr_max must be a positive number"):
        settings.with_(gate_lr_max=0.0)


def test_a_capped_run_records_the_gate_budget_it_had(tiny_source):
    m = probe.measure(tiny_source, "conv1", epochs=2, runs=1, gate_budget=GATE_BUDGET, gate_lr_max=0.01, jobs=1)
    run = m.runs[0]
    assert run.gate_lr == 0.01
    assert run.gate_budget == pytest.approx(0.01 * lr_scale_sum(m.settings["lr_schedule"], run.steps))


@pytest.mark.parametrize(
    ("target", "given", "averaged"),
    [
        ("fashion[5-9]", dict(epochs=20), 5),  # the Fashion-MNIST experiment's runs
        ("fashion[5-9]", dict(epochs=60), 15),
        ("digits[5-9]", dict(epochs=40), 10),
        ("digits[5-9]", dict(epochs=3), 2),  # at least 2 epochs, so that settling can be judged
        ("digits[5-9]", dict(epochs=40, last_epochs=4), 4),  # a window asked for wins
        ("fashion[5-9]", dict(epochs=20, lr_schedule="constant"), 10),  # no schedule: the paper's 10
    ],
)
def test_a_cosine_preset_averages_the_last_quarter_of_the_epochs_asked_for(target, given, averaged):
    settings = api.scan_settings(target, jobs=1, **given)
    assert settings.last_epochs == averaged
    if settings.lr_schedule == "cosine":
        steps = settings.steps_per_run(100)
        averaged_from = (settings.epochs - settings.last_epochs) * steps // settings.epochs
        assert lr_scale("cosine", averaged_from, steps) < 0.15 or settings.epochs < 4
    assert api.scan_settings(target, preset="paper", jobs=1, **given).last_epochs == given.get("last_epochs", 10)


def test_an_unknown_preset_is_one_line_and_exit_2(tmp_path):
    result = invoke(["scan", "--preset", "fast", "--out", tmp_path / "out"])
    assert result.exit_code == 2
    assert "unknown preset 'fast': use default, paper, digits" in result.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Settled and the quality record


def _run(layer: str, task: str, seed: int, lambdas: list[float], top1: float = 0.9) -> RunResult:
    history = [{"lambda_source": v, "top1": top1, "epoch": i + 1} for i, v in enumerate(lambdas)]
    final = {"lambda_source": sum(lambdas[-10:]) / len(lambdas[-10:]), "top1": top1}
    return RunResult(RunSpec(layer, 0.9, task, seed), history, final, steps=120, gate_lr=0.1)


def _measurement() -> Measurement:
    flat, falling = [0.99] * 12, [0.9 - 0.04 * i for i in range(12)]
    runs = [
        _run("conv1", "AnB", 0, flat),
        _run("conv1", "AnB", 1, flat),
        _run("fc", "AnB", 0, falling),
        _run("fc", "AnB", 1, [v + 0.01 for v in falling]),
        _run("conv1", "AnA", 0, flat),
        _run("conv1", "AnA", 1, flat),
        _run("fc", "AnA", 0, [0.97] * 12),
        _run("fc", "AnA", 1, [0.95] * 12),
    ]
    settings = RunSettings(runs=2, epochs=12).to_dict()
    return Measurement(settings, {}, "digits[5-9]", ["conv1", "fc"], runs)


def test_a_drifting_layer_is_marked_in_the_table_the_csv_and_results_json():
    measurement = _measurement()
    fc = measurement.summary("fc", task="AnB")
    assert not fc.settled and fc.lambda_drift == pytest.approx(0.36)
    assert measurement.summary("conv1", task="AnB").settled
    rows = {(r["layer"], r["task"]): r for r in csv.DictReader(io.StringIO(measurement.to_csv()))}
    assert rows[("fc", "AnB")]["settled"] == "False" and rows[("conv1", "AnB")]["settled"] == "True"
    document = json.loads(json.dumps(results_document(measurement)))
    assert document["quality"]["unsettled"] == [
        {"layer": "fc", "task": "AnB", "init": 0.9, "drift": pytest.approx(0.36)}
    ]
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(results_table(measurement))
    text = console.export_text()
    fc_row = next(line for line in text.splitlines() if line.startswith("│ fc"))
    assert "*" in fc_row and "not a result yet" in text
    assert "unsettled: fc (AnB)" in quality_line(measurement)


def _short(epochs: int, last_epochs: int, runs: int = 1) -> Measurement:
    """A scan whose runs trained ``epochs`` epochs and average the last ``last_epochs``; λS falls 0.2 an epoch."""
    falling = [0.9 - 0.2 * i for i in range(epochs)]
    settings = RunSettings(runs=runs, epochs=epochs, last_epochs=last_epochs).to_dict()
    return Measurement(settings, {}, "digits[5-9]", ["fc"], [_run("fc", "AnB", seed, falling) for seed in range(runs)])


def _table_text(measurement: Measurement) -> str:
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(results_table(measurement))
    return console.export_text()


@pytest.mark.parametrize("epochs, last_epochs", [(1, 3), (2, 3), (12, 1)])
def test_a_run_shorter_than_its_window_is_not_judged_settled(epochs, last_epochs):
    """One or two epochs against a window of three (or a window of one epoch) cannot show a drift: 'every λS
    settled' was said after one epoch."""
    measurement = _short(epochs, last_epochs)
    fc = measurement.summary("fc")
    assert fc.settled is None and math.isnan(fc.lambda_drift)
    assert "every λS settled" not in quality_line(measurement)
    assert "settling not judged" in quality_line(measurement)
    text = _table_text(measurement)
    fc_row = next(line for line in text.splitlines() if line.startswith("│ fc"))
    assert "*" not in fc_row and "not a result yet" not in text and "whether λS settled is not judged" in text
    (row,) = csv.DictReader(io.StringIO(measurement.to_csv()))
    assert row["settled"] == "" and row["lambda_drift"] == "nan"
    document = json.loads(json.dumps(strict_json(results_document(measurement))))
    assert document["summaries"][0]["settled"] is None
    assert document["quality"]["unsettled"] == []
    assert document["quality"]["not_judged"] == [{"layer": "fc", "task": "AnB", "init": 0.9, "epochs": epochs}]


def test_the_caption_says_how_many_epochs_were_averaged():
    two = caption(_short(2, 10))
    assert "each the mean of its last 2 epochs" in two and "last 10" not in two
    assert "runs of 2 epochs, shorter than the averaging window of 10" in two
    assert "each its last epoch" in caption(_short(1, 3))
    assert "one averaged epoch shows no drift" in caption(_short(12, 1))
    judged = caption(_short(3, 3, runs=2))
    assert "mean ± std over 2 runs, each the mean of its last 3 epochs" in judged and "not judged" not in judged


def test_a_run_as_long_as_its_window_is_judged():
    falling = _short(3, 3)
    assert falling.summary("fc").settled is False  # 0.4 over the 3 averaged epochs
    assert quality_line(falling) == "quality: unsettled: fc (AnB)"
    flat = Measurement(
        RunSettings(epochs=3, last_epochs=3).to_dict(), {}, "t", ["fc"], [_run("fc", "AnB", 0, [0.9] * 3)]
    )
    assert flat.summary("fc").settled is True and quality_line(flat) == "quality: every λS settled"


def test_old_results_without_the_not_judged_record_still_read(tmp_path):
    """results.json files written before 'not judged' (settled true/false in every summary) load as before; their
    summaries are recomputed from the runs."""
    document = results_document(_short(2, 3))
    for summary in document["summaries"]:
        summary["settled"] = False
    del document["quality"]["not_judged"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(strict_json(document)))
    measurement = Measurement.from_dict(json.loads(path.read_text()))
    assert measurement.summary("fc").settled is None


def test_assess_gives_separation_in_spread_units():
    quality = assess(_measurement())
    fc = quality["separation"]["fc"]
    anb = [sum(r[-10:]) / 10 for r in ([0.9 - 0.04 * i for i in range(12)], [0.91 - 0.04 * i for i in range(12)])]
    assert fc["difference"] == pytest.approx(0.96 - sum(anb) / 2)
    assert fc["in_spread"] > 10
    assert "repeatability" not in quality  # two layers: no ranking to repeat


def _with_yosinski(frozen: dict[str, list[float]]) -> Measurement:
    measurement = _measurement()
    measurement.layers = list(frozen)
    per_layer = {layer: {"AnB_frozen": {"values": values}} for layer, values in frozen.items()}
    measurement.extras = {"baselines": {"per_layer": per_layer, "correlations": {"AnB_frozen": {"spearman": 0.5}}}}
    return measurement


def test_the_reference_repeatability_stands_beside_the_agreement():
    # even-indexed runs rank conv1 > conv2 > fc, odd-indexed ones the reverse: the reference contradicts itself
    contradicting = _with_yosinski({"conv1": [0.9, 0.5, 0.9], "conv2": [0.8, 0.6, 0.8], "fc": [0.7, 0.7, 0.7]})
    quality = assess(contradicting)
    assert quality["agreement_yosinski"] == 0.5
    assert quality["yosinski_repeatability"] == pytest.approx(-1.0)
    assert "ρ(λS, Yosinski AnB frozen) 0.50 (Yosinski's own ranking over disjoint seeds ρ -1.00)" in quality_line(
        contradicting
    )
    consistent = _with_yosinski({"conv1": [0.9, 0.91], "conv2": [0.8, 0.79], "fc": [0.5, 0.52]})
    assert assess(consistent)["yosinski_repeatability"] == pytest.approx(1.0)
    one_run = _with_yosinski({"conv1": [0.9], "conv2": [0.8], "fc": [0.5]})
    assert "yosinski_repeatability" not in assess(one_run)  # one run: no disjoint seeds to compare
    assert "ρ(λS, Yosinski AnB frozen) 0.50 ·" in quality_line(one_run)


# --------------------------------------------------------------------------------------------------
# The defaults measure something (real training: minutes)


@pytest.mark.slow
def test_the_default_protocol_separates_the_last_layer_of_another_task():
    measurement = probe.scan(
        probe.train_source("paper-cnn", "digits[0-4]", **DIGITS_SOURCE_PRESET, device="cpu"),
        ["conv1", "fc"],
        "digits[5-9]",
        control=True,
        runs=2,
        device="cpu",
        jobs=1,
    )
    anb, ana = (measurement.summary("fc", task=task).mean["lambda_source"] for task in ("AnB", "AnA"))
    assert ana - anb >= 0.3, (ana, anb)
    assert measurement.summary("conv1", task="AnB").mean["lambda_source"] >= 0.95
