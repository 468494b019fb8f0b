"""`ditkit study`: train a set of configs with several seeds, score them over training, and report what differs.

A study is a spec (ditkit.apps.study_spec): a base recipe (the CPU demo's, on the embedded digits, or its
latent route), configs that change the model or the training, seeds, and what to measure. Every (config, seed)
is an ordinary ditkit run under OUT/runs/, scored by the run's own evaluation (the digit classifier's accuracy
on the requested class and the Frechet distance in its feature space, which keeps separating models when
accuracy saturates). Re-running resumes run by run; a config that fails is reported and the others go on.
Outputs (ditkit.apps.study_report): results.json, results.md (tables) and plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ditkit.apps.demo import latent_digits
from ditkit.apps.study_report import results_markdown, summarize, write_plots
from ditkit.apps.study_spec import StudyConfig, StudySpec, slug
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
from ditkit.runtime.files import check_output_dir, write_json, write_text
from ditkit.runtime.seeds import image_seeds
from ditkit.runtime.stopping import Interrupted, StopSignal, one_line, stopped
from ditkit.sampling.generate import generate, job_labels
from ditkit.training.loop import train
from ditkit.training.run import open_for_sampling, read_metrics, with_vae_record

logger = logging.getLogger(__name__)


def run_study(
    spec: StudySpec,
    out: str | Path,
    *,
    max_steps: int | None = None,
    seeds: int | None = None,
    source: str | None = None,
) -> dict:
    """Train and score every (config, seed) of `spec` in `out` (resuming), then write results and plots.

    `max_steps` / `seeds` override the spec (a quick smoke run: seeds=K takes the first K seeds). Every config is
    checked first (`check_spec`; `source` names the spec file in its messages), and `out` must be writable.
    """
    out = check_output_dir(out)
    if max_steps is not None:
        every = max(1, min(spec.eval_every_steps, max_steps // 2 or 1))
        spec = dataclasses.replace(spec, max_steps=max_steps, eval_every_steps=every)
    if seeds is not None:
        spec = dataclasses.replace(spec, seeds=tuple(range(seeds)) if seeds > len(spec.seeds) else spec.seeds[:seeds])
    check_spec(spec, source)
    write_json(out / "spec.json", dataclasses.asdict(spec))
    # SIGINT/SIGTERM: a run being trained checkpoints and stops (its own StopSignal); elsewhere the study stops
    # before the next run. Either way the study ends with the signal's exit code, and a rerun resumes.
    stop = StopSignal("stopping before the next run")
    try:
        shared = _shared_inputs(spec, out)
        runs: dict[str, dict[int, dict[str, Any]]] = {}
        for config in spec.configs:
            runs[config.name] = {}
            for seed in spec.seeds:
                if stop.signum:
                    raise stopped(stop.signum, f"before {config.name} seed {seed}")
                try:
                    runs[config.name][seed] = _run_one(spec, config, seed, out, shared)
                except Interrupted:
                    raise  # a signal stops the study, it does not fail a config
                except Exception as err:  # a failed config is reported; the rest go on
                    logger.error("study %s: %s seed %d failed: %s", spec.name, config.name, seed, err)
                    runs[config.name][seed] = {"error": f"{type(err).__name__}: {err}"}
    finally:
        stop.restore()
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


def check_spec(spec: StudySpec, source: str | None = None) -> None:
    """Make every config's TrainConfig before any run: an unknown preset, block or field, or a bad value, is one
    InputError naming the spec and the config, not a results table of failed runs. The latent route's configs
    are checked on the pixel demo's base (its autoencoder and store are made later)."""
    where = f"study spec {source or spec.name!r}"
    for config in spec.configs:
        try:
            train_config(spec, config, spec.seeds[0], Path("check"), {})
        except (InputError, TypeError) as err:  # TypeError: a field the config classes do not have, a wrong type
            message = f"{where}, config {config.name!r}: {one_line(err)}; fix the spec"
            raise InputError(message, setting="spec") from None


def train_config(
    spec: StudySpec, config: StudyConfig, seed: int, run_dir: Path, shared: dict[str, Path]
) -> TrainConfig:
    """The TrainConfig of one (config, seed) run: the recipe, then the spec's and the config's changes (without
    `shared`, the latent route's on the pixel demo's base: `check_spec`)."""
    fields = {**spec.train, **config.train, "seed": seed, "max_steps": spec.max_steps}
    fields.update(eval_every_steps=spec.eval_every_steps, num_eval_samples=spec.num_eval_samples)
    if spec.recipe == "latent-demo" and shared:
        base = with_vae_record(latent_demo_train_config(run_dir, shared["latents"], shared["vae"]))
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
    run_dir = out / "runs" / f"{slug(config.name)}-s{seed}"
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
