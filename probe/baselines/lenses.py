"""Standard lenses on a layer's features beside λS: probes, neighbours, similarity and transferability scores.

Every function here works on a features matrix ``features: torch.Tensor`` of shape (N, D) that the
caller has already pooled per layer, as :func:`probe.baselines.scores.pool_features` does: 4-D conv maps
(N, C, H, W) are globally average-pooled over H, W to (N, C), 3-D token sequences (N, L, D) are
averaged over the L tokens to (N, D). Labels are integer class indices of shape (N,) (any integer
values: they are mapped to 0..C-1 in sorted order). Scores that need it compute in float64; all
computation stays on the tensors' device. Bad input raises ``ValueError`` / ``TypeError`` with one line
that says what to do.

Lenses, by their names in :data:`probe.baselines.compare.BASELINES`:

* ``linear`` -- :func:`linear_probe_accuracy`: linear-probe test accuracy, Alain & Bengio, "Understanding
  intermediate layers using linear classifier probes", 2016 (arXiv:1610.01644).
* ``knn`` -- :func:`knn_accuracy`: cosine k-nearest-neighbour test accuracy, k = 20 as in the
  self-supervised literature (Wu et al., CVPR 2018; Caron et al., DINO, ICCV 2021).
* ``transrate`` -- :func:`transrate`: Huang et al., "Frustratingly Easy Transferability Estimation",
  ICML 2022.
* ``hscore_plain`` -- :func:`h_score`: Bao et al., "An Information-Theoretic Approach to
  Transferability in Task Transfer Learning", ICIP 2019.
* ``hscore`` -- :func:`regularized_h_score`: Ibrahim et al., "Newer is not always better: Rethinking
  transferability metrics, their peculiarities, stability and performance", ECML-PKDD 2022
  (arXiv:2110.06893, 2021).
* ``cka`` -- :func:`linear_cka`: Kornblith et al., "Similarity of Neural Network Representations
  Revisited", ICML 2019.
* ``leep`` -- :func:`leep`: Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020.
* ``nce`` -- :func:`nce`: Tran et al., "Transferability and Hardness of Supervised Classification
  Tasks", ICCV 2019.

Higher is better for every score. ``cka`` compares two activation matrices of the same examples
(for instance the source's and a trained target's layer-n activations on the test split); ``leep``
and ``nce`` score the source's output head on the target data, not a layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..results.labels import KNN_K

__all__ = [
    "DEFAULT_L2_GRID",
    "KNN_K",
    "TRANSRATE_EPS",
    "h_score",
    "knn_accuracy",
    "leep",
    "linear_cka",
    "linear_probe_accuracy",
    "nce",
    "regularized_h_score",
    "transrate",
]

TRANSRATE_EPS = 1e-4  # the authors' default (see transrate)
DEFAULT_L2_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# --------------------------------------------------------------------------------------------------
# Input checks


def _matrix(x, name: str) -> torch.Tensor:
    """A finite float64 (N, D) tensor with N, D >= 1, on x's device."""
    if isinstance(x, np.ndarray):
        x = torch.as_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}; pool conv maps and token sequences first"
            " (as probe.baselines.scores.pool_features does)"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); give at least one example and one feature")
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values; check the model and its inputs")
    return x


def _label_vector(y, n: int, name: str, device: torch.device) -> torch.Tensor:
    """An int64 (n,) tensor on ``device``."""
    if isinstance(y, np.ndarray):
        y = torch.as_tensor(y)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class indices, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}; convert with .long()")
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.numel() != n:
        raise ValueError(f"{name} has {y.numel()} entries but the features have {n} rows; give one label per example")
    return y.to(device=device, dtype=torch.int64)


