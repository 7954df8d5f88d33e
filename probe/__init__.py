"""quanta-probe: measure, layer by layer, how transferable a trained network's features are (QUANTA)."""

__version__ = "0.1.0"

from .adapters import create_model, list_archs, register_arch  # noqa: E402
from .allocator import retain_freed_memory  # noqa: E402
from .api import load_source, measure, scan, train_source  # noqa: E402
from .errors import (  # noqa: E402
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
from .gate import QuantaGate  # noqa: E402
from .hooks import quanta_hooks, source_forward  # noqa: E402
from .results import Measurement, RunResult, RunSpec  # noqa: E402
from .settings import RunSettings  # noqa: E402

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
