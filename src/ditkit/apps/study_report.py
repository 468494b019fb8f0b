"""A study's statistics (results.json): per-seed values, means with 95% intervals, comparisons paired by seed,
FD's own sampling noise, correlations with bootstrap intervals, equal-compute comparisons, the guidance grid
and the sampler sweep. The tables are ditkit.apps.study_tables, the plots ditkit.apps.study_plots.

A ranking is only claimed where a comparison's interval excludes zero (`ditkit.metrics.intervals.compare`:
paired t over the shared seeds, else Welch); everything else is reported as a tie.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ditkit.apps.study_spec import StudySpec
from ditkit.metrics.intervals import CONFIDENCE, compare, correlation_interval, mean_interval

FINAL_METRICS = ("accuracy", "fd", "fd_second", "precision", "recall", "fd_pixels", "fd_inception")
SETTING_METRICS = ("accuracy", "fd", "precision", "recall", "fd_pixels", "fd_inception")


def summarize(spec: StudySpec, runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """results.json of a study from its runs {config: {seed: run result or {"error"}}} (see the module doc)."""
    configs = {name: _config_summary(by_seed) for name, by_seed in runs.items()}
    scored = {n: c for n, c in configs.items() if "fd" in c.get("final", {})}
    fd_by_seed = {n: _final_by_seed(c, "fd") for n, c in scored.items()}
    ranking = sorted(scored, key=lambda n: scored[n]["final"]["fd"]["mean"])
    results: dict[str, Any] = {
        "study": spec.name,
        "description": spec.description,
        "statistics": {
            "confidence": CONFIDENCE,
            "seed_interval": "t interval of the mean over training seeds",
            "comparison": "difference worse - better in final FD: paired t over shared seeds, else Welch t",
            "ranked_only_if": "the comparison's interval excludes zero",
            "run_fd_interval": f"normal bootstrap over the samples ({spec.bootstrap} resamples)",
            "final_samples": spec.final_samples,
            "num_eval_samples": spec.num_eval_samples,
            "evaluation_sampling": spec.sample,
        },
        "configs": configs,
        "ranking_by_fd": ranking,
        "adjacent_pairs": [_pair(a, b, fd_by_seed) for a, b in itertools.pairwise(ranking)],
        "pairs": [_pair(a, b, fd_by_seed) for a, b in itertools.combinations(ranking, 2)],
        "pairs_over_steps": _pairs_over_steps(scored),
        "fd_sampling_noise": _sampling_noise(scored),
        "wall_s": sum(c.get("wall_s", 0.0) for c in configs.values()),
    }
    for view in ("fd_pixels", "fd_inception"):
        if all(view in c["final"] for c in scored.values()) and scored:
            results["second_view"] = _second_view(view, scored, ranking, results["adjacent_pairs"])
    results.update(_correlations(scored, spec.bootstrap))
    results["equal_compute"] = _equal_compute(scored)
    guidance = {n: _vs_best(c["settings"], "guidance") for n, c in scored.items() if _has(c, "guidance")}
    if guidance:
        results["guidance"] = guidance
    sweep = {n: _vs_final(c) for n, c in scored.items() if _has(c, "sweep")}
    if sweep:
        results["sweep_vs_final"] = sweep
    return results


def _config_summary(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    good = {s: r for s, r in by_seed.items() if r.get("evals") or r.get("scores")}
    entry: dict[str, Any] = {"errors": {str(s): r["error"] for s, r in by_seed.items() if "error" in r}}
    if not good:
        return entry
    first = next(iter(good.values()))
    entry.update({k: first[k] for k in ("gflops", "params", "train_gflops_per_step") if k in first})
    entry["seeds"] = sorted(good)
    entry["per_seed"] = {str(s): {k: r.get(k) for k in ("evals", "scores", "wall_s")} for s, r in good.items()}
    entry["wall_s"] = sum(r.get("wall_s") or 0.0 for r in good.values())
    finals = _finals(good)
    entry["final"] = {m: mean_interval([f[m] for f in finals.values() if m in f]) for m in FINAL_METRICS}
    entry["final"] = {m: v for m, v in entry["final"].items() if v["n"]}
    steps = sorted({int(e[0]) for r in good.values() for e in r.get("evals") or []})  # seeds aligned by step
    entry["final_step"] = steps[-1] if steps else None
    entry["curve"] = {str(step): _at_step(good, step, 2) for step in steps}
    entry["curve_accuracy"] = {str(step): _at_step(good, step, 1) for step in steps}
    labels = dict.fromkeys(k for r in good.values() for k in (r.get("scores") or {}) if k != "final")
    entry["settings"] = {label: _setting(good, label) for label in labels}
    return entry


def _at_step(good: dict[int, dict[str, Any]], step: int, column: int) -> dict[str, Any]:
    """Mean and interval over the seeds evaluated at `step` (the last record of a step wins)."""
    per_seed = {}
    for seed, run in good.items():
        rows = {int(e[0]): e for e in run.get("evals") or []}
        if step in rows:
            per_seed[str(seed)] = rows[step][column]
    return {**mean_interval(list(per_seed.values())), "per_seed": per_seed}


def _setting(good: dict[int, dict[str, Any]], label: str) -> dict[str, Any]:
    rows = {str(s): r["scores"][label] for s, r in good.items() if label in (r.get("scores") or {})}
    some = next(iter(rows.values()))
    entry: dict[str, Any] = {k: some.get(k) for k in ("sampler", "num_steps", "cfg_scale", "nfe")}
    for metric in SETTING_METRICS:
        values = {s: row[metric] for s, row in rows.items() if metric in row}
        if values:
            entry[metric] = {**mean_interval(list(values.values())), "per_seed": values}
    entry["kind"] = some.get("kind") or ("guidance" if "@" in label else "sweep")  # caches before "kind"
    return entry


def _has(config: dict[str, Any], kind: str) -> bool:
    return any(v["kind"] == kind for v in config.get("settings", {}).values())


def _finals(runs: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """{seed: the final scores} of runs ({} for a run whose scoring failed)."""
    return {seed: (run.get("scores") or {}).get("final", {}) for seed, run in runs.items()}


def _final_by_seed(config: dict[str, Any], metric: str) -> dict[str, float]:
    finals = _finals(config["per_seed"])
    return {s: f[metric] for s, f in finals.items() if metric in f}


def _pair(better: str, worse: str, by_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"better": better, "worse": worse, **compare(by_seed[better], by_seed[worse])}


def _pairs_over_steps(scored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pair of configs at every evaluated step: {"A vs B": {step: compare(A, B)}} (B - A in FD)."""
    out: dict[str, dict[str, Any]] = {}
    for a, b in itertools.combinations(scored, 2):
        steps = [s for s in scored[a]["curve"] if s in scored[b]["curve"]]
        out[f"{a} vs {b}"] = {
            s: compare(scored[a]["curve"][s]["per_seed"], scored[b]["curve"][s]["per_seed"]) for s in steps
        }
    return out


