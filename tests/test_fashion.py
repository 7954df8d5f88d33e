"""Issue 22: the registry of built-in data sets, Fashion-MNIST from its IDX files, --train-size and --image-size on
built-in data.

Every file is written by the tests (tiny IDX files, gzipped or not, in the real format); Debian's folder is
monkeypatched to a temporary one, so nothing depends on what this machine has installed, except the one slow test
that scans the real Fashion-MNIST when ``apt-get install dataset-fashion-mnist`` put it there (skipped otherwise).
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

import probe
from probe import api
from probe.data import DatasetInfo, default_target, get_dataset, load_task, parse_spec, register_dataset
from probe.data import fashion as fashion_module
from probe.data import registry as registry_module
from probe.data import tensors as tensors_module
from probe.data.base import make_base
from probe.data.fashion import FASHION_CLASSES, load_fashion
from probe.data.idx import read_idx
from probe.data.images.tasks import Preprocess, task_from_python
from probe.data.spec import input_shape
from probe.data.task import Split, limit_per_class, per_class_positions
from probe.errors import DataError, ResultsError, SettingsError
from probe.settings import RunSettings

REAL_DEBIAN_FOLDER = fashion_module.DEBIAN_FOLDER  # before any test monkeypatches it
FILES = {  # Fashion-MNIST's four files (without .gz)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ------------------------------------------------------------------ tiny IDX files


def idx_bytes(array: np.ndarray, type_byte: int = 0x08, ndim: int | None = None) -> bytes:
    """``array`` (uint8) as an IDX file: two zero bytes, the type byte, the dimensions, the values."""
    dims = array.ndim if ndim is None else ndim
    return bytes([0, 0, type_byte, dims]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, data: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def fashion_arrays(train_per_class: int = 4, test_per_class: int = 2, tag: int = 0, size: int = 28) -> dict:
    """Tiny Fashion-MNIST arrays: labels cycle through the 10 classes, each class brighter than the last, and
    pixel (0, 0) of every image is ``tag`` (which folder the images came from)."""
    rng = np.random.default_rng(tag)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = (np.arange(10 * per_class) % 10).astype(np.uint8)
        images = (rng.integers(0, 40, (len(labels), size, size)) + 20 * labels[:, None, None]).astype(np.uint8)
        images[:, 0, 0] = tag
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_fashion(folder: Path, gz: bool = True, skip: tuple[str, ...] = (), **options) -> dict:
    """The four IDX files of :func:`fashion_arrays` in ``folder`` (gzipped or not), but the parts in ``skip``."""
    arrays = fashion_arrays(**options)
    for part, name in FILES.items():
        if part not in skip:
            write_idx(folder / name, idx_bytes(arrays[part]), gz)
    return arrays


@pytest.fixture
def debian(tmp_path, monkeypatch) -> Path:
    """Debian's folder, moved to an empty (not yet existing) temporary one."""
    folder = tmp_path / "debian" / "fashion-mnist"
    monkeypatch.setattr(fashion_module, "DEBIAN_FOLDER", folder)
    return folder


