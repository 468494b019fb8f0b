"""ditkit.metrics.intervals (the statistics of `ditkit study`) against scipy and known values, and
ditkit.metrics.digit_views (a study's final scoring) on real digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ditkit.metrics.intervals import (
    bootstrap_fd_interval,
    compare,
    correlation_interval,
    fisher_interval,
    mean_interval,
)
from ditkit.metrics.statistics import frechet_distance


def test_mean_interval_is_the_t_interval():
    got = mean_interval([1.0, 2.0, 3.0, float("nan")])
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert got == pytest.approx({"mean": 2.0, "sd": 1.0, "n": 3, "lo": 2.0 - half, "hi": 2.0 + half})
    assert mean_interval([5.0]) == {"mean": 5.0, "sd": 0.0, "n": 1, "lo": 5.0, "hi": 5.0}
    assert mean_interval([])["n"] == 0


def test_compare_pairs_by_shared_seeds():
    a = {"0": 10.0, "1": 12.0, "2": 11.0, "3": 15.0}
    b = {"0": 11.0, "1": 12.8, "2": 12.1, "3": 15.9}  # each seed 0.8-1.1 worse: paired, far beyond noise
    got = compare(a, b)
    assert got["test"] == "paired t" and got["n"] == 4
    assert got["p"] == pytest.approx(stats.ttest_rel(list(b.values()), list(a.values())).pvalue)
    assert got["diff"] == pytest.approx(0.95) and got["lo"] > 0 and got["excludes_zero"]
    # Unpaired, the seed-to-seed spread (10-15) swamps the same gap: Welch cannot tell them apart.
    welch = compare(a, {str(int(k) + 10): v for k, v in b.items()})
    assert welch["test"] == "Welch t" and not welch["excludes_zero"] and welch["lo"] < 0 < welch["hi"]
    expected = stats.ttest_ind(list(b.values()), list(a.values()), equal_var=False)
    assert welch["p"] == pytest.approx(expected.pvalue)
    assert welch["diff"] == pytest.approx(got["diff"])


def test_compare_with_too_few_seeds_claims_nothing():
    got = compare({"0": 1.0}, {"0": 3.0})
    assert math.isnan(got["lo"]) and math.isnan(got["p"]) and not got["excludes_zero"]
    assert compare({"0": 1.0, "1": 2.0}, {"0": 1.5, "1": 2.5})["excludes_zero"]  # a constant shift is certain
    assert not compare({"0": 1.0, "1": 2.0}, {"0": 1.0, "1": 2.0})["excludes_zero"]


def test_bootstrap_fd_interval_covers_a_fresh_draw():
    rng = np.random.default_rng(0)
    dim, n = 8, 1000
    ref = rng.standard_normal((5000, dim))
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    draws = [rng.standard_normal((n, dim)) * 1.2 + 0.1 for _ in range(2)]
    lo, hi = bootstrap_fd_interval(draws[0], mu, sigma, resamples=100, seed=1)
    fds = [frechet_distance(d.mean(0), np.cov(d, rowvar=False), mu, sigma) for d in draws]
    assert lo < fds[0] < hi and (lo + hi) / 2 == pytest.approx(fds[0])
    assert lo < fds[1] < hi  # a second, disjoint draw lands inside: the interval is FD's sampling noise
    assert bootstrap_fd_interval(draws[0], mu, sigma, resamples=100, seed=1) == (lo, hi)  # seeded


def test_correlation_interval_over_configs_and_seeds():
    x = [0.0, 1.0, 2.0, 3.0, 4.0]
    tight = [[10 - 2 * v + e for e in (-0.1, 0.0, 0.1)] for v in x]
    got = correlation_interval(x, tight, resamples=200)
    assert got["r"] == pytest.approx(-1.0, abs=1e-3) and got["hi"] < -0.95 and got["n_configs"] == 5
    noisy = [[10 - 0.2 * v + e for e in (-3.0, 0.0, 3.0)] for v in x]
    loose = correlation_interval(x, noisy, resamples=200)
    assert loose["lo"] < -0.9 and loose["hi"] > 0.0  # the seeds' spread makes r uncertain
    assert math.isnan(correlation_interval(x[:2], tight[:2])["r"])


def test_fisher_interval():
    lo, hi = fisher_interval(-0.86, 6)
    assert lo == pytest.approx(-0.984, abs=2e-3) and hi == pytest.approx(-0.160, abs=2e-3)
    assert all(math.isnan(v) for v in fisher_interval(0.5, 3))


def test_score_digit_sets_on_real_digits():
    from ditkit.metrics.digit_classifier import _load_mnist
    from ditkit.metrics.digit_views import pixel_features, score_digit_sets

    train_x, train_y, _, _ = _load_mnist()
    pick = np.random.default_rng(0).permutation(len(train_x))
    first, second, labels = train_x[pick[:400]], train_x[pick[400:800]], train_y[pick[:400]]
    got = score_digit_sets(first, second, labels, resamples=20)
    assert got["accuracy"] > 0.95 and got["fd"] < 3 and abs(got["fd"] - got["fd_second"]) < 2
    assert got["fd_lo"] < got["fd"] < got["fd_hi"] and got["precision"] > 0.7 and got["recall"] > 0.5
    assert 0 <= got["fd_pixels"] < 1
    zeros = np.zeros_like(first)  # blank images: far from digits in both spaces, no precision
    blank = score_digit_sets(zeros, None, labels, resamples=0)
    assert blank["fd"] > 10 * got["fd"] and blank["fd_pixels"] > 10 * got["fd_pixels"]
    assert "fd_second" not in blank and "fd_lo" not in blank
    assert pixel_features(first[:3]).shape == (3, 64)
    with pytest.raises(ValueError, match="second_view"):
        score_digit_sets(first, None, labels, second_view="dino")
    with pytest.raises(ValueError, match="two sets"):
        score_digit_sets(first, second[:10], labels)
