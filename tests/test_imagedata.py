"""probe.data.images (cache, folder, pairs, huggingface) on real files the tests write
(PIL, idx-ubyte, datasets)."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import struct
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data.images import cache as imagecache
from probe.data.images import folder as imagedata
from probe.data.images import load_images
from probe.data.images.folder import load_image_folder
from probe.data.images.pairs import load_dataset_pair, load_tensors
from probe.data.images.torchvision_sets import load_torchvision
from probe.errors import DataError, SettingsError

COLOURS = {"cat": (200, 30, 40), "dog": (10, 220, 90), "emu": (60, 70, 250)}


def solid(path, colour, size=(12, 10), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt)
    return path


def pattern(seed, size=(12, 10)):
    """A distinct RGB image per seed (so splits can be compared by content)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def flat_folder(root, per_class=10, classes=("a", "b", "c")):
    for c, name in enumerate(classes):
        for i in range(per_class):
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            pattern(100 * c + i).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def entries(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


# ----------------------------------------------------------------------------------- folders


def test_train_test_folder_decodes_solid_colours_exactly(tmp_path, cache):
    for split in ("train", "test"):
        for name, colour in COLOURS.items():
            for i in range(2):
                solid(tmp_path / "d" / split / name / f"{i}.png", colour)
    data = load_image_folder(tmp_path / "d", cache_dir=cache, workers=0)
    assert data.class_names == ["cat", "dog", "emu"]
    assert isinstance(data.train_x, np.memmap) and data.train_x.dtype == np.uint8
    assert data.train_x.shape == (6, 3, 10, 12) and data.test_x.shape == (6, 3, 10, 12)
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2] and data.train_y.dtype == np.int64
    for x, y in zip(data.test_x, data.test_y, strict=False):
        assert (x == np.array(COLOURS[data.class_names[y]], np.uint8).reshape(3, 1, 1)).all()
    assert data.meta["layout"] == "train/ and test/ folders" and data.meta["counts"] == {"train": 6, "test": 6}
    assert data.in_chans == 3 and data.input_size == (10, 12) and data.num_classes == 3
    x = np.asarray(data.train_x, dtype=np.float64)
    assert np.allclose(data.meta["pixel_stats"]["train"]["mean"], x.mean(axis=(0, 2, 3)))
    assert np.allclose(data.meta["pixel_stats"]["train"]["std"], x.std(axis=(0, 2, 3)))
    tensor = torch.from_numpy(data.train_x)  # no copy, no read-only warning; writes never reach the file
    tensor[0] = 0
    assert (load_image_folder(tmp_path / "d", cache_dir=cache, workers=0).train_x[0] != 0).any()


def test_modes_png_jpeg_grey_rgba_palette_16bit(tmp_path, cache):
    root = tmp_path / "m"
    solid(root / "a" / "rgb.png", (1, 2, 3))
    solid(root / "a" / "grey.png", 77, mode="L")
    rgba = Image.new("RGBA", (12, 10), (90, 80, 70, 0))  # fully transparent: alpha is dropped, colour kept
    rgba.save(root / "a" / "rgba.png")
    pal = Image.new("P", (12, 10), 1)
    pal.putpalette([0, 0, 0, 11, 22, 33] + [0] * 762)
    (root / "b").mkdir()
    pal.save(root / "b" / "pal.png")
    Image.fromarray(np.full((10, 12), 257 * 100, np.uint16)).save(root / "b" / "deep.png")  # I;16 -> 100
    solid(root / "b" / "photo.jpg", (40, 160, 220), fmt="JPEG")
    solid(root / "b" / "greyphoto.jpeg", 128, mode="L", fmt="JPEG")
    assert Image.open(root / "b" / "deep.png").mode == "I;16"
    data = load_image_folder(root, cache_dir=cache, workers=0, test_fraction=0.34, seed=0)
    x = np.concatenate([data.train_x, data.test_x])
    assert x.shape[1:] == (3, 10, 12)  # grey and colour mixed -> 3 channels
    got = {tuple(int(v) for v in img[:, 5, 5]) for img in x}
    for exact in [(1, 2, 3), (77, 77, 77), (90, 80, 70), (11, 22, 33), (100, 100, 100)]:
        assert exact in got
    assert any(max(abs(a - b) for a, b in zip(v, (40, 160, 220), strict=False)) <= 3 for v in got)  # JPEG is lossy
    assert any(all(abs(a - 128) <= 2 for a in v) for v in got)


