"""A study's results.md: the tables of results.json (ditkit.apps.study_report), every number with its 95%
interval and every ranking with its test."""

from __future__ import annotations

import math
from typing import Any


def _ci(value: dict[str, Any] | None, digits: int = 2) -> str:
    if not value or not math.isfinite(value.get("mean", math.nan)):
        return "-"
    if value.get("n", 0) < 2:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} [{value['lo']:.{digits}f}, {value['hi']:.{digits}f}]"


def _comparison(p: dict[str, Any]) -> str:
    if not math.isfinite(p.get("lo", math.nan)):
        return f"{p['diff']:+.2f} (too few seeds for an interval)"
    verdict = "ranked" if p["excludes_zero"] else "tie: the interval holds 0"
    return f"{p['diff']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}], {p['test']} n={p['n']}, p={p['p']:.3f} ({verdict})"


def ranking_line(results: dict[str, Any]) -> str:
    """The ranking in one line: "ranking by FD: a < b ~ c" ("<" where the 95% interval excludes zero)."""
    order = results["ranking_by_fd"][:1]
    for pair in results["adjacent_pairs"]:
        order += [_relation(pair), pair["worse"]]
    return f"ranking by FD (<: beyond the 95% interval, ~: a tie): {' '.join(order)}"


def _relation(pair: dict[str, Any]) -> str:
    """ "<" where the paired interval excludes zero in the ranking's direction, ">" against it (possible when a
    seed failed: the ranking uses every seed's mean, the comparison the shared seeds), "~" a tie."""
    if not pair["excludes_zero"]:
        return "~"
    return "<" if pair["diff"] > 0 else ">"