# ------------------------------------------------------------------ the IDX reader


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_read_idx_reads_the_array_of_a_raw_or_gzipped_file(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    labels = np.array([9, 0, 3], dtype=np.uint8)
    read_images = read_idx(write_idx(tmp_path / "images-idx3-ubyte", idx_bytes(images), gz), 3)
    read_labels = read_idx(write_idx(tmp_path / "labels-idx1-ubyte", idx_bytes(labels), gz), 1)
    assert read_images.dtype == np.uint8 and read_images.shape == (3, 4, 5)
    assert np.array_equal(read_images, images) and np.array_equal(read_labels, labels)
    read_images[0, 0, 0] = 1  # writable: it owns its memory, not the file's bytes


_GOOD = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
_GZIPPED = gzip.compress(_GOOD, mtime=0)


_BROKEN = [  # (file name, content, what the one line says)
    ("magic", b"\x01" + _GOOD[1:], "is not an IDX file (wrong magic number)"),
    ("empty", b"", "is not an IDX file (wrong magic number)"),
    ("type", _GOOD[:2] + b"\x0d" + _GOOD[3:], "holds IDX type 0x0d with 3 dimensions, not unsigned bytes with 3"),
    ("dims", _GOOD[:3] + b"\x02" + _GOOD[4:], "holds IDX type 0x08 with 2 dimensions, not unsigned bytes with 3"),
    ("short header", _GOOD[:10], "is truncated (its header is incomplete)"),
    ("truncated", _GOOD[:-1], "is truncated: 23 bytes of values for shape 2×3×4"),
    ("extra bytes", _GOOD + b"\x00", "is longer than its header says: 25 bytes of values for shape 2×3×4"),
    ("not gzip.gz", _GOOD, "(BadGzipFile: Not a gzipped file"),
    ("cut gzip.gz", _GZIPPED[:-12], "(EOFError: Compressed file ended before the end-of-stream marker"),
    ("crc.gz", _GZIPPED[:-8] + bytes([_GZIPPED[-8] ^ 1]) + _GZIPPED[-7:], "(BadGzipFile: CRC check failed"),
    ("inflate.gz", _GZIPPED[:12] + b"\xff" * 4 + _GZIPPED[16:], "cannot read"),
]


@pytest.mark.parametrize("name, data, fragment", _BROKEN, ids=[case[0] for case in _BROKEN])
def test_read_idx_refuses_a_broken_file_in_one_line_that_names_it(tmp_path, name, data, fragment):
    path = tmp_path / name.replace(" ", "-")
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_idx(path, 3)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and fragment in message, message
    if name.endswith(".gz"):
        assert message.startswith(f"cannot read {path} (") and message.endswith("); replace the file")


def test_load_fashion_refuses_images_and_labels_that_do_not_belong_together(tmp_path, debian):
    write_fashion(tmp_path)
    write_idx(tmp_path / FILES["test_labels"], idx_bytes(np.zeros(19, dtype=np.uint8)), gz=True)  # 20 test images
    with pytest.raises(DataError) as info:
        load_fashion(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"{tmp_path / 't10k-images-idx3-ubyte.gz'} holds 20 images but {tmp_path / 't10k-labels-idx1-ubyte.gz'} "
        "19 labels; the files do not belong together, replace them"
    )


def test_load_fashion_refuses_a_label_outside_its_ten_classes(tmp_path, debian):
    arrays = write_fashion(tmp_path, gz=False)
    labels = arrays["train_labels"].copy()
    labels[7] = 10
    write_idx(tmp_path / FILES["train_labels"], idx_bytes(labels), gz=False)
    with pytest.raises(DataError) as info:
        load_fashion(tmp_path)
    assert str(info.value) == f"{tmp_path / 'train-labels-idx1-ubyte'} has label 10, outside 0-9; replace the file"


@pytest.mark.parametrize(
    "part, shape, fragment",
    [
        ("test_images", (20, 27, 27), "t10k-images-idx3-ubyte.gz holds 27×27 images, not Fashion-MNIST's 28×28"),
        ("train_images", (40, 28, 32), "train-images-idx3-ubyte.gz holds 28×32 images, not Fashion-MNIST's 28×28"),
        ("train_images", (0, 28, 28), "train-images-idx3-ubyte.gz holds no images"),
    ],
    ids=["27x27 test images", "28x32 train images", "no train images"],
)
def test_load_fashion_refuses_images_that_are_not_fashion_mnist_s_format(tmp_path, debian, part, shape, fragment):
    write_fashion(tmp_path)
    if part == "train_images" and shape[0] == 0:
        write_idx(tmp_path / FILES["train_labels"], idx_bytes(np.zeros(0, dtype=np.uint8)), gz=True)
    write_idx(tmp_path / FILES[part], idx_bytes(np.zeros(shape, dtype=np.uint8)), gz=True)
    with pytest.raises(DataError) as info:  # the model is built for the registry's 1×28×28 before any file is read
        load_fashion(tmp_path)
    assert str(info.value) == f"{tmp_path}/{fragment}; replace the file"


def test_load_fashion_reads_the_arrays_as_written(tmp_path, debian):
    arrays = write_fashion(tmp_path / "data", train_per_class=3, test_per_class=1)
    base = load_fashion(tmp_path / "data")
    assert base.class_names == FASHION_CLASSES
    assert base.train_x.dtype == torch.uint8 and base.train_x.shape == (30, 1, 28, 28)
    assert torch.equal(base.train_x[:, 0], torch.from_numpy(arrays["train_images"]))
    assert torch.equal(base.test_x[:, 0], torch.from_numpy(arrays["test_images"]))
    assert base.train_y.dtype == torch.int64 and base.train_y.tolist() == arrays["train_labels"].tolist()
    assert base.test_y.tolist() == list(range(10))
    assert base.mean.item() == pytest.approx(float(arrays["train_images"].astype(np.float64).mean()), rel=1e-6)


# ------------------------------------------------------------------ where the files are read from


def test_the_first_folder_that_holds_the_files_wins(tmp_path, debian):
    data = tmp_path / "data"
    folders = [data / "FashionMNIST" / "raw", data / "fashion-mnist", data, debian]  # the search order
    for tag, folder in enumerate(folders, start=1):
        write_fashion(folder, gz=tag % 2 == 0, tag=tag)  # raw and gzipped files alike
    (data / "cifar-10-batches-py").mkdir()  # other data sets beside it change nothing
    for tag, folder in enumerate(folders, start=1):
        assert fashion_module.find_files(data) == {
            part: folder / (name + (".gz" if tag % 2 == 0 else "")) for part, name in FILES.items()
        }
        base = load_fashion(data)
        assert set(base.train_x[:, 0, 0, 0].tolist()) == {tag}, f"read from the wrong folder instead of {folder}"
        for name in FILES.values():  # this copy goes: the next folder in the order is read
            for path in (folder / name, folder / f"{name}.gz"):
                path.unlink(missing_ok=True)
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load_fashion(data)


def test_a_raw_file_is_read_before_its_gzipped_copy(tmp_path, debian):
    write_fashion(tmp_path, gz=False, tag=1)
    write_fashion(tmp_path, gz=True, tag=2)
    assert set(load_fashion(tmp_path).train_x[:, 0, 0, 0].tolist()) == {1}


def test_an_incomplete_folder_is_an_error_even_when_a_later_one_is_complete(tmp_path, debian):
    write_fashion(debian)
    write_fashion(tmp_path / "fashion-mnist", skip=("test_labels",))
    for call in (lambda: load_fashion(tmp_path), lambda: fashion_module.check_fashion(tmp_path, False)):
        with pytest.raises(DataError) as info:
            call()
        assert str(info.value) == (
            f"Fashion-MNIST is incomplete in {tmp_path / 'fashion-mnist'}: t10k-labels-idx1-ubyte (or .gz) missing; "
            "put all four IDX files there, or remove them and run apt-get install dataset-fashion-mnist or pass "
            "--download"
        )


def test_missing_everywhere_says_apt_get_and_download_in_one_line(tmp_path, debian):
    data = tmp_path / "data"
    for call in (
        lambda: load_fashion(data),
        lambda: fashion_module.check_fashion(data, False),
        lambda: load_task("fashion[0-4]", data_dir=data),
        lambda: probe.data.check_available("fashion-mnist[0-4]", data_dir=data),
    ):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("Fashion-MNIST not found (looked in ")
        assert "run apt-get install dataset-fashion-mnist, pass --download (download=True)" in message
        for folder in (data / "FashionMNIST" / "raw", data / "fashion-mnist", debian):
            assert str(folder) in message
    fashion_module.check_fashion(data, True)  # --download will fetch them: no error yet, and nothing read or made
    assert not data.exists()


def _fashion_scan(out: Path) -> list:
    return [
        "scan", "--source-data", "fashion[0-4]", "--target", "fashion[5-9]", "--width", "0.25", "--device", "cpu",
        "--epochs", "1", "--layers", "conv1", "--jobs", "1", "--out", out,
    ]  # fmt: skip


def test_the_cli_without_fashion_mnist_exits_2_in_one_line_before_training_anything(tmp_path, debian, monkeypatch):
    data, cache = tmp_path / "empty", tmp_path / "cache"
    data.mkdir()
    env = {"PROBE_DATA": str(data), "PROBE_CACHE": str(cache)}
    monkeypatch.setattr("probe.engine.sources.fit", lambda *a, **k: pytest.fail("a source was trained"))

    scan = invoke(_fashion_scan(tmp_path / "out"), env=env)
    line = assert_user_error(
        scan, "Fashion-MNIST not found", str(data / "FashionMNIST" / "raw"), str(debian),
        "apt-get install dataset-fashion-mnist", "--download",
    )  # fmt: skip
    assert line.startswith("error: Fashion-MNIST not found (looked in ")
    train = invoke(["train", "--data", "fashion-mnist[0-4]", "--out", tmp_path / "src.pt", "--width", "0.25"], env=env)
    assert_user_error(train, "Fashion-MNIST not found", "apt-get install dataset-fashion-mnist", "--download")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no results, checkpoint, cache or Debian folder
    assert not (tmp_path / "out").exists() and not (tmp_path / "src.pt").exists()
    assert not (cache / "sources").exists() or not any((cache / "sources").iterdir())
    assert list(data.iterdir()) == []


# ------------------------------------------------------------------ the task: class names, subsets, aliases


def test_a_fashion_task_has_the_class_names_of_the_data_set(tmp_path, debian):
    arrays = write_fashion(debian)  # found in Debian's folder: the data folder is empty
    task = load_task("fashion[0-4]", data_dir=tmp_path / "nothing-here")
    assert task.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert (task.num_classes, task.in_chans, task.input_size) == (5, 1, (28, 28))
    assert (len(task.train), len(task.test)) == (20, 10)
    assert str(task.spec) == "fashion[0-4]"

    alias = load_task("fashion-mnist[9,7]", data_dir=tmp_path / "nothing-here")  # the alias, classes in given order
    assert str(alias.spec) == "fashion[9,7]"
    assert alias.class_names == ["Ankle boot", "Sneaker"]
    raw = torch.from_numpy(arrays["train_images"]).float()
    mean, std = raw.mean(), raw.std(unbiased=False)
    expected = (raw[torch.from_numpy(arrays["train_labels"] == 9)] - mean) / std  # normalised as the whole set
    assert torch.allclose(alias.train.x[alias.train.y == 0][:, 0], expected, atol=1e-5)
    assert alias.augment == get_dataset("fashion").augment and alias.augment.flip


def test_fashion_in_the_registry_and_the_spec_language():
    info = get_dataset("Fashion-MNIST")
    assert info is get_dataset("fashion") and info.name == "fashion" and info.aliases == ("fashion-mnist",)
    assert info.class_names == FASHION_CLASSES and info.num_classes == 10 and info.input_shape == (1, 28, 28)
    assert not info.embedded and info.preset == "default"
    assert {"fashion", "fashion-mnist"} <= set(registry_module.dataset_names())
    assert input_shape("fashion-mnist[0,2]") == (1, 28, 28)
    assert str(parse_spec("fashion-mnist[0,2]")) == "fashion[0,2]"
    assert str(default_target("fashion[0-4]")) == "fashion[5-9]"
    assert api.policy.preset_name_for("fashion[0-4]") == "default"


def test_results_json_names_the_classes_of_a_built_in_task(tmp_path, debian):
    write_fashion(tmp_path / "data", train_per_class=2, test_per_class=1)
    source = probe.train_source(
        "paper-cnn", "fashion[0-1]", data_dir=tmp_path / "data", epochs=1, arch_options={"width": 0.25}, device="cpu"
    )
    out = tmp_path / "scan"
    probe.scan(source, ["fc"], "fashion[2-3]", data_dir=tmp_path / "data", out=out, epochs=1, jobs=1, device="cpu")
    saved = (out / "results.json").read_text()
    assert json.loads(saved)["extras"]["class_names"] == {"AnB": ["Pullover", "Dress"]}


# ------------------------------------------------------------------ a data set registered by a test


@pytest.fixture
def toyset():
    """``toyset`` (alias ``toy-set``): 3 classes of 3×12×12 images, registered for one test, then removed."""
    loads: list[Path] = []

    def load(data_dir: Path, download: bool):
        loads.append(data_dir)
        rng = np.random.default_rng(0)
        labels = np.arange(18) % 3
        images = (rng.integers(0, 50, (18, 3, 12, 12)) + 60 * labels[:, None, None, None]).astype(np.uint8)
        return make_base(images[:12], labels[:12], images[12:], labels[12:], ("circle", "square", "cross"))

    info = register_dataset(
        DatasetInfo(
            name="toyset",
            aliases=("toy-set",),
            class_names=("circle", "square", "cross"),
            input_shape=(3, 12, 12),
            load=load,
            preset="digits",
        )
    )
    try:
        yield info, loads
    finally:
        registry_module._REGISTRY.pop("toyset", None)
        for alias in ("toyset", "toy-set"):
            registry_module._ALIASES.pop(alias, None)
        for key in [key for key in tensors_module._CACHE if key[0] == "toyset"]:
            del tensors_module._CACHE[key]
    assert not registry_module.is_builtin("toyset")


def test_a_registered_data_set_is_in_the_spec_language_the_loader_and_the_presets(toyset, tmp_path):
    info, loads = toyset
    assert get_dataset("TOY-SET") is info and "toy-set" in registry_module.dataset_names()
    spec = parse_spec("toyset[0-1]")
    assert (spec.name, spec.classes, spec.kind, spec.num_classes) == ("toyset", (0, 1), "builtin", 2)
    assert parse_spec("toy-set[0-1]") == spec
    assert str(default_target(spec)) == "toyset[2]"
    with pytest.raises(DataError, match=r"class 3 is out of range: toyset has classes 0-2"):
        parse_spec("toyset[3]")
    assert input_shape("toyset") == (3, 12, 12) and loads == []  # known without reading the data
    assert api.policy.preset_name_for("toyset[0-1]") == "digits"

    task = load_task("toy-set[2,0]", data_dir=tmp_path)
    assert loads == [tmp_path.resolve()]  # the data folder is handed to the loader
    assert task.class_names == ["cross", "circle"] and task.num_classes == 2
    assert (task.in_chans, task.input_size) == (3, (12, 12))
    assert (len(task.train), len(task.test)) == (8, 4)
    load_task("toyset[0-1]", data_dir=tmp_path)
    assert len(loads) == 1  # read once per folder


def test_probe_layers_takes_a_registered_data_set_shape_from_the_registry(toyset):
    _, loads = toyset
    result = invoke(["layers", "--data", "toyset[0-1]", "--width", "0.25", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    listing = json.loads(result.stdout)
    assert listing["data"] == "toyset[0,1]" and listing["input_shape"] == [3, 12, 12]
    assert [layer["name"] for layer in listing["layers"] if layer["default"]][:1] == ["conv1"]
    assert loads == []  # no data read


def test_a_registered_name_must_be_plain_lower_case():
    load = fashion_module.load_fashion
    for bad in ("Toyset", "toy[0]", "toy/set", "tv:toy", "toy set"):
        with pytest.raises(ValueError, match="must be lower case"):
            register_dataset(DatasetInfo(name=bad, class_names=("a", "b"), input_shape=(1, 8, 8), load=load))
    assert not any(registry_module.is_builtin(bad) for bad in ("toy[0]", "toy/set", "tv:toy", "toy set"))


# ------------------------------------------------------------------ --train-size


def test_per_class_positions_are_stratified_deterministic_and_nested():
    labels = torch.tensor([c for c in range(4) for _ in range(3 + 4 * c)])  # 3, 7, 11, 15 examples
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    five, ten = per_class_positions(labels, 5), per_class_positions(labels, 10)
    assert torch.equal(five, per_class_positions(labels, 5))  # the same positions every time
    assert five.dtype == torch.int64 and torch.equal(five, five.sort().values)
    assert torch.bincount(labels[five], minlength=4).tolist() == [3, 5, 5, 5]  # at most 5, all of a smaller class
    assert torch.bincount(labels[ten], minlength=4).tolist() == [3, 7, 10, 10]
    assert set(five.tolist()) <= set(ten.tolist())  # nested: growing N adds images, keeps the others
    assert not torch.equal(five, per_class_positions(labels, 5, seed=1))


def test_limit_per_class_on_a_built_in_float_task_leaves_the_test_split_alone():
    task = load_task("digits[0-4]")
    limited = limit_per_class(task, 10)
    assert len(limited.train) == 50 and torch.bincount(limited.train.y).tolist() == [10] * 5
    positions = per_class_positions(task.train.y, 10)
    assert torch.equal(limited.train.x, task.train.x[positions])
    assert torch.equal(limited.train.y, task.train.y[positions])
    assert limited.test is task.test and len(limited.test) == 180
    again = limit_per_class(load_task("digits[0-4]"), 10)
    assert torch.equal(again.train.x, limited.train.x)  # deterministic across loads
    smaller = limit_per_class(task, 5)
    rows = {tuple(row.flatten().tolist()) for row in limited.train.x}
    assert all(tuple(row.flatten().tolist()) in rows for row in smaller.train.x)  # nested
    assert limit_per_class(task, None) is task and limit_per_class(task, 10_000) is task


def test_limit_per_class_on_a_uint8_task_indexes_the_cache_without_copying():
    rng = np.random.default_rng(0)
    labels = torch.arange(60) % 3
    images = torch.from_numpy(rng.integers(0, 256, (60, 1, 10, 10)).astype(np.uint8))
    task = task_from_python(((images[:45], labels[:45]), (images[45:], labels[45:])))
    assert task is not None and task.train.raw
    limited = limit_per_class(task, 4)
    assert limited.train.raw and limited.train.data is task.train.data  # an index into the same uint8 images
    assert torch.bincount(limited.train.y).tolist() == [4, 4, 4]
    positions = per_class_positions(task.train.y, 4)
    assert torch.equal(limited.train.x, task.train.x[positions])
    assert limited.test is task.test

    # a class subset is an index already: the limit composes with it
    data = images[:, :, :, :].contiguous()
    mean, std = torch.tensor([100.0]), torch.tensor([50.0])
    subset = Split(data, torch.tensor([0, 1] * 10), mean, std, index=torch.arange(0, 40, 2))
    small = subset.subset(per_class_positions(subset.y, 3))
    assert small.index is not None and len(small) == 6 and small.data is data
    expected = (data[small.index].float() - 100.0) / 50.0
    assert torch.equal(small.x, expected) and set(small.index.tolist()) <= set(range(0, 40, 2))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "5"])
def test_train_size_must_be_a_whole_number_of_images_per_class(bad):
    with pytest.raises(SettingsError) as info:
        RunSettings(train_size=bad)
    assert str(info.value) == f"train_size must be a whole number of images per class ≥ 1, got {bad!r}"
    with pytest.raises(SettingsError):
        RunSettings().with_(train_size=bad)
    assert RunSettings(train_size=1).train_size == 1 and RunSettings().train_size is None


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "many"])
@pytest.mark.parametrize("command", ["scan", "train"])
def test_the_cli_refuses_a_bad_train_size_before_anything_runs(tmp_path, value, command, monkeypatch):
    monkeypatch.setattr("probe.engine.sources.fit", lambda *a, **k: pytest.fail("a source was trained"))
    out = tmp_path / ("out" if command == "scan" else "src.pt")
    result = invoke([command, "--train-size", value, "--out", out, "--device", "cpu"])
    assert_user_error(result, "--train-size")
    assert not out.exists()


