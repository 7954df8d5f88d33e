"""Baselines beside λS: Yosinski transfer accuracy and the standard lenses per layer (linear probe, k-NN, LogME,
H-scores, TransRate, CKA; LEEP and NCE of the source head), and their rank correlation with λS."""

from ..results.labels import BASELINE_LABELS
from ..results.quality import kendall_tau_b, spearman
from . import lenses
from .compare import BASELINES, check_baselines, cka_after_run, correlations, run_baselines
from .scores import h_score, layer_features, logme, pool_features
from .transfer import TransferRun, modules_through, train_alone, train_transfer, transfer_layers, transfer_target

__all__ = [
    "BASELINES",
    "BASELINE_LABELS",
    "TransferRun",
    "check_baselines",
    "cka_after_run",
    "correlations",
    "h_score",
    "kendall_tau_b",
    "layer_features",
    "lenses",
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
