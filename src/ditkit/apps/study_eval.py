"""A study run's scoring after training: the final evaluation (two disjoint sample sets), the sampler sweep
(FD against model evaluations) and the guidance grid, each cached in the run (`study_scores.json`) so that a
rerun only samples what is missing.

Noise seeds: the final sets of training seed s are images 0..n-1 and n..2n-1 of the job seed FINAL_SEED + s, so
two configs trained with seed s are scored on the same noise (a paired comparison reduces it, by as much as the
two configs respond alike to it) while different seeds see different noise (the seed spread holds FD's sampling
noise); the sweep and the guidance grid reuse the first set's seeds, so their settings are paired too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ditkit.apps.study_spec import FINAL_SEED, StudyConfig, StudySpec, setting_label
from ditkit.config import SampleConfig, TrainConfig
from ditkit.config.recipes import DEMO_REPORT_IMAGE_SIZE
from ditkit.data.datasets import frame_digits
from ditkit.metrics.digit_classifier import load_digit_classifier
from ditkit.metrics.digit_views import score_digit_sets
from ditkit.runtime.files import write_json
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import SamplingModel, generate, job_labels
from ditkit.training.run import open_for_sampling

SCORES_FILE = "study_scores.json"


def run_settings(spec: StudySpec, config: StudyConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """{label: (kind, SampleConfig changes)} of every setting a run of `config` is scored at after training;
    kind is "final", "sweep" or "guidance"."""
    settings: dict[str, tuple[str, dict[str, Any]]] = {"final": ("final", {})}
    for change in config.sweep:
        settings[setting_label(change)] = ("sweep", dict(change))
    for channels in spec.guidance_channels if spec.guidance_scales else ():
        for scale in spec.guidance_scales:
            settings[f"{channels}@{scale:g}"] = ("guidance", {"cfg_scale": float(scale), "cfg_channels": channels})
    return settings


def score_meta(spec: StudySpec, cfg: TrainConfig) -> dict[str, Any]:
    """What a run's cached scores depend on besides their setting: a cache with other values is scored again
    (a smoke run's folder reused for the full study, a spec with more samples or another second view)."""
    return {
        "max_steps": cfg.max_steps,
        "final_samples": spec.final_samples,
        "bootstrap": spec.bootstrap,
        "second_view": spec.second_view,
        "sample": repr(cfg.sample),
    }


def score_run(spec: StudySpec, config: StudyConfig, run_dir: Path, seed: int, cfg: TrainConfig) -> dict[str, Any]:
    """{label: scores} of the run's EMA model (trained to cfg.max_steps) at every setting (`run_settings`) with
    its `cfg.sample` and the setting's changes, from the run's cache where it holds them for the same
    `score_meta`.

    "final" draws two disjoint sets of `final_samples` (scores with bootstrap interval, sampling noise, precision /
    recall and the second view: `score_digit_sets`); the other settings one set of as many (no bootstrap, no
    second set; guidance settings keep the second view, sweep settings do not). Every entry records its kind,
    sampler, steps, scale, guided channels, model evaluations per image (nfe: network rows per image, so a
    guided step counts 2) and sampling seconds per image. Only the spec's current settings are returned.
    """
    cache, meta = run_dir / SCORES_FILE, score_meta(spec, cfg)
    stored: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    done: dict[str, Any] = stored.get("scores", {}) if stored.get("meta") == meta else {}
    settings = run_settings(spec, config)
    todo = {k: v for k, v in settings.items() if k not in done}
    if not todo:
        return {k: done[k] for k in settings}  # not a setting the spec has dropped
    opened, classifier = open_for_sampling(run_dir), load_digit_classifier()
    n = spec.final_samples
    labels = job_labels(n, 10, seed, class_balanced=True)
    first = image_seeds(FINAL_SEED + seed, n)
    for label, (kind, change) in todo.items():
        setting = cfg.sample.replace(**change)
        start = time.perf_counter()
        images, nfe = _sample(opened, labels, first, setting)
        seconds = time.perf_counter() - start
        second = None
        if kind == "final":
            second = _sample(opened, labels, image_seeds(FINAL_SEED + seed, n, start=n), setting)[0]
        scores = score_digit_sets(
            images,
            second,
            labels,
            classifier=classifier,
            second_view=spec.second_view if kind != "sweep" else "none",
            resamples=spec.bootstrap if kind == "final" else 0,
            seed=seed,
        )
        scores.update(sampler=setting.sampler, num_steps=setting.num_steps, cfg_scale=setting.cfg_scale)
        scores.update(kind=kind, cfg_channels=setting.cfg_channels, nfe=nfe, seconds_per_image=seconds / n)
        done[label] = scores
        write_json(cache, {"meta": meta, "scores": done})
    return {k: done[k] for k in settings}


def _sample(
    opened: SamplingModel, labels: np.ndarray, seeds: list[int], setting: SampleConfig
) -> tuple[np.ndarray, float]:
    """Framed uint8 digits of `seeds`, and the model evaluations per image: the rows the network was run on over
    the images drawn (a guided step runs the conditional and the unconditional row: it counts 2)."""
    rows = 0

    def count(_module: Any, args: tuple[Any, ...], _output: Any) -> None:
        nonlocal rows
        rows += int(args[0].shape[0])

    hook = opened.model.register_forward_hook(count)
    try:
        images = generate(opened.model, labels.tolist(), seeds, setting, diffusion=opened.diffusion, vae=opened.vae)
    finally:
        hook.remove()
    return frame_digits(images, DEMO_REPORT_IMAGE_SIZE), rows / len(seeds)
