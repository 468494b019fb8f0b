"""`ditkit study` (ditkit.apps.study, study_spec, study_report): specs, summaries with seed spreads and
correlations, writers, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ditkit.apps import study, study_plots, study_tables
from ditkit.apps.study import run_study
from ditkit.apps.study_report import summarize
from ditkit.apps.study_spec import BUILT_IN, StudyConfig, StudySpec, load_spec, spec_from_dict


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_spec_builds_every_run(name):
    spec = load_spec(name)
    study.check_spec(spec, name)  # every config, sweep and guidance setting, before any training
    assert len(spec.seeds) >= 2 and spec.configs


def test_built_in_specs_parse():
    blocks, scaling, guidance = (load_spec(n) for n in ("blocks", "scaling", "guidance"))
    assert [c.model["block"] for c in blocks.configs] == ["adaln_zero", "adaln", "cross_attn", "in_context"]
    assert len(scaling.configs) >= 6 and {c.model["patch_size"] for c in scaling.configs} == {4, 8}
    assert guidance.recipe == "latent-demo" and guidance.guidance_channels == ("all", 3)
    assert all(len(s.seeds) >= 2 for s in (blocks, scaling, guidance))
    assert blocks.model["depth"] >= 12 and len(blocks.seeds) >= 4 and blocks.num_eval_samples >= 1000
    dvs, grid = load_spec("dit-vs-sit"), load_spec("guidance-grid")
    assert len(dvs.seeds) >= 3 and {c.process.get("objective", "diffusion") for c in dvs.configs} == {
        "diffusion",
        "flow",
    }
    assert grid.guidance_scales == (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)
    shared = {c.name: c for c in dvs.configs}  # the grid's runs are the dit-vs-sit study's: the same configs
    same = ("preset", "model", "train", "process", "sample")  # all but the sweep, which only dit-vs-sit runs
    assert all(all(getattr(shared[c.name], f) == getattr(c, f) for f in same) for c in grid.configs)
    assert grid.sample == dvs.sample and grid.num_eval_samples == dvs.num_eval_samples
    assert (grid.max_steps, grid.seeds) == (dvs.max_steps, dvs.seeds)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"name": "x", "configs": []}, "lists no configs"),
        ({"name": "x", "configs": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"name": "x", "recipe": "imagenet", "configs": [{"name": "a"}]}, "recipe must be one of"),
        ({"name": "x", "bogus": 1, "configs": [{"name": "a"}]}, r"unknown study spec fields \['bogus'\]"),
        ({"name": "x", "configs": [{"name": "a", "depth": 3}]}, "cannot take"),
        ({"name": "x", "configs": [{"name": "a b"}, {"name": "a_b"}]}, "same run folder names"),
        ({"name": "x", "configs": [{"name": "a", "sweep": ["heun"]}]}, "sweep must be a list of tables"),
        ({"name": "x", "second_view": "dino", "configs": [{"name": "a"}]}, "second_view must be one of"),
        ({"name": "x", "bootstrap": 1, "configs": [{"name": "a"}]}, "bootstrap must be 0"),
        ({"name": "x", "final_samples": 1, "configs": [{"name": "a"}]}, "final_samples >= 2"),
    ],
)
def test_spec_errors(values, match):
    with pytest.raises(ValueError, match=match):
        spec_from_dict(values)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"name": "a", "train": {"out_dir": "/elsewhere"}}, r"train fields \['out_dir'\] are the study's own"),
        ({"name": "a", "process": {"objective": "flow"}}, "sampler"),  # the demo's DPM-Solver on a flow model
        ({"name": "a", "sweep": [{"sampler": "heun"}]}, "sampler"),  # a flow sampler on a diffusion model
        ({"name": "a", "process": {"path": "linear"}}, "add objective 'flow'"),
    ],
)
def test_check_spec_refuses_what_would_fail_after_training(config, match):
    spec = spec_from_dict({"name": "x", "configs": [config]}, source="x.toml")
    with pytest.raises(ValueError, match=match) as err:
        study.check_spec(spec, "x.toml")
    assert "x.toml" in str(err.value) and "config 'a'" in str(err.value)


@pytest.mark.parametrize("name", ["blocks/depth4", "scaling", "guidance"])
def test_the_first_studies_specs_as_run_still_load(name):
    from pathlib import Path

    spec = load_spec(Path(__file__).parents[2] / "docs" / "studies" / name / "spec.json")
    assert spec.final_samples == 500 and len(spec.seeds) == 2  # guidance_samples became final_samples
    study.check_spec(spec, name)


def test_spec_files_toml_and_json(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"name": "j", "seeds": [3, 4], "configs": [{"name": "a"}]}))
    assert load_spec(tmp_path / "s.json").seeds == (3, 4)
    (tmp_path / "s.toml").write_text('name = "t"\n[[configs]]\nname = "a"\nmodel = { depth = 2 }\n')
    assert load_spec(tmp_path / "s.toml").configs[0].model == {"depth": 2}
    with pytest.raises(ValueError, match="not found"):
        load_spec(tmp_path / "missing.toml")


def _run(gflops, fds, final, *, second=None, pixels=None, params=1000, guidance=None):
    """A run's result as study._run_one returns it: evaluations (step, accuracy, FD) and the final scores."""
    scores = {"final": {"accuracy": 0.9, "fd": final, "fd_second": final if second is None else second}}
    scores["final"].update(precision=0.8, recall=0.7, fd_pixels=final / 10 if pixels is None else pixels)
    for scale, fd in (guidance or {}).items():
        scores[f"all@{scale:g}"] = {"accuracy": 0.9 + scale / 100, "fd": fd, "nfe": 12, "cfg_scale": scale}
    return {
        "evals": [(100, 0.5, fds[0]), (200, 0.8, fds[1])],
        "scores": scores,
        "gflops": gflops,
        "params": params,
        "train_gflops_per_step": 96 * gflops,
        "wall_s": 60.0,
    }


