"""Tests of probe.baselines.scores against plain numpy reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probe.baselines.scores import h_score, logme, pool_features
from probe.errors import SettingsError

SHAPES = [(120, 8), (60, 25), (20, 50), (10, 64)]  # N > D and N < D
CLASS_COUNTS = [2, 3, 7]


# ---------------------------------------------------------------- numpy references


def logme_reference(f: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-3) -> float:
    """LogME (You et al., ICML 2021, Algorithm 1): per class fixed point on eig(F^T F).

    Same safeguards as probe.baselines.scores.logme: eigenvalues at rounding level count as 0, and the loop
    also stops once lambda leaves [1e-12 min(s > 0), 1e12 max(s)] (a beta or alpha -> inf limit).
    """
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s[s <= max(n, d) * np.finfo(float).eps * s.max()] = 0.0
    lam_lo, lam_hi = 1e-12 * s[s > 0].min(), 1e12 * s.max()
    evidences = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        vt_fty = np.where(s > 0, v.T @ (f.T @ t), 0.0)  # F^T y lies in the range of F^T F

        def fit(alpha: float, beta: float, t=t, vt_fty=vt_fty) -> tuple[float, float, float]:
            m = v @ (beta * vt_fty / (alpha + beta * s))  # m = beta A^-1 F^T y
            gamma = float(np.sum(beta * s / (alpha + beta * s)))
            return gamma, float(m @ m), float(np.sum((f @ m - t) ** 2))

        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            gamma, m2, res2 = fit(alpha, beta)
            alpha, beta = gamma / m2, (n - gamma) / res2
            if abs(alpha / beta - lam) < tol * lam or not lam_lo <= alpha / beta <= lam_hi:
                break
        _, m2, res2 = fit(alpha, beta)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * s))
            - beta / 2 * res2
            - alpha / 2 * m2
            - n / 2 * math.log(2 * math.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def h_score_reference(f: np.ndarray, y: np.ndarray, rcond: float = 1e-10) -> float:
    """H-score (Bao et al., ICIP 2019): tr(pinv(cov f) cov(E[f|y]))."""
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return float(np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=rcond) @ np.cov(g, rowvar=False)))


def ledoit_wolf_reference(f: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004), written from the definitions."""
    n, d = f.shape
    x = f - f.mean(0)
    s = x.T @ x / n
    mu = np.trace(s) / d
    d2 = np.sum((s - mu * np.eye(d)) ** 2) / d
    b2 = sum(np.sum((np.outer(xk, xk) - s) ** 2) for xk in x) / (n * n * d)
    delta = min(b2, d2) / d2
    return (1 - delta) * s + delta * mu * np.eye(d), delta


def regularized_h_score_reference(f: np.ndarray, y: np.ndarray) -> float:
    """Regularised H-score (Ibrahim et al., 2022): tr(cov_delta(f)^-1 (1 - delta) cov(E[f|y]))."""
    cov, delta = ledoit_wolf_reference(f)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return float(np.trace(np.linalg.inv(cov) @ ((1 - delta) * np.cov(g, rowvar=False))))


# ---------------------------------------------------------------- data


