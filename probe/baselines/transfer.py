"""Yosinski et al.'s transfer runs (NeurIPS 2014): the source's layers up to n copied into a fresh target,
frozen (AnB) or fine-tuned (AnB+), and the target trained alone (baseB), on the same data, seeds and trainer."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.hooks import StopForward, resolve_layer
from ..core.surgery import require_head
from ..engine.context import ProbeContext, fresh_target
from ..errors import LayerError, ShapeMismatchError
from ..models.checkpoint import source_info
from ..results.schema import final_figures
from ..training.trainer import fit, make_optimizer

# --------------------------------------------------------------------------------------------------
# Which modules are "layers up to and including n"


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)))


def _example_input(model: nn.Module) -> torch.Tensor:
    info = source_info(model)
    if info is None or info.in_chans is None or info.input_size is None:
        raise LayerError(
            f"cannot tell which layers of {type(model).__name__} come before a layer without an input: pass example=x"
        )
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    return torch.zeros(1, info.in_chans, *info.input_size, device=device)


@torch.no_grad()
def modules_through(model: nn.Module, layer: str, example: torch.Tensor | None = None) -> list[str]:
    """Names of the modules holding state that run before ``layer``'s tensor exists, in forward order.

    A dry forward pass (eval mode, no autograd, stopped at the layer) records when each module that owns
    parameters or buffers is first entered. For ``"name"`` the layer's tensor exists once that module has
    returned, so the module itself and everything inside it count; for ``"name:input"`` only modules
    entered before it. A module that owns state and has children counts from the moment it is entered.
    """
    point = resolve_layer(model, layer)
    example = _example_input(model) if example is None else example
    owners = {name: module for name, module in model.named_modules() if _owns_state(module)}
    clock = itertools.count()
    entered: dict[str, int] = {}
    boundary: list[int] = []

    def enter(name: str) -> Callable:
        def hook(module, args) -> None:
            if name not in entered:
                entered[name] = next(clock)

        return hook

    def reached(*_) -> None:
        boundary.append(next(clock))
        raise StopForward

    handles = [module.register_forward_pre_hook(enter(name)) for name, module in owners.items()]
    if point.on_input:  # prepended: a module that owns state is not "before" its own input
        handles.append(point.module.register_forward_pre_hook(reached, prepend=True))
    else:
        handles.append(point.module.register_forward_hook(reached))
    was_training = model.training
    model.eval()
    try:
        model(example)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not boundary:
        raise LayerError(f"'{layer}' did not run in {type(model).__name__}'s forward pass; pick a layer that does")
    return sorted((name for name, time in entered.items() if time < boundary[0]), key=entered.__getitem__)


@torch.no_grad()
def transfer_layers(source: nn.Module, target: nn.Module, layer: str, example: torch.Tensor | None = None) -> list[str]:
    """Copy the source's layers up to and including ``layer`` into ``target`` (in place); return their names.

    Each named module's own parameters and buffers are copied (see :func:`modules_through`); the source is
    only read.
    """
    names = modules_through(source, layer, example)
    for name in names:
        donor, receiver = source.get_submodule(name), target.get_submodule(name)
        own = dict(itertools.chain(donor.named_parameters(recurse=False), donor.named_buffers(recurse=False)))
        theirs = dict(itertools.chain(receiver.named_parameters(recurse=False), receiver.named_buffers(recurse=False)))
        for key, tensor in own.items():
            if key not in theirs or theirs[key].shape != tensor.shape:
                found = tuple(theirs[key].shape) if key in theirs else "nothing"
                raise ShapeMismatchError(
                    f"cannot transfer '{name}.{key}' up to '{layer}': the source has {tuple(tensor.shape)}, the target "
                    f"{found}; transfer a layer before the head or use a target of the same architecture"
                )
            theirs[key].copy_(tensor)
    return names


# --------------------------------------------------------------------------------------------------
# Yosinski transfer runs


class _KeepEval(nn.Module):
    """Wraps a target for the trainer so that ``train()`` leaves the frozen modules in eval mode."""

    def __init__(self, target: nn.Module, frozen: Sequence[nn.Module]) -> None:
        super().__init__()
        self.target = target
        self.frozen = list(frozen)  # a plain list: not registered twice as submodules

    def train(self, mode: bool = True) -> _KeepEval:
        super().train(mode)
        for module in self.frozen:
            module.train(False)
        return self


@dataclass
class TransferRun:
    """One baseline training: the final top-1 (NaN when it failed), why it failed, and the trained target."""

    top1: float
    failure: str | None
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # the test metrics after each epoch


def _train(
    context: ProbeContext,
    target: nn.Module,
    trainable: nn.Module,
    task_name: str,
    seed: int,
    on_epoch,
    evaluate_last: int | None = None,
) -> TransferRun:
    outcome = fit(
        forward=lambda x, idx, split: target(x),
        trainable=trainable,
        optimizer=make_optimizer(target, context.settings),
        task=context.tasks[task_name],
        settings=context.settings,
        seed=seed,
        device=context.device,
        on_epoch=on_epoch,
        evaluate_last=evaluate_last,
    )
    top1 = (
        final_figures(outcome.history, context.settings.last_epochs).get("top1", math.nan)
        if outcome.history
        else math.nan
    )
    return TransferRun(math.nan if outcome.failure else top1, outcome.failure, target, outcome.history)


def transfer_target(
    context: ProbeContext, layer: str, task_name: str, seed: int, donor: nn.Module | None = None
) -> tuple[nn.Module, list[str]]:
    """A fresh target for ``task_name`` seeded like the QUANTA run, with ``donor``'s layers ≤ ``layer`` copied in.

    Returns the target and the names of the copied modules; ``donor`` defaults to the context's source.
    """
    target = fresh_target(context, task_name, seed)
    donor = context.source if donor is None else donor
    return target, transfer_layers(donor, target, layer, context.tasks[task_name].train.rows(0, 1))


def train_transfer(
    context: ProbeContext,
    layer: str,
    task_name: str,
    seed: int,
    *,
    frozen: bool,
    donor: nn.Module | None = None,
    on_epoch: Callable | None = None,
) -> TransferRun:
    """One Yosinski run: :func:`transfer_target`, then train on ``task_name`` with the context's settings.

    ``frozen``: the copied parameters do not train and the copied modules stay in eval mode (BatchNorm keeps
    the donor's statistics); otherwise everything is fine-tuned.
    """
    target, names = transfer_target(context, layer, task_name, seed, donor)
    copied = [target.get_submodule(name) for name in names]
    if frozen:
        for module in copied:
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(False)
        if not any(p.requires_grad for p in target.parameters()):
            raise LayerError(f"transferring up to '{layer}' leaves nothing to train; pick a layer before the head")
    return _train(context, target, _KeepEval(target, copied if frozen else ()), task_name, seed, on_epoch)


def train_alone(
    context: ProbeContext,
    task_name: str,
    seed: int,
    on_epoch: Callable | None = None,
    *,
    evaluate_last: int | None = None,
) -> TransferRun:
    """The target trained alone on ``task_name`` (Yosinski's baseB): no transfer, no gate, same seed.

    ``evaluate_last``: only the last that many epochs are evaluated (see :func:`~probe.training.trainer.fit`)."""
    target = fresh_target(context, task_name, seed)
    return _train(context, target, target, task_name, seed, on_epoch, evaluate_last)


# --------------------------------------------------------------------------------------------------
# Fine-tuning with a cut: what to freeze


def cut_target(
    context: ProbeContext, task_name: str, seed: int, freeze_through: str | None
) -> tuple[nn.Module, list[str]]:
    """A target for ``task_name`` initialised from the context's source — every module before its head copied, the
    head fresh (seeded like the QUANTA run) — and the names of the modules to freeze: those up to and including
    ``freeze_through`` (:func:`modules_through`; None: none, full fine-tuning)."""
    target = fresh_target(context, task_name, seed)
    example = context.tasks[task_name].train.rows(0, 1)
    transfer_layers(context.source, target, f"{require_head(target)}:input", example)
    frozen = [] if freeze_through is None else modules_through(target, freeze_through, example)
    return target, frozen


def train_with_cut(
    context: ProbeContext,
    task_name: str,
    seed: int,
    freeze_through: str | None,
    *,
    on_epoch: Callable | None = None,
    evaluate_last: int | None = None,
) -> TransferRun:
    """Fine-tune a copy of the source on ``task_name`` with its modules up to and including ``freeze_through``
    frozen (their parameters do not train and they stay in eval mode) and the rest, head included, trained with the
    context's settings: the run whose accuracy says how good that cut is (``freeze_through`` None: every layer
    fine-tuned; the last probe point before the head: only the head trains)."""
    target, names = cut_target(context, task_name, seed, freeze_through)
    frozen = [target.get_submodule(name) for name in names]
    for module in frozen:
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
    if not any(p.requires_grad for p in target.parameters()):
        raise LayerError(f"freezing through '{freeze_through}' leaves nothing to train; pick a layer before the head")
    return _train(context, target, _KeepEval(target, frozen), task_name, seed, on_epoch, evaluate_last)
