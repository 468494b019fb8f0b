"""`ditkit study`: train a set of configs with several seeds, score them over training, and report what differs.

A study is a small TOML or JSON spec (or a built-in name: blocks, scaling, guidance; see assets/studies/): a
base recipe (the CPU demo's, on the embedded digits, or its latent route), configs that change the model or the
training, seeds, and what to measure. Every (config, seed) is an ordinary ditkit run under OUT/runs/, scored by
the run's own evaluation (the digit classifier's accuracy on the requested class and the Frechet distance in
its feature space, which keeps separating models when accuracy saturates). Re-running resumes run by run; a
config that fails is reported and the others go on. Outputs: results.json, results.md (tables) and plots.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ditkit.apps.demo import latent_digits
from ditkit.config import SampleConfig, TrainConfig, get_preset
from ditkit.config.recipes import (
    DEMO_REPORT_IMAGE_SIZE,
    demo_train_config,
    latent_demo_train_config,
)
from ditkit.data.datasets import frame_digits
from ditkit.metrics.digit_classifier import digits_metrics, load_digit_classifier
from ditkit.model.flops import model_cost
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import write_json, write_text
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import generate, job_labels
from ditkit.sampling.grid import plot_curves, plot_scatter
from ditkit.training.loop import train
from ditkit.training.run import open_for_sampling, read_metrics

logger = logging.getLogger(__name__)

BUILT_IN = ("blocks", "scaling", "guidance")
RECIPES = ("demo", "latent-demo")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    preset: str | None = None  # a ditkit preset for the model's size (else the recipe's model)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


@dataclass(frozen=True)
class StudySpec:
    """What a study trains and measures (the fields of the TOML/JSON spec)."""

    name: str
    description: str = ""
    recipe: str = "demo"  # the base TrainConfig: "demo" (pixel digits) or "latent-demo" (the latent route)
    seeds: tuple[int, ...] = (0, 1)  # training seeds per config (>= 2: a ranking needs the seed spread)
    max_steps: int = 600
    eval_every_steps: int = 200
    num_eval_samples: int = 500
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields for every config
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every config
    sample: dict[str, Any] = field(default_factory=dict)  # SampleConfig fields of the evaluation
    configs: tuple[StudyConfig, ...] = ()
    guidance_scales: tuple[float, ...] = ()  # after training: sample each run at these scales ...
    guidance_channels: tuple[str | int, ...] = ("all",)  # ... guiding these channels ("all" or 3)
    guidance_samples: int = 500

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"study recipe must be one of {', '.join(RECIPES)}; got {self.recipe!r}", setting="recipe")
        if not self.configs:
            raise InputError(
                f"study {self.name!r} lists no configs; add [[configs]] entries with a name", setting="configs"
            )
        names = [c.name for c in self.configs]
        if len(set(names)) != len(names):
            raise InputError(f"study config names must be unique; got {names}", setting="configs")
        if not self.seeds or self.max_steps < 1 or self.eval_every_steps < 1 or self.num_eval_samples < 2:
            raise InputError(
                "a study needs seeds, max_steps >= 1, eval_every_steps >= 1 and num_eval_samples >= 2; got "
                f"seeds={list(self.seeds)}, max_steps={self.max_steps}, eval_every_steps={self.eval_every_steps}, "
                f"num_eval_samples={self.num_eval_samples}"
            )


def load_spec(source: str | Path) -> StudySpec:
    """A spec from a .toml / .json file or a built-in name."""
    if str(source) in BUILT_IN:
        text, suffix = resources.files("ditkit").joinpath("assets", "studies", f"{source}.toml").read_text(), ".toml"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(
                f"study spec {str(source)!r} not found; pass a .toml/.json file or one of {BUILT_IN}", setting="spec"
            )
        text, suffix = path.read_text(), path.suffix.lower()
    return spec_from_dict(_parse(text, suffix, str(source)))


def _parse(text: str, suffix: str, source: str) -> dict[str, Any]:
    try:
        if suffix == ".json":
            return json.loads(text)
        import tomllib  # the standard library's TOML reader (Python 3.11+, what ditkit requires)

        return tomllib.loads(text)
    except (ValueError, TypeError) as err:
        raise InputError(f"cannot read study spec {source}: {err}", setting="spec") from None


def spec_from_dict(values: dict[str, Any]) -> StudySpec:
    known = {f.name for f in dataclasses.fields(StudySpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown study spec fields {unknown}; allowed: {', '.join(sorted(known))}")
    fields = dict(values)
    try:
        fields["configs"] = tuple(StudyConfig(**c) for c in fields.get("configs", ()))
    except TypeError as err:
        raise InputError(f"a study config has a field it cannot take ({err}); use name, preset, model, train") from None
    for key in ("seeds", "guidance_scales", "guidance_channels"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return StudySpec(**fields)


# Running.


def run_study(spec: StudySpec, out: str | Path, *, max_steps: int | None = None, seeds: int | None = None) -> dict:
    """Train and score every (config, seed) of `spec` in `out` (resuming), then write results and plots.

    `max_steps` / `seeds` override the spec (a quick smoke run: seeds=K takes the first K seeds).
    """
    out = Path(out)
    if max_steps is not None:
        every = max(1, min(spec.eval_every_steps, max_steps // 2 or 1))
        spec = dataclasses.replace(spec, max_steps=max_steps, eval_every_steps=every)
    if seeds is not None:
        spec = dataclasses.replace(spec, seeds=tuple(range(seeds)) if seeds > len(spec.seeds) else spec.seeds[:seeds])
    write_json(out / "spec.json", dataclasses.asdict(spec))
    shared = _shared_inputs(spec, out)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for config in spec.configs:
        runs[config.name] = {}
        for seed in spec.seeds:
            try:
                runs[config.name][seed] = _run_one(spec, config, seed, out, shared)
            except Exception as err:  # a failed config is reported; the rest go on
                logger.error("study %s: %s seed %d failed: %s", spec.name, config.name, seed, err)
                runs[config.name][seed] = {"error": f"{type(err).__name__}: {err}"}
    results = summarize(spec, runs)
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown(results))
    write_plots(results, out)
    return results


def _shared_inputs(spec: StudySpec, out: Path) -> dict[str, Path]:
    """The latent route's autoencoder and latent store, made once for every config of the study."""
    if spec.recipe != "latent-demo":
        return {}
    vae_dir, store = latent_digits(out / "shared")
    return {"vae": vae_dir, "latents": store}