def _classes(y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct labels and labels as indices 0..C-1; at least 2 classes."""
    classes, index = torch.unique(y, sorted=True, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError(f"{name} has {classes.numel()} class; a score needs examples of at least 2 classes")
    return classes, index


def _features_labels(features, labels) -> tuple[torch.Tensor, torch.Tensor, int]:
    f = _matrix(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 examples to compute a score, got {f.shape[0]}")
    y = _label_vector(labels, f.shape[0], "labels", f.device)
    classes, y = _classes(y, "labels")
    return f, y, int(classes.numel())


def _split(train_x, train_y, test_x, test_y):
    """float64 train/test features on train_x's device; train labels as 0..C-1, test labels mapped to the
    same indices (-1 for a class the train split lacks, which then always counts as wrong)."""
    xtr = _matrix(train_x, "train_x")
    xte = _matrix(test_x, "test_x").to(xtr.device)
    if xte.shape[1] != xtr.shape[1]:
        raise ValueError(
            f"train_x has {xtr.shape[1]} features but test_x has {xte.shape[1]}; use the same layer for both"
        )
    ytr = _label_vector(train_y, xtr.shape[0], "train_y", xtr.device)
    yte = _label_vector(test_y, xte.shape[0], "test_y", xtr.device)
    classes, ytr = _classes(ytr, "train_y")
    pos = torch.searchsorted(classes, yte).clamp_max(classes.numel() - 1)
    yte = torch.where(classes[pos] == yte, pos, torch.full_like(pos, -1))
    return xtr, ytr, xte, yte, int(classes.numel())


# --------------------------------------------------------------------------------------------------
# Linear probe


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (population) per feature; a constant feature gets std 1 (it becomes 0)."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int, tol: float):
    """Multinomial logistic regression on standardised x: minimise mean cross-entropy + l2/2 ||W||_F^2 (bias
    not penalised) from W = 0, b = 0 by full-batch L-BFGS with a strong-Wolfe line search."""
    mean, std = _standardise(x)
    xs = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ weight + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return mean, std, weight.detach(), bias.detach()


def _accuracy(params, x: torch.Tensor, y: torch.Tensor) -> float:
    mean, std, weight, bias = params
    pred = (((x - mean) / std) @ weight + bias).argmax(1)  # ties: the lowest class index
    return float((pred == y).double().mean().item())


def _stratified_holdout(
    y: torch.Tensor, num_classes: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) indices: round(fraction * n_c) examples of each class c held out, at most n_c - 1,
    chosen by a permutation from a CPU generator seeded with ``seed`` (the same split on every device)."""
    y_cpu = y.cpu()
    n = y_cpu.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    order = perm[torch.sort(y_cpu[perm], stable=True).indices]  # grouped by class, random within a class
    counts = torch.bincount(y_cpu, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[y_cpu[order]]
    n_held = torch.minimum(torch.floor(fraction * counts.double() + 0.5).long(), counts - 1).clamp_min(0)
    held = rank < n_held[y_cpu[order]]
    return order[~held].to(y.device), order[held].to(y.device)


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    seed: int = 0,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout: float = 0.2,
    max_iter: int = 500,
    tol: float = 1e-7,
) -> dict:
    """Linear-probe test accuracy (Alain & Bengio 2016): multinomial logistic regression on the layer's features.

    Features are standardised with the mean and (population) standard deviation of the examples the
    model is fitted on (constant features become 0). The model minimises
    ``mean cross-entropy + l2 / 2 * ||W||_F^2`` (bias not penalised; sklearn's ``C = 1 / (N * l2)``)
    from zero weights by full-batch ``torch.optim.LBFGS`` (strong-Wolfe line search, at most
    ``max_iter`` iterations, gradient tolerance ``tol``) in float64 on the features' device.

    L2 selection: a stratified ``holdout`` fraction of every class of the train split (rounded, at most
    n_c - 1, drawn with ``seed``) is held out; for each value of ``l2_grid`` the model is fitted on the
    rest (standardised with the rest's statistics) and scored on the held-out part; the value with the
    highest held-out accuracy wins, ties going to the larger L2 (the simpler model). The model is then
    refitted with that L2 on the whole train split and scored on the test split. With a single value in
    ``l2_grid`` there is no selection and nothing is held out. ``seed`` only chooses the held-out part
    (the fit starts from zeros), so equal inputs and seed give equal results.

    Prediction is the arg-max logit (ties: the lowest class); a test label absent from the train split
    counts as wrong. Returns ``{"accuracy": test accuracy, "l2": chosen L2, "l2_grid": tuple,
    "holdout_accuracy": tuple aligned with l2_grid (empty without selection)}``.
    """
    xtr, ytr, xte, yte, num_classes = _split(train_x, train_y, test_x, test_y)
    grid = tuple(float(v) for v in l2_grid)
    if not grid or any(not math.isfinite(v) or v < 0 for v in grid):
        raise ValueError(f"l2_grid must hold one or more finite L2 strengths >= 0, got {tuple(l2_grid)}")
    held_acc: tuple[float, ...] = ()
    if len(grid) == 1:
        best = grid[0]
    else:
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}; or give a single l2_grid value")
        fit_idx, held_idx = _stratified_holdout(ytr, num_classes, holdout, seed)
        if held_idx.numel() == 0:
            raise ValueError(
                f"the train split ({xtr.shape[0]} examples) is too small to hold out {holdout:.0%} of a class;"
                " give more train examples, a larger holdout, or a single l2_grid value"
            )
        held_acc = tuple(
            _accuracy(
                _fit_logistic(xtr[fit_idx], ytr[fit_idx], num_classes, l2, max_iter, tol), xtr[held_idx], ytr[held_idx]
            )
            for l2 in grid
        )
        best = max(zip(held_acc, grid, strict=True))[1]  # highest accuracy, then the largest L2
    params = _fit_logistic(xtr, ytr, num_classes, best, max_iter, tol)
    return {"accuracy": _accuracy(params, xte, yte), "l2": best, "l2_grid": grid, "holdout_accuracy": held_acc}


