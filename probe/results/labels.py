"""What a measurement's figures are called in tables and figures: its metrics and its baselines' entries."""

from __future__ import annotations

from .schema import METRICS

# The k of the k-NN lens (probe.baselines.lenses.knn_accuracy): part of what a "knn" entry is, so its label names it.
KNN_K = 20

METRIC_LABELS = dict(zip(METRICS, ("λS", "top-1", "top-3", "loss", "precision", "recall"), strict=True))

# Each per-layer baseline entry and each score of the source head (``extras["baselines"]``).
BASELINE_LABELS = {
    "AnB_frozen": "Yosinski AnB (frozen)",
    "AnB_finetune": "Yosinski AnB+ (fine-tuned)",
    "AnA_frozen": "Yosinski AnA (frozen)",
    "AnA_finetune": "Yosinski AnA+ (fine-tuned)",
    "BnB_frozen": "Yosinski BnB (selffer, frozen)",
    "BnB_finetune": "Yosinski BnB+ (selffer, fine-tuned)",
    "logme": "LogME",
    "hscore": "H-score (regularised)",
    "hscore_plain": "H-score (plain)",
    "transrate": "TransRate",
    "linear": "linear probe top-1",
    "knn": f"{KNN_K}-NN top-1 (cosine)",
    "cka": "CKA source–QUANTA target",
    "cka_alone": "CKA source–target alone",
    "leep": "LEEP (source head)",
    "nce": "NCE (source head)",
}