def test_train_size_is_recorded_and_a_folder_is_not_resumed_with_another(tiny_source, tmp_path):
    settings = RunSettings(epochs=1, batch_size=16, lr=1e-3, gate_lr=0.03, init=(0.5,), augment=False)
    out = tmp_path / "scan"
    first = probe.scan(tiny_source, ["fc"], "digits[5-9]", settings=settings.with_(train_size=6), out=out)
    assert first.settings["train_size"] == 6
    assert first.runs[0].steps == 2  # 5 classes × 6 images, batches of 16: 2 steps in its one epoch
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["train_size"] == 6
    assert json.loads((out / "fingerprint.json").read_text())["fingerprint"]["settings"]["train_size"] == 6

    again = probe.scan(tiny_source, ["fc"], "digits[5-9]", settings=settings.with_(train_size=6), out=out)
    assert again.environment["resumed_runs"] == 1  # the same scan: resumed, the run read back
    assert again.runs[0].history == first.runs[0].history
    with pytest.raises(ResultsError) as info:
        probe.scan(tiny_source, ["fc"], "digits[5-9]", settings=settings.with_(train_size=7), out=out)
    assert "holds results of another scan (settings.train_size: 6 → 7)" in str(info.value)
    with pytest.raises(ResultsError, match=r"settings\.train_size: 6 → \(none\)"):
        probe.scan(tiny_source, ["fc"], "digits[5-9]", settings=settings, out=out)
    old = tmp_path / "before-train-size"
    whole = probe.scan(tiny_source, ["fc"], "digits[5-9]", settings=settings, out=old)
    assert whole.settings["train_size"] is None and whole.runs[0].steps == 45  # 717 images / 16

    # a folder written before --train-size existed (no train_size in its fingerprint) resumes without one only
    document = json.loads((old / "fingerprint.json").read_text())
    del document["fingerprint"]["settings"]["train_size"]
    (old / "fingerprint.json").write_text(json.dumps(document))
    resumed = probe.scan(tiny_source, ["fc"], "digits[5-9]", settings=settings, out=old)
    assert resumed.environment["resumed_runs"] == 1 and resumed.runs[0].history == whole.runs[0].history
    with pytest.raises(ResultsError, match=r"settings\.train_size: \(none\) → 6"):
        probe.scan(tiny_source, ["fc"], "digits[5-9]", settings=settings.with_(train_size=6), out=old)


