"""Tests of probe.data: specs, digits split, CIFAR reading (tiny archives in the real format), augmentation."""

from __future__ import annotations

import io
import pathlib
import pickle
import re
import socket
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from probe.data import (
    AugmentConfig,
    DatasetSpec,
    augment_batch,
    default_augment,
    default_target,
    load_task,
    parse_spec,
    resolve_data_dir,
)
from probe.data import cifar as cifar_module
from probe.data.digits import digits_indices
from probe.data.images.cache import default_cache_dir
from probe.errors import DataError, SettingsError
from probe.util.cache import cache_root

# ------------------------------------------------------------------ tiny CIFAR archives


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes protocol-2 pickles the way Python 2's cPickle did: every str/bytes as a BINSTRING."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_binstring(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_binstring
    dispatch[str] = save_binstring


def _py2_dumps(obj: object) -> bytes:
    """A pickle like the files in cifar-10-python.tar.gz (Python 2, numpy.core module names)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _images(rng: np.random.Generator, n: int, offset: int) -> np.ndarray:
    """Random uint8 (n, 3072) images with a different brightness per channel."""
    x = rng.integers(0, 200, size=(n, 3, 1024)) + np.array([0, 20, 50])[None, :, None] * (offset % 2)
    return x.reshape(n, 3072).astype(np.uint8)


def write_cifar10(root: pathlib.Path, per_batch: int = 6, test: int = 10) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-10 in torchvision's layout; return the raw train/test arrays."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _images(rng, per_batch, i), [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": b"training batch %d of 5" % i,
            b"labels": y,
            b"data": x,
            b"filenames": [b"img_%d.png" % j for j in range(per_batch)],
        }
        (folder / f"data_batch_{i}").write_bytes(_py2_dumps(batch))
        xs.append(x)
        ys.extend(y)
    tx, ty = _images(rng, test, 0), list(range(10)) * (test // 10)
    test_batch = {b"batch_label": b"testing batch 1 of 1", b"labels": ty, b"data": tx}
    (folder / "test_batch").write_bytes(_py2_dumps(test_batch))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_dumps(meta))
    return {"train_x": np.concatenate(xs), "train_y": np.array(ys), "test_x": tx, "test_y": np.array(ty)}


def write_cifar100(root: pathlib.Path, train: int = 30, test: int = 12) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-100 (train as a Python 3 protocol-2 pickle, test as protocol 5)."""
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x, y = _images(rng, train, 1), [3, 5, 7] * (train // 3)
    tx, ty = _images(rng, test, 0), [5, 3, 99] * (test // 3)
    (folder / "train").write_bytes(
        pickle.dumps(
            {b"filenames": [b"a.png"] * train, b"fine_labels": y, b"coarse_labels": [0] * train, b"data": x}, protocol=2
        )
    )
    test_batch = {b"fine_labels": ty, b"coarse_labels": [0] * test, b"data": tx}
    (folder / "test").write_bytes(pickle.dumps(test_batch, protocol=5))
    meta = {b"fine_label_names": [b"class_%d" % i for i in range(100)], b"coarse_label_names": [b"c"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {"train_x": x, "train_y": np.array(y), "test_x": tx, "test_y": np.array(ty)}


def _normalised(raw: np.ndarray, train_raw: np.ndarray) -> torch.Tensor:
    """Reference normalisation: per-channel population mean/std of the raw train images."""
    t = train_raw.reshape(-1, 3, 32, 32).astype(np.float64)
    mean, std = t.mean(axis=(0, 2, 3)), t.std(axis=(0, 2, 3))
    return torch.from_numpy((raw.reshape(-1, 3, 32, 32) - mean[:, None, None]) / std[:, None, None]).float()


# ------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("digits", "digits"),
        ("digits[0-4]", "digits[0-4]"),
        ("cifar100[0-49]", "cifar100[0-49]"),
        ("digits[0,2,5-7]", "digits[0,2,5-7]"),
        ("digits[1,3,5]", "digits[1,3,5]"),
        ("digits[0-2,7]", "digits[0-2,7]"),
        ("  CIFAR10 ", "cifar10"),
        (" digits [ 0 - 2 , 7 ] ", "digits[0-2,7]"),
        ("digits[7,1,2,3]", "digits[7,1-3]"),  # order is kept: it defines the label order
        ("digits[3,4]", "digits[3,4]"),
        ("fashion[0-4]", "fashion[0-4]"),
        ("Fashion-MNIST[0,2]", "fashion[0,2]"),  # an alias becomes the data set's own name
        ("fashion-mnist", "fashion"),
    ],
)
def test_parse_spec_round_trips(text: str, canonical: str) -> None:
    spec = parse_spec(text)
    assert str(spec) == canonical
    assert parse_spec(str(spec)) == spec
    assert parse_spec(spec) is spec


def test_parse_spec_values() -> None:
    assert parse_spec("digits[0-2,7]") == DatasetSpec("digits", (0, 1, 2, 7))
    assert parse_spec("cifar10") == DatasetSpec("cifar10", None)
    assert parse_spec("cifar100[0-49]").num_classes == 50


@pytest.mark.parametrize(
    "text, pattern",
    [
        (
            "digts[0-4]",
            r"unknown dataset 'digts' \(did you mean 'digits'\?\); known datasets: cifar10, cifar100, digits, fashion,",
        ),
        ("mnist", r"unknown dataset 'mnist'; known datasets"),
        ("digits[0-4", r"malformed dataset spec"),
        ("digits0-4]", r"malformed dataset spec"),
        ("digits[[0]]", r"malformed class list"),
        ("digits[a]", r"malformed class list"),
        ("digits[0,,2]", r"malformed class list"),
        ("digits[-1]", r"malformed class list"),
        ("digits[4-0]", r"descending range '4-0'.*'0-4'"),
        ("digits[]", r"empty class subset"),
        ("digits[ ]", r"empty class subset"),
        ("digits[10]", r"class 10 is out of range: digits has classes 0-9"),
        ("cifar100[50-100]", r"class 100 is out of range: cifar100 has classes 0-99"),
        ("digits[1,1]", r"class 1 is listed twice"),
        ("digits[0-4,3]", r"class 3 is listed twice"),
        ("fashion[10]", r"class 10 is out of range: fashion has classes 0-9"),
        ("fashion-mnist[9-10]", r"class 10 is out of range: fashion has classes 0-9"),
        ("fashon[0-4]", r"unknown dataset 'fashon' \(did you mean 'fashion'\?\)"),
    ],
)
def test_parse_spec_rejects(text: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)


def test_dataset_spec_validates_when_built_directly() -> None:
    assert DatasetSpec("Digits", [0, 1]) == DatasetSpec("digits", (0, 1))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="empty class subset"):
        DatasetSpec("digits", ())


@pytest.mark.parametrize(
    "source, target",
    [
        ("digits[0-4]", "digits[5-9]"),
        ("digits[5-9]", "digits[0-4]"),
        ("cifar100[0-49]", "cifar100[50-99]"),
        ("digits[0,2,5-7]", "digits[1,3,4,8,9]"),
        ("cifar10", "cifar100"),
        ("fashion[0-4]", "fashion[5-9]"),
        ("fashion-mnist[0,2]", "fashion[1,3-9]"),
    ],
)
def test_default_target(source: str, target: str) -> None:
    assert str(default_target(source)) == target


@pytest.mark.parametrize("source", ["digits", "cifar100", "digits[0-9]", "fashion", "fashion[0-9]"])
def test_default_target_needs_explicit_target(source: str) -> None:
    with pytest.raises(DataError, match=r"no default target .*give a target explicitly, e\.g\."):
        default_target(source)


# ------------------------------------------------------------------ digits

# The digits test split, pinned: it must be the same on every machine and call.
_PINNED_TEST_HEAD = [3, 7, 13, 19, 36, 38, 43, 48]
_PINNED_TEST_SUM = 311827


def test_digits_split_is_deterministic_disjoint_and_stratified() -> None:
    target = load_digits().target
    train, test = digits_indices(target)
    again_train, again_test = digits_indices(target)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(len(target)))
    counts = np.bincount(target, minlength=10)
    assert np.array_equal(np.bincount(target[test], minlength=10), np.round(0.2 * counts).astype(int))
    # pinned so that a change of the split (on any machine) is noticed
    assert (len(train), len(test)) == (1438, 359)
    assert test[:8].tolist() == _PINNED_TEST_HEAD and int(test.sum()) == _PINNED_TEST_SUM