def test_all_grey_folder_keeps_one_channel_and_channels_override(tmp_path, cache):
    for name, v in (("x", 10), ("y", 200)):
        for i in range(3):
            solid(tmp_path / "g" / name / f"{i}.png", v, mode="L")
    data = load_image_folder(tmp_path / "g", cache_dir=cache, workers=0)
    assert data.train_x.shape[1] == 1 and set(np.unique(data.train_x)) == {10, 200}
    rgb = load_image_folder(tmp_path / "g", cache_dir=cache, workers=0, channels=3)
    assert rgb.train_x.shape[1] == 3 and (rgb.train_x[:, 0] == rgb.train_x[:, 2]).all()


def test_resize_is_torchvision_resize_plus_centre_crop(tmp_path, cache):
    from torchvision import transforms

    root = tmp_path / "r"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i, size in enumerate([(37, 23), (20, 41), (16, 16)]):
            pattern(i + (10 if c == "b" else 0), size).save(root / c / f"{i}.png")
    data = load_image_folder(root, image_size=13, cache_dir=cache, workers=0, test_fraction=0.34)
    tf = transforms.Compose([transforms.Resize(13), transforms.CenterCrop(13), transforms.PILToTensor()])
    from torchvision.datasets import ImageFolder

    reference = {tuple(tf(img).numpy().ravel()) for img, _ in ImageFolder(str(root))}
    ours = {tuple(x.ravel()) for x in np.concatenate([data.train_x, data.test_x])}
    assert data.train_x.shape[1:] == (3, 13, 13) and ours == reference
    assert "CenterCrop" in data.meta["resize"]


def test_resize_r_then_crop_s_is_torchvision_resize_r_plus_centre_crop_s(tmp_path, cache):
    """Exact (not within a grey level): on a PIL image torchvision's Resize calls PIL's bilinear resize to the
    same (int(R·long/short), R) size and CenterCrop cuts at the same int(round(...)) offsets as to_uint8."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = tmp_path / "r"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i, size in enumerate([(37, 23), (20, 41), (50, 31)]):  # landscape and portrait, odd margins
            pattern(i + (10 if c == "b" else 0), size).save(root / c / f"{i}.png")
    data = load_image_folder(root, image_size=13, resize=17, cache_dir=cache, workers=0, test_fraction=0.34)
    ours = {x.tobytes() for x in np.concatenate([data.train_x, data.test_x])}

    def reference(resize: int) -> set[bytes]:
        tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(13), transforms.PILToTensor()])
        return {tf(img).numpy().tobytes() for img, _ in ImageFolder(str(root))}

    assert data.train_x.shape[1:] == (3, 13, 13) and ours == reference(17)
    assert ours.isdisjoint(reference(13))  # not the Resize(S) crop: the wider margin is cut away
    assert data.meta["resize_size"] == 17 and data.meta["image_size"] == 13


def test_resize_filter_is_torchvision_resize_with_that_interpolation(tmp_path, cache):
    """Exact for each PIL filter torchvision names: its PIL path calls PIL's (antialiased) resize with the same
    filter; bicubic, the filter timm's resnet18 names, is not the bilinear default."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import InterpolationMode

    from probe.data.images.convert import to_uint8

    def reference(img: Image.Image, mode: InterpolationMode) -> np.ndarray:
        tf = [transforms.Resize(17, interpolation=mode), transforms.CenterCrop(13), transforms.PILToTensor()]
        return transforms.Compose(tf)(img).numpy()

    image = pattern(7, (37, 23))  # landscape, odd margins: both the resize and the crop offsets matter
    for name in ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"):
        ours = to_uint8(image, 13, resize=17, interpolation=name)
        assert np.array_equal(ours, reference(image, InterpolationMode(name))), name
    bicubic = to_uint8(image, 13, resize=17, interpolation="bicubic")
    assert not np.array_equal(bicubic, reference(image, InterpolationMode.BILINEAR))
    assert np.array_equal(to_uint8(image, 13, resize=17), reference(image, InterpolationMode.BILINEAR))

    root = tmp_path / "r"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i, size in enumerate([(37, 23), (20, 41), (50, 31)]):  # landscape and portrait
            pattern(i + (10 if c == "b" else 0), size).save(root / c / f"{i}.png")
    data = load_image_folder(
        root, image_size=13, resize=17, interpolation="bicubic", cache_dir=cache, workers=0, test_fraction=0.34
    )
    ours_all = {x.tobytes() for x in np.concatenate([data.train_x, data.test_x])}
    files = [img for img, _ in ImageFolder(str(root))]
    assert ours_all == {reference(img, InterpolationMode.BICUBIC).tobytes() for img in files}
    assert ours_all.isdisjoint({reference(img, InterpolationMode.BILINEAR).tobytes() for img in files})
    assert data.meta["interpolation"] == "bicubic" and "interpolation" in data.meta["resize"]


