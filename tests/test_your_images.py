"""Issue 14 end to end: your own images (folders, tv:, hf:, Python data) and pretrained weights from a hub cache.

Every file is written by the tests: image folders (PNG and JPEG, grey and RGB), FashionMNIST's idx files, a
``datasets`` ``save_to_disk`` folder, and a Hugging Face hub cache holding a tiny timm model's weights.
Nothing is downloaded: the hub is offline (HF_HUB_OFFLINE=1) wherever weights are involved.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from PIL import Image

import probe
from probe import api
from probe.core.gate import QuantaGate
from probe.core.hooks import quanta_hooks, source_forward
from probe.data import load_task, parse_spec
from probe.data.images.tasks import Preprocess
from probe.engine.context import fresh_target
from probe.engine.prepare import prepare
from probe.errors import CheckpointError, DataError, SettingsError
from probe.settings import RunSettings

TINY_TIMM = "test_resnet"  # timm's own test model (470k parameters), pretrained tag r160_in1k on the hub
TINY_TIMM_REPO = "timm/test_resnet.r160_in1k"


def image_folder(root: Path, classes=("ant", "bee", "cat", "dog"), per_class=6, size=(20, 16)) -> Path:
    """Class subfolders of PNG and JPEG files, RGB and grey mixed; each class a distinct colour range."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.integers(0, 50, (size[1], size[0], 3)) + 50 * c).astype(np.uint8)
            image = Image.fromarray(pixels, "RGB")
            if i % 3 == 2:
                image.convert("L").save(folder / f"{i}.jpg", quality=95)
            else:
                image.save(folder / f"{i}.png")
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache, in the hub's own layout, holding the tiny timm model's weights; the hub offline."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TINY_TIMM, pretrained=False)
    repo = tmp_path / "hub" / f"models--{TINY_TIMM_REPO.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(model.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return model.state_dict()


# ------------------------------------------------------------------------------------- spec language


def test_spec_language_takes_folders_torchvision_and_hugging_face_with_subsets():
    assert (parse_spec("./flowers[0-2,5]").name, parse_spec("./flowers[0-2,5]").classes) == ("./flowers", (0, 1, 2, 5))
    assert parse_spec("tv:FashionMNIST[0-4]").kind == "tv" and parse_spec("hf:beans").kind == "hf"
    assert parse_spec("/data/pets").kind == "folder" and parse_spec("digits[0-4]").kind == "builtin"
    with pytest.raises(DataError, match="unknown dataset 'digitz'.*image folder path"):
        parse_spec("digitz")


# ------------------------------------------------------------------------------------- folders, CLI