def test_load_digits_task() -> None:
    task = load_task("digits")
    assert (task.num_classes, task.in_chans, task.input_size) == (10, 1, (8, 8))
    assert task.train.x.shape == (1438, 1, 8, 8) and task.test.x.shape == (359, 1, 8, 8)
    assert task.train.x.dtype == torch.float32 and task.train.y.dtype == torch.int64
    assert task.class_names == [str(i) for i in range(10)]
    assert task.augment == default_augment("digits") and not task.augment.flip
    assert abs(task.train.x.mean().item()) < 1e-4 and abs(task.train.x.std(unbiased=False).item() - 1) < 1e-4
    again = load_task("digits")
    assert torch.equal(again.train.x, task.train.x) and torch.equal(again.test.y, task.test.y)
    assert again.train.x is not task.train.x  # callers own their tensors


def test_digits_subsets_partition_and_share_normalisation() -> None:
    full, low, high = load_task("digits"), load_task("digits[0-4]"), load_task("digits[5-9]")
    for split in ("train", "test"):
        f, lo, hi = getattr(full, split), getattr(low, split), getattr(high, split)
        assert len(lo) + len(hi) == len(f)
        assert set(lo.y.tolist()) == set(hi.y.tolist()) == set(range(5))
        assert torch.equal(lo.x, f.x[f.y < 5]) and torch.equal(lo.y, f.y[f.y < 5])
        assert torch.equal(hi.x, f.x[f.y >= 5]) and torch.equal(hi.y + 5, f.y[f.y >= 5])
    assert (len(low.train), len(low.test), len(high.train), len(high.test)) == (721, 180, 717, 179)
    assert high.class_names == ["5", "6", "7", "8", "9"]