def _fake_runs() -> dict:
    return {
        "small": {s: _run(0.1, [30 + s, 20 + s], 20 + s, second=21 + s) for s in range(3)},
        "medium": {s: _run(1.0, [20 + s, 12 + s], 12 + s, params=4000) for s in range(3)},
        "large": {s: _run(10.0, [15 + s, 10 + s], 11.8 + s + 0.4 * (s == 1), params=2000) for s in range(3)},
        "broken": {0: {"error": "ValueError: boom"}, 1: {"error": "ValueError: boom"}},
    }


def _spec(*names, **fields):
    return StudySpec(name="s", configs=tuple(StudyConfig(name=n) for n in names), **fields)


def test_summary_keeps_per_seed_values_and_ranks_only_beyond_the_interval(tmp_path):
    results = summarize(_spec("small", "medium", "large", "broken"), _fake_runs())
    medium = results["configs"]["medium"]
    assert medium["seeds"] == [0, 1, 2] and medium["per_seed"]["2"]["scores"]["final"]["fd"] == 14
    assert medium["final"]["fd"]["mean"] == pytest.approx(13.0) and medium["final"]["fd"]["lo"] < 13 < 13 + 3
    assert (
        medium["params"] == 4000 and medium["wall_s"] == 180.0 and "boom" in results["configs"]["broken"]["errors"]["0"]
    )
    assert results["ranking_by_fd"] == ["large", "medium", "small"]
    large_medium, medium_small = results["adjacent_pairs"]
    assert large_medium["test"] == "paired t" and not large_medium["excludes_zero"]  # 0.07 apart, seeds disagree
    assert medium_small["excludes_zero"] and medium_small["diff"] == pytest.approx(8.0)
    assert len(results["pairs"]) == 3
    noise = results["fd_sampling_noise"]
    assert noise["small"]["sampling_sd"] == pytest.approx(1 / 2**0.5) and noise["medium"]["sampling_sd"] == 0
    assert noise["small"]["seed_sd"] == pytest.approx(1.0)
    step_200 = results["pairs_over_steps"]["small vs medium"]["200"]
    assert step_200["diff"] == pytest.approx(-8.0) and step_200["excludes_zero"]


