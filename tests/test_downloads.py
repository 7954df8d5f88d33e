"""Issue 14: the real download paths, end to end, against a local HTTP server instead of the internet.

A ``http.server`` on 127.0.0.1 (in a thread) serves files the tests write; torchvision and torch.hub are only
pointed at it (FashionMNIST's ``mirrors`` / ``resources``, a weights entry's ``url``), so their own download
code runs: urllib, the md5 check and gzip extraction for datasets, the sha256 file-name prefix check of
``torch.hub.load_state_dict_from_url`` for weights. The server logs every request, so the tests tell a
download from a read of the files already there.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import socket
import struct
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

import probe
from probe.cli import app
from probe.data import fashion as fashion_module
from probe.engine.sources import pretrained_source
from probe.errors import DataError
from probe.models import create_model
from probe.models.checkpoint import source_info


def invoke(args, env=None):
    runner = CliRunner(env={"OMP_NUM_THREADS": "1", **(env or {})})
    return runner.invoke(app, [str(a) for a in args])


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]  # set per server

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        super().do_GET()

    def do_HEAD(self):  # noqa: N802
        self.requests.append(self.path)
        super().do_HEAD()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(base URL, folder it serves, list of requested paths); no proxy between urllib and 127.0.0.1."""
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


# ------------------------------------------------------------------------------------- tv:FashionMNIST


def _idx_archives(folder: Path) -> list[tuple[str, str]]:
    """FashionMNIST's four gzip'd idx files (40 train, 20 test 28×28 images, 10 classes) and their md5s."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    images = (rng.integers(0, 40, (60, 28, 28)) + 20 * labels[:, None, None]).astype(np.uint8)
    resources = []
    for prefix, part in (("train", slice(0, 40)), ("t10k", slice(40, 60))):
        n = len(labels[part])
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, 28, 28) + images[part].tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + labels[part].astype(np.uint8).tobytes(),
        }
        for name, blob in blobs.items():
            archive = gzip.compress(blob, mtime=0)
            (folder / f"{name}.gz").write_bytes(archive)
            resources.append((f"{name}.gz", hashlib.md5(archive).hexdigest()))
    return resources


def _scan(tmp_path: Path, data: Path, out: str, *extra) -> list:
    return [
        "scan", "--arch", "paper-cnn", "--width", "0.25", "--device", "cpu", "--data-dir", data,
        "--source-data", "tv:FashionMNIST[2-3]", "--target", "tv:FashionMNIST[0-1]", "--layers", "conv1",
        "--epochs", "1", "--runs", "1", "--init", "0.5", "--jobs", "1", "--out", tmp_path / out, *extra,
    ]  # fmt: skip


def test_tv_fashion_mnist_downloads_with_torchvision_then_reads_its_files(server, tmp_path, monkeypatch):
    url, served, requests = server
    resources = _idx_archives(served)
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    data = tmp_path / "data"  # does not exist yet: --download makes it

    missing = invoke(_scan(tmp_path, data, "none"))  # no files and no --download: one line, nothing fetched
    assert missing.exit_code == 2, (missing.stdout, missing.stderr)
    assert "Traceback" not in missing.output
    line = " ".join(missing.stderr.split())
    assert f"tv:FashionMNIST is not in {data}" in line
    assert f"pass --download (download=True) or put the files in {data}" in line
    assert requests == [] and not data.exists()

    first = invoke(_scan(tmp_path, data, "first", "--download"))
    assert first.exit_code == 0, (first.stdout, first.stderr)
    raw = data / "FashionMNIST" / "raw"
    for name, md5 in resources:  # torchvision's layout: each archive (as served) and its extracted idx file
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5
        assert (raw / name[: -len(".gz")]).read_bytes() == gzip.decompress((served / name).read_bytes())
        assert f"/{name}" in requests
    assert set(requests) == {f"/{name}" for name, _ in resources}
    saved = json.loads((tmp_path / "first" / "results.json").read_text())
    assert saved["extras"]["data"]["AnB"]["source"] == "tv:FashionMNIST"
    assert saved["extras"]["data"]["AnB"]["root"] == str(data.resolve())

    requests.clear()
    mtimes = {p: p.stat().st_mtime_ns for p in raw.iterdir()}
    second = invoke(_scan(tmp_path, data, "second"))  # no --download: the files already there, no request
    assert second.exit_code == 0, (second.stdout, second.stderr)
    assert requests == []
    assert {p: p.stat().st_mtime_ns for p in raw.iterdir()} == mtimes


def test_tv_download_with_a_wrong_md5_fails_in_one_line_and_leaves_no_folder(server, tmp_path, monkeypatch):
    url, served, requests = server
    resources = [(name, "0" * 32) for name, _ in _idx_archives(served)]  # the served files fail the md5 check
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    data = tmp_path / "data"
    result = invoke(_scan(tmp_path, data, "out", "--download"))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    line = " ".join(result.stderr.split())
    assert f"could not download tv:FashionMNIST into {data}" in line
    assert f"without network, put torchvision's files for FashionMNIST in {data}" in line
    assert f"/{resources[0][0]}" in requests  # it was fetched, then refused
    assert not data.exists()  # the folder was made for this download: removed


# ------------------------------------------------------------------------------------- torchvision weights


def _serve_weights(served: Path, url: str, name: str, state: dict, *, honest: bool = True) -> str:
    """``state`` saved under torch.hub's ``NAME-<sha256 prefix>.pth`` name; its URL (a wrong prefix unless honest)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    if not honest:
        prefix = format(int(prefix, 16) ^ 1, "08x")
    file = f"{name}-{prefix}.pth"
    (served / file).write_bytes(blob)
    return url + file


