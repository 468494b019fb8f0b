"""A `ditkit study`'s report: per-config summaries (mean and seed spread, ranking, correlations with Gflops),
the results.md tables and the plots.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ditkit.apps.study_spec import StudySpec, slug
from ditkit.sampling.grid import plot_curves, plot_scatter


def summarize(spec: StudySpec, runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per config: final accuracy and FD (mean, seed std), curves over steps; the ranking by FD with the pairs
    whose gap exceeds the seed spread; the correlation of FD (and accuracy) with forward Gflops."""
    configs: dict[str, Any] = {}
    for name, by_seed in runs.items():
        good = [r for r in by_seed.values() if r.get("evals")]
        entry: dict[str, Any] = {"errors": {str(s): r["error"] for s, r in by_seed.items() if "error" in r}}
        if good:
            finals = [r["evals"][-1] for r in good]
            entry.update(
                gflops=good[0]["gflops"],
                final_step=finals[0][0],
                accuracy=_mean_sd([f[1] for f in finals]),
                fd=_mean_sd([f[2] for f in finals]),
                curve=_curve(good),
                seeds=len(good),
            )
            if "train_gflops_per_step" in good[0]:
                entry["train_gflops_per_step"] = good[0]["train_gflops_per_step"]
            if spec.guidance_scales:
                keys = sorted({k for r in good for k in r.get("guidance", {})}, key=_guidance_order)
                entry["guidance"] = {
                    k: {
                        "accuracy": _mean_sd([r["guidance"][k][0] for r in good if k in r.get("guidance", {})]),
                        "fd": _mean_sd([r["guidance"][k][1] for r in good if k in r.get("guidance", {})]),
                    }
                    for k in keys
                }
        configs[name] = entry
    scored = {n: c for n, c in configs.items() if "fd" in c}
    ranking = sorted(scored, key=lambda n: scored[n]["fd"][0])
    pairs = [
        {
            "better": a,
            "worse": b,
            "gap": scored[b]["fd"][0] - scored[a]["fd"][0],
            "exceeds_seed_spread": scored[b]["fd"][0] - scored[a]["fd"][0] > scored[a]["fd"][1] + scored[b]["fd"][1],
        }
        for a, b in itertools.pairwise(ranking)
    ]
    results: dict[str, Any] = {"study": spec.name, "description": spec.description, "configs": configs}
    results.update(ranking_by_fd=ranking, adjacent_pairs=pairs)
    if len(scored) >= 3:
        gflops = np.asarray([scored[n]["gflops"] for n in ranking])
        if np.ptp(gflops) > 0:
            fd = np.asarray([scored[n]["fd"][0] for n in ranking])
            acc = np.asarray([scored[n]["accuracy"][0] for n in ranking])
            results["corr_log_gflops_fd"] = float(np.corrcoef(np.log10(gflops), fd)[0, 1])
            results["corr_gflops_fd"] = float(np.corrcoef(gflops, fd)[0, 1])
            results["corr_log_gflops_accuracy"] = float(np.corrcoef(np.log10(gflops), acc)[0, 1])
    return results