def test_the_cache_key_includes_the_interpolation(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=3)
    default = load_image_folder(root, image_size=8, resize=9, cache_dir=cache, workers=0)
    bilinear = load_image_folder(root, image_size=8, resize=9, interpolation="bilinear", cache_dir=cache, workers=0)
    assert bilinear.meta["cache"] == default.meta["cache"] and len(entries(cache)) == 1  # the key of before
    assert default.meta["interpolation"] == "bilinear"
    meta_file = pathlib.Path(default.meta["cache"]) / "meta.json"  # an entry written before the filter was kept
    info = json.loads(meta_file.read_text())
    del info["meta"]["interpolation"]
    meta_file.write_text(json.dumps(info))
    assert imagecache.open_cache(meta_file.parent).meta["interpolation"] == "bilinear"
    bicubic = load_image_folder(root, image_size=8, resize=9, interpolation="bicubic", cache_dir=cache, workers=0)
    assert bicubic.meta["cache"] != default.meta["cache"] and len(entries(cache)) == 2
    assert not np.array_equal(np.asarray(bicubic.train_x), np.asarray(default.train_x))
    x, y = torch.randint(0, 256, (4, 3, 12, 10), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])  # tv:, hf: too
    pair = load_tensors((x, y), (x, y), image_size=8, cache_dir=cache)
    lanczos = load_tensors((x, y), (x, y), image_size=8, interpolation="lanczos", cache_dir=cache)
    assert lanczos.meta["cache"] != pair.meta["cache"] and lanczos.meta["interpolation"] == "lanczos"
    native = load_tensors((x, y), (x, y), interpolation="bicubic", cache_dir=cache)  # no resize: no filter
    assert native.meta["interpolation"] is None
    assert native.meta["cache"] == load_tensors((x, y), (x, y), cache_dir=cache).meta["cache"]
    with pytest.raises(SettingsError, match=r"interpolation='random' is not a PIL filter; use one of .*bicubic"):
        load_image_folder(root, image_size=8, interpolation="random", cache_dir=cache, workers=0)


def test_the_cache_key_includes_the_resize(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=3)
    crop = load_image_folder(root, image_size=8, cache_dir=cache, workers=0)
    same = load_image_folder(root, image_size=8, resize=8, cache_dir=cache, workers=0)  # R = S: the same entry
    assert same.meta["cache"] == crop.meta["cache"] and len(entries(cache)) == 1
    wider = load_image_folder(root, image_size=8, resize=10, cache_dir=cache, workers=0)
    assert wider.meta["cache"] != crop.meta["cache"] and len(entries(cache)) == 2
    assert not (np.asarray(wider.train_x) == np.asarray(crop.train_x)).all()
    x, y = torch.zeros(4, 3, 12, 10, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])  # Datasets (tv:, hf:) too
    pair = load_tensors((x, y), (x, y), image_size=8, cache_dir=cache)
    assert load_tensors((x, y), (x, y), image_size=8, resize=11, cache_dir=cache).meta["cache"] != pair.meta["cache"]
    with pytest.raises(SettingsError, match=r"resize=6 is invalid with image_size=8.*resize >= image_size"):
        load_image_folder(root, image_size=8, resize=6, cache_dir=cache, workers=0)


def test_split_is_stratified_seeded_and_recorded(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=10)
    a = load_image_folder(root, cache_dir=cache, workers=0, seed=1)
    b = load_image_folder(root, cache_dir=tmp_path / "other", workers=0, seed=1)
    c = load_image_folder(root, cache_dir=cache, workers=0, seed=2)
    assert np.bincount(a.test_y).tolist() == [2, 2, 2] and np.bincount(a.train_y).tolist() == [8, 8, 8]
    assert (np.asarray(a.test_x) == np.asarray(b.test_x)).all()
    assert not (np.asarray(a.test_x) == np.asarray(c.test_x)).all()
    split = a.meta["split"]
    assert split["seed"] == 1 and split["test_fraction"] == 0.2
    assert split["counts"]["b"] == {"train": 8, "test": 2}
    assert len(entries(cache)) == 2  # one entry per seed
    train_set = {x.tobytes() for x in a.train_x}
    assert not any(x.tobytes() in train_set for x in a.test_x)


def test_cache_is_reused_without_decoding(tmp_path, cache, monkeypatch):
    root = flat_folder(tmp_path / "f", per_class=3)
    first = load_image_folder(root, cache_dir=cache, workers=0)

    def boom(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imagedata, "_read_file", boom)
    monkeypatch.setattr(imagedata, "_header", boom)
    monkeypatch.setattr(imagecache, "to_uint8", boom)
    second = load_image_folder(root, cache_dir=cache, workers=0)
    assert second.meta["cache"] == first.meta["cache"] and isinstance(second.train_x, np.memmap)
    assert (np.asarray(second.train_x) == np.asarray(first.train_x)).all()
    os.utime(root / "a" / "000.png", ns=(1, 1))  # the content key changes with a file's mtime
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(root, cache_dir=cache, workers=0)


