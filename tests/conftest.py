import importlib.util
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch

# A shell that starts a job in the background (`cmd &`, as some CI runners do) makes it ignore SIGINT, and
# every child inherits that; the interruption tests need Ctrl-C to behave as it does in a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests share two cores with each other; one thread per process keeps them fast and deterministic.
torch.set_num_threads(int(os.environ.get("PROBE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the source cache out of the user's home."""
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path_factory.getbasetemp() / "probe-cache"))


@pytest.fixture(scope="session")
def tiny_source():
    """A quarter-width paper CNN trained for one epoch on digits[0-4] (seconds on CPU)."""
    import probe

    return probe.train_source("paper-cnn", "digits[0-4]", epochs=1, lr=1e-3, arch_options={"width": 0.25}, seed=0)


@pytest.fixture
def repo_script():
    """Load a script of this repository (``scripts/…``, ``experiments/…``) as a module, by its path from the root."""

    def load(relative: str):
        path = Path(__file__).resolve().parent.parent / relative
        if str(path.parent) not in sys.path:  # its siblings (e.g. experiments/_common.py), as when it is run
            sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty library caches and no network: any connection attempt is recorded and refused."""
    for variable in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "cache" / variable.lower()))
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts
