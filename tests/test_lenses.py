"""probe.baselines.lenses against independent numpy float64 implementations of each paper's formula, known answers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from probe.baselines import lenses, scores

# --------------------------------------------------------------------------------------------------
# Data


def _blobs(n: int, d: int, k: int, sep: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k Gaussian classes in d dimensions, class c centred at sep * e_c (c < d)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    y = y[torch.randperm(n, generator=g)]
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[torch.arange(n), y] += sep
    return x, y


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Independent references (numpy float64, written from the papers' formulas)


def _ref_logistic_predict(xtr, ytr, xte, l2: float, iters: int = 60) -> np.ndarray:
    """Multinomial logistic regression, mean CE + l2/2 ||W||^2 (bias free), by damped Newton; test predictions."""
    mean, std = xtr.mean(0), xtr.std(0)
    std = np.where(std > 0, std, 1.0)
    a = np.hstack([(xtr - mean) / std, np.ones((len(xtr), 1))])  # (n, d + 1)
    n, p = a.shape
    k = int(ytr.max()) + 1
    y1 = np.eye(k)[ytr]
    mask = np.ones((p, k))
    mask[-1] = 0.0  # bias not penalised

    def objective(theta):
        z = a @ theta
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -(y1 * logp).sum() / n + 0.5 * l2 * ((theta * mask) ** 2).sum(), np.exp(logp)

    theta = np.zeros((p, k))
    for _ in range(iters):
        f, prob = objective(theta)
        grad = a.T @ (prob - y1) / n + l2 * theta * mask
        # Hessian over (feature, class) pairs: (1/n) sum_i a_i a_i^T (x) (diag(p_i) - p_i p_i^T) + l2 on W
        w = np.einsum("ic,cd->icd", prob, np.eye(k)) - np.einsum("ic,id->icd", prob, prob)
        hess = np.einsum("ip,iq,icd->pcqd", a, a, w).reshape(p * k, p * k) / n + np.diag(l2 * mask.reshape(-1))
        step = (np.linalg.pinv(hess, hermitian=True) @ grad.reshape(-1)).reshape(p, k)
        t = 1.0
        while objective(theta - t * step)[0] > f - 1e-4 * t * (grad * step).sum() and t > 1e-8:
            t *= 0.5
        theta = theta - t * step
        if np.abs(grad).max() < 1e-12:
            break
    b = np.hstack([(xte - mean) / std, np.ones((len(xte), 1))])
    return (b @ theta).argmax(1)


def _ref_knn_predict(xtr, ytr, xte, k: int) -> np.ndarray:
    """Cosine k-NN majority vote; ties to the tied class with the most similar neighbour."""
    ntr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    nte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    sims = nte @ ntr.T
    preds = []
    for row in sims:
        nearest = np.argsort(-row, kind="stable")[:k]
        votes = Counter(ytr[nearest].tolist())
        top = max(votes.values())
        tied = {c for c, v in votes.items() if v == top}
        preds.append(next(ytr[j] for j in nearest if ytr[j] in tied))
    return np.array(preds)


def _ref_transrate(f, y, eps=1e-4) -> float:
    """R(Z, eps) - sum_y n_y / n R(Z_y, eps), Z centred then unit-norm rows, R = 1/2 logdet(I + Z^T Z / (n eps))."""
    z = f - f.mean(0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)

    def rate(m):
        n, d = m.shape
        sign, logdet = np.linalg.slogdet(np.eye(d) + m.T @ m / (n * eps))
        assert sign > 0
        return 0.5 * logdet

    return rate(z) - sum((y == c).sum() / len(y) * rate(z[y == c]) for c in np.unique(y))


def _ref_h_score(f, y) -> float:
    """tr(cov(f)^+ cov(g)), g_i = E[f | y_i] (Bao et al. 2019)."""
    g = np.stack([f[y == c].mean(0) for c in y])
    return float(
        np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-10, hermitian=True) @ np.cov(g, rowvar=False))
    )


def _ref_regularized_h_score(f, y) -> float:
    """tr(cov_a(f)^-1 (1 - a) cov(g)) with sklearn's Ledoit-Wolf cov_a and shrinkage a (Ibrahim et al.)."""
    from sklearn.covariance import LedoitWolf

    fc = f - f.mean(0)
    lw = LedoitWolf(assume_centered=False).fit(fc)
    g = np.stack([fc[y == c].mean(0) for c in y])
    cov_g = np.atleast_2d(np.cov(g, rowvar=False))
    return float(np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-10, hermitian=True) @ ((1 - lw.shrinkage_) * cov_g)))


