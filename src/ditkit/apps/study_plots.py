"""A study's plots from its results.json (ditkit.apps.study_report): every curve and point with its 95% interval
over seeds, axes labelled (log axes say so), the evaluation's sampling settings in the titles."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ditkit.apps.study_spec import slug
from ditkit.sampling.grid import plot_curves, plot_scatter

FD_LABEL = "FD, digit-classifier features (lower is better)"


def _sampling(results: dict[str, Any]) -> str:
    sample = results.get("statistics", {}).get("evaluation_sampling", {})
    return ", ".join(f"{k} {v}" for k, v in sample.items()) or "the recipe's sampler"


def _series(by_x: dict[str, dict[float, dict[str, Any]]], xs: list[float]) -> tuple[dict, dict]:
    """Means and (lo, hi) bands of {name: {x: interval}} on the shared x values (NaN where a series has none)."""
    nan = {"mean": math.nan, "lo": math.nan, "hi": math.nan}
    series = {n: [d.get(x, nan)["mean"] for x in xs] for n, d in by_x.items()}
    bands = {n: ([d.get(x, nan)["lo"] for x in xs], [d.get(x, nan)["hi"] for x in xs]) for n, d in by_x.items()}
    return series, bands


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """fd_over_steps, fd_vs_training_compute (configs of different cost), fd_vs_gflops / fd_vs_params (with the
    correlations), fd_vs_nfe (a sampler sweep), guidance_<config> and tradeoff_<config> (a guidance grid)."""
    scored = {n: c for n, c in results["configs"].items() if "fd" in c.get("final", {})}
    written: list[Path] = []
    if not scored:
        return written
    curves = {n: {float(s): v for s, v in c["curve"].items()} for n, c in scored.items() if c.get("curve")}
    if curves:
        xs = sorted({x for d in curves.values() for x in d})
        series, bands = _series(curves, xs)
        title = f"FD over training: mean and 95% interval over seeds ({_sampling(results)})"
        path = out / "fd_over_steps.png"
        written.append(
            plot_curves(
                xs, series, path, title=title, smoothed=False, bands=bands, y_label=FD_LABEL, x_label="training step"
            )
        )
    costs = {n: c["train_gflops_per_step"] for n, c in scored.items() if c.get("train_gflops_per_step") and n in curves}
    if len(set(costs.values())) > 1:
        by_compute = {n: {s * costs[n]: v for s, v in curves[n].items()} for n in costs}
        xs = sorted({x for d in by_compute.values() for x in d})
        series, bands = _series(by_compute, xs)
        written.append(
            plot_curves(
                xs,
                series,
                out / "fd_vs_training_compute.png",
                title="FD against training compute (3 x forward Gflops x batch x steps), 95% intervals",
                smoothed=False,
                bands=bands,
                x_label="training Gflops",
                y_label=FD_LABEL,
                log_x=True,
            )
        )
    for x_name, label in (("gflops", "forward Gflops per image"), ("params", "parameters")):
        corr = results.get(f"corr_log_{x_name}_fd")
        if corr:
            points = {
                n: (c[x_name], c["final"]["fd"]["mean"], (c["final"]["fd"]["lo"], c["final"]["fd"]["hi"]))
                for n, c in scored.items()
            }
            ci = (corr["lo"], corr["hi"]) if math.isfinite(corr["lo"]) else (corr["fisher_lo"], corr["fisher_hi"])
            title = f"final FD against {label}: r = {corr['r']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] with log {x_name}"
            written.append(
                plot_scatter(points, out / f"fd_vs_{x_name}.png", title=title, x_label=label, y_label=FD_LABEL)
            )
    written += _sweep_plot(scored, out)
    for name, c in scored.items():
        written += _guidance_plots(name, c, out)
    return written


def _sweep_plot(scored: dict[str, Any], out: Path) -> list[Path]:
    by_sampler: dict[str, dict[float, dict[str, Any]]] = {}
    for name, c in scored.items():
        for s in c.get("settings", {}).values():
            if s["kind"] == "sweep" and s.get("nfe"):
                by_sampler.setdefault(f"{name}: {s['sampler']}", {})[float(s["nfe"])] = s["fd"]
    if not by_sampler:
        return []
    xs = sorted({x for d in by_sampler.values() for x in d})
    series, bands = _series(by_sampler, xs)
    title = "final FD against model evaluations per image, per sampler (95% intervals over seeds)"
    path = out / "fd_vs_nfe.png"
    return [
        plot_curves(
            xs, series, path, title=title, smoothed=False, bands=bands, x_label="NFE", y_label=FD_LABEL, log_x=True
        )
    ]


def _guidance_plots(name: str, config: dict[str, Any], out: Path) -> list[Path]:
    rows = {k: v for k, v in config.get("settings", {}).items() if v["kind"] == "guidance"}
    if not rows:
        return []
    by_channels: dict[str, dict[float, dict[str, Any]]] = {}
    for key, v in rows.items():
        channels, _, scale = key.partition("@")
        by_channels.setdefault(f"{channels} channels guided", {})[float(scale)] = v["fd"]
    xs = sorted({x for d in by_channels.values() for x in d})
    series, bands = _series(by_channels, xs)
    paths = [
        plot_curves(
            xs,
            series,
            out / f"guidance_{slug(name)}.png",
            title=f"FD against the guidance scale ({name}), 95% intervals over seeds",
            smoothed=False,
            bands=bands,
            x_label="classifier-free guidance scale",
            y_label=FD_LABEL,
        )
    ]
    points = {
        f"{key}": (v["fd"]["mean"], v["accuracy"]["mean"], (v["accuracy"]["lo"], v["accuracy"]["hi"]))
        for key, v in sorted(rows.items(), key=lambda kv: (kv[0].partition("@")[0], float(kv[0].partition("@")[2])))
        if "accuracy" in v
    }
    paths.append(
        plot_scatter(
            points,
            out / f"tradeoff_{slug(name)}.png",
            title=f"accuracy against FD over guidance scales ({name}; channels@scale; 95% intervals both ways)",
            x_label=FD_LABEL,
            y_label="accuracy on the requested digit",
            log_x=False,
            fit=False,
            connect=True,
            x_errors={key: (rows[key]["fd"]["lo"], rows[key]["fd"]["hi"]) for key in points},
        )
    )
    return paths
