"""probe.util.allocator: freed tensors' memory is kept for the next step instead of page-faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# Touch a 32 MB tensor and free it, six times; then count the page faults of doing that six more times.
SCRIPT = """
import resource, torch
from probe.util.allocator import retain_freed_memory
applied = retain_freed_memory()
assert retain_freed_memory() == applied  # idempotent
for _ in range(6):  # steady state: the heap has grown to hold it (small blocks may pin a copy or two)
    x = torch.ones(8 * 2**20); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    x = torch.ones(8 * 2**20); del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

PAGES_PER_TENSOR = 32 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def python_output(script: str, retain: str) -> list[str]:
    """The words ``script`` prints in a fresh interpreter with PROBE_RETAIN_MEMORY=retain (glibc's own
    malloc variables removed, so "0" really is the C library's default)."""
    env = {**os.environ, "PROBE_RETAIN_MEMORY": retain}
    env.pop("MALLOC_MMAP_MAX_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()


def run(retain: str) -> tuple[bool, int]:
    applied, faults = python_output(SCRIPT, retain)
    return applied == "True", int(faults)


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = run("1")
    assert applied
    assert faults < 2 * PAGES_PER_TENSOR  # the default faults every time: 6 tensors' worth


def test_opt_out_keeps_the_c_library_default_which_faults_every_time():
    applied, faults = run("0")
    assert not applied
    assert faults >= 5 * PAGES_PER_TENSOR


TRAIN = """
import hashlib, torch
import probe
from probe.models import create_model
from probe.settings import RunSettings
from probe.training.trainer import make_optimizer
torch.set_num_threads(1)
print(probe.retain_freed_memory())  # the public name
torch.manual_seed(0)
model = create_model("paper-cnn", 10, 3, (32, 32), width=0.5)  # 4 MB activations: mmap-sized by default
optimizer = make_optimizer(model, RunSettings())
x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
for _ in range(3):
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
digest = hashlib.sha256()
for tensor in model.state_dict().values():
    digest.update(tensor.numpy().tobytes())
print(digest.hexdigest())
"""


def test_training_gives_the_same_weights_bit_for_bit_either_way():
    outputs = {retain: python_output(TRAIN, retain) for retain in ("1", "0")}
    assert outputs["1"][0] == "True" and outputs["0"][0] == "False"
    assert outputs["1"][1] == outputs["0"][1]
