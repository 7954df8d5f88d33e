"""Score-based transferability estimators computed on a feature matrix.

* :func:`logme` -- LogME, You et al., "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021.
* :func:`h_score` -- H-score, Bao et al., "An Information-Theoretic Approach to Transferability
  in Task Transfer Learning", ICIP 2019; with ``shrinkage=True`` the regularised H-score of
  Ibrahim et al., "Newer is not always better: Rethinking transferability metrics, their
  peculiarities, stability and performance", 2022.

Both take features of shape (N, ...) (pooled by :func:`pool_features`) and N class labels, run on
the features' device and compute in float64. Higher is better for both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.hooks import resolve_layer, source_forward
from ..data.task import Split
from ..errors import SettingsError
from .lenses import h_score as plain_h_score
from .lenses import regularized_h_score

H_SCORE_SHRINKAGE = True  # Ibrahim et al. (2022): plain H-score degenerates when features outnumber examples


def pool_features(z: torch.Tensor) -> torch.Tensor:
    """Reduce layer outputs to one vector per sample.

    (N, C, H, W) maps are globally average-pooled to (N, C); (N, L, D) tokens are averaged over
    L to (N, D); (N, D) is returned unchanged; any other rank is flattened to (N, -1).
    """
    if z.dim() == 0:
        raise SettingsError("features must have a sample dimension, got a scalar")
    if z.dim() == 4:
        return z.mean(dim=(2, 3))
    if z.dim() == 3:
        return z.mean(dim=1)
    if z.dim() == 2:
        return z
    return z.reshape(z.shape[0], -1)


def _prepare(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate inputs; return float64 (N, D) features, labels as 0..C-1 indices, and C."""
    f = pool_features(features).to(torch.float64)
    y = torch.as_tensor(labels, device=f.device).reshape(-1)
    n = f.shape[0]
    if y.numel() != n:
        raise SettingsError(f"features have {n} samples but labels have {y.numel()}; give one label per sample")
    if n < 2:
        raise SettingsError(f"need at least 2 samples to compute a score, got {n}")
    classes, y = torch.unique(y, return_inverse=True)
    if classes.numel() < 2:
        raise SettingsError(f"need at least 2 classes to compute a score, got {classes.numel()}")
    if not bool(torch.isfinite(f).all()):
        raise SettingsError("features contain NaN or infinite values; check the model and its inputs")
    return f, y, int(classes.numel())