def test_subset_order_defines_labels() -> None:
    full, task = load_task("digits"), load_task("digits[7,2]")
    assert task.class_names == ["7", "2"]
    assert torch.equal(task.train.x[task.train.y == 0], full.train.x[full.train.y == 7])
    assert torch.equal(task.train.x[task.train.y == 1], full.train.x[full.train.y == 2])


# ------------------------------------------------------------------ CIFAR


def test_load_cifar10(tmp_path: pathlib.Path) -> None:
    raw = write_cifar10(tmp_path)
    task = load_task("cifar10", data_dir=tmp_path)
    assert task.train.x.shape == (30, 3, 32, 32) and task.test.x.shape == (10, 3, 32, 32)
    assert task.train.x.dtype == torch.float32 and task.train.y.dtype == torch.int64
    assert (task.num_classes, task.in_chans, task.input_size) == (10, 3, (32, 32))
    assert task.class_names[0] == "airplane" and task.class_names[9] == "truck"
    assert task.train.y.tolist() == raw["train_y"].tolist() and task.test.y.tolist() == raw["test_y"].tolist()
    mean, std = task.train.x.mean(dim=(0, 2, 3)), task.train.x.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5) and torch.allclose(std, torch.ones(3), atol=1e-5)
    assert torch.allclose(task.train.x, _normalised(raw["train_x"], raw["train_x"]), atol=1e-5)
    assert torch.allclose(task.test.x, _normalised(raw["test_x"], raw["train_x"]), atol=1e-5)
    # channel-major layout: row[c*1024 + i*32 + j] is pixel (c, i, j)
    expected = (raw["train_x"][4, 2 * 1024 + 5 * 32 + 7] - raw["train_x"].reshape(-1, 3, 1024)[:, 2].mean()) / raw[
        "train_x"
    ].reshape(-1, 3, 1024)[:, 2].std()
    assert task.train.x[4, 2, 5, 7].item() == pytest.approx(expected, abs=1e-5)
    assert task.augment == default_augment("cifar10") and task.augment.flip


