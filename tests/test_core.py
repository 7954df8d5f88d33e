"""The heart of QUANTA: gate, hooks, exact identities, an unchanged source, seeds, finals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import probe
from probe.core.gate import QuantaGate
from probe.core.hooks import quanta_hooks, source_forward
from probe.models.paper_cnn import PAPER_CNN_LAYERS, PaperCNN
from probe.results import Measurement

ACTIVATION_AFTER = {f"conv{i}": f"act{i}" for i in range(1, 7)} | {"fc": "act7"}


def _cnn(seed: int, num_classes: int = 5) -> PaperCNN:
    torch.manual_seed(seed)
    return PaperCNN(num_classes=num_classes, in_chans=1, input_size=(8, 8), width=0.25).eval()


def _what_activation_sees(target: nn.Module, layer: str, run) -> torch.Tensor:
    """The tensor entering the activation right after ``layer`` in ``target`` (cloned before its in-place op)."""
    seen = []
    act = target.get_submodule(ACTIVATION_AFTER[layer])
    handle = act.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


# ---------------------------------------------------------------------------------------------- gate


@pytest.mark.parametrize("init", [0.9, 0.75, 0.5, 0.01, 0.99])
def test_gate_starts_at_the_requested_lambda(init):
    gate = QuantaGate(init)
    lambdas = gate.lambdas()
    assert lambdas[0].item() == pytest.approx(init, abs=1e-7)
    assert lambdas.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert [p.numel() for p in gate.parameters()] == [2]


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.2, -0.1, math.nan])
def test_gate_rejects_an_init_outside_the_open_interval(bad):
    with pytest.raises(ValueError, match=r"strictly between 0 and 1"):
        QuantaGate(bad)


@pytest.mark.parametrize("bad", [-0.01, 1.01])
def test_pinned_gate_rejects_values_outside_the_closed_interval(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        QuantaGate(bad, pinned=True)


def test_pinned_gate_has_no_parameters_and_mixes_exactly():
    zs, zt = torch.randn(4, 3), torch.randn(4, 3)
    gate = QuantaGate(0.25, pinned=True)
    assert list(gate.parameters()) == []
    assert torch.equal(gate(zs, zt), 0.25 * zs + 0.75 * zt)


# --------------------------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("layer", PAPER_CNN_LAYERS)
def test_lambda_one_gives_the_source_tensor_and_zero_the_targets(layer):
    source, target = _cnn(0), _cnn(1)
    x = torch.randn(6, 1, 8, 8)
    z_source = source_forward(source, layer, x)
    z_target = source_forward(target, layer, x)
    for lam, expected in ((1.0, z_source), (0.0, z_target)):
        with quanta_hooks(source, target, layer, QuantaGate(lam, pinned=True)) as wiring:
            seen = _what_activation_sees(target, layer, lambda: wiring(x))
        assert torch.equal(seen, expected)


@pytest.mark.parametrize("layer", PAPER_CNN_LAYERS)
def test_a_copy_of_the_source_as_target_gives_the_source_logits_for_any_lambda(layer):
    source = _cnn(0)
    target = copy.deepcopy(source)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        expected = source(x)
    for lam, pinned in ((1.0, True), (0.0, True)):
        with torch.no_grad(), quanta_hooks(source, target, layer, QuantaGate(lam, pinned=pinned)) as wiring:
            assert torch.equal(wiring(x), expected)
    for lam in (0.9, 0.5, 0.1):
        # λ·z + (1-λ)·z equals z in exact arithmetic; in float32 to rounding of the two products.
        with torch.no_grad(), quanta_hooks(source, target, layer, QuantaGate(lam)) as wiring:
            torch.testing.assert_close(wiring(x), expected, rtol=1e-5, atol=1e-6)


def test_leaving_the_context_removes_every_hook_and_restores_behaviour():
    source, target = _cnn(0), _cnn(1)
    source.train()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        before = target(x)
    with quanta_hooks(source, target, "conv3", QuantaGate(0.9)) as wiring:
        assert not source.training
        wiring(x)
    for model in (source, target):
        for module in model.modules():
            assert not module._forward_hooks and not module._forward_pre_hooks
    assert source.training
    with torch.no_grad():
        assert torch.equal(target(x), before)


def test_the_captured_source_tensor_survives_an_inplace_activation():
    source = _cnn(0)
    x = torch.randn(4, 1, 8, 8)
    truncated = source_forward(source, "conv1", x)
    full = source_forward(source, "conv1", x, truncate=False)
    assert torch.equal(truncated, full)
    assert (full < 0).any(), "the in-place ReLU would have zeroed these"


def test_input_points_mix_the_modules_input():
    source, target = _cnn(0), _cnn(1)
    x = torch.randn(2, 1, 8, 8)
    z_source = source_forward(source, "act3:input", x)
    assert torch.equal(z_source, source_forward(source, "conv3", x))
    with quanta_hooks(source, target, "act3:input", QuantaGate(1.0, pinned=True)) as wiring:
        seen = _what_activation_sees(target, "conv3", lambda: wiring(x))
    assert torch.equal(seen, z_source)


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(x))))


def test_a_module_that_runs_twice_is_refused():
    source, target = _Twice(), _Twice()
    with quanta_hooks(source, target, "shared", QuantaGate(0.9)) as wiring:
        with pytest.raises(probe.LayerError, match="more than once"):
            wiring(torch.randn(2, 4))


def test_an_unknown_layer_lists_the_closest_names():
    with pytest.raises(probe.LayerError, match=r"no layer named 'cnv4' in PaperCNN \(closest: conv4, "):
        with quanta_hooks(_cnn(0), _cnn(1), "cnv4", QuantaGate(0.9)):
            pass
    with pytest.raises(probe.LayerError, match=r"\(closest: conv1, "):
        source_forward(_cnn(0), "conv1x", torch.randn(1, 1, 8, 8))


def test_mismatched_shapes_name_both():
    source = PaperCNN(5, 1, (8, 8), width=0.25)
    target = PaperCNN(5, 1, (8, 8), width=0.5)
    with quanta_hooks(source, target, "conv2", QuantaGate(0.9)) as wiring:
        with pytest.raises(probe.ShapeMismatchError, match=r"\(2, 16, 8, 8\).*\(2, 32, 8, 8\)"):
            wiring(torch.randn(2, 1, 8, 8))


# ---------------------------------------------------------------------------------- source unchanged


class _BNNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.bn(self.conv(x))))))


def _trained_bn_source() -> _BNNet:
    torch.manual_seed(0)
    model = _BNNet()
    model.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) * 3 + 1)
    return model.eval()


def test_a_measurement_leaves_the_source_bitwise_unchanged():
    source = _trained_bn_source()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    result = probe.measure(source, "bn", target="digits[5-9]", epochs=2, runs=1, lr=1e-3, gate_lr=0.05)
    after = source.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in source.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in source.modules())
    history = result.runs[0].history
    assert history[-1]["lambda_source"] != pytest.approx(0.9, abs=1e-4), "the gate must move"


def test_training_moves_the_gate_and_the_target_but_not_the_source():
    source = _trained_bn_source()
    before = copy.deepcopy(source.state_dict())
    torch.manual_seed(1)
    target = _BNNet(num_classes=5)
    target_before = copy.deepcopy(target.state_dict())
    gate = QuantaGate(0.9)
    v_before = gate.v.detach().clone()
    optimiser = torch.optim.Adam([*target.parameters(), *gate.parameters()], lr=1e-2)
    with quanta_hooks(source, target, "bn", gate) as wiring:
        for _ in range(2):
            loss = nn.functional.cross_entropy(wiring(torch.randn(8, 1, 8, 8)), torch.randint(0, 5, (8,)))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    assert not torch.equal(gate.v.detach(), v_before)
    assert not torch.equal(target.conv.weight, target_before["conv.weight"])
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())
    assert all(p.grad is None for p in source.parameters())


# ---------------------------------------------------------------------------------- fresh targets


def test_a_fresh_target_for_a_plain_module_shares_nothing_with_the_source():
    from probe.models.targets import TargetFactory

    source = _trained_bn_source()
    with torch.no_grad():
        source.bn.weight.mul_(3.0)  # trained-looking affine parameters
    target = TargetFactory(template=source)(num_classes=3, in_chans=1, input_size=(8, 8))
    assert target.fc.out_features == 3
    assert not torch.equal(target.conv.weight, source.conv.weight)
    assert torch.equal(target.bn.weight, torch.ones(8))
    assert torch.equal(target.bn.running_mean, torch.zeros(8))
    assert source.fc.out_features == 10


# ---------------------------------------------------------------------------------- seeds and finals


def test_same_seed_same_trajectory_different_seed_different(tiny_source):
    kwargs = dict(epochs=2, runs=1, lr=1e-3, gate_lr=0.03)
    first = probe.measure(tiny_source, "conv2", seed=3, **kwargs).runs[0].history
    again = probe.measure(tiny_source, "conv2", seed=3, **kwargs).runs[0].history
    other = probe.measure(tiny_source, "conv2", seed=4, **kwargs).runs[0].history
    assert [h["lambda_source"] for h in first] == [h["lambda_source"] for h in again]
    assert first == again
    assert [h["lambda_source"] for h in first] != [h["lambda_source"] for h in other]


def test_measure_end_to_end_final_is_the_mean_of_the_last_ten_epochs(tiny_source):
    result = probe.measure(
        tiny_source, "conv5", epochs=11, runs=2, lr=1e-3, gate_lr=0.03, last_epochs=10, lr_schedule="constant"
    )
    assert result.target == "digits[5-9]"
    assert len(result.runs) == 2 and [r.spec.seed for r in result.runs] == [0, 1]
    for run in result.runs:
        assert len(run.history) == 11 and run.ok
        for metric in ("lambda_source", "top1", "top3", "loss", "precision", "recall"):
            values = [h[metric] for h in run.history[-10:]]
            assert math.isfinite(run.final[metric])
            assert run.final[metric] == pytest.approx(sum(values) / 10, rel=1e-12)
        assert 0 <= run.final["top1"] <= run.final["top3"] <= 1
        assert run.gate_budget == pytest.approx(0.03 * run.steps)
    summary = result.summary("conv5")
    finals = [r.final["lambda_source"] for r in result.runs]
    assert summary.mean["lambda_source"] == pytest.approx(sum(finals) / 2)
    assert summary.std["lambda_source"] == pytest.approx(abs(finals[0] - finals[1]) / math.sqrt(2))


def test_fewer_epochs_than_the_window_average_all_of_them_and_the_preset_averages_its_last_quarter(tiny_source):
    run = probe.measure(tiny_source, "fc", epochs=3, lr=1e-3, last_epochs=10).runs[0]
    assert run.final["top1"] == pytest.approx(sum(h["top1"] for h in run.history) / 3)
    quarter = probe.measure(tiny_source, "fc", epochs=3, lr=1e-3)  # the digits preset: the last quarter, ≥ 2
    assert quarter.settings["last_epochs"] == 2
    history = quarter.runs[0].history
    assert quarter.runs[0].final["top1"] == pytest.approx(sum(h["top1"] for h in history[-2:]) / 2)


# --------------------------------------------------------------------------------- api & checkpoints


def test_a_trained_source_round_trips_and_pairs_with_its_target(tmp_path):
    path = tmp_path / "src.pt"
    model = probe.train_source("paper-cnn", "digits[0-4]", epochs=1, arch_options={"width": 0.25}, out=path)
    raw = torch.load(path, weights_only=True)
    assert raw["info"]["dataset"] == "digits[0-4]" and raw["info"]["arch"] == "paper-cnn"
    loaded = probe.load_source(path)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=False)
    )
    result = probe.measure(path, "conv1", epochs=1)
    assert result.target == "digits[5-9]"
    assert result.source["sha256"] == loaded.quanta_source.sha256


def test_a_model_without_a_record_needs_a_target():
    with pytest.raises(probe.DataError, match=r"target.*probe\.measure\(model, 'layer', target="):
        probe.measure(_BNNet(), "bn")


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(epochs=0), "epochs must be a whole number"),
        (dict(runs=-1), "runs must be a whole number"),
        (dict(batch_size=0), "batch_size"),
        (dict(init=(1.5,)), "strictly between 0 and 1"),
        (dict(lr=-1.0), "lr must be a positive number"),
        (dict(nonsense=1), "unknown setting"),
    ],
)
def test_bad_settings_are_settings_errors(tiny_source, settings, message):
    with pytest.raises(probe.SettingsError, match=message):
        probe.measure(tiny_source, "conv1", **settings)


def test_cuda_asked_for_where_none_exists():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(probe.DeviceError, match="no CUDA"):
        probe.measure(_BNNet(), "bn", target="digits[5-9]", device="cuda", epochs=1)


def test_results_round_trip_through_json_and_csv(tiny_source):
    import json

    result = probe.scan(tiny_source, ["conv1", "fc"], epochs=1, runs=2, init=(0.9, 0.5))
    again = Measurement.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_dict() == result.to_dict()
    rows = result.to_csv().strip().splitlines()
    assert len(rows) == 1 + 2 * 2  # header + layers × inits
    assert rows[1].startswith("conv1,0.9,AnB,2,2")


def test_targets_never_start_from_the_sources_initial_weights():
    from probe.settings import init_seed

    assert init_seed("source", 0) != init_seed("target", 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed("source", 0))
        source_init = PaperCNN(5, 1, (8, 8), width=0.25)
        torch.manual_seed(init_seed("target", 0))
        target_init = PaperCNN(5, 1, (8, 8), width=0.25)
    assert not torch.equal(source_init.conv1.weight, target_init.conv1.weight)


def _bad_api_calls(tmp_path, source):
    (tmp_path / "a-file").write_text("x")
    other = tmp_path / "other.pt"
    torch.save(_BNNet().state_dict(), other)
    return {
        "unknown architecture": (
            lambda: probe.create_model("no-such-net", 10),
            probe.ArchitectureError,
            "unknown architecture",
        ),
        "unknown layer": (lambda: probe.measure(source, "conv9", epochs=1), probe.LayerError, "conv9"),
        "unknown dataset": (
            lambda: probe.measure(source, "conv1", target="mnist", epochs=1),
            probe.DataError,
            "unknown dataset",
        ),
        "empty subset": (
            lambda: probe.measure(source, "conv1", target="digits[]", epochs=1),
            probe.DataError,
            "digits",
        ),
        "subset out of range": (
            lambda: probe.measure(source, "conv1", target="digits[5-12]", epochs=1),
            probe.DataError,
            "0-9",
        ),
        "unknown device": (
            lambda: probe.measure(source, "conv1", device="tpu", epochs=1),
            probe.SettingsError,
            "unknown device",
        ),
        "zero epochs": (lambda: probe.measure(source, "conv1", epochs=0), probe.SettingsError, "epochs"),
        "zero batch": (lambda: probe.measure(source, "conv1", batch_size=0), probe.SettingsError, "batch_size"),
        "init out of range": (
            lambda: probe.measure(source, "conv1", init=(1.0,)),
            probe.SettingsError,
            "between 0 and 1",
        ),
        "checkpoint of another architecture": (
            lambda: probe.load_source(other, "paper-cnn", data="digits[0-4]"),
            probe.CheckpointError,
            "missing keys",
        ),
        "unwritable results folder": (
            lambda: probe.measure(source, "conv1", epochs=1, out=tmp_path / "a-file" / "out"),
            probe.ResultsError,
            "a-file",
        ),
        "missing CIFAR folder": (
            lambda: probe.measure(_BNNet(), "bn", target="cifar10", data_dir=tmp_path / "nothing", epochs=1),
            probe.DataError,
            "nothing",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown architecture",
        "unknown layer",
        "unknown dataset",
        "empty subset",
        "subset out of range",
        "unknown device",
        "zero epochs",
        "zero batch",
        "init out of range",
        "checkpoint of another architecture",
        "unwritable results folder",
        "missing CIFAR folder",
    ],
)
def test_bad_input_through_the_api_raises_a_typed_one_line_error(case, tmp_path, tiny_source):
    call, error, fragment = _bad_api_calls(tmp_path, tiny_source)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=fragment) as raised:
        call()
    assert isinstance(raised.value, probe.ProbeError)
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
