"""Input sizes: whether a model runs on an input, and the smallest square input it accepts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ArchitectureError

# Square sizes tried (ascending) when looking for the smallest input a model accepts.
CANDIDATE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def _runs(model: nn.Module, in_chans: int, size: int) -> bool:
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size, device=device))
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        for module, mode in modes.items():
            module.training = mode


def smallest_input(build: Callable[[tuple[int, int]], nn.Module], in_chans: int, above: int = 0) -> int | None:
    """The smallest square size (> ``above``) of :data:`CANDIDATE_SIZES` a model accepts, or None.

    ``build(size)`` returns the model for that size: the same model for fully convolutional nets, a
    rebuilt one for models whose input size is fixed at construction (ViTs).
    """
    for size in CANDIDATE_SIZES:
        if size <= above:
            continue
        try:
            model = build((size, size))
        except Exception:  # noqa: BLE001 - a size the constructor rejects
            continue
        if _runs(model, in_chans, size):
            return size
    return None


def input_size_error(
    arch: str,
    input_shape: Sequence[int],
    error: BaseException,
    build: Callable[[tuple[int, int]], nn.Module],
) -> ArchitectureError:
    """An ArchitectureError for a model that cannot take ``input_shape``, naming the smallest input it accepts."""
    in_chans, height, width = input_shape
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = reason if len(reason) <= 160 else reason[:159] + "…"
    smallest = smallest_input(build, in_chans, above=max(height, width))
    if smallest is None:
        return ArchitectureError(
            f"{arch} cannot run on {in_chans}×{height}×{width} inputs ({type(error).__name__}: {reason}); "
            "pick another architecture or dataset"
        )
    return ArchitectureError(
        f"{arch} cannot run on {in_chans}×{height}×{width} inputs ({type(error).__name__}: {reason}); its smallest "
        f"input is {smallest}×{smallest}: pick a dataset with larger images or another architecture"
    )


def ensure_runs(
    model: nn.Module,
    arch: str,
    input_shape: Sequence[int],
    build: Callable[[tuple[int, int]], nn.Module],
) -> None:
    """One eval-mode forward of a zero batch; an ArchitectureError naming the smallest input when it fails."""
    in_chans, height, width = input_shape
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, height, width))
    except Exception as exc:  # noqa: BLE001
        raise input_size_error(arch, input_shape, exc, build) from exc
    finally:
        for module, mode in modes.items():
            module.training = mode


def build_checked(
    arch: str,
    input_shape: Sequence[int],
    build: Callable[[], nn.Module],
    rebuild: Callable[[tuple[int, int]], nn.Module],
    options: dict,
    checked: set,
    key: tuple,
    rebuild_built: Callable[[tuple[int, int]], nn.Module] | None = None,
) -> nn.Module:
    """A builder's common frame: ``build()``, turn its failures into one-line errors, check it runs once per ``key``.

    A TypeError means a bad option; other construction errors mean an input size the model cannot take
    (the error names the smallest one, found with ``rebuild(size)``). The first model built for ``key``
    also runs one forward pass (:func:`ensure_runs`; ``rebuild_built``, default ``rebuild``, finds the size).
    The model records the ``(C, H, W)`` it was built for.
    """
    input_shape = tuple(input_shape)
    try:
        model = build()
    except TypeError as exc:
        raise ArchitectureError(
            f"cannot build {arch} with options {options}: {exc}; check --arch-option names"
        ) from exc
    except (AssertionError, RuntimeError, ValueError, ZeroDivisionError) as exc:
        raise input_size_error(arch, input_shape, exc, rebuild) from exc
    if key not in checked:
        ensure_runs(model, arch, input_shape, rebuild_built or rebuild)
        checked.add(key)
    object.__setattr__(model, "quanta_input_shape", input_shape)  # a plain attribute, outside the state_dict
    return model
