"""Baselines beside λS: which layers a Yosinski transfer copies, frozen vs fine-tuned, scores, rank correlations."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import probe
from probe.api import prepare
from probe.baselines import (
    kendall_tau_b,
    modules_through,
    run_baselines,
    spearman,
    train_transfer,
    transfer_layers,
    transfer_target,
)
from probe.errors import LayerError, SettingsError, ShapeMismatchError
from probe.models.paper_cnn import PaperCNN
from probe.report.figures import comparison_figure
from probe.results import Measurement
from probe.settings import RunSettings, init_seed

SETTINGS = RunSettings(epochs=2, runs=1, lr=1e-3, last_epochs=10)


class BatchNormNet(nn.Module):
    """Registered in the reverse of forward order, with BatchNorm, so order must come from a forward pass."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.head = nn.Linear(8, num_classes)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(self.pool(x).flatten(1))


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Own parameters and buffers of a module (not its children's), cloned."""
    named = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return {name: tensor.detach().clone() for name, tensor in named}


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _all_differ(a: nn.Module, b: nn.Module) -> bool:
    """Every floating-point parameter differs (buffers such as BatchNorm's fresh statistics may coincide)."""
    pa, pb = dict(a.named_parameters(recurse=False)), dict(b.named_parameters(recurse=False))
    return all(not torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def bn_context():
    """A BatchNorm source trained a little on digits[0-4] (so its statistics are not the defaults)."""
    torch.manual_seed(0)
    source = BatchNormNet()
    task = probe.data.load_task("digits[0-4]")
    optimizer = torch.optim.Adam(source.parameters(), lr=1e-2)
    source.train()
    for start in range(0, 320, 32):
        loss = nn.functional.cross_entropy(source(task.train.x[start : start + 32]), task.train.y[start : start + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    source.eval()
    context = prepare(source, "digits[5-9]", settings=SETTINGS).context
    return context


# ------------------------------------------------------------------------------- which layers


def test_modules_through_follows_the_forward_pass_not_registration(bn_context):
    source, x = bn_context.source, bn_context.tasks["AnB"].train.x[:1]
    assert modules_through(source, "conv1", x) == ["conv1"]
    assert modules_through(source, "bn1", x) == ["conv1", "bn1"]
    assert modules_through(source, "conv2:input", x) == ["conv1", "bn1"]
    assert modules_through(source, "conv2", x) == ["conv1", "bn1", "conv2"]
    assert modules_through(source, "head:input", x) == ["conv1", "bn1", "conv2", "bn2"]
    assert modules_through(source, "conv1:input", x) == []


def test_paper_cnn_layers_include_the_layer_itself_and_stop_there(tiny_source):
    assert modules_through(tiny_source, "conv3") == ["conv1", "conv2", "conv3"]
    assert modules_through(tiny_source, "act3") == ["conv1", "conv2", "conv3"]  # activation: same state as conv3
    assert modules_through(tiny_source, "conv3:input") == ["conv1", "conv2"]
    assert modules_through(tiny_source, "fc") == [f"conv{i}" for i in range(1, 7)] + ["fc"]


def test_a_non_leaf_layer_counts_its_children():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)), nn.Conv2d(2, 2, 1))
    x = torch.zeros(1, 1, 6, 6)
    assert modules_through(model, "1", x) == ["0", "1.0", "1.1"]
    assert modules_through(model, "1:input", x) == ["0"]


def test_modules_through_needs_an_input_for_a_model_without_a_record():
    with pytest.raises(LayerError, match="pass example=x"):
        modules_through(BatchNormNet(), "conv1")


def test_modules_through_leaves_mode_and_statistics_alone(bn_context):
    source = copy.deepcopy(bn_context.source).train()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    modules_through(source, "bn2", bn_context.tasks["AnB"].train.x[:4])
    assert source.training
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())


# ------------------------------------------------------------------------------- Yosinski transfer


def test_transfer_copies_exactly_the_layers_up_to_n_into_the_seeded_fresh_target(bn_context):
    source, task = bn_context.source, bn_context.tasks["AnB"]
    target, copied = transfer_target(bn_context, "bn1", "AnB", seed=3)
    assert copied == ["conv1", "bn1"]
    with torch.random.fork_rng(devices=[]):  # what the QUANTA run with seed 3 starts from
        torch.manual_seed(init_seed("target", 3))
        fresh = bn_context.target_factory(task.num_classes, task.in_chans, task.input_size)
    for name in ("conv1", "bn1"):
        assert _same(target.get_submodule(name), source.get_submodule(name))
    for name in ("conv2", "bn2", "head"):
        assert _same(target.get_submodule(name), fresh.get_submodule(name))
        assert _all_differ(target.get_submodule(name), source.get_submodule(name))