def _ref_cka(x, y) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels and the centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T  # noqa: E741

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return float(hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l)))


def _ref_leep(theta, y) -> float:
    n, nz = theta.shape
    classes = np.unique(y)
    joint = np.array([[theta[y == c, z].sum() / n for z in range(nz)] for c in classes])  # P(y, z)
    cond = joint / joint.sum(0, keepdims=True)  # P(y | z)
    index = {c: i for i, c in enumerate(classes)}
    return float(np.mean([np.log(sum(cond[index[y[i]], z] * theta[i, z] for z in range(nz))) for i in range(n)]))


def _ref_nce(z, y) -> float:
    n = len(y)
    joint = Counter(zip(y.tolist(), z.tolist(), strict=True))
    marginal = Counter(z.tolist())
    return float(sum(c / n * np.log(c / marginal[zz]) for (_, zz), c in joint.items()))


# --------------------------------------------------------------------------------------------------
# Linear probe


def test_linear_probe_matches_reference_logistic_regression():
    x, y = _blobs(240, 5, 3, sep=1.2, seed=1)
    x[:, 4] = x[:, 4] * 50.0 + 7.0  # a badly scaled feature: standardisation must handle it
    xtr, ytr, xte, yte = x[:160], y[:160], x[160:], y[160:]
    for l2 in (1e-2, 1e-1):
        got = lenses.linear_probe_accuracy(xtr, ytr, xte, yte, l2_grid=(l2,))
        ref = _ref_logistic_predict(_np(xtr), _np(ytr), _np(xte), l2)
        assert got["l2"] == l2 and got["holdout_accuracy"] == ()
        assert got["accuracy"] == pytest.approx(float((ref == _np(yte)).mean()), abs=1e-12)
        assert 0.5 < got["accuracy"] < 1.0  # overlapping classes: a non-trivial comparison


def test_linear_probe_separable_features_give_accuracy_one_and_selection_rule():
    x, y = _blobs(150, 6, 3, sep=12.0, seed=2)
    got = lenses.linear_probe_accuracy(x[:100], y[:100], x[100:], y[100:], l2_grid=(1e-3, 1e-2, 1e-1))
    assert got["accuracy"] == 1.0
    assert len(got["holdout_accuracy"]) == 3 and got["l2_grid"] == (1e-3, 1e-2, 1e-1)
    best = max(got["holdout_accuracy"])
    assert got["l2"] == max(l2 for l2, a in zip(got["l2_grid"], got["holdout_accuracy"], strict=True) if a == best)


def test_linear_probe_is_seeded_and_label_values_do_not_matter():
    x, y = _blobs(160, 5, 4, sep=1.0, seed=3)
    grid = (1e-4, 1e-2, 1.0)
    a = lenses.linear_probe_accuracy(x[:120], y[:120], x[120:], y[120:], seed=7, l2_grid=grid)
    b = lenses.linear_probe_accuracy(x[:120], y[:120], x[120:], y[120:], seed=7, l2_grid=grid)
    assert a == b
    relabelled = lenses.linear_probe_accuracy(
        x[:120], y[:120] * 3 + 10, x[120:], y[120:] * 3 + 10, seed=7, l2_grid=grid
    )
    assert relabelled == a


