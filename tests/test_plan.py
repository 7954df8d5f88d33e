"""One request, one plan (issue 24 §2): ``probe scan`` and ``probe.scan`` build one ``api.ScanRequest``, planned once
by ``api.plan_scan`` (each check once, each data set read once, nothing trained), executed by ``api.run``;
``api.estimate_duration`` and ``--dry-run``; a checkpoint that travels and Hugging Face columns that apply to the
data they name (§1.1); ``probe layers --pretrained`` / ``--image-size`` (§1.6).
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import explain, invoke
from PIL import Image

import probe
from probe import api
from probe.api import estimate
from probe.data import parse_spec
from probe.engine.sources import load_source
from probe.models.checkpoint import recorded_info

TINY = ["--device", "cpu", "--epochs", "1", "--runs", "1", "--jobs", "1", "--layers", "conv1", "--init", "0.5"]


def image_folder(root: Path, classes=("ant", "bee"), per_class=6, size=(12, 10)) -> Path:
    """Class subfolders of RGB PNG files, each class its own colour range."""
    rng = np.random.default_rng(len(str(root)))
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.integers(0, 60, (size[1], size[0], 3)) + 60 * c).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")
    return root


def _train(data: str, out: Path) -> None:
    result = invoke(["train", "--data", data, "--out", out, "--width", "0.25", "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 0, explain(result)


@pytest.fixture(scope="module")
def folders_and_checkpoint(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A source folder, a target folder of the same image format, and a checkpoint trained on the source folder."""
    root = tmp_path_factory.mktemp("plan")
    source, target = image_folder(root / "source"), image_folder(root / "target", classes=("cat", "dog", "eel"))
    _train(str(source), root / "src.pt")
    return source, target, root / "src.pt"


# ------------------------------------------------------------------------ each check and each read once

CHECKS = ("probe.api.plan.check_available", "probe.api.policy.check_available", "probe.api.listing.check_available")
LOADS = (
    "probe.api.plan.load_task",
    "probe.engine.prepare.load_task",
    "probe.engine.sources.load_task",
    "probe.api.listing.load_task",
)
# below every load_task and check_available: each image folder's check and its decoding
IMAGE_CHECK = "probe.data.images.tasks.check_image_spec"
IMAGE_LOADS = ("probe.data.images.tasks.load_image_task", "probe.data.images.tasks.load_images")


def _folder_key(spec) -> str:
    """A folder spec (or a loader's folder) as the folder it names, however it was written."""
    return str(Path(parse_spec(os.fspath(spec) if isinstance(spec, os.PathLike) else spec).name).resolve())