def test_frozen_transfer_keeps_copied_weights_and_statistics_bit_for_bit(bn_context):
    source_before = copy.deepcopy(bn_context.source.state_dict())
    run = train_transfer(bn_context, "bn1", "AnB", seed=0, frozen=True)
    assert run.failure is None and 0.0 <= run.top1 <= 1.0
    for name in ("conv1", "bn1"):  # includes BatchNorm's running statistics: kept in eval mode
        assert _same(run.model.get_submodule(name), bn_context.source.get_submodule(name))
    for name in ("conv2", "bn2", "head"):
        assert _all_differ(run.model.get_submodule(name), bn_context.source.get_submodule(name))
    assert not torch.equal(run.model.bn2.running_mean, torch.zeros(8))  # the rest did train
    assert all(torch.equal(source_before[k], v) for k, v in bn_context.source.state_dict().items())


def test_fine_tuned_transfer_changes_the_copied_weights_but_not_the_source(bn_context):
    source_before = copy.deepcopy(bn_context.source.state_dict())
    run = train_transfer(bn_context, "bn1", "AnB", seed=0, frozen=False)
    assert run.failure is None
    assert not torch.equal(run.model.conv1.weight, bn_context.source.conv1.weight)
    assert not torch.equal(run.model.bn1.weight, bn_context.source.bn1.weight)
    assert not torch.equal(run.model.bn1.running_mean, bn_context.source.bn1.running_mean)
    assert all(torch.equal(source_before[k], v) for k, v in bn_context.source.state_dict().items())


def test_transferring_into_a_head_of_another_size_is_refused(tiny_source):
    target = PaperCNN(num_classes=10, in_chans=1, input_size=(8, 8), width=0.25)
    with pytest.raises(ShapeMismatchError, match=r"head\.weight"):
        transfer_layers(tiny_source, target, "head")


def test_freezing_everything_is_refused(bn_context):
    with pytest.raises(LayerError, match="nothing to train"):
        train_transfer(bn_context, "head", "AnB", seed=0, frozen=True)


# ------------------------------------------------------------------------------- rank correlations


def test_rank_correlations_match_hand_computed_values():
    # d = (-1, 1, -1, 1, 0): rho = 1 - 6·4 / (5·24) = 0.8; discordant pairs (1,2), (3,4): tau = (8 - 2) / 10
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert kendall_tau_b([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_rank_correlations_with_ties():
    # average ranks x (1, 2.5, 2.5, 4), y (1, 2, 3.5, 3.5): rho = 3.75 / 4.5;
    # 4 concordant, 0 discordant, one pair tied in x and one in y: tau_b = 4 / sqrt(5 · 5)
    x, y = [1, 2, 2, 3], [1, 2, 3, 3]
    assert spearman(x, y) == pytest.approx(5 / 6)
    assert kendall_tau_b(x, y) == pytest.approx(0.8)


def test_rank_correlations_are_nan_without_enough_information():
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(kendall_tau_b([1, 2], [2, 1]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5])) and math.isnan(kendall_tau_b([1, 2, 3], [5, 5, 5]))
    # NaN pairs are dropped, leaving two
    assert math.isnan(spearman([1, 2, math.nan], [1, 2, 3]))
    assert spearman([1, 2, 3, math.nan], [1, 2, 3, 0]) == pytest.approx(1.0)


def test_rank_correlations_agree_with_scipy_on_tied_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, size=9).astype(float), rng.integers(0, 4, size=9).astype(float)
        if len(set(x)) == 1 or len(set(y)) == 1:
            continue
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)


# ------------------------------------------------------------------------------- run_baselines


def test_unknown_baselines_list_the_valid_names(bn_context):
    measurement = Measurement(SETTINGS.to_dict(), {}, "digits[5-9]", ["conv1"])
    with pytest.raises(SettingsError, match="unknown baseline 'bogus'.*choose from yosinski, logme, hscore, .*knn"):
        run_baselines(bn_context, measurement, ["logme", "bogus"])


def test_selffer_bnb_uses_the_model_trained_on_b(bn_context):
    measurement = Measurement(SETTINGS.to_dict(), {}, "digits[5-9]", ["bn1"])
    self_source = copy.deepcopy(bn_context.source)
    with torch.no_grad():
        self_source.conv1.weight.mul_(-1.0)
    result = run_baselines(bn_context, measurement, ["yosinski"], self_source=self_source)
    entry = result["per_layer"]["bn1"]
    assert set(entry) == {"AnB_frozen", "AnB_finetune", "BnB_frozen", "BnB_finetune"}
    assert entry["BnB_frozen"]["runs"] == 1 and math.isfinite(entry["BnB_frozen"]["mean"])
    assert set(result["alone"]) == {"AnB"}
    assert set(result["correlations"]) == set(entry)


