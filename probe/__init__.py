"""quanta-probe: measure, layer by layer, how transferable a trained network's features are (QUANTA)."""

from ._version import __version__
from .api import load_source, measure, scan, train_source
from .core.gate import QuantaGate
from .core.hooks import quanta_hooks, source_forward
from .errors import (
    ArchitectureError,
    CheckpointError,
    DataError,
    DeviceError,
    LayerError,
    ProbeError,
    ResultsError,
    SettingsError,
    ShapeMismatchError,
)
from .models.registry import create_model, list_archs, register_arch
from .results.schema import Measurement, RunResult, RunSpec
from .settings import RunSettings
from .util.allocator import retain_freed_memory

__all__ = [
    "ArchitectureError",
    "CheckpointError",
    "DataError",
    "DeviceError",
    "LayerError",
    "Measurement",
    "ProbeError",
    "QuantaGate",
    "ResultsError",
    "RunResult",
    "RunSettings",
    "RunSpec",
    "SettingsError",
    "ShapeMismatchError",
    "__version__",
    "create_model",
    "list_archs",
    "load_source",
    "measure",
    "quanta_hooks",
    "register_arch",
    "retain_freed_memory",
    "scan",
    "source_forward",
    "train_source",
]