def logme(features: torch.Tensor, labels: torch.Tensor, max_iter: int = 100, tol: float = 1e-3) -> float:
    """LogME score (You et al., ICML 2021): mean over classes of the per-sample log evidence.

    For each class c the one-hot target y = [labels == c] is modelled as y = F w + noise with
    prior w ~ N(0, alpha^-1 I) and noise ~ N(0, beta^-1 I). alpha and beta are fitted by the
    paper's fixed-point iteration (Algorithm 1) from alpha = beta = 1, stopping once
    lambda = alpha / beta changes by less than ``tol`` (relative) or after ``max_iter`` steps;
    log p(y | F, alpha, beta) / N is then evaluated at the fitted alpha, beta.

    One thin SVD F = U diag(s) V^T serves all classes. Keeping the K singular values above the
    usual numerical-rank cutoff, with sigma = s^2 and x = U^T y:
    ||m||^2 = sum sigma x^2 / (sigma + lambda)^2 and
    ||F m - y||^2 = sum (lambda x / (sigma + lambda))^2 + (||y||^2 - ||x||^2), and the D - K zero
    eigenvalues of F^T F contribute (D - K) log(alpha) to log|alpha I + beta F^T F|. This covers
    N >= D and N < D alike.

    Numerical safeguards: a residual ||y||^2 - ||x||^2 at rounding level is set to 0 (when
    rank F = N the targets are fitted exactly), and the iteration also stops once lambda leaves
    [1e-12 min(sigma), 1e12 max(sigma)], where the evidence has reached its beta -> inf
    (noise-free fit) or alpha -> inf (features ignored) limit up to ~1e-12.
    """
    f, y, num_classes = _prepare(features, labels)
    n, d = f.shape
    targets = torch.nn.functional.one_hot(y, num_classes).to(torch.float64)  # (N, C)
    y2 = targets.sum(0)  # ||y||^2 per class
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    keep = s > max(n, d) * torch.finfo(torch.float64).eps * s.max()
    u, sigma = u[:, keep], (s[keep] ** 2).unsqueeze(1)  # (N, K), (K, 1)
    k = sigma.shape[0]
    if k == 0:  # all-zero features: only the noise model y ~ N(0, I / beta) is left
        evidence = -n / 2.0 * (torch.log(2.0 * math.pi * y2 / n) + 1.0)
        return float(evidence.mean().item() / n)
    x2 = (u.T @ targets) ** 2  # (K, C)
    res_x2 = y2 - x2.sum(0)
    res_x2 = torch.where(res_x2 > 1e-10 * y2, res_x2, torch.zeros_like(res_x2))
    tiny = torch.finfo(torch.float64).tiny
    lam_lo, lam_hi = 1e-12 * float(sigma.min()), 1e12 * float(sigma.max())

    def moments(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """gamma, ||m||^2 and ||F m - y||^2 per class at lambda = alpha / beta."""
        gamma = (sigma / (sigma + lam)).sum(0)
        m2 = (sigma * x2 / (sigma + lam) ** 2).sum(0)
        res2 = (x2 * (lam / (sigma + lam)) ** 2).sum(0) + res_x2
        return gamma, m2.clamp_min(tiny), res2.clamp_min(tiny)

    alpha = torch.ones(num_classes, dtype=torch.float64, device=f.device)
    beta = torch.ones_like(alpha)
    active = torch.ones(num_classes, dtype=torch.bool, device=f.device)
    for _ in range(max_iter):
        lam = alpha / beta
        gamma, m2, res2 = moments(lam)
        new_alpha, new_beta = gamma / m2, (n - gamma) / res2
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        new_lam = new_alpha / new_beta
        done = ((new_lam - lam).abs() < tol * lam) | (new_lam < lam_lo) | (new_lam > lam_hi)
        active = active & ~done
        if not bool(active.any()):
            break

    _, m2, res2 = moments(alpha / beta)
    evidence = (
        k / 2.0 * torch.log(alpha)  # D/2 log(alpha) less the (D - K) zero eigenvalues' log(alpha)/2
        + n / 2.0 * torch.log(beta)
        - 0.5 * torch.log(alpha + beta * sigma).sum(0)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * math.log(2.0 * math.pi)
    )
    return float((evidence / n).mean().item())


def h_score(features: torch.Tensor, labels: torch.Tensor, shrinkage: bool = False, rcond: float = 1e-10) -> float:
    """H-score (Bao et al., ICIP 2019) of features of any rank (pooled by :func:`pool_features`).

    ``shrinkage=False``: :func:`probe.baselines.lenses.h_score`; ``shrinkage=True``: the regularised
    H-score of Ibrahim et al. (2022), :func:`probe.baselines.lenses.regularized_h_score` (Ledoit-Wolf).
    The formulas live there (one home); this checks the input with the package's typed errors first.
    """
    f, y, _ = _prepare(features, labels)
    score = regularized_h_score if shrinkage else plain_h_score
    return score(f, y, rcond=rcond)


def batch_of(x: torch.Tensor | Split, start: int, stop: int) -> torch.Tensor:
    """Inputs [start, stop) of a tensor, or of a split (uint8 images converted for this batch only)."""
    return x.rows(start, stop) if isinstance(x, Split) else x[start:stop]


@torch.no_grad()
def layer_features(model: nn.Module, layer: str, x: torch.Tensor | Split, batch_size: int = 256) -> torch.Tensor:
    """The model's pooled (:func:`pool_features`) float32 tensors at ``layer`` for inputs ``x`` (a tensor or a
    split, read a batch at a time, so a split of uint8 images is never converted whole), (N, D), on the
    model's device: one forward pass per batch, stopped at the layer, in eval mode (the mode is restored)."""
    point = resolve_layer(model, layer)
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [
                pool_features(source_forward(model, point, batch_of(x, i, i + batch_size))).float()
                for i in range(0, len(x), batch_size)
            ]
        )
    finally:
        model.train(was_training)
