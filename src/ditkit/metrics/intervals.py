"""Intervals and tests for comparing trained models: the statistics `ditkit study` reports.

Every interval is two-sided 95% (`CONFIDENCE`). Seeds are the unit of replication: a comparison of two configs
trained with the same seeds is paired by seed (the paired t interval of the per-seed differences, which removes
what a seed shares between configs: the data order and the evaluation noise), otherwise Welch's. A single run's
FD gets a bootstrap interval over its samples (the reference statistics held fixed), and a correlation over
configs a hierarchical bootstrap (configs, then seeds within each config).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from ditkit.metrics.statistics import frechet_distance

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 200  # a 95% percentile interval's ends move by ~5% of its width between two such draws


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return array[np.isfinite(array)]


def _ok(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def mean_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std, n and the t interval of the mean (lo = hi = mean for n = 1; NaN for none)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0, "lo": math.nan, "hi": math.nan}
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half}


def compare(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, Any]:
    """b - a by seed: {"test", "n", "diff", "lo", "hi", "p", "excludes_zero"}.

    Seeds that both hold (>= 2) make a paired t test on the differences; otherwise Welch's t test on the two
    sets (each needs >= 2 values). With too few values the interval and p are NaN and excludes_zero is False.
    """
    shared = [s for s in a if s in b and _ok(a[s]) and _ok(b[s])]
    if len(shared) >= 2:
        d = np.asarray([b[s] - a[s] for s in shared], dtype=np.float64)
        summary = mean_interval(d.tolist())
        sd, mean, n = summary["sd"], summary["mean"], len(shared)
        if sd > 1e-12 * max(1.0, abs(mean)):  # the paired t test (scipy's ttest_1samp of the differences)
            p = float(2 * scipy_stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
        else:  # every seed moved by the same amount: certain unless that amount is 0
            p = 1.0 if mean == 0 else 0.0
        result = {"test": "paired t", "n": n, "diff": mean, "lo": summary["lo"], "hi": summary["hi"]}
        result["p"] = p
    else:
        xa, xb = _finite(list(a.values())), _finite(list(b.values()))
        result = {"test": "Welch t", "n": min(len(xa), len(xb)), "diff": math.nan, "lo": math.nan, "hi": math.nan}
        result["p"] = math.nan
        if len(xa) and len(xb):
            result["diff"] = float(xb.mean() - xa.mean())
        if len(xa) >= 2 and len(xb) >= 2:
            va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
            se = math.sqrt(va + vb)
            if se > 0:
                dof = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
                half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, dof)) * se
                result.update(lo=result["diff"] - half, hi=result["diff"] + half)
                result["p"] = float(scipy_stats.ttest_ind(xb, xa, equal_var=False).pvalue)
    result["excludes_zero"] = bool(result["lo"] > 0 or result["hi"] < 0)
    return result


def bootstrap_fd_interval(
    features: np.ndarray,
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """A 95% interval of the Frechet distance of `features` (N, D) to fixed reference statistics from a bootstrap
    over the N samples: FD +- z x the resampled FDs' std (the normal bootstrap interval).

    It measures how much the FD of this many samples moves with the samples drawn (an interval for the
    expected FD of N samples, which FD's finite-sample bias keeps above the population value); the reference is
    shared by every run of a study, so it is not resampled. Not the percentile interval: the bootstrap repeats
    FD's upward finite-sample bias on top of the estimate (on 1,000 real digits against the 1,000 reference
    digits: FD 0.30, resampled FDs 0.39-0.58), so percentiles miss the estimate; their spread still estimates
    FD's standard error (0.05 there; two disjoint sets of 1,000 gave 0.30 and 0.37).
    """
    x = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = x[rng.integers(0, len(x), len(x))]
        values.append(frechet_distance(pick.mean(0), np.cov(pick, rowvar=False), ref_mu, ref_sigma))
    fd = frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref_mu, ref_sigma)
    half = float(scipy_stats.norm.ppf(0.5 + CONFIDENCE / 2)) * float(np.std(values, ddof=1))
    return fd - half, fd + half


def correlation_interval(
    x: Sequence[float],
    per_seed: Sequence[Sequence[float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """Pearson r between x (one value per config, e.g. log10 Gflops) and each config's mean over its seeds,
    with two 95% intervals: a two-stage bootstrap (resample the configs, then each chosen config's seeds;
    conservative, since a seed mean already carries its seed noise) and Fisher's z over the config means.

    Bootstrap resamples with fewer than 3 distinct configs (whose r is +-1 by construction) or no spread are
    skipped, and the bootstrap interval is only given for >= 5 configs (NaN otherwise, and with resamples < 2);
    {"r", "lo", "hi", "fisher_lo", "fisher_hi", "n_configs"}.
    """
    xs = np.asarray(x, dtype=np.float64)
    groups = [_finite(v) for v in per_seed]
    keep = [i for i, g in enumerate(groups) if len(g)]
    xs, groups = xs[keep], [groups[i] for i in keep]
    result = {"r": math.nan, "lo": math.nan, "hi": math.nan, "fisher_lo": math.nan, "fisher_hi": math.nan}
    result["n_configs"] = len(groups)
    means = np.asarray([g.mean() for g in groups])
    if len(groups) < 3 or np.ptp(xs) == 0 or np.ptp(means) == 0:
        return result
    result["r"] = float(np.corrcoef(xs, means)[0, 1])
    result["fisher_lo"], result["fisher_hi"] = fisher_interval(result["r"], len(groups))
    if len(groups) < 5 or resamples < 2:
        return result
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(resamples):
        chosen = rng.integers(0, len(groups), len(groups))
        if len(np.unique(chosen)) < 3:
            continue
        bx = xs[chosen]
        by = np.asarray([groups[i][rng.integers(0, len(groups[i]), len(groups[i]))].mean() for i in chosen])
        if np.ptp(bx) > 0 and np.ptp(by) > 0:
            rs.append(np.corrcoef(bx, by)[0, 1])
    if len(rs) >= resamples // 2:
        lo, hi = np.percentile(rs, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        result.update(lo=float(lo), hi=float(hi))
    return result


def fisher_interval(r: float, n: int) -> tuple[float, float]:
    """The Fisher-z 95% interval of a Pearson r over n independent points (NaN for n < 4)."""
    if n < 4 or not math.isfinite(r) or abs(r) >= 1:
        return (math.nan, math.nan)
    z, half = math.atanh(r), float(scipy_stats.norm.ppf(0.5 + CONFIDENCE / 2)) / math.sqrt(n - 3)
    return (math.tanh(z - half), math.tanh(z + half))
