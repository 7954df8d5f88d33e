"""Sources from anywhere: every checkpoint format through api.load_source, and cached pretrained weights."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from probe.api import load_source
from probe.engine.sources import pretrained_source
from probe.errors import CheckpointError
from probe.models import create_model
from probe.models.checkpoint import SourceInfo, save_checkpoint, source_info
from probe.models.pretrained import pretrained_file
from probe.models.targets import TargetFactory
from probe.util.files import file_sha256

DIGITS = "digits[0-4]"  # 5 classes of 1×8×8 grey images


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _model(arch: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(arch, num_classes=5, in_chans=1, input_size=(8, 8), **options).eval()


# (arch, options): a small model of each family, for the source task's image format
FAMILIES = [("paper-cnn", {"width": 0.25}), ("mobilenetv3_small_050", {}), ("tv:mobilenet_v3_small", {})]


@pytest.mark.parametrize("arch, options", FAMILIES, ids=[a for a, _ in FAMILIES])
@pytest.mark.parametrize(
    "layout", ["probe-train", "plain.pt", "plain.pth", "state_dict-key", "model-key", "safetensors"]
)
def test_every_format_round_trips_and_the_file_is_never_written(tmp_path, arch, options, layout):
    model = _model(arch, **options)
    state = model.state_dict()
    if layout == "probe-train":
        path = tmp_path / "source.pt"
        save_checkpoint(
            model,
            SourceInfo(arch=arch, arch_options=options, num_classes=5, in_chans=1, input_size=(8, 8), dataset=DIGITS),
            path,
        )
    elif layout == "safetensors":
        path = tmp_path / "source.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / ("source.pth" if layout == "plain.pth" else "source.pt")
        payload = {"state_dict": state, "epoch": 3} if layout == "state_dict-key" else state
        payload = {"model": state, "optimizer": {}} if layout == "model-key" else payload
        torch.save(payload, path)
    digest = file_sha256(path)

    if layout == "probe-train":
        loaded = load_source(path)
    else:
        with pytest.raises(CheckpointError, match="plain state_dict: say which architecture"):
            load_source(path)
        loaded = load_source(path, arch, data=DIGITS, **options)

    assert _equal_states(loaded, model)
    info = source_info(loaded)
    assert (info.arch, info.num_classes, info.in_chans, info.input_size) == (arch, 5, 1, (8, 8))
    assert info.sha256 == digest == file_sha256(path)
    assert not loaded.training
    with torch.no_grad():
        x = torch.randn(2, 1, 8, 8)
        assert torch.equal(loaded(x), model(x))


def test_a_checkpoint_of_another_architecture_or_class_count_names_the_differences(tmp_path):
    path = tmp_path / "ten.pt"
    torch.save(create_model("resnet18", 10, 1, (8, 8)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shapes differ: fc.weight \(10, 512\) vs model \(5, 512\)"):
        load_source(path, "resnet18", data=DIGITS)
    with pytest.raises(
        CheckpointError,
        match=r"shapes differ: conv1.weight \(64, 1, 7, 7\) vs model \(16, 1, 3, 3\).*missing keys: conv1.bias.*"
        r"unexpected keys: bn1.weight",
    ):
        load_source(path, "paper-cnn", data=DIGITS, width=0.25)
    info_path = tmp_path / "paper.pt"
    save_checkpoint(
        _model("paper-cnn", width=0.25),
        SourceInfo(arch="paper-cnn", arch_options={"width": 0.25}, num_classes=5, in_chans=1, input_size=(8, 8)),
        info_path,
    )
    with pytest.raises(CheckpointError, match="holds a 'paper-cnn' model, not 'resnet18'"):
        load_source(info_path, "resnet18")


def test_a_torchvision_resnet_checkpoint_loads_into_timm_resnet18_unchanged():
    # Why the shared-relu error can point at timm's resnet18: same keys and shapes, same function.
    from probe.models.checkpoint import load_state_into

    torch.manual_seed(4)
    tv_model = create_model("tv:resnet18", 10, 3, (32, 32)).eval()
    timm_model = create_model("resnet18", 10, 3, (32, 32))
    load_state_into(timm_model, tv_model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(timm_model.eval()(x), tv_model(x), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_truncated_checkpoint_is_a_checkpoint_error(tmp_path, suffix):
    model = _model("paper-cnn", width=0.25)
    path = tmp_path / f"source{suffix}"
    if suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        save_file(model.state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    digest = file_sha256(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt|not a valid safetensors file"):
        load_source(path, "paper-cnn", data=DIGITS, width=0.25)
    assert file_sha256(path) == digest


# ------------------------------------------------------------------------------------------ pretrained


@pytest.mark.parametrize("arch", ["resnet18", "timm:vit_tiny_patch16_224", "tv:resnet18"])
def test_pretrained_offline_without_a_cached_copy_fails_at_once_without_network(offline, monkeypatch, arch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = arch.split(":")[-1]
    started = time.perf_counter()
    with pytest.raises(
        CheckpointError,
        match=rf"no cached pretrained weights for (timm|torchvision) '{name}' and HF_HUB_OFFLINE is set "
        r"\(looked for .*\); fetch them once",
    ):
        create_model(arch, 5, 3, (32, 32), pretrained=True)
    with pytest.raises(CheckpointError, match="no cached pretrained weights"):
        pretrained_source(arch, input_size=(32, 32))
    assert time.perf_counter() - started < 5.0
    assert offline == []  # HF_HUB_OFFLINE: not even a connection attempt


@pytest.mark.parametrize("arch", ["resnet18", "tv:resnet18"])
def test_pretrained_without_network_fails_in_under_5_seconds(offline, arch):
    """No HF_HUB_OFFLINE but no network: one connection attempt, refused, then one line (no retries, no hang)."""
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"cannot be reached \(looked for .*HF_HUB_CACHE|cannot be reached"):
        pretrained_source(arch, input_size=(32, 32))
    assert time.perf_counter() - started < 5.0


def test_an_architecture_without_pretrained_weights_says_so(offline):
    with pytest.raises(CheckpointError, match="'paper-cnn' has no pretrained weights"):
        pretrained_source("paper-cnn", input_size=(32, 32), width=0.25)


def test_torchvision_pretrained_weights_come_from_the_torch_hub_cache(offline, tmp_path):
    torch.manual_seed(1)
    imagenet = create_model("tv:resnet18", 1000, 3, (32, 32))
    cached = tmp_path / "cache" / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cached)
    digest = file_sha256(cached)
    assert pretrained_file("tv:resnet18") == str(cached)

    source = pretrained_source("tv:resnet18", DIGITS)  # grey 8×8 digits, 1000-class ImageNet head kept
    assert _equal_states(source, imagenet)
    info = source_info(source)
    assert (info.num_classes, info.in_chans, info.input_size, info.sha256) == (1000, 1, (8, 8), digest)
    assert "pretrained" not in info.arch_options and source.quanta_input_note
    with torch.no_grad():
        assert source(torch.randn(2, 1, 8, 8)).shape == (2, 1000)

    backbone = create_model("tv:resnet18", 3, 3, (32, 32), pretrained=True)  # a fresh 3-class head
    assert backbone.fc.out_features == 3 and torch.equal(backbone.layer4[1].bn2.weight, imagenet.layer4[1].bn2.weight)
    target = TargetFactory(info.arch, info.arch_options)(3, info.in_chans, info.input_size)
    assert not torch.equal(target.conv1.weight, imagenet.conv1.weight)  # targets are never pretrained
    assert file_sha256(cached) == digest and offline == []


def test_timm_pretrained_weights_come_from_the_hugging_face_cache(offline, tmp_path):
    torch.manual_seed(2)
    imagenet = create_model("resnet18", 1000, 3, (32, 32))
    repo = tmp_path / "cache" / "hf_hub_cache" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(imagenet.state_dict(), str(snapshot / "model.safetensors"))

    grey = create_model("resnet18", 5, 1, (8, 8), pretrained=True)
    # timm adapts the first conv to one channel by summing the RGB filters; the 5-class head is fresh
    assert torch.allclose(grey.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(grey.layer3[0].conv2.weight, imagenet.layer3[0].conv2.weight)
    assert grey.fc.out_features == 5
    source = pretrained_source("resnet18", in_chans=3, input_size=(32, 32))
    assert _equal_states(source, imagenet) and source_info(source).num_classes == 1000
    assert offline == []