def test_interrupted_prepare_leaves_nothing(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=40)
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_image_folder(root, cache_dir=cache, workers=2, progress=progress)
    assert entries(cache) == []  # no entry and no temporary folder
    data = load_image_folder(root, cache_dir=cache, workers=0, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (120, 120) and len(entries(cache)) == 1 and len(data.train_y) == 96


def test_an_image_size_whose_cache_would_not_fit_is_refused_before_anything_is_written(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=3)
    with pytest.raises(SettingsError, match=r"image_size=100000 is too large: .* give at most 9459"):
        load_image_folder(root, image_size=100_000, cache_dir=cache, workers=0)
    with pytest.raises(SettingsError, match="resize=9500 is too large"):
        load_image_folder(root, image_size=224, resize=9500, cache_dir=cache, workers=0)
    # within a raised pixel limit the size passes that check, and the disk's room is what refuses it: 9 images of
    # 3 × 10^8 × 10^8 bytes are 270 PB, more than any disk has free
    with pytest.raises(DataError) as info:
        load_image_folder(root, image_size=10**8, max_pixels=10**17, cache_dir=cache, workers=0)
    message = str(info.value)
    assert message.startswith("the image cache needs 270.0 PB for 9 images of 100000000×100000000 with 3 channel(s)")
    assert f"but the disk of {cache} has" in message and "give a smaller --image-size" in message
    assert "\n" not in message and not cache.exists()  # nothing written, not even the cache folder


def test_a_prepare_killed_outright_leaves_a_folder_that_the_next_use_removes(tmp_path, cache):
    import fcntl
    import signal
    import subprocess

    root = flat_folder(tmp_path / "f", per_class=20)
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal\nfrom probe.data.images.folder import load_image_folder\n"
         f"load_image_folder({str(root)!r}, cache_dir={str(cache)!r}, workers=0, "
         "progress=lambda done, total: os.kill(os.getpid(), signal.SIGKILL))"],
        cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (dead,) = cache.iterdir()  # the SIGKILL-ed prepare's folder, its lock released by the kernel
    assert dead.name.startswith(".folder-") and dead.name.endswith(".tmp") and (dead / "train_x.npy").is_file()
    live = cache / ".folder-live.x.tmp"  # a prepare still writing: it holds its lock
    live.mkdir()
    held = os.open(live / ".writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    fresh, old = cache / ".folder-fresh.y.tmp", cache / ".folder-old.z.tmp"  # without a lock: by age
    fresh.mkdir()
    old.mkdir()
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    try:
        data = load_image_folder(root, cache_dir=cache, workers=0)
        assert entries(cache) == sorted([fresh.name, live.name, pathlib.Path(data.meta["cache"]).name])
        load_image_folder(root, cache_dir=cache, workers=0)  # the entry is found; the live folder still stays
        assert live.exists()
    finally:
        os.close(held)  # its writer "dies"
    assert load_image_folder(root, cache_dir=cache, workers=0).meta["cache"] == data.meta["cache"]
    assert not live.exists() and fresh.exists()
    assert not (pathlib.Path(data.meta["cache"]) / ".writer.lock").exists()  # the lock is no part of an entry


def test_worker_pools_give_identical_arrays(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=30)
    inline = load_image_folder(root, cache_dir=tmp_path / "c0", workers=0, image_size=8)
    threads = load_image_folder(root, cache_dir=tmp_path / "c1", workers=2, image_size=8)
    procs = load_image_folder(root, cache_dir=tmp_path / "c2", workers=2, processes=True, image_size=8)
    for other in (threads, procs):
        assert (np.asarray(other.train_x) == np.asarray(inline.train_x)).all()
        assert (other.train_y == inline.train_y).all() and (np.asarray(other.test_x) == np.asarray(inline.test_x)).all()


def test_corrupt_and_huge_files_are_skipped_and_listed(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=5)
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "b" / "notes.txt").write_text("not an image, wrong extension: ignored")
    (root / "b" / ".hidden.png").write_bytes(b"x")
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link is a bad file
    big = root / "c" / "big.png"
    pattern(9, (40, 40)).save(big)
    png = tmp_path / "truncated.jpg"
    pattern(7, (30, 30)).save(png, "JPEG")
    (root / "c" / "truncated.jpg").write_bytes(png.read_bytes()[:200])
    data = load_image_folder(root, cache_dir=cache, workers=0, max_pixels=1000)
    skipped = {os.path.basename(f["item"]): f["reason"] for f in data.meta["skipped"]["files"]}
    assert data.meta["skipped"]["count"] == 4 and set(skipped) == {
        "corrupt.png",
        "big.png",
        "truncated.jpg",
        "gone.png",
    }
    assert "decompression-bomb" in skipped["big.png"]
    assert data.meta["ignored_files"] == 2
    assert len(data.train_y) + len(data.test_y) == 15