@pytest.fixture
def counted(monkeypatch) -> dict[str, Counter]:
    """Every name a scan checks or reads data through, counted per folder (the originals still run)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for dotted in (*CHECKS, *LOADS, IMAGE_CHECK, *IMAGE_LOADS):
        where, _, name = dotted.rpartition(".")
        module = importlib.import_module(where)
        original = getattr(module, name)

        def counting(spec, *args, _original=original, _dotted=dotted, **kwargs):
            counts[_dotted][_folder_key(spec)] += 1
            return _original(spec, *args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    return counts


def _assert_once_each(counts: dict[str, Counter], *folders: Path) -> None:
    once = Counter({str(folder.resolve()): 1 for folder in folders})
    assert sum((counts[name] for name in CHECKS), Counter()) == once, dict(counts)
    assert sum((counts[name] for name in LOADS), Counter()) == once, dict(counts)
    assert counts[IMAGE_CHECK] == once, dict(counts)
    for name in IMAGE_LOADS:
        assert counts[name] == once, (name, dict(counts))


def test_a_cli_scan_checks_and_reads_each_data_set_once(folders_and_checkpoint, counted, tmp_path):
    source, target, checkpoint = folders_and_checkpoint
    out = tmp_path / "out"
    result = invoke(["scan", "--source", checkpoint, "--target", target, "--control", *TINY, "--out", out])
    assert result.exit_code == 0, explain(result)
    _assert_once_each(counted, source, target)
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(run["spec"]["task"] for run in runs) == ["AnA", "AnB"]


def test_probe_scan_checks_and_reads_each_data_set_once(folders_and_checkpoint, counted):
    source, target, checkpoint = folders_and_checkpoint
    measurement = probe.scan(checkpoint, ["conv1"], str(target), control=True, **_quick())
    _assert_once_each(counted, source, target)
    assert sorted(run.spec.task for run in measurement.runs) == ["AnA", "AnB"]


# ----------------------------------------------------------------------------------------- --dry-run


@pytest.fixture
def no_training(monkeypatch) -> list:
    """``fit`` replaced, in the trainer and wherever it was imported, by one that fails the test."""
    calls: list = []

    def refuse(**kwargs):
        calls.append(kwargs)
        raise AssertionError("fit was called")

    for where in ("probe.training.trainer", "probe.engine.sources", "probe.engine.run", "probe.baselines.transfer"):
        monkeypatch.setattr(importlib.import_module(where), "fit", refuse)
    return calls


def test_dry_run_trains_nothing_and_prints_the_plan(tmp_path, no_training):
    env = {"PROBE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    args = [
        "scan",
        "--width",
        "0.25",
        "--device",
        "cpu",
        "--layers",
        "conv1,fc",
        "--control",
        "--out",
        out,
        "--dry-run",
    ]
    result = invoke(args, env=env)
    assert result.exit_code == 0, explain(result)
    text = result.stdout
    assert "nothing trained" in text
    for line in ("source: paper-cnn on digits[0-4]", "tasks: AnB digits[5-9]", "AnA digits[0-4]", "layers: conv1, fc"):
        assert line in text, text
    assert "runs: 4" in text and "steps per run: AnB " in text and "estimated time: about " in text
    assert "trained first" in text  # the cache is empty: the source would be trained first
    assert no_training == [] and not out.exists() and not list((tmp_path / "cache").rglob("*.pt"))

    as_json = invoke([*args, "--json"], env=env)
    assert as_json.exit_code == 0, explain(as_json)
    plan = json.loads(as_json.stdout)
    assert {"source", "tasks", "layers", "runs", "steps per run", "estimate"} <= set(plan)
    assert plan["layers"] == ["conv1", "fc"] and plan["runs"] == 4 and set(plan["tasks"]) == {"AnB", "AnA"}
    assert plan["steps per run"]["AnB"] > 0 and plan["estimate"]["seconds"] > 0
    assert plan["estimate"]["runs"] == 4 and plan["estimate"]["source_seconds"] > 0
    assert no_training == [] and not out.exists() and not list((tmp_path / "cache").rglob("*.pt"))


# ------------------------------------------------------------------------------------------- estimate

STEP, TEST_BATCH, SOURCE_FIRST, SOURCE_LAST = 0.01, 0.128, 0.002, 0.004


@pytest.fixture
def fixed_timer(monkeypatch):
    """``estimate._time`` returning fixed seconds: a training step, a test batch, the source to the first and the
    last probed layer (in that order)."""
    sources = itertools.cycle([SOURCE_FIRST, SOURCE_LAST])  # each estimate times the first layer, then the last

    def timed(step, device):
        name = getattr(step, "__name__", "")
        if name == "train_step":
            return STEP
        if name == "test_forward":
            return TEST_BATCH
        return next(sources)

    monkeypatch.setattr(estimate, "_time", timed)


def _expected_runs_seconds(plan: api.ScanPlan) -> float:
    """steps × step + epochs × test pass + one cached-source pass over the test split, per run; over the workers."""
    settings, task = plan.settings, plan.tasks["AnB"]
    test_pass = TEST_BATCH / min(256, len(task.test)) * len(task.test)
    cache_pass = SOURCE_LAST * len(task.test) / settings.batch_size
    run = settings.steps_per_run(len(task.train)) * STEP + settings.epochs * test_pass + cache_pass
    return run * len(plan.specs) / min(settings.jobs, len(plan.specs))


def test_the_estimate_is_the_timed_steps_multiplied_out(fixed_timer):
    request = api.ScanRequest(
        layers=["conv1", "fc"], arch_options={"width": 0.25}, overrides={"epochs": 1, "device": "cpu", "jobs": 2}
    )
    api.source_model(api.plan_scan(request))  # the source trained once (1 epoch) and cached
    plan = api.plan_scan(request)
    assert plan.source_cached and not plan.settings.augment  # digits: every step reads the cached source
    found = api.estimate_duration(plan)
    assert found.source_seconds == 0 and found.baselines_seconds == 0
    assert found.workers == 2 and found.runs == 2 and found.step_seconds == STEP
    assert found.runs_seconds == pytest.approx(_expected_runs_seconds(plan), rel=1e-12)
    assert found.seconds == found.runs_seconds

    doubled = api.plan_scan(dataclasses.replace(request, overrides={**request.overrides, "epochs": 2}))
    assert doubled.source_cached is False  # the source follows --epochs too: not the one cached
    twice = api.estimate_duration(doubled)
    assert twice.runs_seconds == pytest.approx(_expected_runs_seconds(doubled), rel=1e-12)
    assert 1.5 < twice.runs_seconds / found.runs_seconds < 2.5
    assert twice.source_seconds > 0


# ----------------------------------------------------------------------------- a checkpoint travels (§1.1)


def test_a_checkpoint_travels_without_its_source_folder(tmp_path, monkeypatch):
    """A checkpoint trained on ./src-folder in one directory is scanned from another after the folder moved; only
    the AnA control needs the folder, and then says which."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    image_folder(home / "src-folder", classes=("ant", "bee", "cat"))
    target = image_folder(tmp_path / "tgt", classes=("dog", "eel"))
    monkeypatch.chdir(home)
    _train("./src-folder[0-1]", Path("src.pt"))
    recorded = parse_spec(recorded_info(load_source(home / "src.pt")).dataset)
    assert (recorded.name, recorded.classes) == (str((home / "src-folder").resolve()), (0, 1))

    (home / "src-folder").rename(home / "moved")
    monkeypatch.chdir(elsewhere)
    result = invoke(["scan", "--source", home / "src.pt", "--target", target.resolve(), *TINY])
    assert result.exit_code == 0, explain(result)

    control = invoke(["scan", "--source", home / "src.pt", "--target", target.resolve(), "--control", *TINY])
    assert control.exit_code == 2, explain(control)
    lines = control.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(home / "src-folder") in lines[0], lines