def test_scan_of_an_image_folder_from_the_cli(tmp_path):
    folder = image_folder(tmp_path / "pics")
    out = tmp_path / "out"
    result = invoke(
        ["scan", "--arch", "paper-cnn", "--width", "0.25", "--device", "cpu", "--source-data", f"{folder}[0-1]",
         "--target", f"{folder}[2-3]", "--layers", "conv1", "--epochs", "1", "--runs", "1", "--init", "0.5",
         "--jobs", "1", "--out", out]
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "images: 20×16, 3 channel(s); the data's own train-split mean/std" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    target = saved["extras"]["data"]["AnB"]
    assert target["source"] == "folder" and target["root"] == str(folder.resolve())
    assert target["split"]["seed"] == 0 and target["split"]["counts"]["cat"] == {"train": 5, "test": 1}
    assert target["skipped"]["count"] == 0 and target["cache"]
    assert saved["extras"]["tasks"]["AnB"].endswith("pics[2,3]")


def test_bad_files_are_skipped_by_rule_and_recorded(tmp_path):
    folder = image_folder(tmp_path / "pics", classes=("ant", "bee"), per_class=6)
    (folder / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "bee" / "notes.txt").write_text("not an image, ignored")
    task = load_task(str(folder))
    assert task.meta["skipped"]["count"] == 1 and "broken.png" in json.dumps(task.meta["skipped"])
    assert task.meta["ignored_files"] == 1 and len(task.train) + len(task.test) == 12


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    root = tmp_path / "bad"
    flat = image_folder(root / "flat", classes=("a", "b"), per_class=3)
    (root / "noclasses").mkdir(parents=True)
    (root / "noclasses" / "x.png").write_bytes(b"")
    empty = image_folder(root / "empty", classes=("a", "b"), per_class=3)
    (empty / "c").mkdir()
    image_folder(root / "single", classes=("a",), per_class=3)
    image_folder(root / "mismatch" / "train", classes=("a", "b"), per_class=2)
    image_folder(root / "mismatch" / "test", classes=("a", "c"), per_class=2)
    corrupt = image_folder(root / "corrupt", classes=("a", "b"), per_class=6)
    for i in range(11):
        (corrupt / "a" / f"bad{i}.jpg").write_bytes(b"garbage")
    return {
        "missing": ([f"{root / 'nope'}"], "does not exist"),
        "no classes": ([f"{root / 'noclasses'}"], "has no class subfolders"),
        "empty class": ([f"{empty}"], "class 'c'"),
        "single class": ([f"{root / 'single'}"], "single class 'a'"),
        "train/test": ([f"{root / 'mismatch'}"], "different classes"),
        "too many corrupt": ([f"{corrupt}"], "11 of 23 images cannot be read"),
        "subset out of range": ([f"{flat}[0-5]"], "class 2 is out of range"),
        "unknown torchvision": (["tv:NoSuchSet"], "torchvision has no dataset 'NoSuchSet'"),
    }


def test_every_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path):
    for what, (target, fragment) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{what.replace(' ', '-').replace('/', '-')}"
        result = invoke(
            ["scan", "--arch", "paper-cnn", "--width", "0.25", "--device", "cpu", "--source-data", "digits[0-4]",
             "--target", *target, "--layers", "conv1", "--epochs", "1", "--runs", "1", "--out", out]
        )  # fmt: skip
        assert_user_error(result, fragment)
        assert not out.exists(), what


def test_an_image_size_too_large_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    """--image-size 100000 grew the cache to 23.6 GB until the out-of-memory killer ended the process."""
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    folder = image_folder(tmp_path / "pics", classes=("a", "b", "c", "d"), per_class=3)
    out = tmp_path / "out"
    result = invoke(
        ["scan", "--arch", "paper-cnn", "--width", "0.25", "--device", "cpu", "--source-data", f"{folder}[0-1]",
         "--target", f"{folder}[2-3]", "--image-size", "100000", "--epochs", "1", "--runs", "1", "--out", out]
    )  # fmt: skip
    assert_user_error(result, "--image-size 100000 is too large", "give at most 9459")
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_an_hf_name_offline_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke(
        ["scan", "--arch", "paper-cnn", "--width", "0.25", "--source-data", "hf:nobody/nothing-xyz[0-1]",
         "--target", "hf:nobody/nothing-xyz[2-3]", "--out", tmp_path / "out"]
    )  # fmt: skip
    assert_user_error(result, "hub is offline")
    assert not (tmp_path / "out").exists()


def test_a_dataset_that_returns_something_else_is_a_data_error():
    class Wrong(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8)  # no label

    source = probe.train_source("paper-cnn", "digits[0-4]", epochs=1, arch_options={"width": 0.25}, device="cpu")
    with pytest.raises(DataError, match=r"not \(image, label\)"):
        probe.measure(source, "conv1", target=(Wrong(), Wrong()), epochs=1, runs=1)


# ------------------------------------------------------------------------------------- torchvision files