def test_too_many_bad_files_is_an_error_and_writes_nothing(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=3)
    for i in range(11):
        (root / "a" / f"bad{i}.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"11 of 20 images cannot be read \(e.g. .*bad0.jpg: not an image\)"):
        load_image_folder(root, cache_dir=cache, workers=0)
    assert entries(cache) == []


def test_too_many_files_failing_to_decode_is_an_error_after_decoding(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=3)
    pattern(3, (30, 30)).save(tmp_path / "whole.jpg", "JPEG")
    for i in range(11):  # the header reads fine, the decoding fails
        (root / "b" / f"cut{i}.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match="11 of 20 images cannot be read"):
        load_image_folder(root, cache_dir=cache, workers=0, image_size=8)
    assert entries(cache) == []


def test_train_and_val_folders_and_train_only(tmp_path, cache):
    for split in ("train", "val"):
        for c in "xy":
            for i in range(3):
                solid(tmp_path / "v" / split / c / f"{i}.png", (i, 0, 0))
    data = load_image_folder(tmp_path / "v", cache_dir=cache, workers=0)
    assert data.meta["layout"] == "train/ and val/ folders" and len(data.test_y) == 6
    (tmp_path / "v" / "val").rename(tmp_path / "val-away")
    only = load_image_folder(tmp_path / "v", cache_dir=cache, workers=0, test_fraction=0.34)
    assert only.meta["split"]["layout"] == "train/ only, split per class" and only.test_y.tolist() == [0, 1]


def test_a_symlink_loop_is_not_followed_and_listed_as_skipped(tmp_path, cache):
    root = flat_folder(tmp_path / "f", per_class=10)
    os.symlink("..", root / "a" / "loop")  # a/loop/a/loop/...: every class again, without end
    os.symlink("../c", root / "b" / "more")  # a second path to class c's images
    assert imagedata.check_image_folder(root) == ["a", "b", "c"]
    data = load_image_folder(root, cache_dir=cache, workers=0)
    assert len(data.train_y) + len(data.test_y) == 30
    assert np.bincount(np.concatenate([data.train_y, data.test_y])).tolist() == [10, 10, 10]
    train = {np.asarray(x).tobytes() for x in data.train_x}
    assert not train & {np.asarray(x).tobytes() for x in data.test_x}  # no image in both splits
    skipped = {f["item"]: f["reason"] for f in data.meta["skipped"]["files"]}
    assert data.meta["skipped"]["count"] == 2
    loop, more = str(root.resolve() / "a" / "loop"), str(root.resolve() / "b" / "more")
    assert set(skipped) == {loop, more}
    assert skipped[loop].startswith(f"a link to {root.resolve()}, which is read once elsewhere (a symlink loop")
    assert load_image_folder(root, cache_dir=cache, workers=0).meta["cache"] == data.meta["cache"]
    (root / "b" / "more").unlink()  # what was not read is part of the key: the record stays true
    assert load_image_folder(root, cache_dir=cache, workers=0).meta["skipped"]["count"] == 1


def test_links_that_make_two_class_or_split_folders_one_are_refused(tmp_path, cache):
    flat = flat_folder(tmp_path / "flat", per_class=3)
    os.symlink("a", flat / "d")  # class d would be class a's images under another label
    with pytest.raises(DataError, match=r"flat/d and .*flat/a are the same folder .* a folder of its own"):
        load_image_folder(flat, cache_dir=cache, workers=0)
    split = tmp_path / "split"
    for c in "xy":
        for i in range(2):
            solid(split / "train" / c / f"{i}.png", (i, 0, 0))
    (split / "test").mkdir()
    for c in "xy":
        os.symlink(split / "train" / c, split / "test" / c)  # test would be the train images
    with pytest.raises(DataError, match="are the same folder"):
        imagedata.check_image_folder(split)
    assert entries(cache) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_with_an_image_name_is_skipped_and_never_opened(tmp_path, cache):
    import threading

    root = flat_folder(tmp_path / "f", per_class=5)
    fifo = root / "b" / "x.png"
    os.mkfifo(fifo)
    opened, done = [], threading.Event()

    def watch() -> None:  # a writer opens without blocking only while a reader holds the FIFO open
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader then sees the end of the file
                opened.append(True)
            except OSError:
                done.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        classes = imagedata.check_image_folder(root)
        data = load_image_folder(root, cache_dir=cache, workers=2)
    finally:
        done.set()
        watcher.join()
    assert not opened and classes == ["a", "b", "c"]
    assert len(data.train_y) + len(data.test_y) == 15
    assert data.meta["skipped"]["files"] == [
        {"split": "before the split", "item": str(root.resolve() / "b" / "x.png"),
         "reason": "a FIFO, not a regular file; not opened"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.write_text("x"), "is a file, not a folder"),
        (lambda r: solid(r / "loose.png", (1, 2, 3)), "no class subfolders"),
        (lambda r: (solid(r / "a" / "1.png", (1, 1, 1)), (r / "b").mkdir()), "class 'b' .* has no images"),
        (lambda r: [solid(r / "only" / f"{i}.png", (1, 1, 1)) for i in range(3)], "single class 'only'"),
        (
            lambda r: [
                solid(r / s / c / "1.png", (1, 1, 1)) for s, cs in (("train", "xy"), ("test", "xz")) for c in cs
            ],
            r"only in train/: y; only in test/: z",
        ),
        (
            lambda r: [solid(r / c / f"{i}.png", (1, 1, 1), size=(5 + i, 5)) for c in "ab" for i in range(2)],
            "different sizes .* pass image_size",
        ),
        (lambda r: [solid(r / c / "1.png", (1, 1, 1)) for c in "ab"], "class 'a' has 1 image"),
    ],
)
def test_bad_folders_raise_one_line(tmp_path, cache, build, match):
    root = tmp_path / "bad"
    if match != "does not exist" and match != "is a file, not a folder":
        root.mkdir()
    build(root)
    with pytest.raises(DataError, match=match) as info:
        load_image_folder(root, cache_dir=cache, workers=0)
    assert "\n" not in str(info.value)
    assert entries(cache) == []


# ------------------------------------------------------------------------------ torchvision


def write_idx(raw, prefix, images, labels, gz):
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    blobs = {
        f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, h, w) + images.tobytes(),
        f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes(),
    }
    for name, blob in blobs.items():
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
        (raw / name).write_bytes(blob)