def test_summary_correlations_equal_compute_and_second_view():
    results = summarize(_spec("small", "medium", "large"), _fake_runs())
    assert results["corr_log_gflops_fd"]["r"] < -0.8 and results["corr_log_gflops_fd"]["n_configs"] == 3
    assert "corr_log_params_fd" in results and "corr_log_gflops_accuracy" in results
    # medium (cost 96/step) at step 100 = 9,600 Gflops; small reaches it at step... 1,000: outside its curve.
    pairs = {(e["smaller"], e["larger"], e["train_gflops"]) for e in results["equal_compute"]}
    assert ("small", "medium", 9600.0) not in pairs
    view = results["second_view"]
    assert view["metric"] == "fd_pixels" and view["ranking"] == ["large", "medium", "small"]
    assert [p["agree"] for p in view["adjacent_pairs"]] == [True, True]


def test_summary_flags_a_second_view_that_disagrees():
    runs = _fake_runs()
    for seed, run in runs["small"].items():
        run["scores"]["final"]["fd_pixels"] = 0.5 + seed * 0.01  # small is best in pixel space
    view = summarize(_spec("small", "medium"), {k: runs[k] for k in ("small", "medium")})["second_view"]
    (pair,) = view["adjacent_pairs"]
    assert (pair["fd_verdict"], pair["view_verdict"], pair["agree"]) == ("better", "reversed", False)


def test_equal_compute_interpolates_in_log_compute():
    runs = {
        "cheap": {s: _run(1.0, [20 + s, 10 + s], 10 + s) for s in range(3)},
        "dear": {s: _run(2.0, [18 + s, 8 + s], 8 + s) for s in range(3)},
    }
    runs["cheap"][0]["evals"] = [(100, 0.5, 20), (200, 0.8, 10)]
    results = summarize(_spec("cheap", "dear"), runs)
    (entry,) = results["equal_compute"]  # dear's step 100 = cheap's step 200; dear's step 200 is beyond cheap's
    assert (entry["smaller"], entry["larger"], entry["train_gflops"]) == ("cheap", "dear", 19200.0)
    assert entry["diff"] == pytest.approx(8.0)  # dear at step 100 (18-20) against cheap at step 200 (10-12)


def test_guidance_settings_are_compared_with_the_best_scale(tmp_path):
    runs = {"m": {s: _run(1.0, [9, 8], 8 + s, guidance={1.0: 8 + s, 1.5: 6 + s, 2.0: 6.1 + s * 1.1}) for s in range(3)}}
    spec = _spec("m", guidance_scales=(1.0, 1.5, 2.0))
    results = summarize(spec, runs)
    guidance = results["guidance"]["m"]
    assert guidance["best"] == "all@1.5" and guidance["vs_best"]["all@1"]["excludes_zero"]
    assert not guidance["vs_best"]["all@2"]["excludes_zero"]
    setting = results["configs"]["m"]["settings"]["all@1.5"]
    assert setting["kind"] == "guidance" and setting["fd"]["per_seed"] == {"0": 6, "1": 7, "2": 8}
    text = study_tables.results_markdown(results)
    assert "Against the best scale (all@1.5)" in text and "(tie: the interval holds 0)" in text
    names = {p.name for p in study_plots.write_plots(results, tmp_path)}
    assert names == {"fd_over_steps.png", "guidance_m.png", "tradeoff_m.png"}


def test_markdown_and_plots(tmp_path):
    results = summarize(_spec("small", "medium", "large", "broken"), _fake_runs())
    text = study_tables.results_markdown(results)
    assert "| medium | 0.004 | 1.0000 | 3 | 0.900 [0.900, 0.900] | 13.00 [10.52, 15.48] | 0.00 | 1.00 |" in text
    assert "failed: ValueError: boom" in text and "medium < small: +8.00 [+8.00, +8.00]" in text
    assert "large ~ medium: +0.07" in text and "(tie: the interval holds 0)" in text
    assert "ranking by FD (<: beyond the 95% interval, ~: a tie): large ~ medium < small" in text
    assert "corr_log_gflops_fd: r = " in text and "Second feature space (fd_pixels)" in text
    paths = study_plots.write_plots(results, tmp_path)
    assert {p.name for p in paths} == {
        "fd_over_steps.png",
        "fd_vs_gflops.png",
        "fd_vs_params.png",
        "fd_vs_training_compute.png",
    }


