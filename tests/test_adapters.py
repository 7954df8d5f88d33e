"""Architectures by name, layer discovery, and exact QUANTA mixing on real timm / torchvision models."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from probe.core.gate import QuantaGate
from probe.core.hooks import quanta_hooks, resolve_layer, source_forward
from probe.core.layers import check_layers, discover_layers
from probe.errors import ArchitectureError, LayerError
from probe.models import create_model, default_layers, get_arch, list_archs
from probe.models.checkpoint import SourceInfo, attach_info
from probe.models.targets import TargetFactory
from probe.models.torchvision_models import GREY_NOTE, RESNET_SHARED_NOTE
from probe.settings import RunSettings
from probe.training.trainer import make_optimizer

# (arch, in_chans, input size, options, head name): small variants at small sizes, grey where it matters.
ARCHS = {
    "paper-cnn": ("paper-cnn", 1, (8, 8), {"width": 0.25}, "head"),
    "timm-resnet18": ("resnet18", 1, (8, 8), {}, "fc"),
    "timm-convnext": ("timm:convnext_atto", 3, (32, 32), {}, "head.fc"),
    "timm-vit": ("vit_tiny_patch16_224", 3, (32, 32), {"patch_size": 8, "depth": 6}, "head"),
    "tv-resnet18": ("tv:resnet18", 1, (8, 8), {}, "fc"),
    "tv-mobilenet": ("tv:mobilenet_v3_small", 3, (32, 32), {}, "classifier.3"),
}
SOURCE_CLASSES, TARGET_CLASSES = 5, 3


def _blocks(prefix: str, count: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(count)]


RESNET18_BLOCKS = [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
EXPECTED_DEFAULTS = {
    "paper-cnn": ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"],
    "timm-resnet18": ["bn1", *[f"{b}.act2:input" for b in RESNET18_BLOCKS]],
    "timm-convnext": [f"stages.{s}.blocks.{b}.mlp.fc1" for s, depth in enumerate((2, 2, 6, 2)) for b in range(depth)],
    "timm-vit": [f"{b}.mlp.fc1" for b in _blocks("blocks", 6)],
    "tv-resnet18": ["bn1", *[f"{b}.bn1" for b in RESNET18_BLOCKS]],
    "tv-mobilenet": [
        "features.0.1",
        "features.1.block.0.1",
        *[f"features.{i}.block.1.1" for i in range(2, 12)],
        "features.12.1",
        "classifier.0",
    ],
}


def _perturb_batchnorm(model: nn.Module, seed: int) -> None:
    """Running statistics far from (0, 1), so an eval-mode source really uses (and could lose) them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


class Case:
    def __init__(self, key: str) -> None:
        self.key = key
        self.arch, self.in_chans, self.size, self.options, self.head = ARCHS[key]
        torch.manual_seed(0)
        self.source = create_model(self.arch, SOURCE_CLASSES, self.in_chans, self.size, **self.options).eval()
        with torch.no_grad():
            _perturb_batchnorm(self.source, 1)
        attach_info(
            self.source,
            SourceInfo(
                arch=self.arch,
                arch_options=dict(self.options),
                num_classes=SOURCE_CLASSES,
                in_chans=self.in_chans,
                input_size=self.size,
            ),
        )
        self.shape = (self.in_chans, *self.size)
        self.layers = discover_layers(self.source, self.shape, default_layers(self.arch, self.source))
        self.defaults = [layer.name for layer in self.layers if layer.default]
        self.x = torch.randn(2, *self.shape, generator=torch.Generator().manual_seed(2))

    def target(self) -> nn.Module:
        torch.manual_seed(3)
        return TargetFactory(self.arch, dict(self.options))(TARGET_CLASSES, self.in_chans, self.size)


@pytest.fixture(scope="module", params=list(ARCHS))
def case(request) -> Case:
    return Case(request.param)