def train_config(
    spec: StudySpec, config: StudyConfig, seed: int, run_dir: Path, shared: dict[str, Path]
) -> TrainConfig:
    """The TrainConfig of one (config, seed) run: the recipe, then the spec's and the config's changes."""
    fields = {**spec.train, **config.train, "seed": seed, "max_steps": spec.max_steps}
    fields.update(eval_every_steps=spec.eval_every_steps, num_eval_samples=spec.num_eval_samples)
    if spec.recipe == "latent-demo":
        base = latent_demo_train_config(run_dir, shared["latents"], shared["vae"])
    else:
        base = demo_train_config(run_dir)
    model = base.model.replace(**spec.model)
    if config.preset:
        size = get_preset(config.preset)
        model = model.replace(
            depth=size.depth, hidden_size=size.hidden_size, num_heads=size.num_heads, patch_size=size.patch_size
        )
    model = model.replace(**config.model)
    sample = base.sample.replace(**spec.sample)
    return base.replace(model=model, sample=sample, **fields)


def _run_one(spec: StudySpec, config: StudyConfig, seed: int, out: Path, shared: dict[str, Path]) -> dict[str, Any]:
    run_dir = out / "runs" / f"{_slug(config.name)}-s{seed}"
    cfg = train_config(spec, config, seed, run_dir, shared)
    train(cfg)
    evals = [(r["step"], r["eval_accuracy"], r["eval_fd"]) for r in read_metrics(run_dir) if "eval_fd" in r]
    gflops = model_cost(cfg.model).gflops
    # The paper's training compute: forward Gflops x 3 (forward and backward) x batch size, per step.
    result: dict[str, Any] = {
        "evals": evals,
        "gflops": gflops,
        "train_gflops_per_step": 3 * gflops * cfg.global_batch_size,
    }
    if spec.guidance_scales:
        result["guidance"] = _guidance(spec, run_dir, cfg.sample)
    return result


def _guidance(spec: StudySpec, run_dir: Path, sample: SampleConfig) -> dict[str, list[float]]:
    """{"<channels>@<scale>": [accuracy, fd]} of `guidance_samples` class-balanced samples drawn with the run's
    `sample` config at each scale; cached in the run (the model is only opened when a setting is missing)."""
    cache = run_dir / "guidance.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    todo = [(c, s) for c in spec.guidance_channels for s in spec.guidance_scales if f"{c}@{s:g}" not in done]
    if not todo:
        return done
    opened, classifier = open_for_sampling(run_dir), load_digit_classifier()
    labels = job_labels(spec.guidance_samples, 10, 0, class_balanced=True)
    seeds = image_seeds(0, spec.guidance_samples)
    for channels, scale in todo:
        key = f"{channels}@{scale:g}"
        config = sample.replace(cfg_scale=float(scale), cfg_channels=channels)
        images = generate(opened.model, labels.tolist(), seeds, config, diffusion=opened.diffusion, vae=opened.vae)
        metrics = digits_metrics(frame_digits(images, DEMO_REPORT_IMAGE_SIZE), labels, classifier)
        done[key] = [metrics["accuracy"], metrics["fd"]]
        write_json(cache, done)
    return done


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# Summaries.


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
                    out / f"guidance_{_slug(name)}.png",
                    title=f"FD against the guidance scale ({name})",
                    smoothed=False,
                    x_label="cfg scale",
                )
            )
    return written