@pytest.mark.parametrize("name", ["FashionMNIST", "MNIST"])
def test_torchvision_dataset_from_idx_files(tmp_path, cache, name):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "data" / name / "raw", "train", train, np.arange(30) % 10, gz=name == "MNIST")
    write_idx(tmp_path / "data" / name / "raw", "t10k", test, np.arange(10), gz=name == "MNIST")
    data = load_images(f"tv:{name}", data_dir=tmp_path / "data", cache_dir=cache)
    assert data.train_x.shape == (30, 1, 28, 28) and data.test_x.shape == (10, 1, 28, 28)
    assert (np.asarray(data.train_x)[:, 0] == train).all() and (np.asarray(data.test_x)[:, 0] == test).all()
    assert data.train_y.tolist() == (np.arange(30) % 10).tolist() and len(data.class_names) == 10
    assert data.meta["source"] == f"tv:{name}"
    again = load_torchvision(name, tmp_path / "data", cache_dir=cache)
    assert again.meta["cache"] == data.meta["cache"]
    small = load_torchvision(name, tmp_path / "data", cache_dir=cache, image_size=14, channels=3)
    assert small.train_x.shape == (30, 3, 14, 14)


def test_torchvision_missing_offline_and_unknown(tmp_path, cache):
    with pytest.raises(
        DataError, match=r"tv:FashionMNIST is not in .*pass --download \(download=True\) or put the files"
    ):
        load_torchvision("tv:FashionMNIST", tmp_path / "empty", cache_dir=cache)
    with pytest.raises(DataError, match="did you mean 'tv:FashionMNIST'"):
        load_torchvision("fashionmnst", tmp_path, cache_dir=cache)
    with pytest.raises(DataError, match="needs a data folder"):
        load_images("tv:MNIST")
    assert entries(cache) == []


# ---------------------------------------------------------------------------- Python datasets


class Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_pair_of_pil_and_tensors(tmp_path, cache):
    train = Items([(Image.new("RGB", (6, 6), (i, 2 * i, 3)), i % 2) for i in range(6)])
    test = Items([(torch.full((3, 6, 6), 0.5), torch.tensor(1)), (torch.zeros(3, 6, 6, dtype=torch.uint8), 0)])
    data = load_dataset_pair(train, test, cache_dir=cache, class_names=["even", "odd"])
    assert data.train_x.shape == (6, 3, 6, 6) and data.train_x[5, 1, 0, 0] == 10
    assert data.test_x[0].max() == 128 and data.test_y.tolist() == [1, 0] and data.class_names == ["even", "odd"]
    assert data.meta["cache"] is None and entries(cache) == []  # no key: unlinked once mapped, still readable
    keyed = load_dataset_pair(train, test, cache_dir=cache, cache_key="mine-v1")
    assert load_dataset_pair(train, test, cache_dir=cache, cache_key="mine-v1").meta["cache"] == keyed.meta["cache"]
    assert keyed.class_names == ["0", "1"]