def _sampling_noise(scored: dict[str, Any]) -> dict[str, Any]:
    """FD's own sampling noise beside the seed spread, per config: the std of one run's FD from two disjoint
    sample sets (sqrt(mean((fd - fd_second)^2) / 2)) and the std of the final FD over seeds."""
    out = {}
    for name, c in scored.items():
        finals = _finals(c["per_seed"]).values()
        pairs = [(f["fd"], f["fd_second"]) for f in finals if "fd" in f and "fd_second" in f]
        pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        # Two sets of one model are iid draws: E[(fd - fd2)^2] = 2 var(fd), pooled over the config's runs.
        within = math.sqrt(sum((a - b) ** 2 for a, b in pairs) / (2 * len(pairs))) if pairs else math.nan
        fd = c["final"]["fd"]
        out[name] = {"sampling_sd": within, "seed_sd": fd["sd"] if fd["n"] > 1 else math.nan, "runs": len(pairs)}
    return out


def _second_view(view: str, scored: dict[str, Any], ranking: list[str], pairs: list[dict]) -> dict[str, Any]:
    """The FD ranking checked in the second feature space: its own ranking, the same adjacent comparisons, and
    the pairs whose verdict differs (ranked in one space, tied or reversed in the other)."""
    by_seed = {n: _final_by_seed(c, view) for n, c in scored.items()}
    order = sorted(scored, key=lambda n: scored[n]["final"][view]["mean"])
    checks = []
    for p in pairs:
        other = _pair(p["better"], p["worse"], by_seed)
        verdict = _verdict(p), _verdict(other)
        checks.append(
            {**other, "fd_verdict": verdict[0], "view_verdict": verdict[1], "agree": verdict[0] == verdict[1]}
        )
    return {"metric": view, "ranking": order, "same_order": order == ranking, "adjacent_pairs": checks}