# --------------------------------------------------------------------------------------------------
# k-NN


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    k: int = KNN_K,
    max_chunk_elements: int = 1 << 24,
) -> dict:
    """Cosine k-nearest-neighbour test accuracy, k = 20 by default (Wu et al. 2018; DINO), capped at the train size.

    Features are L2-normalised per example (not centred; an all-zero row stays zero) and compared by the
    dot product in float64. Each test example takes the ``min(k, N_train)`` train examples of highest
    cosine similarity and predicts the majority class among them (unweighted votes). Tie rule: among
    the classes with the most votes, the one whose best-ranked neighbour is most similar wins (so ties
    reduce to the nearest neighbour among the tied classes); equal similarities at the k-th place are
    resolved by ``torch.topk``. A test label absent from the train split counts as wrong.

    Similarities are computed for blocks of test rows of at most ``max_chunk_elements`` entries
    (128 MiB in float64 by default), so memory stays bounded for any N_test x N_train.
    Returns ``{"accuracy": test accuracy, "k": the k used}``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    xtr, ytr, xte, yte, num_classes = _split(train_x, train_y, test_x, test_y)
    xtr, xte = F.normalize(xtr, dim=1), F.normalize(xte, dim=1)
    n_train, n_test = xtr.shape[0], xte.shape[0]
    k_used = min(k, n_train)
    rows = max(1, min(n_test, int(max_chunk_elements) // n_train))
    ranks = torch.arange(k_used, device=xtr.device)
    correct = torch.zeros((), dtype=torch.int64, device=xtr.device)
    for start in range(0, n_test, rows):
        block = xte[start : start + rows]
        neighbours = ytr[(block @ xtr.T).topk(k_used, dim=1).indices]  # (b, k), most similar first
        b = neighbours.shape[0]
        votes = torch.zeros(b, num_classes, dtype=torch.int64, device=xtr.device)
        votes.scatter_add_(1, neighbours, torch.ones_like(neighbours))
        first = torch.full((b, num_classes), k_used, dtype=torch.int64, device=xtr.device)
        first.scatter_reduce_(1, neighbours, ranks.expand(b, k_used), reduce="amin")
        pred = (votes * (k_used + 1) + (k_used - first)).argmax(1)  # votes first, then the nearest member
        correct += (pred == yte[start : start + rows]).sum()
    return {"accuracy": float(correct.item()) / n_test, "k": k_used}


# --------------------------------------------------------------------------------------------------
# TransRate


def _logdet_identity_plus(z: torch.Tensor, scale: float) -> torch.Tensor:
    """log det(I + scale * z^T z), through the smaller of z^T z and z z^T (Sylvester), by Cholesky."""
    gram = z.T @ z if z.shape[1] <= z.shape[0] else z @ z.T
    m = gram.shape[0]
    mat = torch.eye(m, dtype=z.dtype, device=z.device) + scale * gram
    chol, info = torch.linalg.cholesky_ex(mat)
    if int(info) == 0:
        return 2.0 * torch.log(torch.diagonal(chol)).sum()
    return torch.linalg.slogdet(mat)[1]


def _coding_rate(z: torch.Tensor, eps: float) -> torch.Tensor:
    """R(Z, eps) = 1/2 log det(I + Z^T Z / (n eps))."""
    return 0.5 * _logdet_identity_plus(z, 1.0 / (z.shape[0] * eps))


def transrate(features: torch.Tensor, labels: torch.Tensor, *, eps: float = TRANSRATE_EPS) -> float:
    """TransRate (Huang et al., ICML 2022): R(Z, eps) - R(Z, eps | Y), in nats.

    Z: the features centred (column means removed) and then scaled to unit L2 norm per example, as the
    authors' experiment code does (``pre_transrate(normalize=True)`` on centralised features), which makes
    the score independent of a layer's feature scale. Coding rate R(Z, eps) =
    1/2 log det(I_d + Z^T Z / (n eps)); this is the paper's 1/2 log det(I_d + d / (n eps'^2) Z^T Z) with
    ``eps = eps'^2 / d``, the parametrisation of the authors' code; the default eps, :data:`TRANSRATE_EPS`, is theirs.
    Class-conditional rate R(Z, eps | Y) = sum_y (n_y / n) R(Z_y, eps) with Z_y the n_y rows of class y
    (the weighting of the paper and of the authors' experiment code; their short demo averages the
    classes with 1/K instead, the same for balanced classes). Log-determinants use the smaller Gram
    matrix (D x D or n x n) and a Cholesky factorisation, in float64.

    As in the authors' code, the rows of a class are not re-centred, so R(Z_y) sees the class mean as
    part of the class's spread. A consequence: two balanced classes that differ only by their mean lie at +-m about
    the centre, their second moments both equal the total one, and TransRate is ~0 however far apart they
    are (it rewards classes in different directions/subspaces, MCR^2's model, rather than shifted means).
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    f, y, num_classes = _features_labels(features, labels)
    z = F.normalize(f - f.mean(0, keepdim=True), dim=1)
    n = z.shape[0]
    rate = _coding_rate(z, eps)
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=num_classes)
    conditional = torch.zeros((), dtype=torch.float64, device=z.device)
    for rows, n_y in zip(torch.split(z[order], counts.tolist()), counts.tolist(), strict=True):
        conditional = conditional + (n_y / n) * _coding_rate(rows, eps)
    return float((rate - conditional).item())