def _write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    blobs = {
        f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, h, w) + images.tobytes(),
        f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes(),
    }
    for name, blob in blobs.items():  # torchvision's layout after its download: the archive and its content
        (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
        (raw / name).write_bytes(blob)


def test_a_torchvision_dataset_in_its_own_file_format_through_target(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    images = (rng.integers(0, 40, (60, 28, 28)) + 20 * labels[:, None, None]).astype(np.uint8)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    _write_idx(raw, "train", images[:40], labels[:40])
    _write_idx(raw, "t10k", images[40:], labels[40:])
    out = tmp_path / "out"
    result = invoke(
        ["scan", "--arch", "paper-cnn", "--width", "0.25", "--device", "cpu", "--data-dir", tmp_path / "data",
         "--source-data", "tv:FashionMNIST[0-4]", "--target", "tv:FashionMNIST[5-9]", "--layers", "conv1",
         "--epochs", "1", "--runs", "1", "--init", "0.5", "--jobs", "1", "--out", out]
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    saved = json.loads((out / "results.json").read_text())
    assert saved["extras"]["data"]["AnB"]["source"] == "tv:FashionMNIST"
    assert "28×28, 1 channel(s)" in saved["extras"]["preprocessing"]["applied"]


# ------------------------------------------------------------------------------------- Hugging Face, Python


def test_an_hf_save_to_disk_folder_through_the_api(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcd"))})
    rng = np.random.default_rng(1)
    rows = [Image.fromarray((rng.integers(0, 60, (12, 12, 3)) + 60 * (i % 4)).astype(np.uint8)) for i in range(40)]
    ds = datasets.Dataset.from_dict({"image": rows, "label": [i % 4 for i in range(40)]}, features=features)
    ds.save_to_disk(str(tmp_path / "hf"))
    source = probe.train_source(
        "paper-cnn", f"{tmp_path / 'hf'}[0-1]", epochs=1, arch_options={"width": 0.25}, device="cpu"
    )
    m = probe.measure(source, "conv1", target=f"{tmp_path / 'hf'}[2-3]", epochs=1, runs=1, init=(0.5,), jobs=1)
    assert m.extras["data"]["AnB"]["source"].startswith("hf") and m.extras["data"]["AnB"]["split"]["seed"] == 0
    assert len(m.runs) == 1 and m.runs[0].status == "ok" and np.isfinite(m.runs[0].final["lambda_source"])


def two_label_dataset(root: Path) -> Path:
    """A save_to_disk DatasetDict with two ClassLabel columns, as CIFAR-100: fine_label (8) and coarse_label (4)."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=[f"fine{i}" for i in range(8)]),
            "coarse_label": datasets.ClassLabel(names=["ant", "bee", "cat", "dog"]),
        }
    )
    rng = np.random.default_rng(2)

    def split(n: int):
        fine = [i % 8 for i in range(n)]
        images = [Image.fromarray((rng.integers(0, 50, (8, 8, 3)) + 50 * (f // 2)).astype(np.uint8)) for f in fine]
        return datasets.Dataset.from_dict(
            {"img": images, "fine_label": fine, "coarse_label": [f // 2 for f in fine]}, features=features
        )

    datasets.DatasetDict({"train": split(48), "test": split(16)}).save_to_disk(str(root))
    return root


SCAN_QUICK = ["--arch", "paper-cnn", "--width", "0.25", "--device", "cpu", "--layers", "conv1", "--epochs", "1",
              "--runs", "1", "--init", "0.5", "--jobs", "1"]  # fmt: skip


def test_hf_label_column_from_the_cli(tmp_path):
    hf = two_label_dataset(tmp_path / "cifar-like")
    data = ["--source-data", f"{hf}[0-1]", "--target", f"{hf}[2-3]"]
    out = tmp_path / "out"
    ambiguous = invoke(["scan", *SCAN_QUICK, *data, "--out", out])
    assert_user_error(ambiguous, "2 label (ClassLabel) columns (fine_label, coarse_label)", "--label-column")
    missing = invoke(["scan", *SCAN_QUICK, *data, "--label-column", "coarse", "--out", out])
    assert_user_error(missing, "no column 'coarse'", "fine_label, coarse_label", "--label-column")
    elsewhere = invoke(["scan", *SCAN_QUICK, "--target", "digits[5-9]", "--label-column", "coarse_label", "--out", out])
    assert_user_error(elsewhere, "--label-column", "no Hugging Face data (digits[5-9])")
    assert not out.exists()
    result = invoke(["scan", *SCAN_QUICK, *data, "--label-column", "coarse_label", "--out", out])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    saved = json.loads((out / "results.json").read_text())
    assert saved["extras"]["data"]["AnB"]["columns"] == {"image": "img", "label": "coarse_label"}
    assert saved["extras"]["data"]["AnB"]["preprocessing"]["label_column"] == "coarse_label"
    assert saved["extras"]["tasks"]["AnB"].endswith("cifar-like[2,3]") and saved["runs"][0]["status"] == "ok"
    layers = invoke(["layers", "--data", str(hf), "--label-column", "coarse_label", "--json"])
    assert layers.exit_code == 0 and json.loads(layers.stdout)["input_shape"] == [3, 8, 8], layers.stderr
    train = invoke(["train", "--data", "digits[0-4]", "--label-column", "coarse_label", "--out", tmp_path / "s.pt"])
    assert_user_error(train, "no Hugging Face data (digits[0-4])")
    assert not (tmp_path / "s.pt").exists()


def test_hf_label_column_through_the_api(tmp_path):
    hf = two_label_dataset(tmp_path / "cifar-like")
    quick = dict(epochs=1, runs=1, init=(0.5,), jobs=1, device="cpu")
    with pytest.raises(DataError, match=r"2 label \(ClassLabel\) columns .*label_column= \(CLI: --label-column\)"):
        probe.train_source("paper-cnn", f"{hf}[0-1]", epochs=1, arch_options={"width": 0.25}, device="cpu")
    source = probe.train_source(
        "paper-cnn", f"{hf}[0-1]", epochs=1, arch_options={"width": 0.25}, device="cpu", label_column="coarse_label"
    )
    info = source.quanta_source
    assert info.settings["label_column"] == "coarse_label" and info.num_classes == 2
    m = probe.measure(source, "conv1", target=f"{hf}[2-3]", label_column="coarse_label", **quick)
    assert m.extras["data"]["AnB"]["columns"]["label"] == "coarse_label" and m.runs[0].status == "ok"
    coarse = load_task(str(hf), preprocess=Preprocess(label_column="coarse_label"))
    fine = load_task(str(hf), preprocess=Preprocess(label_column="fine_label"))
    assert coarse.class_names == ["ant", "bee", "cat", "dog"] and fine.num_classes == 8
    assert torch.equal(coarse.train.y, fine.train.y // 2)  # the same images, labelled by the column named
    with pytest.raises(DataError, match="no column 'nope'.*label_column="):
        probe.measure(source, "conv1", target=str(hf), label_column="nope", **quick)
    with pytest.raises(SettingsError, match=r"image_column= \(--image-column\).*no Hugging Face data"):
        probe.scan(source, ["conv1"], target="digits[5-9]", image_column="img", out=tmp_path / "out", **quick)
    assert not (tmp_path / "out").exists()
    request = api.ScanRequest(
        arch="paper-cnn", source_data=f"{hf}[0-1]", target=f"{hf}[2-3]", label_column="coarse_label"
    )
    plan = api.plan_scan(request)
    assert plan.preprocess is not None and plan.preprocess.label_column == "coarse_label"


def test_tensors_and_dataset_pairs_as_target():
    source = probe.train_source("paper-cnn", "digits[0-4]", epochs=1, arch_options={"width": 0.25}, device="cpu")
    digits = load_task("digits[5-9]")
    x = (digits.train.x - digits.train.x.min()) / (digits.train.x.max() - digits.train.x.min())
    m = probe.measure(source, "conv1", target=(x, digits.train.y), epochs=1, runs=1, init=(0.5,), jobs=1)
    assert m.extras["data"]["AnB"]["split"]["layout"] == "(x, y) split per class"


def test_already_normalised_tensors_scan_as_given_and_results_json_says_so(tmp_path, tiny_source):
    """What a PyTorch pipeline yields after Normalize: used as they are, not refused and not normalised again."""
    digits = load_task("digits[5-9]")  # float tensors normalised with digits' own mean/std: values outside [0, 1]
    train, test = (digits.train.x, digits.train.y), (digits.test.x, digits.test.y)
    assert float(train[0].min()) < 0 < 1 < float(train[0].max())
    m = probe.scan(
        tiny_source, "conv1", target=(train, test), epochs=1, runs=1, init=(0.5,), jobs=1, out=tmp_path / "out"
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["extras"]["data"]["AnB"]
    assert saved["preprocessing"]["already_normalised"] is True
    assert saved["preprocessing"]["applied"] == "8×8, 1 channel(s); already normalised: used as given"
    assert saved["values"] == "already normalised: used as given" and m.runs
    task = prepare(tiny_source, (train, test), settings=RunSettings(device="cpu")).context.tasks["AnB"]
    assert torch.equal(task.train.x, train[0]) and torch.equal(task.test.x, test[0])  # bit for bit, no second pass


# ------------------------------------------------------------------------------------- pretrained


def test_pretrained_timm_from_a_hub_cache_fed_from_a_folder_keeps_the_identity(tmp_path, hub_cache):
    folder = image_folder(tmp_path / "pics", per_class=4, size=(40, 30))
    request = api.ScanRequest(
        arch=TINY_TIMM, pretrained=True, target=str(folder), image_size=48, overrides={"device": "cpu"}
    )
    plan = api.plan_scan(request)
    source = plan.model
    assert all(torch.equal(source.state_dict()[k], v) for k, v in hub_cache.items())  # the cached weights
    pre = plan.preprocess
    assert pre is not None and (pre.image_size, pre.channels, pre.mean) == (48, 3, (0.5, 0.5, 0.5))
    assert "timm pretrained_cfg of test_resnet" in pre.origin
    prepared = prepare(source, str(folder), settings=RunSettings(device="cpu"), preprocess=pre)
    task = prepared.context.tasks["AnB"]
    assert (task.in_chans, task.input_size) == (3, (48, 48)) and task.train.raw
    assert task.train.data.dtype == torch.uint8  # kept uint8, converted per batch
    x = task.test.rows(0, 4)
    expected_x = (task.test.data[:4].float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, expected_x)  # the model's own mean/std
    target = fresh_target(prepared.context, "AnB", 0)
    z_source = source_forward(prepared.context.source, "layer1", x)
    seen = []
    handle = target.get_submodule("layer2").register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        with (
            torch.no_grad(),
            quanta_hooks(prepared.context.source, target, "layer1", QuantaGate(1.0, pinned=True)) as w,
        ):
            w(x)
    finally:
        handle.remove()
    assert torch.equal(seen[0], z_source)  # λS = 1: the target sees exactly the source's Z


def with_timm_interpolation(monkeypatch, arch: str, interpolation: str) -> None:
    """timm's pretrained_cfg of ``arch`` as if it named ``interpolation`` (timm returns a copy per call)."""
    import timm

    real = timm.models.get_pretrained_cfg

    def patched(name, *args, **kwargs):
        cfg = real(name, *args, **kwargs)
        if cfg is not None and name == arch:
            cfg.interpolation = interpolation
        return cfg

    monkeypatch.setattr(timm.models, "get_pretrained_cfg", patched)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_pretrained_scan_records_and_prints_the_preprocessing(tmp_path, hub_cache, monkeypatch, interpolation):
    if interpolation != "bilinear":  # test_resnet's own is bilinear; a config naming bicubic (as resnet18's)
        with_timm_interpolation(monkeypatch, TINY_TIMM, interpolation)
    folder = image_folder(tmp_path / "pics", per_class=4)
    out = tmp_path / "out"
    result = invoke(
        ["scan", "--arch", TINY_TIMM, "--pretrained", "--target", folder, "--image-size", "32", "--layers",
         "layer1", "--epochs", "1", "--runs", "1", "--init", "0.5", "--jobs", "1", "--device", "cpu",
         "--control", "--out", out]
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    # test_resnet's eval transform is Resize(168)+CenterCrop(160): at 32 the ratio gives round(32·168/160) = 34
    line = f"images: Resize(34, {interpolation})+CenterCrop(32) → 32×32, 3 channel(s); mean/std (0.500, 0.500, "
    assert line in result.stdout
    assert "note: no AnA control: test_resnet was pretrained on data this toolkit does not have" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["extras"]["preprocessing"]["image_size"] == 32 and saved["extras"]["preprocessing"]["resize"] == 34
    assert saved["extras"]["data"]["AnB"]["resize_size"] == 34
    assert saved["extras"]["preprocessing"]["interpolation"] == interpolation
    assert saved["extras"]["data"]["AnB"]["interpolation"] == interpolation  # what the cache entry applied
    assert saved["source"]["checkpoint"].endswith("model.safetensors")


def test_a_local_weights_file_for_a_named_architecture(tmp_path, monkeypatch, hub_cache):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    save_file(hub_cache, str(tmp_path / "weights.safetensors"))
    folder = image_folder(tmp_path / "pics", per_class=3)
    plan = api.plan_scan(
        api.ScanRequest(
            tmp_path / "weights.safetensors", arch=TINY_TIMM, pretrained=True, target=str(folder), image_size=32
        )
    )
    assert all(torch.equal(plan.model.state_dict()[k], v) for k, v in hub_cache.items())


def test_pretrained_offline_without_a_copy_fails_fast_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = image_folder(tmp_path / "pics", classes=("a", "b"), per_class=3)
    with pytest.raises(CheckpointError, match=r"no cached pretrained weights for timm 'test_resnet' and HF_HUB_OFF"):
        api.plan_scan(api.ScanRequest(arch=TINY_TIMM, pretrained=True, target=str(folder)))
    result = invoke(["scan", "--arch", TINY_TIMM, "--pretrained", "--target", folder, "--out", tmp_path / "out"])
    assert_user_error(result, "HF_HUB_OFFLINE is set", "looked for timm/test_resnet.r160_in1k")
    assert not (tmp_path / "out").exists()


def test_pretrained_eval_transform_is_resize_then_centre_crop_as_the_library_s():
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.models import ResNet18_Weights

    pre, _ = api.preprocessing_for("./pics", arch="tv:resnet18", pretrained=True)  # weights metadata, no download
    assert pre is not None and (pre.resize, pre.image_size) == (256, 224)
    assert (pre.resize, pre.image_size) == (*ResNet18_Weights.DEFAULT.transforms().resize_size, 224)
    for arch in ("resnet18", TINY_TIMM):  # crop_pct 0.95: Resize(235)+CenterCrop(224), Resize(168)+CenterCrop(160)
        cfg = timm.models.get_pretrained_cfg(arch)
        resize, crop = create_transform(**resolve_data_config(pretrained_cfg=cfg.to_dict())).transforms[:2]
        pre, _ = api.preprocessing_for("./pics", arch=arch, pretrained=True)
        assert pre is not None and (pre.resize, pre.image_size) == (resize.size, crop.size[0])
        assert pre.resize == int(pre.image_size / cfg.crop_pct) > pre.image_size
        assert pre.interpolation == resolve_data_config(pretrained_cfg=cfg.to_dict())["interpolation"]
        assert pre.interpolation == resize.interpolation.value
    assert pre.interpolation == "bilinear"  # test_resnet's; resnet18's is bicubic
    assert api.preprocessing_for("./pics", arch="resnet18", pretrained=True)[0].interpolation == "bicubic"


def test_a_torchvision_model_gives_its_transforms_interpolation():
    from torchvision.models import ResNet18_Weights
    from torchvision.transforms import InterpolationMode

    pre, notes = api.preprocessing_for("./pics", arch="tv:resnet18", pretrained=True)
    assert ResNet18_Weights.DEFAULT.transforms().interpolation == InterpolationMode.BILINEAR
    assert pre is not None and pre.interpolation == "bilinear" and notes == []
    assert pre.to_dict()["interpolation"] == "bilinear"


def test_timm_random_or_unknown_interpolation_is_bilinear_and_says_why(monkeypatch):
    from probe.models.pretrained import pil_filter

    assert pil_filter("bicubic") == ("bicubic", None) and pil_filter("lanczos") == ("lanczos", None)
    for name, why in (("random", "a training-time random choice"), ("area", "not a PIL filter")):
        with_timm_interpolation(monkeypatch, "resnet18", name)
        pre, notes = api.preprocessing_for("./pics", arch="resnet18", pretrained=True)
        reason = f"interpolation '{name}' ({why}) read as bilinear"
        assert pre is not None and pre.interpolation == "bilinear"
        assert notes == [f"resnet18's {reason}"] and pre.origin.endswith(reason)


def test_pretrained_images_are_resized_with_the_models_filter(tmp_path):
    """resnet18's eval transform is bicubic: a folder of non-square files is prepared as torchvision's
    Resize(R, BICUBIC) + CenterCrop(S) prepares them, not as the bilinear one (no weights needed)."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import InterpolationMode

    folder = image_folder(tmp_path / "pics", classes=("a", "b"), per_class=3, size=(40, 27))
    pre, _ = api.preprocessing_for(str(folder), arch="resnet18", pretrained=True, image_size=16)
    assert pre is not None and (pre.resize, pre.image_size, pre.interpolation) == (17, 16, "bicubic")
    task = load_task(str(folder), preprocess=pre)
    ours = {x.numpy().tobytes() for x in torch.cat([task.train.data, task.test.data])}

    def reference(mode: InterpolationMode) -> set[bytes]:
        tf = transforms.Compose([transforms.Resize(17, interpolation=mode), transforms.CenterCrop(16)])
        return {np.asarray(tf(img)).transpose(2, 0, 1).tobytes() for img, _ in ImageFolder(str(folder))}

    assert ours == reference(InterpolationMode.BICUBIC) and ours.isdisjoint(reference(InterpolationMode.BILINEAR))
    assert task.meta["preprocessing"]["interpolation"] == "bicubic"
    assert "Resize(17, bicubic)+CenterCrop(16)" in task.meta["preprocessing"]["applied"]


def test_image_size_keeps_the_pretrained_models_resize_ratio():
    sizes = {}
    for arch, size in (("tv:resnet18", 64), ("tv:resnet18", 112), ("resnet18", 64), ("tv:resnet18", 224)):
        pre, _ = api.preprocessing_for("./pics", arch=arch, pretrained=True, image_size=size)
        assert pre is not None and pre.image_size == size
        sizes[arch, size] = pre.resize
    # round(S' · R / S): 64·256/224 = 73.1, 112·256/224 = 128, 64·235/224 = 67.1; the model's own size keeps R
    expected = {("tv:resnet18", 64): 73, ("tv:resnet18", 112): 128, ("resnet18", 64): 67, ("tv:resnet18", 224): 256}
    assert sizes == expected
    pre, _ = api.preprocessing_for("./pics", image_size=64)  # no pretrained weights: R = S, as before
    assert pre is not None and (pre.resize_size, pre.to_dict()["resize"]) == (64, 64)
    assert (pre.interpolation, pre.to_dict()["interpolation"]) == (None, "bilinear")


def test_preprocess_defaults_to_the_datas_own_statistics(tmp_path):
    folder = image_folder(tmp_path / "pics", classes=("a", "b"), per_class=4)
    task = load_task(str(folder), preprocess=Preprocess(image_size=8))
    assert task.input_size == (8, 8) and task.meta["preprocessing"]["image_size"] == 8
    assert abs(float(task.train.x.mean())) < 1e-4  # normalised with the train split's own mean


def test_a_model_that_would_see_1x1_maps_gets_the_smallest_input_that_keeps_2x2():
    plan = api.plan_scan(api.ScanRequest(arch="resnet18", layers=["layer4*"], overrides={"device": "cpu"}))
    assert plan.preprocess is not None and plan.preprocess.image_size == 33  # resnet18 halves 5 times
    assert plan.notes and "resized to 33×33" in plan.notes[0] and "8×8" in plan.notes[0]
    task = load_task("digits[5-9]", preprocess=plan.preprocess)
    assert task.input_size == (33, 33) and task.augment.enabled  # digits keep their own augmentation
    assert api.plan_scan(api.ScanRequest(arch="paper-cnn", arch_options={"width": 0.25})).preprocess is None


def test_a_task_is_sent_to_workers_by_its_cache_file_not_its_images(tmp_path):
    import pickle

    folder = image_folder(tmp_path / "pics", classes=("a", "b"), per_class=20, size=(64, 64))
    task = load_task(f"{folder}[0-1]")
    blob = pickle.dumps(task)
    assert len(blob) < task.train.data.numel()  # the images are not in it
    again = pickle.loads(blob)
    assert torch.equal(again.train.x, task.train.x) and torch.equal(
        again.test.take(torch.arange(2)), task.test.rows(0, 2)
    )


def test_train_on_a_folder_at_a_size_then_scan_it_from_the_checkpoint(tmp_path):
    folder = image_folder(tmp_path / "pics", per_class=4)
    ckpt = tmp_path / "src.pt"
    trained = invoke(
        ["train", "--data", f"{folder}[0-2]", "--image-size", "12", "--width", "0.25", "--epochs", "1",
         "--device", "cpu", "--out", ckpt]
    )  # fmt: skip
    assert trained.exit_code == 0, (trained.stdout, trained.stderr)
    out = tmp_path / "out"
    scanned = invoke(
        ["scan", "--source", ckpt, "--target", f"{folder}[1-3]", "--layers", "conv1", "--epochs", "1", "--runs", "1",
         "--jobs", "1", "--device", "cpu", "--out", out]
    )  # fmt: skip
    assert scanned.exit_code == 0, (scanned.stdout, scanned.stderr)
    assert json.loads((out / "results.json").read_text())["extras"]["preprocessing"]["image_size"] == 12


def _folder_source_and_target(tmp_path):
    from probe.models.paper_cnn import PaperCNN

    folder = image_folder(tmp_path / "pics", per_class=8)
    torch.manual_seed(0)
    task = load_task(f"{folder}[0-1]")
    source = PaperCNN(num_classes=2, in_chans=task.in_chans, input_size=task.input_size, width=0.25)
    return source, f"{folder}[2-3]"


def test_baselines_on_images_read_the_cache_a_batch_at_a_time(tmp_path, monkeypatch):
    from probe.baselines.scores import layer_features
    from probe.data.task import Split

    source, target = _folder_source_and_target(tmp_path)
    split = load_task(target).train
    whole = split.x  # the reference: every image converted at once
    batched = layer_features(source, "conv2", split, batch_size=3)
    assert torch.equal(batched, layer_features(source, "conv2", whole))
    assert not batched.requires_grad  # features only: no autograd graph kept over the whole split

    def no_whole_copy(self):
        raise AssertionError("Split.x converted a whole split of uint8 images")

    monkeypatch.setattr(Split, "x", property(no_whole_copy))
    result = probe.scan(
        source, ["conv1", "fc"], target, epochs=1, runs=1, jobs=1, device="cpu",
        baselines=["yosinski", "logme", "hscore", "linear", "knn", "cka", "leep", "nce"],
    )  # fmt: skip
    lenses = result.extras["baselines"]["per_layer"]["conv1"]
    assert all(np.isfinite(float(lenses[name])) for name in ("logme", "hscore", "linear", "knn"))


def test_image_data_in_worker_processes_give_the_serial_numbers_bit_for_bit(tmp_path):
    source, target = _folder_source_and_target(tmp_path)
    common = dict(epochs=2, runs=1, device="cpu", lr=1e-3, gate_lr=0.03)
    serial = probe.scan(source, ["conv1", "fc"], target, jobs=1, **common)
    parallel = probe.scan(source, ["conv1", "fc"], target, jobs=2, **common)
    histories = lambda m: {r.spec: r.history for r in m.runs}  # noqa: E731
    assert histories(parallel) == histories(serial) and len(parallel.runs) == 2