def test_load_cifar100_subset_reindexes(tmp_path: pathlib.Path) -> None:
    raw = write_cifar100(tmp_path)
    task = load_task("cifar100[3,5]", data_dir=tmp_path)
    assert task.num_classes == 2 and task.class_names == ["class_3", "class_5"]
    for split in ("train", "test"):
        s, x, y = getattr(task, split), raw[f"{split}_x"], raw[f"{split}_y"]
        assert set(s.y.tolist()) == {0, 1}
        keep = (y == 3) | (y == 5)
        assert s.y.tolist() == [0 if v == 3 else 1 for v in y[keep]]
        assert torch.allclose(s.x, _normalised(x[keep], raw["train_x"]), atol=1e-5)
    full = load_task("cifar100", data_dir=tmp_path)
    assert full.num_classes == 100 and full.train.y.tolist() == raw["train_y"].tolist()
    assert 99 in full.test.y.tolist()


def test_cifar_is_cached_per_folder(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar100(tmp_path)
    first = load_task("cifar100[3]", data_dir=tmp_path)
    expected = first.train.x.clone()
    first.train.x.add_(1000)  # mutating what we got must not touch the cache
    monkeypatch.setattr(cifar_module, "_read_pickle", lambda *_: pytest.fail("re-read a cached dataset"))
    second = load_task("cifar100[5,3]", data_dir=tmp_path)
    assert torch.equal(second.train.x[second.train.y == 1], expected)


def test_data_dir_from_environment(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    monkeypatch.setenv("PROBE_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path.resolve()
    assert resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    assert len(load_task("cifar10").train) == 30
    monkeypatch.delenv("PROBE_DATA")
    assert resolve_data_dir() == pathlib.Path("~/.cache/quanta-probe/data").expanduser().resolve()


def test_one_cache_root_with_home_expanded(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PROBE_DATA", raising=False)
    monkeypatch.setenv("PROBE_CACHE", "~/elsewhere")
    assert cache_root() == tmp_path / "elsewhere"
    assert default_cache_dir() == (tmp_path / "elsewhere" / "images").resolve()
    assert resolve_data_dir() == (tmp_path / ".cache" / "quanta-probe" / "data").resolve()  # PROBE_DATA's, not moved
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("PROBE_CACHE")
        else:
            monkeypatch.setenv("PROBE_CACHE", unset)
        assert cache_root() == tmp_path / ".cache" / "quanta-probe"


def test_missing_folder_names_the_path(tmp_path: pathlib.Path) -> None:
    where = tmp_path / "nowhere"
    pattern = re.escape(str(where / "cifar-10-batches-py")) + r" does not exist.*download=True"
    with pytest.raises(DataError, match=pattern) as info:
        load_task("cifar10", data_dir=where)
    assert "\n" not in str(info.value) and "PROBE_DATA" in str(info.value)


def test_missing_file_names_the_file(tmp_path: pathlib.Path) -> None:
    write_cifar10(tmp_path)
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(str(missing)) + " is missing"):
        load_task("cifar10", data_dir=tmp_path)


def test_truncated_file(tmp_path: pathlib.Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(DataError, match=re.escape(str(path)) + " is corrupt or truncated"):
        load_task("cifar10", data_dir=tmp_path)


def test_wrong_content_is_refused(tmp_path: pathlib.Path) -> None:
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(pickle.dumps({b"fine_labels": [1, 2], b"data": np.zeros((3, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataError, match=re.escape(str(path)) + " has 2 labels for 3 images"):
        load_task("cifar100", data_dir=tmp_path)


class _Evil:
    """Unpickling this creates a file (the builtin ``open``)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused(tmp_path: pathlib.Path) -> None:
    # the payload is live: a plain pickle.loads does create the file
    probe = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(probe), protocol=2)).close()
    assert probe.exists()

    write_cifar10(tmp_path)
    pwned = tmp_path / "pwned"
    batch = {b"labels": [0], b"data": _Evil(pwned)}
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1 refuses to unpickle: it references '[\w.]*open'"):
        load_task("cifar10", data_dir=tmp_path)
    assert not pwned.exists()


def test_archive_is_extracted(tmp_path: pathlib.Path) -> None:
    import tarfile

    src = tmp_path / "src"
    raw = write_cifar100(src)
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    task = load_task("cifar100", data_dir=tmp_path / "data")
    assert task.train.y.tolist() == raw["train_y"].tolist()


def test_download_offline_fails_fast(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    before = socket.getdefaulttimeout()
    pattern = r"could not download CIFAR-10 into .*without network, put torchvision's cifar-10-python\.tar\.gz"
    with pytest.raises(DataError, match=pattern) as info:
        load_task("cifar10", data_dir=tmp_path, download=True)
    assert "\n" not in str(info.value)
    assert socket.getdefaulttimeout() == before


def test_download_skipped_when_present(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    monkeypatch.setattr(
        cifar_module, "download_archive", lambda *_: pytest.fail("downloaded although the files are there")
    )
    assert len(load_task("cifar10", data_dir=tmp_path, download=True).test) == 10


# ------------------------------------------------------------------ augmentation


def _batch(n: int = 16, c: int = 3, h: int = 12, w: int = 12) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(123))


def test_augment_same_seed_same_output() -> None:
    x, cfg = _batch(), default_augment("cifar10")
    a = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, x)


def test_augment_disabled_returns_input() -> None:
    x, gen = _batch(), torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert not AugmentConfig().enabled
    assert augment_batch(x, AugmentConfig(), gen) is x
    assert torch.equal(gen.get_state(), state)


def test_augment_flip_only_mirrors_some_samples_exactly() -> None:
    x = _batch(n=64)
    out = augment_batch(x, AugmentConfig(flip=True), torch.Generator().manual_seed(0))
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=False)]
    same = [torch.equal(o, i) for o, i in zip(out, x, strict=False)]
    assert all(m != s for m, s in zip(mirrored, same, strict=False))  # every sample is one or the other
    assert 10 < sum(mirrored) < 54


def test_augment_without_flip_never_mirrors() -> None:
    # a left/right asymmetric image: no flip means the right half stays brighter
    x = torch.zeros(32, 1, 8, 8)
    x[..., 5:] = 1.0
    out = augment_batch(x, default_augment("digits"), torch.Generator().manual_seed(3))
    assert (out[..., 5:].mean(dim=(1, 2, 3)) > out[..., :3].mean(dim=(1, 2, 3))).all()
    zero = AugmentConfig(shift=0.0, rotation=0.0, zoom=0.0, flip=False)
    assert augment_batch(x, zero, torch.Generator()) is x


def test_augment_geometry_is_small_and_sane() -> None:
    x = _batch(n=8, c=1, h=8, w=10)  # non-square images keep their shape
    out = augment_batch(x, AugmentConfig(shift=0.125, rotation=10, zoom=0.1), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    tiny = augment_batch(x, AugmentConfig(rotation=1e-6), torch.Generator().manual_seed(0))
    assert torch.allclose(tiny, x, atol=1e-4)  # near-identity affine samples pixel centres


def test_augment_config_validation() -> None:
    for bad in (dict(shift=-0.1), dict(shift=1.0), dict(zoom=1.5), dict(rotation=200.0), dict(rotation=float("nan"))):
        with pytest.raises(SettingsError, match="out of range"):
            AugmentConfig(**bad)  # type: ignore[arg-type]
    assert default_augment("digits[0-4]") == AugmentConfig(shift=0.125, rotation=10.0, zoom=0.1, flip=False)
    assert default_augment("cifar100") == AugmentConfig(shift=0.125, rotation=10.0, zoom=0.1, flip=True)


def test_split_to_and_len() -> None:
    task = load_task("digits[0,1]")
    moved = task.to("cpu")
    assert len(moved.train) == len(task.train) and moved.train.x.device.type == "cpu"