def test_rerun_resumes_and_a_failed_config_does_not_stop_the_others(tmp_path, monkeypatch):
    calls = []
    runs = _fake_runs()

    def fake_run_one(spec, config, seed, out, shared):
        calls.append((config.name, seed))
        if config.name == "broken":
            raise ValueError("boom")
        return runs[config.name][seed]

    monkeypatch.setattr(study, "_run_one", fake_run_one)
    results = run_study(_spec("small", "broken", "large"), tmp_path, seeds=1)
    assert calls == [("small", 0), ("broken", 0), ("large", 0)]
    assert results["ranking_by_fd"] == ["large", "small"] and results["configs"]["broken"]["errors"]
    assert {p.name for p in tmp_path.iterdir()} >= {"results.json", "results.md", "spec.json", "fd_over_steps.png"}


def test_train_config_layers_recipe_spec_and_config(tmp_path):
    spec = StudySpec(
        name="s",
        max_steps=7,
        eval_every_steps=3,
        num_eval_samples=10,
        model={"depth": 2},
        train={"lr": 1e-3},
        sample={"cfg_scale": 1.0, "num_steps": 5},
        configs=(StudyConfig(name="a", model={"block": "adaln"}, train={"lr": 5e-4}),),
    )
    cfg = study.train_config(spec, spec.configs[0], 3, tmp_path / "run", {})
    assert (cfg.model.depth, cfg.model.block, cfg.lr, cfg.seed, cfg.max_steps) == (2, "adaln", 5e-4, 3, 7)
    assert (cfg.eval_every_steps, cfg.num_eval_samples, cfg.sample.num_steps) == (3, 10, 5)
    assert cfg.data is None and cfg.model.in_channels == 1  # the demo recipe's digits
    assert cfg.eval_seed == study.EVAL_SEED + 3 and not cfg.diffusion.is_flow
    flow = StudyConfig(name="f", process={"objective": "flow", "path": "gvp"}, sample={"sampler": "heun"})
    cfg = study.train_config(spec, flow, 0, tmp_path / "run", {})
    assert cfg.diffusion.flow.path == "gvp" and (cfg.sample.sampler, cfg.sample.num_steps) == ("heun", 5)