@pytest.mark.parametrize(
    "item, match",
    [
        ("just a string", r"returned str .* not \(image, label\)"),
        ((Image.new("RGB", (4, 4)), 1, 2), r"returned a tuple of 3 \(Image, int, int\)"),
        ((Image.new("RGB", (4, 4)), "cat"), "returned label str 'cat'"),
        ((torch.full((3, 4, 4), 200.0), 0), r"0\.\.255 pixel values stored as floats, .* divide them by 255"),
        ((torch.full((3, 4, 4), float("nan")), 0), "NaN or infinite values in the data; fix the data"),
        (({"image": 1}, 0), "must be a PIL image, a tensor or an array, got dict"),
    ],
)
def test_dataset_returning_something_else(tmp_path, cache, item, match):
    with pytest.raises(DataError, match=match):
        load_dataset_pair(Items([item, item]), Items([item]), cache_dir=cache)
    assert entries(cache) == []


def _normalising_folder(root, transform):
    from torchvision.datasets import ImageFolder

    for split, per_class in (("train", 6), ("test", 2)):
        flat_folder(root / split, per_class=per_class)
    return ImageFolder(str(root / "train"), transform), ImageFolder(str(root / "test"), transform)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_a_dataset_pair_already_normalised_is_kept_as_given(tmp_path, cache):
    """What most PyTorch pipelines yield: ToTensor + Normalize, values outside [0, 1]."""
    from torchvision import transforms

    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*IMAGENET)])
    train, test = _normalising_folder(tmp_path / "pngs", normalise)
    data = load_dataset_pair(train, test, cache_dir=cache, cache_key="normalised-v1", workers=2)
    assert data.train_x.dtype == np.float32 and data.train_x.shape == (18, 3, 10, 12)
    assert np.array_equal(np.asarray(data.train_x), torch.stack([x for x, _ in train]).numpy())  # bit for bit
    assert np.array_equal(np.asarray(data.test_x), torch.stack([x for x, _ in test]).numpy())
    assert data.meta["values"] == "already normalised: used as given" and "pixel_stats" not in data.meta
    again = load_dataset_pair(train, test, cache_dir=cache, cache_key="normalised-v1")
    assert again.meta["cache"] == data.meta["cache"] and again.train_x.dtype == np.float32

    # resized as torchvision's Resize + CenterCrop would on those tensors; grey replicated when asked
    resized = load_dataset_pair(train, test, cache_dir=cache, image_size=6, resize=8, interpolation="bicubic")
    on_tensors = transforms.Compose(
        [transforms.Resize(8, transforms.InterpolationMode.BICUBIC, antialias=True), transforms.CenterCrop(6)]
    )
    assert np.array_equal(resized.train_x, torch.stack([on_tensors(x) for x, _ in train]).numpy())
    with pytest.raises(SettingsError, match="interpolation='lanczos' cannot resize already-normalised"):
        load_dataset_pair(train, test, cache_dir=cache, image_size=6, interpolation="lanczos")
    grey = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))])
    grey_train, grey_test = _normalising_folder(tmp_path / "grey", grey)
    three = load_dataset_pair(grey_train, grey_test, cache_dir=cache, channels=3)
    assert three.train_x.shape[1] == 3 and np.array_equal(three.train_x[:, 0], three.train_x[:, 2])
    assert np.array_equal(three.train_x[:, :1], torch.stack([x for x, _ in grey_train]).numpy())