def test_probe_train_trains_on_n_per_class_and_records_it(tmp_path, monkeypatch):
    import probe.engine.sources as sources

    seen: list[list[int]] = []
    real_fit = sources.fit

    def spying_fit(**kwargs):
        seen.append(torch.bincount(kwargs["task"].train.y).tolist())
        return real_fit(**kwargs)

    monkeypatch.setattr(sources, "fit", spying_fit)
    out = tmp_path / "src.pt"
    result = invoke(
        ["train", "--data", "digits[0-4]", "--width", "0.25", "--epochs", "1", "--train-size", "7", "--device", "cpu",
         "--out", out]
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert seen == [[7] * 5]
    source = probe.load_source(out)
    assert source.quanta_source.settings["train_size"] == 7  # type: ignore[union-attr]


def test_the_scan_s_own_source_is_trained_on_its_whole_task():
    plan = api.plan_scan(api.ScanRequest(overrides={"train_size": 5, "epochs": 1}))
    assert plan.settings.train_size == 5
    assert plan.source_settings is not None and plan.source_settings.train_size is None
    assert plan.source_settings.epochs == 1


# ------------------------------------------------------------------ --image-size on built-in data


def test_image_size_resizes_a_built_in_data_set():
    native = load_task("digits[0-4]")
    task = load_task("digits[0-4]", preprocess=Preprocess(image_size=28))
    assert task.input_size == (28, 28) and task.in_chans == 1
    assert task.train.x.shape == (len(native.train), 1, 28, 28) and task.test.x.shape[1:] == (1, 28, 28)
    assert torch.equal(task.train.y, native.train.y) and torch.equal(task.test.y, native.test.y)
    assert task.class_names == native.class_names and task.augment == native.augment  # digits' own: no flips
    assert abs(task.train.x.mean().item()) < 1e-3  # its own statistics at the new size


def test_the_native_size_gives_the_native_tensors_bit_for_bit(tmp_path, debian):
    native = load_task("digits[0-4]")
    same = load_task("digits[0-4]", preprocess=Preprocess(image_size=8))
    assert not same.train.raw and same.input_size == (8, 8)
    for split in ("train", "test"):
        assert torch.equal(getattr(same, split).x, getattr(native, split).x)
        assert torch.equal(getattr(same, split).y, getattr(native, split).y)
    grey = load_task("digits[0-4]", preprocess=Preprocess(image_size=8, channels=1))
    assert torch.equal(grey.train.x, native.train.x)

    write_fashion(tmp_path / "data")
    fashion = load_task("fashion[0-4]", data_dir=tmp_path / "data")
    at_28 = load_task("fashion[0-4]", data_dir=tmp_path / "data", preprocess=Preprocess(image_size=28))
    assert torch.equal(at_28.train.x, fashion.train.x) and torch.equal(at_28.test.x, fashion.test.x)
    at_32 = load_task("fashion[0-4]", data_dir=tmp_path / "data", preprocess=Preprocess(image_size=32))
    assert at_32.input_size == (32, 32) and at_32.class_names == fashion.class_names


# ------------------------------------------------------------------ the real Fashion-MNIST, end to end


@pytest.mark.slow
def test_a_small_fashion_scan_end_to_end_on_debian_s_files(tmp_path):
    if not all((REAL_DEBIAN_FOLDER / f"{name}.gz").is_file() for name in FILES.values()):
        pytest.skip(f"Fashion-MNIST is not in {REAL_DEBIAN_FOLDER} (apt-get install dataset-fashion-mnist)")
    data, cache = tmp_path / "empty", tmp_path / "cache"
    data.mkdir()
    env = {"PROBE_DATA": str(data), "PROBE_CACHE": str(cache)}
    source = tmp_path / "src.pt"
    train = invoke(
        ["train", "--data", "fashion[0-1]", "--width", "0.25", "--epochs", "1", "--train-size", "20", "--device", "cpu",
         "--out", source],
        env=env,
    )  # fmt: skip
    assert train.exit_code == 0, (train.stdout, train.stderr)
    assert "(paper-cnn on fashion[0,1])" in train.stdout
    assert probe.load_source(source).quanta_source.settings["train_size"] == 20  # type: ignore[union-attr]

    out = tmp_path / "results"
    scan = invoke(
        ["scan", "--source", source, "--target", "fashion[2-3]", "--train-size", "20", "--epochs", "2",
         "--layers", "conv1,fc", "--runs", "1", "--jobs", "1", "--device", "cpu", "--out", out],
        env=env,
    )  # fmt: skip
    assert scan.exit_code == 0, (scan.stdout, scan.stderr)
    assert "QUANTA transferability: paper-cnn fashion[0,1] → fashion[2,3]" in scan.stdout  # the table
    assert [line.split()[1] for line in scan.stdout.splitlines() if line.startswith("│")] == ["conv1", "fc"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["train_size"] == 20 and saved["source"]["settings"]["train_size"] == 20
    assert saved["target"] == "fashion[2,3]" and saved["source"]["dataset"] == "fashion[0,1]"
    assert {run["steps"] for run in saved["runs"]} == {2 * 2}  # 2 classes × 20 images, batches of 32, 2 epochs
    assert list(data.iterdir()) == []  # read from Debian's folder, nothing written to the data folder