@pytest.mark.slow
def test_a_two_config_study_end_to_end(tmp_path):
    """Two block designs, two seeds, a few steps through `ditkit study`: real training, scoring and reports."""
    from smoke.test_cli import invoke

    spec = {
        "name": "tiny",
        "recipe": "demo",
        "seeds": [0, 1],
        "max_steps": 20,
        "eval_every_steps": 10,
        "num_eval_samples": 20,
        "final_samples": 30,
        "bootstrap": 10,
        "model": {"depth": 2, "hidden_size": 64},
        "train": {"sample_every_steps": 0, "device": "cpu", "precision": "fp32"},
        "sample": {"cfg_scale": 1.0, "num_steps": 4},
        "configs": [
            {"name": "adaLN-Zero", "sweep": [{"sampler": "ddim", "num_steps": 3}]},
            {"name": "flow", "process": {"objective": "flow"}, "sample": {"sampler": "euler", "num_steps": 4}},
        ],
        "guidance_scales": [1.5],
    }
    (tmp_path / "tiny.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = invoke("study", str(tmp_path / "tiny.json"), "--out", str(out))
    assert "ranking by FD" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    for name in ("adaLN-Zero", "flow"):
        config = results["configs"][name]
        assert config["seeds"] == [0, 1] and config["final_step"] == 20 and config["final"]["fd"]["mean"] > 0
        assert set(config["curve"]) == {"10", "20"} and set(config["per_seed"]) == {"0", "1"}
        final = config["per_seed"]["1"]["scores"]["final"]
        assert final["num_samples"] == 30 and final["fd_lo"] < final["fd_hi"] and "fd_second" in final
    sweep = results["configs"]["adaLN-Zero"]["settings"]["num_steps=3,sampler=ddim"]
    assert sweep["nfe"] == 3 and sweep["kind"] == "sweep"
    assert results["configs"]["flow"]["per_seed"]["0"]["scores"]["final"]["nfe"] == 3  # Euler on 4 grid points
    assert "all@1.5" in results["guidance"]["flow"]["best"] + "".join(results["guidance"]["flow"]["vs_best"])
    assert results["sweep_vs_final"]["adaLN-Zero"]["num_steps=3,sampler=ddim"]["test"] == "paired t"
    assert (out / "fd_vs_nfe.png").is_file() and (out / "runs" / "flow-s1" / "metrics.jsonl").is_file()
    invoke("study", str(tmp_path / "tiny.json"), "--out", str(out))  # resumes: every run is complete
    again = json.loads((out / "results.json").read_text())
    assert _without_wall(again["configs"]) == _without_wall(results["configs"])  # nothing sampled again
    assert again["wall_s"] - results["wall_s"] < 30  # the rerun's seconds (loading, checks) add to the runs'


def _without_wall(value):
    if isinstance(value, dict):
        return {k: _without_wall(v) for k, v in value.items() if k != "wall_s"}
    return value


def test_curves_align_seeds_by_step_not_by_position():
    runs = {"a": {0: _run(1.0, [9, 8], 8), 1: _run(1.0, [7, 6], 6)}}
    runs["a"][0]["evals"] = [(10, 0.1, 50.0), (100, 0.5, 9.0), (200, 0.8, 8.0)]  # an extra early evaluation
    curve = summarize(_spec("a"), runs)["configs"]["a"]["curve"]
    assert curve["10"]["per_seed"] == {"0": 50.0} and curve["200"]["per_seed"] == {"0": 8.0, "1": 6.0}


def test_a_scoring_failure_keeps_the_runs_evaluations(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("no memory")

    monkeypatch.setattr(study, "train", lambda cfg: None)
    monkeypatch.setattr(study, "score_run", broken)
    monkeypatch.setattr(study, "read_metrics", lambda run_dir: [{"step": 5, "eval_accuracy": 0.5, "eval_fd": 9.0}])
    spec = StudySpec(name="s", max_steps=5, eval_every_steps=5, configs=(StudyConfig(name="a"),))
    got = study._run_one(spec, spec.configs[0], 0, tmp_path, {})
    assert got["evals"] == [(5, 0.5, 9.0)] and got["scores"] == {} and "no memory" in got["error"]
    summary = summarize(spec, {"a": {0: got}})["configs"]["a"]
    assert summary["curve"]["5"]["mean"] == 9.0 and "no memory" in summary["errors"]["0"]


def test_a_run_folder_of_other_steps_is_refused(tmp_path):
    spec = StudySpec(name="s", max_steps=50, eval_every_steps=10, seeds=(0,), configs=(StudyConfig(name="a"),))
    run = tmp_path / "runs" / "a-s0"
    run.mkdir(parents=True)
    smoke = study.train_config(dataclasses.replace(spec, max_steps=2, eval_every_steps=1), spec.configs[0], 0, run, {})
    (run / "config.json").write_text(json.dumps(smoke.to_dict()))  # a smoke run's folder
    with pytest.raises(ValueError, match="trained with max_steps 2 .* fresh output folder"):
        run_study(spec, tmp_path)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*config.json"):  # damaged: bad input, not a bug
        run_study(spec, tmp_path)


def test_cached_scores_are_used_only_for_the_same_meta_and_current_settings(tmp_path):
    from ditkit.apps.study_eval import SCORES_FILE, score_meta, score_run

    spec = StudySpec(name="s", configs=(StudyConfig(name="a"),))
    cfg = study.train_config(spec, spec.configs[0], 0, tmp_path, {})
    cache = {"final": {"fd": 1.0}, "all@2": {"fd": 3.0}}  # a guidance setting the spec no longer has
    (tmp_path / SCORES_FILE).write_text(json.dumps({"meta": score_meta(spec, cfg), "scores": cache}))
    assert score_run(spec, spec.configs[0], tmp_path, 0, cfg) == {"final": {"fd": 1.0}}  # nothing sampled


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"name": "a", "sweep": [{}]}, "must change something"),
        ({"name": "a", "sweep": [{"num_steps": 4}, {"num_steps": 4}]}, "differ from the others"),
    ],
)
def test_bad_sweeps(config, match):
    with pytest.raises(ValueError, match=match):
        spec_from_dict({"name": "x", "configs": [config]})


def test_guidance_needs_label_dropout():
    spec = spec_from_dict(
        {"name": "x", "guidance_scales": [2.0], "configs": [{"name": "a", "model": {"class_dropout_prob": 0.0}}]}
    )
    with pytest.raises(ValueError, match="label dropout"):
        study.check_spec(spec)
