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
import time
from pathlib import Path
from typing import Any

from ditkit.apps.demo import latent_digits
from ditkit.apps.study_eval import run_settings, score_run
from ditkit.apps.study_plots import write_plots
from ditkit.apps.study_report import summarize
from ditkit.apps.study_spec import EVAL_SEED, STUDY_OWNED_FIELDS, StudyConfig, StudySpec, run_folder
from ditkit.apps.study_tables import results_markdown
from ditkit.config import TrainConfig, check_sampler, get_preset
from ditkit.config.model import process_from_choices
from ditkit.config.recipes import demo_train_config, latent_demo_train_config
from ditkit.model.flops import model_cost
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import check_output_dir, write_json, write_text
from ditkit.runtime.stopping import Interrupted, StopSignal, one_line, stopped
from ditkit.training.loop import train
from ditkit.training.run import CONFIG_FILE, read_metrics, read_run_config, with_vae_record

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
    _check_existing_runs(spec, out)
    write_json(out / "spec.json", dataclasses.asdict(spec))
    # SIGINT/SIGTERM: a run being trained checkpoints and stops (its own StopSignal); elsewhere the study stops
    # before the next run. Either way the study ends with the signal's exit code, and a rerun resumes.
    stop = StopSignal("stopping before the next run")
    try:
        shared = _shared_inputs(spec, out)
        runs: dict[str, dict[int, dict[str, Any]]] = {config.name: {} for config in spec.configs}
        for seed in spec.seeds:  # seed-major: a study stopped early holds every config for its first seeds
            for config in spec.configs:
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
            cfg = train_config(spec, config, spec.seeds[0], Path("check"), {})
            for _, change in run_settings(spec, config).values():  # the sweep's and the guidance grid's samplers
                setting = cfg.sample.replace(**change)
                check_sampler(setting.sampler, cfg.diffusion)
                if setting.cfg_scale != 1.0 and not cfg.model.has_null_class:
                    raise InputError(
                        f"guidance scale {setting.cfg_scale:g} needs a model trained with label dropout "
                        "(class_dropout_prob > 0)",
                        setting="cfg_scale",
                    )
        except (InputError, TypeError) as err:  # TypeError: a field the config classes do not have, a wrong type
            message = f"{where}, config {config.name!r}: {one_line(err)}; fix the spec"
            raise InputError(message, setting="spec") from None


def train_config(
    spec: StudySpec, config: StudyConfig, seed: int, run_dir: Path, shared: dict[str, Path]
) -> TrainConfig:
    """The TrainConfig of one (config, seed) run: the recipe, then the spec's and the config's changes (without
    `shared`, the latent route's on the pixel demo's base: `check_spec`)."""
    owned = sorted((set(spec.train) | set(config.train)) & STUDY_OWNED_FIELDS)
    if owned:
        raise InputError(
            f"train fields {owned} are the study's own (run folders under the study folder, seeds from `seeds`, "
            "steps and evaluations from max_steps / eval_every_steps / num_eval_samples); set those instead",
            setting="train",
        )
    fields = {**spec.train, **config.train, "seed": seed, "max_steps": spec.max_steps}
    fields.update(eval_every_steps=spec.eval_every_steps, num_eval_samples=spec.num_eval_samples)
    fields.update(eval_seed=EVAL_SEED + seed)  # configs share a seed's noise (paired), seeds do not
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
    diffusion = base.diffusion
    if config.process:
        diffusion = process_from_choices(base.diffusion, config.process, learn_sigma=model.learn_sigma)
    sample = base.sample.replace(**{**spec.sample, **config.sample})
    return base.replace(model=model, diffusion=diffusion, sample=sample, **fields)


def _run_one(spec: StudySpec, config: StudyConfig, seed: int, out: Path, shared: dict[str, Path]) -> dict[str, Any]:
    """Train (or resume) one run and score it: {"evals", "scores", "gflops", "params", "wall_s", ...}."""
    run_dir = run_folder(out, config.name, seed)
    cfg = train_config(spec, config, seed, run_dir, shared)
    start = time.perf_counter()
    train(cfg)
    result: dict[str, Any] = {}
    try:
        scores = score_run(spec, config, run_dir, seed, cfg)
    except Interrupted:
        raise
    except Exception as err:  # the trained run's evaluations still count; its scores are reported missing
        logger.error("study %s: scoring %s seed %d failed: %s", spec.name, config.name, seed, err)
        scores, result["error"] = {}, f"scoring: {type(err).__name__}: {err}"
    wall = _add_wall_time(run_dir, time.perf_counter() - start)
    evals = [(r["step"], r["eval_accuracy"], r["eval_fd"]) for r in read_metrics(run_dir) if "eval_fd" in r]
    cost = model_cost(cfg.model)
    # The paper's training compute: forward Gflops x 3 (forward and backward) x batch size, per step.
    return {
        **result,
        "evals": evals,
        "scores": scores,
        "gflops": cost.gflops,
        "params": cost.params,
        "train_gflops_per_step": 3 * cost.gflops * cfg.global_batch_size,
        "wall_s": wall,
    }


def _check_existing_runs(spec: StudySpec, out: Path) -> None:
    """Refuse run folders of `out` that were trained to other steps or evaluated at other intervals (a smoke
    run's folder reused for the full study): extending them would restart the learning-rate schedule and mix
    evaluation grids, so they would not be runs of this spec."""
    for config in spec.configs:
        for seed in spec.seeds:
            run_dir = run_folder(out, config.name, seed)
            if not (run_dir / CONFIG_FILE).is_file():
                continue
            old = read_run_config(run_dir)  # a damaged config.json is one InputError naming it
            if (old.max_steps, old.eval_every_steps) != (spec.max_steps, spec.eval_every_steps):
                raise InputError(
                    f"{run_dir} was trained with max_steps {old.max_steps} and eval_every_steps "
                    f"{old.eval_every_steps}, this study asks for {spec.max_steps} and "
                    f"{spec.eval_every_steps}: give the study a fresh output folder (or delete that run folder)",
                    setting="out",
                )


def _add_wall_time(run_dir: Path, seconds: float) -> float:
    """The seconds this study has spent on a run (training and scoring) over all its sessions; a session that
    found the run done adds ~nothing."""
    path = run_dir / "study_wall.json"
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    write_json(path, {"seconds": total})
    return total
