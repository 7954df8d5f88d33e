"""The quality measures of a protocol (probe.quality), on hand-built numbers with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probe.results.quality import (
    SETTLED_DRIFT,
    impairment,
    kendall_tau_b,
    repeatability,
    separation,
    settled_drift,
    spearman,
)


def test_a_drifting_lambda_is_flagged_and_a_flat_one_is_not():
    drifting = [0.9 - 0.02 * epoch for epoch in range(12)]  # moves 0.18 over the last 10 epochs
    flat = [0.9, 0.6, 0.3] + [0.25] * 9  # moves fast early, then rests before the averaged window ends
    assert settled_drift(drifting, 10) == pytest.approx(0.18)
    assert settled_drift(drifting, 10) > SETTLED_DRIFT
    assert settled_drift(flat, 9) == pytest.approx(0.0, abs=1e-12)
    assert settled_drift(flat, 12) > SETTLED_DRIFT  # the early fall is inside a 12-epoch window


def test_noise_around_a_level_is_not_drift_but_a_trend_through_noise_is():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.02, size=10)
    level = (0.5 + noise).tolist()
    trend = (0.5 + 0.01 * np.arange(10) + noise).tolist()
    fitted_level = abs(np.polyfit(np.arange(10), level, 1)[0]) * 9
    assert settled_drift(level, 10) == pytest.approx(fitted_level)
    assert settled_drift(level, 10) < SETTLED_DRIFT
    assert settled_drift(trend, 10) > SETTLED_DRIFT


def test_drift_uses_only_the_last_epochs_and_degenerate_inputs():
    assert settled_drift([0.1, 0.9, 0.5, 0.5, 0.5], 3) == pytest.approx(0.0)
    assert settled_drift([0.7], 10) == 0.0
    assert settled_drift([0.7, math.nan], 10) == math.inf


def test_separation_in_units_of_the_pooled_spread():
    control = {"conv1": [0.99, 0.97], "fc": [0.96, 0.98]}
    transfer = {"conv1": [0.98, 0.98], "fc": [0.20, 0.30]}
    found = separation(control, transfer)
    assert found["fc"]["difference"] == pytest.approx(0.97 - 0.25)
    pooled = math.sqrt((np.var([0.96, 0.98], ddof=1) + np.var([0.20, 0.30], ddof=1)) / 2)
    assert found["fc"]["in_spread"] == pytest.approx((0.97 - 0.25) / pooled)
    assert found["conv1"]["difference"] == pytest.approx(0.0)


def test_separation_with_one_run_or_no_spread():
    assert math.isnan(separation({"fc": [0.9]}, {"fc": [0.5]})["fc"]["in_spread"])
    assert separation({"fc": [0.9, 0.9]}, {"fc": [0.5, 0.5]})["fc"]["in_spread"] == math.inf
    assert separation({"fc": [0.5, 0.5]}, {"fc": [0.5, 0.5]})["fc"]["in_spread"] == 0.0
    assert "conv1" not in separation({}, {"conv1": [0.5, 0.6]})


def test_spearman_of_known_profiles():
    assert spearman([0.99, 0.9, 0.7, 0.3], [0.95, 0.9, 0.8, 0.1]) == pytest.approx(1.0)
    assert spearman([0.99, 0.9, 0.7, 0.3], [0.1, 0.8, 0.9, 0.95]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert kendall_tau_b([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2, 3], [1, 2])


def test_repeatability_compares_disjoint_seeds():
    alike = {"conv1": [0.99, 0.98, 0.99, 0.98], "conv4": [0.8, 0.7, 0.82, 0.72], "fc": [0.3, 0.2, 0.28, 0.22]}
    assert repeatability(alike) == pytest.approx(1.0)
    # even seeds rank the layers one way, odd seeds the opposite way
    opposed = {"conv1": [0.9, 0.1], "conv4": [0.5, 0.5], "fc": [0.1, 0.9]}
    assert repeatability(opposed) == pytest.approx(-1.0)
    assert math.isnan(repeatability({"conv1": [0.9], "fc": [0.1]}))


def test_impairment_is_alone_minus_the_mean_over_layers():
    assert impairment([0.95, 0.97, 0.96], 0.98) == pytest.approx(0.02)
    assert impairment([0.99, math.nan], 0.98) == pytest.approx(-0.01)
    assert math.isnan(impairment([], 0.9))
    assert math.isnan(impairment([0.9], math.nan))


def test_the_agreement_experiment_bounds_rho_by_what_the_reference_allows(repo_script):
    experiment = repo_script("experiments/agreement.py")
    layers = ["conv1", "conv2", "conv3", "fc"]
    record = dict(
        layers=layers,
        lambda_source={"conv1": [1.0, 1.0], "conv2": [0.99, 0.99], "conv3": [0.9, 0.92], "fc": [0.5, 0.6]},
        frozen={"conv1": [0.95, 0.95], "conv2": [0.976, 0.976], "conv3": [0.973, 0.973], "fc": [0.6, 0.6]},
        top1={layer: [0.9, 0.9] for layer in layers},
        alone=[0.92, 0.92],
    )
    found = experiment.analyse(record)
    # the reference puts conv1 below conv2 and conv3: a λS falling with depth ranks 4 3 2 1 against 2 4 3 1
    assert found["ceiling_falling"] == pytest.approx(spearman([4, 3, 2, 1], [2, 4, 3, 1]))
    # with conv1 and conv2 tied at the top, the best order of the rest (conv3 > fc) is the one λS has
    assert found["ceiling_first_two_kept"] == pytest.approx(spearman([3, 3, 2, 1], [2, 4, 3, 1]))
    assert found["rho"] == pytest.approx(spearman([1.0, 0.99, 0.91, 0.55], [0.95, 0.976, 0.973, 0.6]))
    assert found["reference_repeatability"] == pytest.approx(1.0)
    assert found["impairment"] == pytest.approx(0.02)
    # conv2 and conv3 differ by less than one test image (0.003): tied, so λS's order of the two is not judged
    assert found["rho_ties"] == pytest.approx(spearman([1.0, 0.99, 0.91, 0.55], [0.95, 0.9745, 0.9745, 0.6]))
    assert experiment.tied_below([0.5, 0.9, 0.903, 0.906, 0.7], 0.005) == [0.5, 0.903, 0.903, 0.903, 0.7]