def test_nan_anywhere_floats_of_0_to_255_and_mixed_images_are_refused_in_one_line(tmp_path, cache):
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 5, 5), torch.arange(40) % 2
    broken = x.clone()
    broken[37, 1, 2, 2] = float("nan")
    with pytest.raises(DataError, match=r"^NaN or infinite values in the image tensors; fix the data") as info:
        load_tensors((broken, y), (x[:4], y[:4]), cache_dir=cache)
    assert "\n" not in str(info.value)
    infinite = x.clone()
    infinite[3, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="NaN or infinite values"):
        load_tensors((x, y), (infinite[:4], y[:4]), cache_dir=cache)
    pixels = torch.randint(0, 256, (40, 3, 5, 5)).float()  # never divided by 255
    with pytest.raises(
        DataError, match=r"values in \[0, 255\] in the image tensors, none negative: 0\.\.255 pixel values"
    ):
        load_tensors((pixels, y), (pixels[:4], y[:4]), cache_dir=cache)
    items = [(img, label) for img, label in zip(x, y.tolist(), strict=True)]
    pil_first = Items([(Image.new("L", (5, 5)), 0)] + items[1:])
    with pytest.raises(DataError, match=r"item \('train', 0\) is no float image where item \('train', \d+\) holds"):
        load_dataset_pair(pil_first, Items(items), cache_dir=cache)
    pil_only = Items([(Image.new("L", (5, 5)), i % 2) for i in range(4)])
    with pytest.raises(DataError, match="is no float image where normalised=True says the images are already-norm"):
        load_dataset_pair(pil_only, pil_only, cache_dir=cache, normalised=True)
    # in a Dataset, an item the first look does not see is checked when it is read
    items[1] = (broken[37], 0)
    with pytest.raises(DataError, match="a float image has NaN or infinite values"):
        load_dataset_pair(Items(items), Items(items[:4]), cache_dir=cache, cache_key="with-nan")
    assert entries(cache) == []


def test_tensors_cached_by_content(tmp_path, cache):
    x = torch.rand(8, 1, 5, 5)
    y = torch.arange(8) % 2
    a = load_tensors((x, y), (x[:2], y[:2]), cache_dir=cache)
    assert (
        a.train_x.shape == (8, 1, 5, 5) and (np.asarray(a.train_x) == (x * 255).round().to(torch.uint8).numpy()).all()
    )
    assert load_tensors((x, y), (x[:2], y[:2]), cache_dir=cache).meta["cache"] == a.meta["cache"]
    assert load_tensors((x + 0.0001, y), (x[:2], y[:2]), cache_dir=cache).meta["cache"] != a.meta["cache"]


# ------------------------------------------------------------------------------ Hugging Face


def test_hf_save_to_disk_folder(tmp_path, cache):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"img": datasets.Image(), "kind": datasets.ClassLabel(names=["red", "blue"]), "note": datasets.Value("string")}
    )
    rows = [(Image.new("RGB", (8, 6), (250, 0, 0) if i % 2 == 0 else (0, 0, 250)), i % 2) for i in range(10)]
    ds = datasets.Dataset.from_dict(
        {"img": [r[0] for r in rows], "kind": [r[1] for r in rows], "note": ["x"] * 10}, features=features
    )
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(4))}).save_to_disk(str(tmp_path / "hf"))
    data = load_images(tmp_path / "hf", cache_dir=cache)
    assert data.class_names == ["red", "blue"] and data.train_x.shape == (10, 3, 6, 8) and len(data.test_y) == 4
    assert data.meta["columns"] == {"image": "img", "label": "kind"} and data.meta["split"]["test"] == "validation"
    assert (data.train_x[data.train_y == 1][:, 2] == 250).all()
    ds.save_to_disk(str(tmp_path / "single"))  # one Dataset: split per class
    single = load_images(f"hf:{tmp_path / 'single'}", cache_dir=cache, test_fraction=0.4)
    assert np.bincount(single.test_y).tolist() == [2, 2] and single.meta["split"]["seed"] == 0
    with pytest.raises(DataError, match="no column 'pixels'"):
        load_images(tmp_path / "hf", cache_dir=cache, image_column="pixels")


def test_hf_columns_named_or_ambiguous(tmp_path, cache):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"a": datasets.Image(), "b": datasets.Image(), "n": datasets.Value("int64")})
    images = [Image.new("L", (4, 4), 10 * i) for i in range(8)]
    ds = datasets.Dataset.from_dict({"a": images, "b": images, "n": [7, 9] * 4}, features=features)
    ds.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DataError, match=r"2 image \(datasets.Image\) columns \(a, b\).*image_column="):
        load_images(tmp_path / "two", cache_dir=cache)
    with pytest.raises(DataError, match=r"no label \(ClassLabel\) column.*label_column="):
        load_images(tmp_path / "two", cache_dir=cache, image_column="b")
    data = load_images(tmp_path / "two", cache_dir=cache, image_column="b", label_column="n", test_fraction=0.5)
    assert data.class_names == ["7", "9"] and data.train_x.shape == (4, 1, 4, 4) and sorted(data.test_y) == [0, 0, 1, 1]


def test_hf_offline_name_fails_fast(monkeypatch, cache):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError, match="not in the local Hugging Face cache and the hub is offline"):
        load_images("hf:nobody/no-such-dataset-xyz", cache_dir=cache)
    assert time.monotonic() - start < 10


def test_hf_missing_package_says_how_to_install(monkeypatch, cache):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install 'quanta-probe\[hf\]'"):
        load_images("hf:anything", cache_dir=cache)
