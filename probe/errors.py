"""One small hierarchy of typed errors.

Every error a user can cause derives from :class:`ProbeError`; its message is one line that
says what is wrong and what to do. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations


class ProbeError(Exception):
    """Base class of every error quanta-probe raises for bad input or missing resources."""


class SettingsError(ProbeError, ValueError):
    """A setting is out of its valid range (epochs, runs, batch size, λS init, ...)."""


class ArchitectureError(ProbeError, KeyError):
    """An unknown architecture name, or a model the toolkit cannot adapt."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LayerError(ProbeError, KeyError):
    """An unknown, ambiguous or unusable layer name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ShapeMismatchError(ProbeError, ValueError):
    """Source and target tensors at the probed layer have different shapes."""


class DataError(ProbeError):
    """A dataset that is unknown, missing, corrupt, or a bad class subset."""


class CheckpointError(ProbeError):
    """A checkpoint that is unsafe, corrupt, or does not fit the architecture."""


class DeviceError(ProbeError):
    """A device that does not exist on this machine."""


class ResultsError(ProbeError):
    """A results folder that cannot be written, or holds results of other settings."""