def _curve(good: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """FD (mean, sd over seeds) at each evaluated step."""
    return {
        str(step): _mean_sd([r["evals"][i][2] for r in good if len(r["evals"]) > i])
        for i, (step, _, _) in enumerate(good[0]["evals"])
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return (float("nan"), float("nan"))
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def _guidance_order(key: str) -> tuple[str, float]:
    channels, _, scale = key.partition("@")
    return channels, float(scale)


def results_markdown(results: dict[str, Any]) -> str:
    """Tables of a study's results (mean +- seed std): final quality per config, the ranking, guidance."""
    lines = [f"# Study: {results['study']}", "", results.get("description", ""), ""]
    lines += ["| config | Gflops | steps | seeds | accuracy | FD |", "|---|---|---|---|---|---|"]
    for name, c in results["configs"].items():
        if "fd" not in c:
            lines.append(f"| {name} | - | - | 0 | failed: {'; '.join(c['errors'].values())} | - |")
            continue
        lines.append(
            f"| {name} | {c['gflops']:.3f} | {c['final_step']} | {c['seeds']} | "
            f"{_pm(c['accuracy'], 3)} | {_pm(c['fd'], 2)} |"
        )
    if results.get("adjacent_pairs"):
        lines += ["", "Ranking by FD (lower is better); a gap counts where it exceeds the sum of the seed stds:", ""]
        for p in results["adjacent_pairs"]:
            verdict = "exceeds the seed spread" if p["exceeds_seed_spread"] else "within the seed spread"
            lines.append(f"- {p['better']} < {p['worse']}: gap {p['gap']:.2f} ({verdict})")
    corr = {k: v for k, v in results.items() if k.startswith("corr")}
    if corr:
        lines += ["", "Correlations over configs: " + ", ".join(f"{k} = {v:.3f}" for k, v in corr.items())]
    for name, c in results["configs"].items():
        if c.get("guidance"):
            lines += ["", f"Guidance ({name}):", "", "| guided channels @ scale | accuracy | FD |", "|---|---|---|"]
            lines += [f"| {k} | {_pm(v['accuracy'], 3)} | {_pm(v['fd'], 2)} |" for k, v in c["guidance"].items()]
    return "\n".join(lines) + "\n"


def _pm(value: tuple[float, float], digits: int) -> str:
    return f"{value[0]:.{digits}f} +- {value[1]:.{digits}f}"


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """FD over steps per config; FD against Gflops with the fitted line (3+ configs); FD against the scale."""
    scored = {n: c for n, c in results["configs"].items() if "fd" in c}
    written = []
    if scored:
        steps = sorted({int(s) for c in scored.values() for s in c["curve"]})
        series = {n: [c["curve"].get(str(s), (math.nan, 0))[0] for s in steps] for n, c in scored.items()}
        written.append(
            plot_curves(
                steps,
                series,
                out / "fd_over_steps.png",
                title="Frechet distance (digit features) over training, mean of seeds",
                smoothed=False,
            )
        )
    if "corr_log_gflops_fd" in results:
        points = {n: (c["gflops"], c["fd"][0], c["fd"][1]) for n, c in scored.items()}
        title = f"FD against forward Gflops (r = {results['corr_log_gflops_fd']:.2f} with log Gflops)"
        written.append(
            plot_scatter(points, out / "fd_vs_gflops.png", title=title, x_label="Gflops per image", y_label="FD")
        )
    per_step = {n: c["train_gflops_per_step"] for n, c in scored.items() if "train_gflops_per_step" in c}
    if len(per_step) >= 2 and len(set(per_step.values())) > 1:  # configs of different cost: FD per unit of compute
        compute = {n: {int(s) * per_step[n]: fd[0] for s, fd in scored[n]["curve"].items()} for n in per_step}
        xs = sorted({x for d in compute.values() for x in d})
        series = {n: [d.get(x, math.nan) for x in xs] for n, d in compute.items()}
        written.append(
            plot_curves(
                xs,
                series,
                out / "fd_vs_training_compute.png",
                title="FD against training compute (Gflops = 3 x forward Gflops x batch x steps)",
                smoothed=False,
                x_label="training Gflops",
                log_x=True,
            )
        )
    for name, c in scored.items():
        if c.get("guidance"):
            by_channels: dict[str, dict[float, float]] = {}
            for key, v in c["guidance"].items():
                channels, _, scale = key.partition("@")
                by_channels.setdefault(f"{channels} channels", {})[float(scale)] = v["fd"][0]
            scales = sorted({s for d in by_channels.values() for s in d})
            series = {k: [d.get(s, math.nan) for s in scales] for k, d in by_channels.items()}
            written.append(
                plot_curves(
                    scales,
                    series,
                    out / f"guidance_{slug(name)}.png",
                    title=f"FD against the guidance scale ({name})",
                    smoothed=False,
                    x_label="cfg scale",
                )
            )
    return written
