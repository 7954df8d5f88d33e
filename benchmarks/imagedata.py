"""Preparing an image folder into the uint8 cache, and one epoch from it, against torchvision's pipeline.

The benchmark writes its own data: ``--files`` (default 10,000) real-size JPEG and PNG images (varied sizes
around 256×256, smooth random content plus noise, 10 classes) into a temporary folder. Then, each in a fresh
subprocess started back to back (so peaks do not mix and both sides see the same warm page cache):

* prepare: :func:`probe.data.images.folder.load_image_folder` into an empty cache (``--workers`` threads; and forked
  processes) against one pass of torchvision's ``ImageFolder`` + ``DataLoader`` (same workers) with the same
  resize, ``Resize(S) + CenterCrop(S) + PILToTensor``: images/s. Target: ratio >= 1.0.
* epoch: one shuffled epoch of float, normalised batches gathered from the memory-mapped cache against the
  same ``DataLoader`` pipeline (with ``ToTensor + Normalize``): images/s. Target: ratio >= 1.5.
* peak memory of each: VmHWM of the main process, its anonymous memory once everything is imported and at
  its peak (sampled every 20 ms; the cache's mapped pages are file-backed page cache, counted in VmHWM but
  reclaimable), and the peak sum of its worker processes' anonymous memory, against the data's size on disk.

    .venv/bin/python benchmarks/imagedata.py [--files 10000] [--workers 2] [--image-size 224] [--small]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's probe

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_images(root: str, n: int, classes: int = 10, seed: int = 0) -> int:
    """n images, varied sizes around 256×256, alternately JPEG and PNG, one class per subfolder; bytes written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        w, h = (int(v) for v in rng.integers(200, 330, 2))
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse, "RGB").resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:06d}." + ("jpg" if i % 2 == 0 else "png"))
        Image.fromarray(img, "RGB").save(path, quality=90) if i % 2 == 0 else Image.fromarray(img, "RGB").save(path)
        total += os.path.getsize(path)
    return total


def _status(pid: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _children() -> list[str]:
    pids: list[str] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as fh:
                pids += fh.read().split()
    except OSError:
        pass
    return pids


class Peak:
    """Sample every 20 ms this process's RssAnon and the sum of its worker processes' RssAnon; VmHWM at the end.

    ``base`` is the anonymous memory once everything is imported, before any work: the growth above it is
    what the pipeline itself costs. Workers' anonymous memory includes pages shared copy-on-write with the
    parent, so their sum is an upper bound."""

    def __init__(self) -> None:
        self.base = _status("self", "RssAnon:")
        self.anon = self.base
        self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        self.anon = max(self.anon, _status("self", "RssAnon:"))
        self.workers = max(self.workers, sum(_status(pid, "RssAnon:") for pid in _children()))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def report(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        hwm = _status("self", "VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"hwm": hwm, "base": self.base, "anon": self.anon, "workers": self.workers}


def loader(root: str, size: int, workers: int, batch: int, normalise: bool, shuffle: bool):
    import torch
    from torchvision import datasets, transforms

    steps = [transforms.Resize(size), transforms.CenterCrop(size)]
    steps += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)] if normalise else [transforms.PILToTensor()]
    data = datasets.ImageFolder(root, transforms.Compose(steps))
    return torch.utils.data.DataLoader(
        data, batch_size=batch, shuffle=shuffle, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )


def child(kind: str, root: str, cache: str, size: int, workers: int, batch: int) -> None:
    import torch
    import torchvision  # noqa: F401  (both sides import everything before the baseline is taken)

    import probe.data.images.folder  # noqa: F401

    torch.set_num_threads(1)
    peak = Peak()
    start = time.perf_counter()
    n = 0
    if kind in ("prepare", "prepare-processes"):
        from probe.data.images.folder import load_image_folder

        data = load_image_folder(
            root,
            image_size=size,
            cache_dir=cache,
            workers=workers,
            processes=kind == "prepare-processes",
            test_fraction=0.2,
        )
        n = len(data.train_y) + len(data.test_y)
    elif kind == "tv-prepare":
        for x, _ in loader(root, size, workers, batch, normalise=False, shuffle=False):
            n += len(x)
    elif kind == "epoch-cache":
        from probe.data.images.folder import load_image_folder

        data = load_image_folder(root, image_size=size, cache_dir=cache, workers=0)  # the entry exists: mapped
        start = time.perf_counter()
        x_all, y_all = data.train_x, torch.from_numpy(data.train_y)
        mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(STD).view(1, 3, 1, 1) * 255
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0)).numpy()
        for s in range(0, len(order), batch):
            idx = np.sort(order[s : s + batch])
            x = (torch.from_numpy(x_all[idx]).float() - mean) / std
            y = y_all[idx]
            n += len(x) + 0 * len(y)
            del x, y
    elif kind == "epoch-loader":
        for x, _ in loader(os.path.join(root), size, workers, batch, normalise=True, shuffle=True):
            n += len(x)
    seconds = time.perf_counter() - start
    print(json.dumps({"kind": kind, "images": n, "seconds": seconds, **peak.report()}))