def _verdict(pair: dict[str, Any]) -> str:
    if not pair["excludes_zero"]:
        return "tie"
    return "better" if pair["diff"] > 0 else "reversed"


def _correlations(scored: dict[str, Any], resamples: int) -> dict[str, Any]:
    """r of final FD (and accuracy) with log10 Gflops and with log10 parameters over configs, with hierarchical
    bootstrap intervals (only when there are >= 3 configs and the x values differ)."""
    names = list(scored)
    if len(names) < 3:
        return {}
    out: dict[str, Any] = {}
    for x_name in ("gflops", "params"):
        xs = [scored[n].get(x_name) for n in names]
        if None in xs or np.ptp(np.log10(np.asarray(xs, dtype=np.float64))) == 0:
            continue
        logs = np.log10(np.asarray(xs, dtype=np.float64)).tolist()
        for metric in ("fd", "accuracy"):
            values = [list(_final_by_seed(scored[n], metric).values()) for n in names]
            out[f"corr_log_{x_name}_{metric}"] = correlation_interval(logs, values, resamples)
    return out


def _equal_compute(scored: dict[str, Any]) -> list[dict[str, Any]]:
    """For configs of different training cost: at each evaluation of the costlier one that the cheaper one's
    curve spans, the cheaper one's FD interpolated in log compute, compared paired by seed (larger - smaller:
    negative where the costlier model is better at equal compute)."""
    costs = {n: c["train_gflops_per_step"] for n, c in scored.items() if c.get("train_gflops_per_step")}
    out = []
    for small, large in itertools.combinations(sorted(costs, key=costs.get), 2):
        if costs[large] <= costs[small]:
            continue
        for step in scored[large]["curve"]:
            compute = int(step) * costs[large]
            small_fd = _interpolated(scored[small], costs[small], compute)
            if small_fd:
                result = compare(small_fd, scored[large]["curve"][step]["per_seed"])
                out.append({"smaller": small, "larger": large, "train_gflops": compute, **result})
    return out


def _interpolated(config: dict[str, Any], per_step: float, compute: float) -> dict[str, float]:
    """Per seed FD of `config` at training compute `compute`, linear in log compute between its evaluations
    ({} outside its evaluated range)."""
    steps = sorted(int(s) for s in config["curve"])
    xs = np.log10(np.asarray(steps, dtype=np.float64) * per_step)
    x = math.log10(compute)
    if not len(xs) or x < xs[0] or x > xs[-1]:
        return {}
    out = {}
    for seed in config["curve"][str(steps[0])]["per_seed"]:
        ys = [config["curve"][str(s)]["per_seed"].get(seed, math.nan) for s in steps]
        out[seed] = float(np.interp(x, xs, ys))
    return out


def _vs_final(config: dict[str, Any]) -> dict[str, Any]:
    """Every sweep setting compared with the config's final scoring (its own sampler), paired by seed (the same
    models on the same noise seeds): setting - final, negative where the sweep setting has the lower FD."""
    final = _final_by_seed(config, "fd")
    return {k: compare(final, v["fd"]["per_seed"]) for k, v in config["settings"].items() if v["kind"] == "sweep"}


def _vs_best(settings: dict[str, Any], kind: str) -> dict[str, Any]:
    """The setting of lowest mean FD among `kind`, and every other one compared with it paired by seed (the best
    is picked after looking at the data, so with many settings its lead is biased up: read ties as ties)."""
    rows = {k: v for k, v in settings.items() if v["kind"] == kind and "fd" in v}
    best = min(rows, key=lambda k: (not math.isfinite(rows[k]["fd"]["mean"]), rows[k]["fd"]["mean"]))
    return {
        "best": best,
        "vs_best": {
            k: compare(rows[best]["fd"]["per_seed"], v["fd"]["per_seed"]) for k, v in rows.items() if k != best
        },
    }