@contextmanager
def seen_by_next(model: nn.Module, layer: str):
    """Clones of the tensor the rest of the model receives at ``layer`` (hooked after any gate already there)."""
    point = resolve_layer(model, layer)
    seen: list[torch.Tensor] = []
    if point.on_input:
        handle = point.module.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    else:
        handle = point.module.register_forward_hook(lambda module, args, out: seen.append(out.clone()))
    try:
        yield seen
    finally:
        handle.remove()


def execution_order(model: nn.Module, names: list[str], x: torch.Tensor) -> list[str]:
    """The order in which the tensors named by ``names`` appear in a plain forward pass."""
    order: list[str] = []
    handles = []
    for name in names:
        point = resolve_layer(model, name)
        if point.on_input:
            handles.append(point.module.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
        else:
            handles.append(point.module.register_forward_hook(lambda m, a, o, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order


# ------------------------------------------------------------------------------------------ names


def test_architecture_names_resolve_in_every_namespace():
    assert type(create_model("resnet18", 4, 3, (32, 32))) is type(create_model("timm:resnet18", 4, 3, (32, 32)))
    assert isinstance(create_model("tv:squeezenet1_1", 4, 3, (32, 32)), torchvision.models.SqueezeNet)
    assert get_arch("tv:vgg11_bn").name == "tv:vgg11_bn"
    assert get_arch("timm:mobilenetv3_small_050").name == "timm:mobilenetv3_small_050"
    assert "tv:mobilenet_v3_small" in list_archs("tv:mobilenet*")
    assert "timm:convnext_atto" in list_archs("*convnext_at*")
    with pytest.raises(ArchitectureError, match=r"unknown architecture 'tv:resnet181'.*tv:resnet18"):
        get_arch("tv:resnet181")
    with pytest.raises(ArchitectureError, match=r"unknown architecture 'convnext_attoo'.*convnext_atto"):
        get_arch("convnext_attoo")


def test_builders_never_download_and_report_bad_options():
    model = create_model("resnet18", 4, 3, (32, 32))
    assert getattr(model, "pretrained_cfg", {}).get("hf_hub_id")  # it has weights, which were not loaded
    with pytest.raises(ArchitectureError, match="cannot build timm:resnet18.*no_such_option"):
        create_model("resnet18", 4, 3, (32, 32), no_such_option=1)
    with pytest.raises(ArchitectureError, match="3-channel.*not 4 channels"):
        create_model("tv:resnet18", 4, 4, (32, 32))


def test_inputs_too_small_name_the_smallest_size():
    with pytest.raises(
        ArchitectureError, match=r"timm:convnext_atto cannot run on 1×8×8 inputs.*smallest input is 32×32"
    ):
        create_model("convnext_atto", 4, 1, (8, 8))
    with pytest.raises(ArchitectureError, match=r"vit_tiny_patch16_224 cannot run on 3×8×8 .*smallest input is 16×16"):
        create_model("vit_tiny_patch16_224", 4, 3, (8, 8))
    # discover_layers says the same for a model it is given directly
    convnext = create_model("convnext_atto", 4, 3, (32, 32))
    with pytest.raises(ArchitectureError, match=r"cannot run on 3×8×8 inputs.*smallest input is 32×32"):
        discover_layers(convnext, (3, 8, 8))


def test_grey_images_are_repeated_for_torchvision_and_names_stay():
    grey = create_model("tv:resnet18", 4, 1, (16, 16)).eval()
    plain = torchvision.models.resnet18(num_classes=4).eval()
    assert grey.quanta_input_note == GREY_NOTE
    assert not hasattr(create_model("tv:resnet18", 4, 3, (16, 16)), "quanta_input_note")
    plain.load_state_dict(grey.state_dict())  # same names: a plain torchvision state_dict fits
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(grey(x), plain(x.repeat(1, 3, 1, 1)))
    assert [n for n, _ in grey.named_modules()] == [n for n, _ in plain.named_modules()]
    # timm adapts its first conv instead
    assert create_model("resnet18", 4, 1, (16, 16)).conv1.in_channels == 1


# ------------------------------------------------------------------------------------------ discovery


def test_discovery_lists_points_in_forward_order(case):
    names = [layer.name for layer in case.layers]
    assert names == execution_order(case.source, names, case.x)
    assert len(set(names)) == len(names)
    assert case.head not in names and not any(n.startswith(case.head + ".") for n in names)
    for layer in case.layers:
        with torch.no_grad():
            tensor = source_forward(case.source, layer.name, case.x)
        assert tuple(tensor.shape[1:]) == layer.shape
        assert layer.kind in ("conv", "linear", "norm", "act-input")


def test_default_sets_per_family(case):
    assert case.defaults == EXPECTED_DEFAULTS[case.key]
    # without an adapter every discovered point is a default (a generic nn.Module)
    assert all(layer.default for layer in discover_layers(case.source, case.shape))


def test_discovery_leaves_the_model_as_it_was(case):
    def hook_counts():
        return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in case.source.modules()]

    before, hooks_before = {k: v.clone() for k, v in case.source.state_dict().items()}, hook_counts()
    case.source.train()
    try:
        discover_layers(case.source, case.shape)
        assert all(m.training for m in case.source.modules())
    finally:
        case.source.eval()
    after = case.source.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert hook_counts() == hooks_before


def test_timm_residual_point_is_the_sum_entering_the_final_activation():
    model = create_model("resnet18", 4, 3, (16, 16)).eval()
    names = [layer.name for layer in discover_layers(model, (3, 16, 16))]
    # bn2's output is changed in place by `x += shortcut`, so it is never offered as a pre-activation
    assert "layer1.0.act2:input" in names and "layer1.0.bn2" not in names
    captured = {}
    block = model.layer1[0]
    hooks = [
        block.register_forward_pre_hook(lambda m, a: captured.__setitem__("block_in", a[0].clone())),
        block.bn2.register_forward_hook(lambda m, a, o: captured.__setitem__("bn2", o.clone())),
        block.act2.register_forward_pre_hook(lambda m, a: captured.__setitem__("sum", a[0].clone())),
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    for hook in hooks:
        hook.remove()
    assert torch.allclose(captured["sum"], captured["bn2"] + captured["block_in"])


def test_shared_torchvision_relu_is_a_clear_layer_error():
    model = create_model("tv:resnet18", 4, 3, (16, 16)).eval()
    names = [layer.name for layer in discover_layers(model, (3, 16, 16))]
    assert not any("relu" in n for n in names[1:])  # the stem's relu runs once, but bn1 is the point
    with pytest.raises(
        LayerError, match=r"'layer1.0.relu' runs 2 times.*output of 'layer1.0.bn1'.*'layer1.0.bn2' changed in place"
    ):
        check_layers(model, ["layer1.0.relu"], (3, 16, 16))
    with pytest.raises(LayerError) as shared:  # the builder's note says where timm has these pre-activations
        check_layers(model, ["layer1.0.relu:input"], (3, 16, 16))
    assert str(shared.value).endswith(f"reaches; {RESNET_SHARED_NOTE}")
    check_layers(model, ["layer1.0.bn1", "layer1.0.bn2", "layer1.0.conv2:input"], (3, 16, 16))
    with pytest.raises(LayerError, match="'fc' is the classifier head"):
        check_layers(model, ["fc"], (3, 16, 16))
    target = copy.deepcopy(model)
    with pytest.raises(LayerError, match="more than once"):
        with quanta_hooks(model, target, "layer1.0.relu", QuantaGate(0.5)) as wiring:
            wiring(torch.randn(2, 3, 16, 16))


class _FunctionalNet(nn.Module):
    """Functional activations, a residual sum, and one block used twice (weight sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = F.relu(self.bn(x) + x)  # a functional residual sum: no name reaches it
        x = torch.tanh(self.shared(torch.sigmoid(self.shared(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_generic_module_with_functional_activations_and_weight_sharing():
    model = _FunctionalNet()
    layers = discover_layers(model, (3, 8, 8))
    assert [(layer.name, layer.kind, layer.activation, layer.default) for layer in layers] == [
        ("conv", "conv", "relu", True)
    ]
    with pytest.raises(LayerError, match=r"'shared' runs 2 times"):
        check_layers(model, ["shared"], (3, 8, 8))
    with pytest.raises(LayerError, match="no layer named 'nope'"):
        check_layers(model, ["nope"], (3, 8, 8))


# ------------------------------------------------------------------------------------------ mixing


def test_pinned_gates_give_exactly_the_source_or_the_target_tensor(case):
    target = case.target().eval()
    for layer in case.defaults:
        z_source = source_forward(case.source, layer, case.x).clone()
        with seen_by_next(target, layer) as seen, torch.no_grad():
            target(case.x)
        z_target = seen[0]
        assert z_source.shape == z_target.shape and not torch.equal(z_source, z_target), layer
        for lambda_source, expected in ((1.0, z_source), (0.0, z_target)):
            cached = z_source.clone()
            with quanta_hooks(case.source, target, layer, QuantaGate(lambda_source, pinned=True)) as wiring:
                with seen_by_next(target, layer) as seen, torch.no_grad():
                    logits = wiring(case.x, z_source=cached)
            assert torch.equal(seen[0], expected), (layer, lambda_source)
            assert torch.equal(cached, z_source), layer  # an in-place activation after the layer left it alone
            assert logits.shape == (2, TARGET_CLASSES)


def test_copy_of_the_source_with_a_half_gate_gives_the_source_logits_exactly(case):
    # λS = λT = 0.5 exactly (softmax of two equal logits), and 0.5·z + 0.5·z == z in binary floating point,
    # so the mixed tensor is bit-for-bit the copy's own: the logits are identical, not merely close.
    copy_of_source = copy.deepcopy(case.source).eval()
    with torch.no_grad():
        expected = case.source(case.x)
    for layer in case.defaults:
        gate = QuantaGate(0.5)
        assert gate.lambdas()[0].item() == 0.5
        with quanta_hooks(case.source, copy_of_source, layer, gate) as wiring, torch.no_grad():
            assert torch.equal(wiring(case.x), expected), layer


def test_training_steps_move_the_gate_and_never_the_source(case):
    before = {k: v.clone() for k, v in case.source.state_dict().items()}
    y = torch.arange(2) % TARGET_CLASSES
    for layer in (case.defaults[0], case.defaults[-1]):
        target = case.target().train()
        gate = QuantaGate(0.9)
        start = gate.v.detach().clone()
        optimizer = make_optimizer(target, RunSettings(lr=1e-3, gate_lr=0.1), gate)
        with quanta_hooks(case.source, target, layer, gate) as wiring:
            for _ in range(2):
                optimizer.zero_grad()
                F.cross_entropy(wiring(case.x), y).backward()
                optimizer.step()
        assert not torch.equal(gate.v.detach(), start), layer
        assert all(p.grad is None for p in case.source.parameters())
        assert not case.source.training
    after = case.source.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_targets_get_their_own_head(case):
    target = case.target().eval()
    with torch.no_grad():
        assert case.source(case.x).shape == (2, SOURCE_CLASSES)
        assert target(case.x).shape == (2, TARGET_CLASSES)
    # from a template (a model the toolkit did not build): timm reset_classifier, torchvision fc / classifier
    templated = TargetFactory(template=case.source)(TARGET_CLASSES, case.in_chans, case.size).eval()
    with torch.no_grad():
        assert templated(case.x).shape == (2, TARGET_CLASSES)
    assert templated.get_submodule(case.head).weight.shape[0] == TARGET_CLASSES