# --------------------------------------------------------------------------------------------------
# H-score


def _ledoit_wolf(fc: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf (2004) shrunk covariance of centred features and its shrinkage coefficient.

    S = fc^T fc / N is shrunk towards mu I (mu = tr(S) / D) by delta = min(b^2, d^2) / d^2 with
    d^2 = ||S - mu I||_F^2 / D and b^2 = sum_k ||f_k f_k^T - S||_F^2 / (N^2 D) (sklearn's LedoitWolf).
    """
    n, d = fc.shape
    emp = fc.T @ fc / n
    mu = torch.diagonal(emp).sum() / d
    eye = torch.eye(d, dtype=fc.dtype, device=fc.device)
    d2 = ((emp - mu * eye) ** 2).sum() / d
    # sum_k ||f_k f_k^T - S||_F^2 = sum_k ||f_k||^4 - N ||S||_F^2
    b2 = (((fc * fc).sum(1) ** 2).sum() - n * (emp**2).sum()) / (n * n * d)
    delta = 0.0 if float(d2) == 0.0 else float(torch.clamp(b2, min=0.0).minimum(d2) / d2)
    return (1.0 - delta) * emp + delta * mu * eye, delta


def _h_score(features, labels, shrinkage: bool, rcond: float) -> float:
    f, y, num_classes = _features_labels(features, labels)
    n, d = f.shape
    fc = f - f.mean(0, keepdim=True)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    means = torch.zeros(num_classes, d, dtype=torch.float64, device=f.device).index_add_(0, y, fc)
    means = means / counts.unsqueeze(1)
    cov_g = (means.T * counts) @ means / (n - 1)  # sum_c n_c mu_c mu_c^T / (N - 1)
    if shrinkage:
        cov_f, delta = _ledoit_wolf(fc)
        cov_g = (1.0 - delta) * cov_g
    else:
        cov_f = fc.T @ fc / (n - 1)
    precision = torch.linalg.pinv(cov_f, rtol=rcond, hermitian=True)
    return float(torch.trace(precision @ cov_g).item())


def h_score(features: torch.Tensor, labels: torch.Tensor, *, rcond: float = 1e-10) -> float:
    """H-score (Bao et al., ICIP 2019): tr(cov(f)^+ cov(E[f | y])) on centred features, float64.

    cov(f) is the unbiased sample covariance; its inverse is a Hermitian pseudo-inverse that drops
    eigenvalues below ``rcond`` times the largest. cov(E[f | y]) is the (N - 1)-normalised covariance of
    the features replaced by their class means. Same value as ``probe.baselines.scores.h_score(shrinkage=False)``.
    """
    return _h_score(features, labels, False, rcond)


def regularized_h_score(features: torch.Tensor, labels: torch.Tensor, *, rcond: float = 1e-10) -> float:
    """Regularised H-score (Ibrahim et al. 2021/2022): tr(cov_a(f)^-1 (1 - a) cov(E[f | y])), float64.

    cov_a(f) is the Ledoit-Wolf shrunk covariance of the centred features (the N-normalised empirical
    covariance shrunk towards a scaled identity, as sklearn's ``LedoitWolf``) and a its shrinkage
    coefficient; cov(E[f | y]) as in :func:`h_score` ((N - 1)-normalised, like the authors' code with
    ``np.cov``). The inverse is the same ``rcond`` pseudo-inverse (cov_a is invertible unless a = 0 and
    cov(f) is singular). Stable when D is large compared with N. Same value as
    ``probe.baselines.scores.h_score(shrinkage=True)``.
    """
    return _h_score(features, labels, True, rcond)


# --------------------------------------------------------------------------------------------------
# CKA


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., ICML 2019) between activations (N, D1) and (N, D2) of the same N examples.

    With X, Y centred (column means removed): CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), which
    equals HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for the linear Gram matrices K = X X^T, L = Y Y^T.
    The cheaper route is taken: feature space (D1 x D2 products) or, when N (D1 + D2) is smaller than
    D1 D2 + D1^2 + D2^2, Gram space <K, L>_F / (||K||_F ||L||_F). float64 on x's device; each matrix is
    scaled to unit Frobenius norm first (CKA is scale invariant) so nothing overflows. In [0, 1]; NaN
    when either matrix is constant over the examples (CKA is undefined there).
    """
    a = _matrix(x, "x")
    b = _matrix(y, "y").to(a.device)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x has {a.shape[0]} rows but y has {b.shape[0]}; give activations of the same examples")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 examples to compare representations, got {a.shape[0]}")
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    na, nb = torch.linalg.matrix_norm(a), torch.linalg.matrix_norm(b)
    if float(na) == 0.0 or float(nb) == 0.0:
        return float("nan")
    a, b = a / na, b / nb
    n, d1 = a.shape
    d2 = b.shape[1]
    if n * (d1 + d2) < d1 * d2 + d1 * d1 + d2 * d2:
        gram_a, gram_b = a @ a.T, b @ b.T
        value = (gram_a * gram_b).sum() / (torch.linalg.matrix_norm(gram_a) * torch.linalg.matrix_norm(gram_b))
    else:
        value = torch.linalg.matrix_norm(b.T @ a) ** 2 / (
            torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
        )
    return float(value.item())


# --------------------------------------------------------------------------------------------------
# Scores of the source head: LEEP, NCE


def leep(source_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """LEEP (Nguyen et al., ICML 2020) from the source head's softmax outputs theta (N, Z) on the target data.

    Empirical joint P(y, z) = (1/N) sum_{i: y_i = y} theta_i[z], marginal P(z) = sum_y P(y, z),
    conditional P(y | z) = P(y, z) / P(z) (0 where P(z) = 0); LEEP = (1/N) sum_i log sum_z P(y_i | z)
    theta_i[z]. At most 0 (log 1); 0 when the source head is one-hot and maps every target class to its
    own source classes. ``source_probs`` must be probabilities (rows >= 0 summing to 1 within 1e-3):
    apply softmax to logits first. float64.
    """
    p = _matrix(source_probs, "source_probs")
    n = p.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 examples to compute a score, got {n}")
    if bool((p < 0).any()) or float((p.sum(1) - 1.0).abs().max()) > 1e-3:
        raise ValueError(
            "source_probs must be probabilities (rows >= 0 summing to 1); apply softmax to the logits first"
        )
    y = _label_vector(labels, n, "labels", p.device)
    _, y = _classes(y, "labels")
    num_classes = int(y.max()) + 1
    joint = torch.zeros(num_classes, p.shape[1], dtype=torch.float64, device=p.device).index_add_(0, y, p) / n
    marginal = joint.sum(0, keepdim=True)
    conditional = torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    expected = (p * conditional[y]).sum(1)  # sum_z P(y_i | z) theta_i[z]
    return float(torch.log(expected).mean().item())


def nce(source_labels: torch.Tensor, labels: torch.Tensor) -> float:
    """NCE (Tran et al., ICCV 2019): negative conditional entropy -H(Y | Z), in nats, from the empirical joint.

    ``source_labels`` are the source head's predicted labels z_i on the target data: an integer (N,)
    tensor, or the head's (N, Z) outputs, of which the arg-max is taken (ties: the lowest index).
    With P(y, z) the fraction of examples with target label y and source label z and P(z) = sum_y P(y, z):
    NCE = sum_{y, z: P(y, z) > 0} P(y, z) log(P(y, z) / P(z)). At most 0; exactly 0 when the target label
    is a function of the source label.
    """
    if isinstance(source_labels, (torch.Tensor, np.ndarray)) and source_labels.ndim == 2:
        z = _matrix(source_labels, "source_labels").argmax(1)
    else:
        if isinstance(source_labels, np.ndarray):
            source_labels = torch.as_tensor(source_labels)
        n_z = source_labels.numel() if isinstance(source_labels, torch.Tensor) else -1
        z = _label_vector(source_labels, n_z, "source_labels", torch.device("cpu") if n_z < 0 else source_labels.device)
    n = z.numel()
    if n < 2:
        raise ValueError(f"need at least 2 examples to compute a score, got {n}")
    y = _label_vector(labels, n, "labels", z.device)
    _, y = _classes(y, "labels")
    _, z = torch.unique(z, sorted=True, return_inverse=True)
    num_y, num_z = int(y.max()) + 1, int(z.max()) + 1
    joint = torch.bincount(y * num_z + z, minlength=num_y * num_z).reshape(num_y, num_z).to(torch.float64) / n
    marginal = joint.sum(0, keepdim=True).expand_as(joint)
    seen = joint > 0
    return float((joint[seen] * torch.log(joint[seen] / marginal[seen])).sum().item())