def test_tv_pretrained_weights_download_through_torch_hub_then_come_from_its_cache(server, tmp_path, monkeypatch):
    url, served, requests = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(3)
    imagenet = create_model("tv:squeezenet1_0", 1000, 3, (64, 64))
    weights = torchvision.models.SqueezeNet1_0_Weights.IMAGENET1K_V1
    served_url = _serve_weights(served, url, "squeezenet1_0", imagenet.state_dict())
    monkeypatch.setattr(weights.value, "url", served_url)  # the entry's own field: torchvision's code does the rest
    assert torchvision.models.get_model_weights("squeezenet1_0").DEFAULT.url == served_url

    source = pretrained_source("tv:squeezenet1_0", in_chans=3, input_size=(64, 64))
    name = served_url.rsplit("/", 1)[1]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / name
    assert cached.read_bytes() == (served / name).read_bytes()
    assert requests == [f"/{name}"]
    expected = imagenet.state_dict()
    got = source.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    info = source_info(source)
    assert info.checkpoint == str(cached) and info.sha256 == hashlib.sha256(cached.read_bytes()).hexdigest()

    requests.clear()
    again = pretrained_source("tv:squeezenet1_0", in_chans=3, input_size=(64, 64))  # from the cache
    assert requests == []
    assert all(torch.equal(again.state_dict()[k], expected[k]) for k in expected)


@pytest.mark.parametrize("fault", ["wrong hash prefix", "not served"])
def test_tv_pretrained_weights_that_fail_to_download_are_one_line_and_not_cached(server, tmp_path, monkeypatch, fault):
    url, served, requests = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    imagenet = create_model("tv:squeezenet1_0", 1000, 3, (64, 64))
    weights = torchvision.models.SqueezeNet1_0_Weights.IMAGENET1K_V1
    honest = fault != "wrong hash prefix"
    served_url = _serve_weights(served, url, "squeezenet1_0", imagenet.state_dict(), honest=honest)
    name = served_url.rsplit("/", 1)[1]
    if fault == "not served":
        (served / name).unlink()
    monkeypatch.setattr(weights.value, "url", served_url)
    data = tmp_path / "data"  # the target's files are there: only the weights are fetched
    raw = data / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for archive, _ in _idx_archives(raw):
        (raw / archive[: -len(".gz")]).write_bytes(gzip.decompress((raw / archive).read_bytes()))

    result = invoke(
        ["scan", "--arch", "tv:squeezenet1_0", "--pretrained", "--target", "tv:FashionMNIST[0-1]", "--data-dir", data,
         "--image-size", "64", "--epochs", "1", "--runs", "1", "--jobs", "1", "--device", "cpu"]
    )  # fmt: skip
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    line = " ".join(result.stderr.split())
    assert f"could not download pretrained weights for torchvision 'squeezenet1_0' from {served_url}" in line
    assert ("invalid hash value" if fault == "wrong hash prefix" else "HTTP Error 404") in line
    assert "cannot run on" not in line  # not mistaken for an input size the model cannot take
    assert requests == [f"/{name}"]
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []


# ------------------------------------------------------------------------------------- fashion (built in)


@pytest.fixture
def no_debian(tmp_path, monkeypatch) -> Path:
    """Debian's Fashion-MNIST folder moved to one that does not exist: only the data folder (and downloads) count."""
    folder = tmp_path / "debian-fashion-mnist"
    monkeypatch.setattr(fashion_module, "DEBIAN_FOLDER", folder)
    return folder