def run(kind: str, args, root: str, cache: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--root",
        root,
        "--cache",
        cache,
        "--image-size",
        str(args.image_size),
        "--workers",
        str(args.workers),
        "--batch",
        str(args.batch),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--small", action="store_true", help="a quick smoke run with 200 files")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--keep", default=None, help="write the images here and keep them (default: a temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.cache, args.image_size, args.workers, args.batch)
        return
    files = 200 if args.small else args.files
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print("# image data: prepare the uint8 cache vs torchvision ImageFolder + DataLoader; one epoch from each")
    print(
        f"# {datetime.datetime.now().isoformat(timespec='seconds')}  python {platform.python_version()}  "
        f"{os.cpu_count()} cores, load {load}"
    )
    print(f"# files={files} workers={args.workers} image_size={args.image_size} batch={args.batch}")
    work = args.keep or tempfile.mkdtemp(prefix="probe-imagedata-bench-")
    root, cache = os.path.join(work, "images"), os.path.join(work, "cache")
    try:
        t = time.perf_counter()
        disk = (
            write_images(root, files)
            if not os.path.isdir(root)
            else sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        )
        print(f"# {files} images, {mb(disk)} on disk, written in {time.perf_counter() - t:.1f} s")
        results = {}
        for kind in ("tv-prepare", "prepare", "prepare-processes"):
            shutil.rmtree(cache, ignore_errors=True)
            results[kind] = run(kind, args, root, cache)
        for kind in ("epoch-loader", "epoch-cache"):
            results[kind] = run(kind, args, root, cache)
        cache_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
        print(f"# cache: {mb(cache_bytes)} on disk")
        print(f"{'run':<20}{'images/s':>10}{'VmHWM':>10}{'anon idle':>11}{'anon peak':>11}{'+ workers':>11}")
        for kind, r in results.items():
            rate = r["images"] / r["seconds"]
            r["rate"] = rate
            print(
                f"{kind:<20}{rate:>10.0f}{mb(r['hwm']):>10}{mb(r['base']):>11}{mb(r['anon']):>11}{mb(r['workers']):>11}"
            )
        prep = results["prepare"]["rate"] / results["tv-prepare"]["rate"]
        prep_p = results["prepare-processes"]["rate"] / results["tv-prepare"]["rate"]
        epoch = results["epoch-cache"]["rate"] / results["epoch-loader"]["rate"]
        print(f"prepare (threads) vs ImageFolder+DataLoader: {prep:.2f}x (target >= 1.0)")
        print(f"prepare (processes) vs ImageFolder+DataLoader: {prep_p:.2f}x")
        print(f"epoch from the cache vs DataLoader: {epoch:.2f}x (target >= 1.5)")
        for kind in ("prepare", "tv-prepare", "epoch-cache", "epoch-loader"):
            r = results[kind]
            grown = r["anon"] - r["base"] + r["workers"]
            print(
                f"{kind}: memory above the idle process {mb(grown)} (main + workers) for {mb(disk)} of images "
                f"on disk ({grown / disk:.2f}x)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