def test_linear_probe_standardises_with_train_statistics():
    """A per-feature affine map of train and test alike leaves the probe unchanged."""
    x, y = _blobs(160, 4, 3, sep=1.0, seed=4)
    scale = torch.tensor([1e3, 1e-2, 5.0, 1.0], dtype=torch.float64)
    shift = torch.tensor([100.0, -3.0, 0.0, 1e4], dtype=torch.float64)
    a = lenses.linear_probe_accuracy(x[:120], y[:120], x[120:], y[120:], l2_grid=(1e-2,))
    b = lenses.linear_probe_accuracy(
        x[:120] * scale + shift, y[:120], x[120:] * scale + shift, y[120:], l2_grid=(1e-2,)
    )
    assert a["accuracy"] == b["accuracy"]


# --------------------------------------------------------------------------------------------------
# kNN


def test_knn_matches_reference():
    x, y = _blobs(300, 6, 4, sep=1.5, seed=5)
    xtr, ytr, xte, yte = x[:200], y[:200], x[200:], y[200:]
    for k in (1, 4, 20):
        got = lenses.knn_accuracy(xtr, ytr, xte, yte, k=k, max_chunk_elements=1000)  # several blocks
        ref = _ref_knn_predict(_np(xtr), _np(ytr), _np(xte), k)
        assert got == {"accuracy": pytest.approx(float((ref == _np(yte)).mean()), abs=1e-12), "k": k}


def test_knn_tie_goes_to_the_nearest_class_and_k_is_capped():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # k = 2 from (1, 0.1): neighbours 0 (class 0) then 1 (class 1): a tie, the nearest is class 0
    got = lenses.knn_accuracy(train, labels, torch.tensor([[1.0, 0.1]]), torch.tensor([0]), k=2)
    assert got == {"accuracy": 1.0, "k": 2}
    # from (0.1, 1): neighbours 2 (class 1), 3 (class 0): class 1
    assert lenses.knn_accuracy(train, labels, torch.tensor([[0.1, 1.0]]), torch.tensor([1]), k=2)["accuracy"] == 1.0
    assert lenses.knn_accuracy(train, labels, torch.tensor([[0.1, 1.0]]), torch.tensor([1]), k=50)["k"] == 4


def test_knn_separable_features_give_accuracy_one():
    x, y = _blobs(200, 5, 5, sep=20.0, seed=6)
    assert lenses.knn_accuracy(x[:150], y[:150], x[150:], y[150:])["accuracy"] == 1.0
    assert lenses.KNN_K == 20


# --------------------------------------------------------------------------------------------------
# TransRate


@pytest.mark.parametrize("n,d", [(200, 6), (30, 50)])  # D < N and D > N (the n x n route)
def test_transrate_matches_reference(n, d):
    x, y = _blobs(n, d, 3, sep=1.0, seed=7)
    for eps in (1e-4, 1e-2):
        assert lenses.transrate(x, y, eps=eps) == pytest.approx(_ref_transrate(_np(x), _np(y), eps), rel=1e-9, abs=1e-9)


def test_transrate_near_zero_for_features_independent_of_labels():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (20000,), generator=g)
    assert abs(lenses.transrate(x, y)) < 0.01
    # four classes at the corners e_c (with two, the class means are +-m about the centre and the classes'
    # uncentred second moments equal the total one: TransRate ~ 0 by construction, see its docstring)
    informative, labels = _blobs(20000, 4, 4, sep=3.0, seed=8)
    assert lenses.transrate(informative, labels) > 0.3


def test_transrate_is_scale_invariant():
    x, y = _blobs(100, 5, 2, sep=2.0, seed=9)
    assert lenses.transrate(x * 1e3 + 5.0, y) == pytest.approx(lenses.transrate(x, y), rel=1e-9)


# --------------------------------------------------------------------------------------------------
# H-score


@pytest.mark.parametrize("n,d", [(200, 6), (40, 80)])
def test_h_scores_match_references(n, d):
    x, y = _blobs(n, d, 4, sep=1.0, seed=10)
    assert lenses.h_score(x, y) == pytest.approx(_ref_h_score(_np(x), _np(y)), rel=1e-7)
    assert lenses.regularized_h_score(x, y) == pytest.approx(_ref_regularized_h_score(_np(x), _np(y)), rel=1e-7)