def _hf_dataset(root: Path, labels: dict[str, list[str]], seed: int) -> Path:
    """A save_to_disk DatasetDict of grey 8×8 images (digits' format) with a ClassLabel column per entry of
    ``labels``; image i has label i mod n in each column."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"img": datasets.Image(), **{name: datasets.ClassLabel(names=names) for name, names in labels.items()}}
    )
    rng = np.random.default_rng(seed)

    def split(n: int):
        first = next(iter(labels.values()))
        grey = [
            Image.fromarray((rng.integers(0, 60, (8, 8)) + 60 * (i % len(first))).astype(np.uint8), "L")
            for i in range(n)
        ]
        columns = {name: [i % len(names) for i in range(n)] for name, names in labels.items()}
        return datasets.Dataset.from_dict({"img": grey, **columns}, features=features)

    datasets.DatasetDict({"train": split(24), "test": split(8)}).save_to_disk(str(root))
    return root


def test_hugging_face_columns_apply_to_the_target_they_name(tmp_path):
    """--label-column names a column of the Hugging Face target only: a Hugging Face source without that column,
    and a digits source, are trained on their own labels (the column was given to every Hugging Face spec)."""
    target = _hf_dataset(tmp_path / "target", {"fine_label": list("abcd"), "coarse_label": ["small", "large"]}, 3)
    source = _hf_dataset(tmp_path / "source", {"label": ["x", "y", "z"]}, 4)
    for source_data in (str(source), "digits[0-4]"):
        out = tmp_path / f"out-{len(source_data)}"
        args = ["scan", "--source-data", source_data, "--target", target, "--label-column", "coarse_label"]
        result = invoke([*args, "--width", "0.25", *TINY, "--out", out])
        assert result.exit_code == 0, explain(result)
        saved = json.loads((out / "results.json").read_text())
        assert saved["extras"]["data"]["AnB"]["columns"]["label"] == "coarse_label"
        assert saved["extras"]["class_names"]["AnB"] == ["small", "large"]
        assert "label_column" not in saved["source"]["settings"]
        assert saved["source"]["num_classes"] == (3 if source_data == str(source) else 5)


# ------------------------------------------------------------------------------------ probe layers (§1.6)


def test_layers_of_a_pretrained_architecture_at_its_own_input_without_network(offline, tmp_path):
    result = invoke(["layers", "--arch", "vit_tiny_patch16_224", "--pretrained", "--json"])
    assert result.exit_code == 0, explain(result)
    listing = json.loads(result.stdout)
    assert listing["input_shape"] == [3, 224, 224]
    assert listing["layers"] and any(layer["default"] for layer in listing["layers"])
    assert offline == [] and not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # no weights read

    sized = invoke(["layers", "--arch", "vit_tiny_patch16_224", "--image-size", "64", "--json"])
    assert sized.exit_code == 0, explain(sized)
    assert json.loads(sized.stdout)["input_shape"] == [1, 64, 64]  # digits' one channel, at 64×64
    assert offline == []


def test_the_plan_keeps_what_it_read(folders_and_checkpoint):
    """The plan holds the tasks it read and the runs it decided; run(plan) uses them as they are."""
    source, target, checkpoint = folders_and_checkpoint
    plan = api.plan_scan(
        api.ScanRequest(source=checkpoint, target=str(target), control=True, layers=["conv1"], overrides=_quick())
    )
    assert set(plan.tasks) == {"AnB", "AnA"} and plan.tasks["AnB"].num_classes == 3
    assert [(s.task, s.layer) for s in plan.specs] == [("AnB", "conv1"), ("AnA", "conv1")]
    assert plan.steps_per_run == {name: plan.settings.steps_per_run(len(t.train)) for name, t in plan.tasks.items()}
    assert os.fspath(plan.source_data) == f"{source.resolve()}"


def _quick() -> dict:
    return {"epochs": 1, "runs": 1, "jobs": 1, "init": (0.5,), "device": "cpu"}