def _fashion_scan(tmp_path: Path, data: Path, out: str, *extra) -> list:
    return [
        "scan", "--width", "0.25", "--device", "cpu", "--data-dir", data, "--source-data", "fashion[2-3]",
        "--target", "fashion-mnist[0-1]", "--layers", "conv1", "--epochs", "1", "--runs", "1", "--init", "0.5",
        "--jobs", "1", "--out", tmp_path / out, *extra,
    ]  # fmt: skip


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fashion_download_puts_the_four_files_in_fashionmnist_raw_then_reads_them(
    server, tmp_path, monkeypatch, no_debian
):
    url, served, requests = server
    resources = _idx_archives(served)
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    data = tmp_path / "data"

    missing = invoke(_fashion_scan(tmp_path, data, "none"))
    assert missing.exit_code == 2, (missing.stdout, missing.stderr)
    assert missing.stdout == "" and len(missing.stderr.strip().splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist, pass --download" in missing.stderr
    assert requests == [] and not data.exists() and not (tmp_path / "none").exists()

    first = invoke(_fashion_scan(tmp_path, data, "first", "--download", "--json"))
    assert first.exit_code == 0, (first.stdout, first.stderr)
    assert json.loads(first.stdout)["target"] == "fashion[0,1]"  # stdout is the JSON document, nothing else
    raw = data / "FashionMNIST" / "raw"
    for name, md5 in resources:
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5
        assert (raw / name[: -len(".gz")]).read_bytes() == gzip.decompress((served / name).read_bytes())
    assert set(requests) == {f"/{name}" for name, _ in resources}
    assert sorted(p.name for p in data.iterdir()) == ["FashionMNIST"]

    requests.clear()
    base = fashion_module.load_fashion(data)  # read from the files, no download
    assert requests == []
    assert base.class_names[:2] == ("T-shirt/top", "Trouser")
    assert (tuple(base.train_x.shape), tuple(base.test_x.shape)) == ((40, 1, 28, 28), (20, 1, 28, 28))
    assert base.train_y.tolist() == [i % 10 for i in range(40)]
    task = probe.data.load_task("fashion[0-1]", data_dir=data, download=True)  # present: nothing fetched
    assert requests == [] and task.class_names == ["T-shirt/top", "Trouser"] and len(task.train) == 8


@pytest.mark.parametrize("fresh_folder", [True, False], ids=["new data folder", "existing data folder"])
def test_fashion_download_offline_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch, no_debian, fresh_folder):
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/"])
    data = tmp_path / "data"
    if not fresh_folder:
        (data / "cifar-10-batches-py").mkdir(parents=True)  # a data folder in use: it stays as it was
    before = socket.getdefaulttimeout()
    with pytest.raises(DataError) as info:
        probe.data.load_task("fashion[0-4]", data_dir=data, download=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download Fashion-MNIST into {data} (")
    assert "Connection refused" in message
    assert message.endswith(
        "; without network run apt-get install dataset-fashion-mnist or put its four IDX files in --data-dir"
    )
    assert socket.getdefaulttimeout() == before
    if fresh_folder:
        assert not data.exists()  # made for the download: removed
    else:
        assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-py"]

    result = invoke(_fashion_scan(tmp_path, data, "out", "--download"))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.output and result.stdout == ""
    line = " ".join(result.stderr.split())
    assert line.startswith(f"error: could not download Fashion-MNIST into {data} (") and "apt-get install" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("there", ["data folder", "raw folder"])
def test_a_fashion_download_that_fails_half_way_can_be_retried(server, tmp_path, monkeypatch, no_debian, there):
    url, served, requests = server
    resources = _idx_archives(served)
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    broken = [resources[0], *((name, "0" * 32) for name, _ in resources[1:])]  # the first file comes, then md5 fails
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", broken)
    data = tmp_path / "data"
    raw = data / "FashionMNIST" / "raw"
    (raw if there == "raw folder" else data).mkdir(parents=True)
    if there == "raw folder":
        (raw / "README").write_text("mine")
    with pytest.raises(DataError, match=r"could not download Fashion-MNIST into .*File not found or corrupted"):
        fashion_module.load_fashion(data, download=True)
    assert f"/{resources[1][0]}" in requests  # the first file was fetched, the second refused
    # no half-fetched copy left to be taken for an incomplete Fashion-MNIST; what was there stays
    if there == "raw folder":
        assert [p.name for p in raw.iterdir()] == ["README"]
    else:
        assert list(data.iterdir()) == []

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    base = fashion_module.load_fashion(data, download=True)  # the retry downloads and reads all four
    assert len(base.train_y) == 40 and len(base.test_y) == 20