def test_h_scores_of_hand_built_features():
    """tr(cov(f)^-1 cov(E[f|y])) worked out by hand on four examples of two classes."""
    y = torch.tensor([0, 0, 1, 1])
    # one feature, -3, -1 | 1, 3: cov(f) = 20/3, class means -2 | 2, so cov(E[f|y]) = 16/3
    one = torch.tensor([[-3.0], [-1.0], [1.0], [3.0]], dtype=torch.float64)
    # and a second one, 1, -1 | 1, -1, with class means 0: cov(f) = [[20, -4], [-4, 4]] / 3 has the inverse
    # 3 [[4, 4], [4, 20]] / 64 and cov(E[f|y]) = [[16, 0], [0, 0]] / 3, so the trace is 16 * 4 / 64 = 1: the
    # second feature says nothing of y alone, but it explains part of the first one's spread within the classes
    two = torch.tensor([[-3.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    for h_score in (scores.h_score, lenses.h_score):
        assert h_score(one, y) == pytest.approx(0.8, rel=1e-12)
        assert h_score(two, y) == pytest.approx(1.0, rel=1e-12)
    # Regularised: Ledoit-Wolf's covariance is N-normalised (20/4 = 5) and one feature is never shrunk (it equals
    # its own mean eigenvalue), while cov(E[f|y]) stays (N - 1)-normalised: 16/3 / 5
    assert scores.h_score(one, y, shrinkage=True) == pytest.approx(16 / 15, rel=1e-12)
    assert lenses.regularized_h_score(one, y) == pytest.approx(16 / 15, rel=1e-12)


def test_h_score_near_zero_for_features_independent_of_labels():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20000,), generator=g)
    assert abs(lenses.h_score(x, y)) < 0.01
    assert abs(lenses.regularized_h_score(x, y)) < 0.01
    informative, labels = _blobs(20000, 4, 3, sep=2.0, seed=12)
    assert lenses.h_score(informative, labels) > 0.5


# --------------------------------------------------------------------------------------------------
# CKA


@pytest.mark.parametrize("n,d1,d2", [(100, 5, 8), (20, 300, 200)])  # feature route and Gram route
def test_cka_matches_reference(n, d1, d2):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(n, d1, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d1, d2, generator=g, dtype=torch.float64) + torch.randn(n, d2, generator=g, dtype=torch.float64)
    assert lenses.linear_cka(x, y) == pytest.approx(_ref_cka(_np(x), _np(y)), rel=1e-9)


def test_cka_identities():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(200, 10, generator=g, dtype=torch.float64) + 3.0
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    y = torch.tanh(x @ torch.randn(10, 6, generator=g, dtype=torch.float64))
    assert lenses.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert lenses.linear_cka(x @ q, y) == pytest.approx(lenses.linear_cka(x, y), abs=1e-12)
    assert lenses.linear_cka(x * 17.5, y) == pytest.approx(lenses.linear_cka(x, y), abs=1e-12)
    assert lenses.linear_cka(x, y) == pytest.approx(lenses.linear_cka(y, x), abs=1e-12)
    independent = torch.randn(2000, 10, generator=g, dtype=torch.float64)
    assert lenses.linear_cka(independent, torch.randn(2000, 10, generator=g, dtype=torch.float64)) < 0.05
    assert np.isnan(lenses.linear_cka(torch.ones(5, 3), torch.randn(5, 2)))


# --------------------------------------------------------------------------------------------------
# LEEP and NCE


def test_leep_matches_reference():
    g = torch.Generator().manual_seed(15)
    y = torch.randint(0, 3, (120,), generator=g)
    logits = torch.randn(120, 7, generator=g, dtype=torch.float64)
    logits[torch.arange(120), y] += 2.0
    theta = torch.softmax(logits, 1)
    assert lenses.leep(theta, y) == pytest.approx(_ref_leep(_np(theta), _np(y)), rel=1e-12)


def test_leep_perfect_head_is_zero_and_random_head_lower():
    g = torch.Generator().manual_seed(16)
    y = torch.randint(0, 4, (400,), generator=g)
    mapping = torch.tensor([5, 2, 7, 0])  # target class -> source class, one-to-one
    one_hot = torch.nn.functional.one_hot(mapping[y], 9).double()
    assert lenses.leep(one_hot, y) == pytest.approx(0.0, abs=1e-12)
    near = torch.softmax(20.0 * one_hot, 1)
    random = torch.softmax(torch.randn(400, 9, generator=g, dtype=torch.float64), 1)
    assert -1e-3 < lenses.leep(near, y) <= 0.0
    assert lenses.leep(random, y) < lenses.leep(near, y) - 0.5


def test_nce_matches_reference_and_known_answers():
    g = torch.Generator().manual_seed(17)
    z = torch.randint(0, 6, (300,), generator=g)
    y = (z + torch.randint(0, 2, (300,), generator=g)) % 4  # noisy function of z
    assert lenses.nce(z, y) == pytest.approx(_ref_nce(_np(z), _np(y)), rel=1e-12)
    assert lenses.nce(z, z % 3) == 0.0  # target labels a function of source labels
    assert lenses.nce(torch.nn.functional.one_hot(z, 6).double() * 0.9, y) == lenses.nce(z, y)  # arg-max path
    assert lenses.nce(z, y) < 0.0


# --------------------------------------------------------------------------------------------------
# Bad input and the public names


def test_bad_input_raises_clear_errors():
    x, y = _blobs(20, 3, 2, sep=1.0, seed=18)
    with pytest.raises(ValueError, match="one label per example"):
        lenses.h_score(x, y[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        lenses.transrate(x, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        lenses.linear_probe_accuracy(x, torch.zeros(20, dtype=torch.long), x, y)
    with pytest.raises(ValueError, match="2-D"):
        lenses.regularized_h_score(x.reshape(20, 3, 1, 1), y)
    with pytest.raises(ValueError, match="2-D"):
        lenses.knn_accuracy(x, y, x[0], y[:1])
    with pytest.raises(TypeError, match="integer"):
        lenses.h_score(x, y.double())
    with pytest.raises(ValueError, match="same examples"):
        lenses.linear_cka(x, x[:10])
    with pytest.raises(ValueError, match="same layer"):
        lenses.knn_accuracy(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="softmax"):
        lenses.leep(torch.randn(20, 4), y)
    with pytest.raises(ValueError, match="NaN"):
        lenses.transrate(torch.full((20, 3), float("nan")), y)
    with pytest.raises(ValueError, match="too small"):
        lenses.linear_probe_accuracy(x[:2], torch.tensor([0, 1]), x, y)


def test_public_names_exist():
    for name in lenses.__all__:
        assert hasattr(lenses, name)


# --------------------------------------------------------------------------------------------------
# Device: same numbers on the accelerator (skipped without one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, y = _blobs(300, 12, 3, sep=1.0, seed=19)
    xc, yc = x.cuda(), y.cuda()
    probs = torch.softmax(x[:, :5], 1)
    pairs = [
        (
            lambda a, b: lenses.linear_probe_accuracy(a[:200], b[:200], a[200:], b[200:], l2_grid=(1e-3, 1e-1))[
                "accuracy"
            ]
        ),
        (lambda a, b: lenses.knn_accuracy(a[:200], b[:200], a[200:], b[200:])["accuracy"]),
        lenses.transrate,
        lenses.h_score,
        lenses.regularized_h_score,
        (lambda a, b: lenses.linear_cka(a, a[:, :4] ** 2)),
    ]
    for fn in pairs:
        assert fn(xc, yc) == pytest.approx(fn(x, y), rel=1e-6, abs=1e-9)
    assert lenses.leep(probs.cuda(), yc) == pytest.approx(lenses.leep(probs, y), rel=1e-9)
    assert lenses.nce(probs.cuda(), yc) == pytest.approx(lenses.nce(probs, y), rel=1e-12)
