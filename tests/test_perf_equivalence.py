"""Speed-ups that must not change a number: truncated source forwards, cached source tensors, the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import probe
from probe import api
from probe.core.hooks import source_forward
from probe.data import load_task
from probe.models.paper_cnn import PAPER_CNN_LAYERS, PaperCNN
from probe.settings import RunSettings
from probe.training.trainer import fit, make_optimizer


def _paper_cnn() -> PaperCNN:
    torch.manual_seed(0)
    return PaperCNN(num_classes=5, in_chans=3, input_size=(16, 16), width=0.25).eval()


class _CountCalls:
    """Counts the forward calls of every module of a model."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = {name: 0 for name, _ in model.named_modules() if name}
        self.handles = [
            module.register_forward_pre_hook(
                lambda module, args, name=name: self.calls.__setitem__(name, self.calls[name] + 1)
            )
            for name, module in model.named_modules()
            if name
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("layer", [*PAPER_CNN_LAYERS, "act1:input", "head:input"])
def test_the_truncated_source_forward_captures_what_the_full_forward_does(layer):
    model = _paper_cnn()
    x = torch.randn(4, 3, 16, 16)
    truncated = source_forward(model, layer, x, truncate=True)
    full = source_forward(model, layer, x, truncate=False)
    assert torch.equal(truncated, full)
    if layer in PAPER_CNN_LAYERS:  # a pre-activation, taken before the in-place ReLU that follows it
        assert (truncated < 0).any()


def test_truncation_stops_at_the_layer_and_survives_an_inplace_relu_right_after_it():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 4),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    counter = _CountCalls(model)
    try:
        truncated = source_forward(model, "2", x, truncate=True)
        calls_truncated = dict(counter.calls)
        full = source_forward(model, "2", x, truncate=False)
    finally:
        counter.remove()
    assert torch.equal(truncated, full)
    assert (truncated < 0).any(), "the in-place ReLU after the layer must not reach the captured tensor"
    assert calls_truncated == {"0": 1, "1": 1, "2": 1, "3": 0, "4": 0, "5": 0}
    assert truncated.grad_fn is None and not truncated.requires_grad  # the source runs without autograd


def assert_cache_changes_nothing(source, settings: RunSettings):
    """A scan of conv2 and fc with the source tensors cached and one without: the same runs, bit for bit."""
    layers = ["conv2", "fc"]
    cached = probe.scan(source, layers, "digits[5-9]", settings=settings.with_(cache_source=True))
    recomputed = probe.scan(source, layers, "digits[5-9]", settings=settings.with_(cache_source=False))
    for with_cache, without in zip(cached.runs, recomputed.runs, strict=True):
        assert with_cache.spec == without.spec
        assert with_cache.history == without.history  # every metric of every epoch, bit for bit
        assert with_cache.steps == without.steps
    return cached


def test_caching_the_source_tensors_changes_no_number(tiny_source):
    settings = RunSettings(epochs=2, lr=1e-3, gate_lr=0.03, augment=False)
    context = api.prepare(tiny_source, "digits[5-9]", settings=settings).context
    cache = context.source_tensors("conv2", "AnB")
    assert cache is not None, "the cache must actually be used for this comparison to mean anything"
    assert cache["train"].shape[0] == len(context.tasks["AnB"].train)

    assert_cache_changes_nothing(tiny_source, settings)


def test_caching_the_test_split_under_augmentation_changes_no_number(tiny_source):
    settings = RunSettings(epochs=2, lr=1e-3, gate_lr=0.03, augment=True, train_size=20)
    context = api.prepare(tiny_source, "digits[5-9]", settings=settings).context
    assert context.tasks["AnB"].augment.enabled, "the train split must be augmented for this to mean anything"
    cache = context.source_tensors("conv2", "AnB")
    assert cache is not None and set(cache) == {"test"}  # the augmented train split is recomputed every batch
    test = context.tasks["AnB"].test
    assert cache["test"].shape[0] == len(test)
    assert torch.equal(cache["test"][:7], source_forward(context.source, "conv2", test.rows(0, 7)))
    assert context.source_tensors("conv2", "AnB") is cache  # kept for the next run of the layer

    cached = assert_cache_changes_nothing(tiny_source, settings)
    assert len(cached.runs[0].history) == settings.epochs


def test_the_trainer_reads_lambda_once_per_epoch_and_counts_every_step():
    task = load_task("digits[5-9]")
    settings = RunSettings(epochs=2, batch_size=64, lr=1e-3)
    torch.manual_seed(0)
    model = PaperCNN(num_classes=task.num_classes, in_chans=1, input_size=(8, 8), width=0.25)
    reads = []
    outcome = fit(
        forward=lambda x, idx, split: model(x),
        trainable=model,
        optimizer=make_optimizer(model, settings),
        task=task,
        settings=settings,
        seed=0,
        device=torch.device("cpu"),
        read_lambda=lambda: reads.append(None) or 0.5,
    )
    assert len(reads) == settings.epochs
    assert outcome.steps == settings.epochs * -(-len(task.train) // settings.batch_size)
    assert [h["epoch"] for h in outcome.history] == [1, 2]