def test_scan_with_baselines_end_to_end(tiny_source, tmp_path):
    events = []
    m = probe.scan(
        tiny_source,
        layers=["conv1", "conv6"],
        epochs=1,
        runs=2,
        lr=1e-3,
        baselines=["yosinski", "logme", "hscore"],
        progress=events.append,
    )
    baselines = m.extras["baselines"]
    assert list(baselines["per_layer"]) == ["conv1", "conv6"]
    for entry in baselines["per_layer"].values():
        assert set(entry) == {"AnB_frozen", "AnB_finetune", "logme", "hscore"}
        for key in ("AnB_frozen", "AnB_finetune"):
            assert entry[key]["runs"] == 2 and len(entry[key]["values"]) == 2
            assert 0.0 <= entry[key]["mean"] <= 1.0 and math.isfinite(entry[key]["std"])
        assert math.isfinite(entry["logme"]) and math.isfinite(entry["hscore"])
    assert baselines["alone"]["AnB"]["runs"] == 2
    # two layers are too few for a rank correlation
    assert set(baselines["correlations"]) == {"AnB_frozen", "AnB_finetune", "logme", "hscore"}
    assert all(math.isnan(v) for c in baselines["correlations"].values() for v in c.values())
    # progress: the baseline runs are numbered 0..total-1 after the QUANTA runs
    extra = [e for e in events if e.spec is not None and e.spec.task != "AnB"]
    assert {e.spec.task for e in extra} == {"AnB_alone", "AnB_frozen", "AnB_finetune"}
    assert sorted({e.run_index for e in extra}) == list(range(extra[0].total_runs)) == list(range(2 + 2 * 2 * 2))

    path = comparison_figure(m, tmp_path / "comparison.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["comparison.png"]  # no temporary file left behind

    # results.json is strict JSON (NaN → null): the figure is redrawn from a reloaded measurement too
    reloaded = Measurement.from_dict(json.loads(json.dumps(_nan_to_none(m.to_dict()), allow_nan=False)))
    assert reloaded.extras["baselines"]["correlations"]["logme"]["spearman"] is None
    assert comparison_figure(reloaded, tmp_path / "reloaded.png").read_bytes()[:4] == b"\x89PNG"


def test_correlations_with_three_layers_compare_lambda_and_each_baseline(tiny_source, tmp_path):
    m = probe.scan(
        tiny_source, layers=["conv1", "conv3", "fc"], epochs=1, runs=1, lr=1e-3, baselines=["logme", "hscore"]
    )
    lambdas = [m.summary(layer).mean["lambda_source"] for layer in m.layers]
    per_layer = m.extras["baselines"]["per_layer"]
    for key in ("logme", "hscore"):
        values = [per_layer[layer][key] for layer in m.layers]
        assert m.extras["baselines"]["correlations"][key] == {
            "spearman": pytest.approx(spearman(lambdas, values)),
            "kendall": pytest.approx(kendall_tau_b(lambdas, values)),
        }
        assert math.isfinite(m.extras["baselines"]["correlations"][key]["spearman"])
    assert comparison_figure(m, tmp_path / "sub" / "c.png").is_file()


@pytest.mark.slow
def test_the_digits_reproduction_script_runs_in_smoke_mode(tmp_path, repo_script):
    script = repo_script("scripts/reproduce_digits.py")
    argv = ["--smoke", "--layers", "conv1,conv6,fc", "--splits", "halves", "--workers", "1", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())[0]
    assert summary["A"] == "digits[0-4]" and summary["layers"] == ["conv1", "conv6", "fc"]
    assert set(summary["alone"]) == {"AnB", "AnA"}
    assert set(summary["baselines"]["correlations"]) == {
        "AnB_frozen",
        "AnB_finetune",
        "AnA_frozen",
        "AnA_finetune",
        "logme",
        "hscore",
    }
    assert (
        Measurement.from_dict(json.loads((tmp_path / "halves" / "results.json").read_text())).layers
        == summary["layers"]
    )
    assert (tmp_path / "halves" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "TO BE FILLED" not in (tmp_path / "summary.md").read_text()

    # More inits later, the baselines taken from the first run (checked, not trained again).
    more = tmp_path / "more"
    common = ["--smoke", "--layers", "conv1,conv6,fc", "--splits", "halves", "--workers", "1", "--baselines", "none"]
    with pytest.raises(SystemExit, match="other epochs"):
        script.main([*common, "--epochs", "2", "--baselines-from", str(tmp_path), "--out", str(more)])
    assert not (more / "halves").exists()  # refused before any training
    assert script.main([*common, "--inits", "0.9,0.5", "--baselines-from", str(tmp_path), "--out", str(more)]) == 0
    merged = json.loads((more / "summary.json").read_text())[0]
    assert merged["baselines"] == summary["baselines"] and merged["alone"] == summary["alone"]
    assert merged["baselines_from"] == str(tmp_path / "halves")
    assert set(merged["quanta"]["AnB"]) == {"0.9", "0.5"}
    assert merged["quanta"]["AnB"]["0.9"] == summary["quanta"]["AnB"]["0.9"]  # the same runs, same seeds
    assert "Baselines and the target alone from" in (more / "summary.md").read_text()


def test_the_reproduction_script_wants_baselines_none_with_baselines_from(tmp_path, capsys, repo_script):
    script = repo_script("scripts/reproduce_digits.py")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--baselines-from", str(tmp_path)])
    assert exit_info.value.code == 2 and "add --baselines none" in capsys.readouterr().err