def random_data(n: int, d: int, c: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features with class means at distance ~``spread``; every class present."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    means = rng.normal(size=(c, d)) * spread
    return means[y] + rng.normal(size=(n, d)), y


def as_torch(f: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(f), torch.from_numpy(y)


# ---------------------------------------------------------------- agreement with the references


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_logme_matches_reference(n: int, d: int, c: int) -> None:
    f, y = random_data(n, d, c, seed=n * 100 + d + c)
    assert logme(*as_torch(f, y)) == pytest.approx(logme_reference(f, y), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_h_score_matches_reference(n: int, d: int, c: int) -> None:
    f, y = random_data(n, d, c, seed=n * 100 + d + c)
    assert h_score(*as_torch(f, y)) == pytest.approx(h_score_reference(f, y), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_regularized_h_score_matches_reference(n: int, d: int, c: int) -> None:
    f, y = random_data(n, d, c, seed=n * 100 + d + c)
    got = h_score(*as_torch(f, y), shrinkage=True)
    assert got == pytest.approx(regularized_h_score_reference(f, y), rel=1e-6, abs=1e-9)


def test_ledoit_wolf_reference_matches_sklearn() -> None:
    covariance = pytest.importorskip("sklearn.covariance")
    f, _ = random_data(40, 12, 3, seed=1)
    cov, delta = ledoit_wolf_reference(f)
    lw = covariance.LedoitWolf().fit(f)
    assert delta == pytest.approx(lw.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(cov, lw.covariance_, rtol=1e-9)


def test_float32_and_arbitrary_label_values() -> None:
    f, y = random_data(50, 6, 3, seed=2)
    f32 = torch.from_numpy(f).float()
    relabelled = torch.from_numpy(np.array([10, -4, 7])[y])
    ref = logme_reference(f32.double().numpy(), y)
    assert logme(f32, relabelled) == pytest.approx(ref, rel=1e-6)
    assert h_score(f32, relabelled) == pytest.approx(h_score_reference(f32.double().numpy(), y), rel=1e-6)


# ---------------------------------------------------------------- properties from the papers


def _regularized_h_score(f: torch.Tensor, y: torch.Tensor) -> float:
    return h_score(f, y, shrinkage=True)


@pytest.mark.parametrize(
    "n,d,score",
    [
        (200, 16, logme),
        (30, 64, logme),
        (200, 16, h_score),
        (200, 16, _regularized_h_score),
        (30, 64, _regularized_h_score),
    ],
)
def test_separable_features_score_higher_than_noise(n: int, d: int, score) -> None:
    separable, y = random_data(n, d, 4, seed=3, spread=3.0)
    noise = np.random.default_rng(4).normal(size=(n, d)) * separable.std(0)
    assert score(*as_torch(separable, y)) > score(*as_torch(noise, y))


def test_h_score_invariant_to_shift_and_invertible_linear_map() -> None:
    f, y = random_data(80, 10, 3, seed=5)
    base = h_score(*as_torch(f, y))
    assert h_score(*as_torch(f + 7.5, y)) == pytest.approx(base, rel=1e-8)
    a = np.random.default_rng(6).normal(size=(10, 10)) + 3 * np.eye(10)
    assert h_score(*as_torch(f @ a, y)) == pytest.approx(base, rel=1e-6)
    assert h_score(*as_torch(f + 7.5, y), shrinkage=True) == pytest.approx(h_score(*as_torch(f, y), shrinkage=True))


@pytest.mark.parametrize("n,d", SHAPES)
def test_logme_finite(n: int, d: int) -> None:
    f, y = random_data(n, d, 3, seed=7)
    assert math.isfinite(logme(*as_torch(f, y)))
    assert math.isfinite(logme(*as_torch(f * 1e3 + 50.0, y)))


def test_h_score_saturates_when_features_outnumber_samples() -> None:
    """With D >= N - 1 every labelling is linearly separable and the plain H-score is C - 1."""
    f, y = random_data(15, 40, 4, seed=8)
    assert h_score(*as_torch(f, y)) == pytest.approx(3.0, rel=1e-8)
    assert h_score(*as_torch(f, y), shrinkage=True) < 3.0


def test_all_zero_features() -> None:
    """A dead layer: LogME keeps only the noise model y ~ N(0, I / beta); H-score is 0."""
    y = np.array([0, 0, 0, 1, 1, 2])
    f = torch.zeros(6, 5, dtype=torch.float64)
    counts = np.bincount(y)
    expected = np.mean([-0.5 * (math.log(2 * math.pi * c / 6) + 1) for c in counts])
    assert logme(f, torch.from_numpy(y)) == pytest.approx(expected, rel=1e-12)
    assert h_score(f, torch.from_numpy(y)) == 0.0
    assert h_score(f, torch.from_numpy(y), shrinkage=True) == 0.0


def test_scores_accept_unpooled_maps() -> None:
    z = torch.randn(12, 5, 4, 4, dtype=torch.float64)
    y = torch.arange(12) % 3
    assert logme(z, y) == pytest.approx(logme(z.mean(dim=(2, 3)), y))
    assert h_score(z, y) == pytest.approx(h_score(z.mean(dim=(2, 3)), y))


# ---------------------------------------------------------------- pool_features


@pytest.mark.parametrize(
    "shape,expected",
    [((6, 3, 5, 5), (6, 3)), ((6, 7, 4), (6, 4)), ((6, 9), (6, 9)), ((6, 2, 3, 4, 5), (6, 120)), ((6,), (6, 1))],
)
def test_pool_features_shapes(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    assert pool_features(torch.zeros(shape)).shape == expected


def test_pool_features_values() -> None:
    z = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    torch.testing.assert_close(pool_features(z), z.reshape(2, 3, 4).mean(-1))
    tokens = torch.randn(2, 5, 3)
    torch.testing.assert_close(pool_features(tokens), tokens.mean(1))
    flat = torch.randn(4, 3)
    assert pool_features(flat) is flat


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("score", [logme, h_score])
def test_errors(score) -> None:
    f = torch.randn(10, 4)
    with pytest.raises(SettingsError, match="10 samples but labels have 9"):
        score(f, torch.arange(9) % 2)
    with pytest.raises(SettingsError, match="at least 2 classes"):
        score(f, torch.zeros(10, dtype=torch.long))
    with pytest.raises(SettingsError, match="at least 2 samples"):
        score(f[:1], torch.zeros(1, dtype=torch.long))
    for bad in (float("nan"), float("inf")):
        g = f.clone()
        g[3, 1] = bad
        with pytest.raises(SettingsError, match="NaN or infinite"):
            score(g, torch.arange(10) % 2)
    with pytest.raises(SettingsError, match="scalar"):
        score(torch.tensor(1.0), torch.tensor([0]))
