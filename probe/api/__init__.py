"""The public API, a thin facade over the layers below: train or load a source, measure a layer, scan layers.

Modules, each depending only on the ones before it: :mod:`.policy` (presets, defaults, how images are prepared),
:mod:`.plan` (a :class:`ScanRequest` planned once by :func:`plan_scan`: source, tasks read, settings, layers, runs;
every check made, nothing trained), :mod:`.estimate` (how long the plan takes on this machine) and
:mod:`.scanning` (:func:`run`: the runs, resumed and executed, and the baselines; ``scan`` and ``measure`` build
the same request as the CLI); :mod:`.listing` says which layers a model has. The CLI calls these names and nothing
below them.
"""

from __future__ import annotations

from ..engine.prepare import Prepared, prepare
from ..engine.progress import ProgressEvent
from ..engine.sources import cached_source, check_checkpoint_path, load_source, pretrained_source, train_source
from .estimate import Estimate, describe_plan, estimate_duration
from .listing import LayerListing, layer_listing
from .plan import ScanPlan, ScanRequest, plan_scan, source_model
from .policy import Target, check_request, preprocessing_for, scan_settings, source_training_settings
from .scanning import measure, run, scan

__all__ = [
    "Estimate",
    "LayerListing",
    "Prepared",
    "ProgressEvent",
    "ScanPlan",
    "ScanRequest",
    "Target",
    "cached_source",
    "check_checkpoint_path",
    "check_request",
    "describe_plan",
    "estimate_duration",
    "layer_listing",
    "load_source",
    "measure",
    "plan_scan",
    "prepare",
    "preprocessing_for",
    "pretrained_source",
    "run",
    "scan",
    "scan_settings",
    "source_model",
    "source_training_settings",
    "train_source",
]