def results_markdown(results: dict[str, Any]) -> str:
    """results.md of a study: configs, ranking, pairs, noise, curves, second view, correlations, settings."""
    stats = results.get("statistics", {})
    lines = [f"# Study: {results['study']}", "", results.get("description", ""), ""]
    conf = f"{stats.get('confidence', 0.95):.0%}"
    lines += [
        f"All intervals are {conf}: over training seeds ({stats.get('seed_interval', '')}); comparisons: "
        f"{stats.get('comparison', '')}; a ranking only where {stats.get('ranked_only_if', '')}. Final scores on "
        f"{stats.get('final_samples', '?')} samples per run, curves on {stats.get('num_eval_samples', '?')}; "
        f"evaluation sampling {stats.get('evaluation_sampling', {})}. "
        f"Wall time {results.get('wall_s', 0) / 60:.1f} min.",
        "",
        "| config | params (M) | Gflops | seeds | accuracy | FD | FD sampling sd | FD seed sd | precision | recall "
        "| 2nd-view FD |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    noise = results.get("fd_sampling_noise", {})
    for name, c in results["configs"].items():
        if "fd" not in c.get("final", {}):
            lines.append(f"| {name} | - | - | 0 | failed: {'; '.join(c['errors'].values()) or 'no scores'} |||||||")
            continue
        f, n = c["final"], noise.get(name, {})
        view = f.get("fd_pixels") or f.get("fd_inception")
        lines.append(
            f"| {name} | {c.get('params', 0) / 1e6:.3f} | {c.get('gflops', math.nan):.4f} | {len(c['seeds'])} | "
            f"{_ci(f.get('accuracy'), 3)} | {_ci(f['fd'])} | {n.get('sampling_sd', math.nan):.2f} | "
            f"{n.get('seed_sd', math.nan):.2f} | {_ci(f.get('precision'), 3)} | {_ci(f.get('recall'), 3)} | "
            f"{_ci(view)} |"
        )
    if results.get("ranking_by_fd"):
        lines += ["", ranking_line(results)]
    if results.get("adjacent_pairs"):
        lines += ["", "Ranking by final FD (lower is better), adjacent pairs, worse - better:", ""]
        lines += [f"- {p['better']} {_relation(p)} {p['worse']}: {_comparison(p)}" for p in results["adjacent_pairs"]]
    if len(results.get("pairs", [])) > len(results.get("adjacent_pairs", [])):
        lines += ["", "Every pair (FD of the second - the first):", ""]
        lines += [f"- {p['better']} vs {p['worse']}: {_comparison(p)}" for p in results["pairs"]]
    lines += _curve_table(results)
    if "second_view" in results:
        view = results["second_view"]
        lines += ["", f"Second feature space ({view['metric']}): ranking {', '.join(view['ranking'])}"]
        lines += [
            f"- {p['better']} vs {p['worse']}: {_comparison(p)}; digit FD says {p['fd_verdict']}, "
            f"{view['metric']} says {p['view_verdict']}{'' if p['agree'] else ' (DISAGREE)'}"
            for p in view["adjacent_pairs"]
        ]
    corr = {k: v for k, v in results.items() if k.startswith("corr") and math.isfinite(v["r"])}
    if corr:
        lines += ["", "Correlations over config means (95% intervals: two-stage bootstrap over configs and seeds, "]
        lines[-1] += "given from 5 configs on; Fisher's z over the means, from 4):"
        lines += [""] + [
            f"- {k}: r = {v['r']:.3f} over {v['n_configs']} configs; {_corr_ci(v)}" for k, v in corr.items()
        ]
    if results.get("equal_compute"):
        lines += ["", "At equal training compute (FD of the larger - the smaller, paired by seed):", ""]
        lines += [
            f"- {e['larger']} vs {e['smaller']} at {e['train_gflops']:.3g} training Gflops: {_comparison(e)}"
            for e in results["equal_compute"]
        ]
    lines += _settings_tables(results)
    return "\n".join(lines) + "\n"


def _corr_ci(v: dict[str, Any]) -> str:
    boot = f"bootstrap [{v['lo']:.3f}, {v['hi']:.3f}]" if math.isfinite(v["lo"]) else "no bootstrap interval"
    fisher = f"Fisher [{v['fisher_lo']:.3f}, {v['fisher_hi']:.3f}]" if math.isfinite(v["fisher_lo"]) else "no Fisher"
    return f"{boot}; {fisher}"


def _curve_table(results: dict[str, Any]) -> list[str]:
    configs = {n: c for n, c in results["configs"].items() if c.get("curve")}
    if not configs:
        return []
    steps = sorted({int(s) for c in configs.values() for s in c["curve"]})
    lines = ["", "FD over training (mean [95% interval] over seeds):", ""]
    lines += ["| config | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for name, c in configs.items():
        lines.append(f"| {name} | " + " | ".join(_ci(c["curve"].get(str(s))) for s in steps) + " |")
    tests = [
        (pair, step, p) for pair, by_step in results.get("pairs_over_steps", {}).items() for step, p in by_step.items()
    ]
    ranked = [f"- step {step}: {pair}: {_comparison(p)}" for pair, step, p in tests if p["excludes_zero"]]
    if tests:
        lines += [
            "",
            f"Pairs whose FD differs beyond the interval during training (second - first): {len(ranked)} of "
            f"{len(tests)} comparisons, each at 95% without a multiple-test correction (about 1 in 20 true ties "
            "would show here by chance):",
            "",
            *(ranked or ["- none"]),
        ]
    return lines


def _settings_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, c in results["configs"].items():
        settings = c.get("settings", {})
        if not settings:
            continue
        lines += ["", f"Settings scored after training ({name}):", ""]
        lines += [
            "| setting | NFE | accuracy | FD | precision | recall | 2nd-view FD |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, s in settings.items():
            nfe = f"{s['nfe']:.0f}" if s.get("nfe") is not None else "-"
            lines.append(
                f"| {label} | {nfe} | {_ci(s.get('accuracy'), 3)} | {_ci(s.get('fd'))} | "
                f"{_ci(s.get('precision'), 3)} | {_ci(s.get('recall'), 3)} | "
                f"{_ci(s.get('fd_pixels') or s.get('fd_inception'))} |"
            )
        if name in results.get("sweep_vs_final", {}):
            lines += ["", f"Sweep settings against the final scoring's sampler ({name}), setting - final, paired:", ""]
            lines += [f"- {k}: {_comparison(p)}" for k, p in results["sweep_vs_final"][name].items()]
        if name in results.get("guidance", {}):
            g = results["guidance"][name]
            lines += ["", f"Against the best scale ({g['best']}), FD of the other - the best, paired by seed:", ""]
            lines += [f"- {k}: {_comparison(p)}" for k, p in g["vs_best"].items()]
    return lines
