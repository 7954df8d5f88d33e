"""Baselines beside λS: Yosinski transfer accuracy, LogME and H-score per layer, and their rank correlation with λS."""

from ..results.quality import kendall_tau_b, spearman
from .compare import BASELINE_LABELS, BASELINES, check_baselines, correlations, run_baselines
from .scores import h_score, layer_scores, logme, pool_features
from .transfer import TransferRun, modules_through, train_alone, train_transfer, transfer_layers, transfer_target

__all__ = [
    "BASELINES",
    "BASELINE_LABELS",
    "TransferRun",
    "check_baselines",
    "correlations",
    "h_score",
    "kendall_tau_b",
    "layer_scores",
    "logme",
    "modules_through",
    "pool_features",
    "run_baselines",
    "spearman",
    "train_alone",
    "train_transfer",
    "transfer_layers",
    "transfer_target",
]
