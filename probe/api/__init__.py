"""The public API, a thin facade over the layers below: train or load a source, measure a layer, scan layers.

Three modules, each depending only on the ones before it: :mod:`.policy` (presets, defaults, how images are
prepared, every check that needs only the request), :mod:`.plan` (a checked request: source, target, settings;
nothing trained) and :mod:`.scanning` (the runs, resumed and executed, and the baselines); :mod:`.listing`
says which layers a model has. The CLI calls these names and nothing below them.
"""

from __future__ import annotations

from ..engine.prepare import Prepared, prepare
from ..engine.progress import ProgressEvent
from ..engine.sources import cached_source, check_checkpoint_path, load_source, pretrained_source, train_source
from .listing import LayerListing, layer_listing
from .plan import ScanPlan, plan_scan, source_model
from .policy import Target, check_request, preprocessing_for, scan_settings, source_training_settings
from .scanning import measure, scan

__all__ = [
    "LayerListing",
    "Prepared",
    "ProgressEvent",
    "ScanPlan",
    "Target",
    "cached_source",
    "check_checkpoint_path",
    "check_request",
    "layer_listing",
    "load_source",
    "measure",
    "plan_scan",
    "prepare",
    "preprocessing_for",
    "pretrained_source",
    "scan",
    "scan_settings",
    "source_model",
    "source_training_settings",
    "train_source",
]
