"""`ditkit study` (ditkit.apps.study, study_spec, study_report): specs, summaries with seed spreads and
correlations, writers, resume."""

from __future__ import annotations

import json

import pytest

from ditkit.apps import study, study_report
from ditkit.apps.study import run_study
from ditkit.apps.study_report import summarize
from ditkit.apps.study_spec import StudyConfig, StudySpec, load_spec, spec_from_dict


def test_built_in_specs_parse():
    blocks, scaling, guidance = (load_spec(n) for n in ("blocks", "scaling", "guidance"))
    assert [c.model["block"] for c in blocks.configs] == ["adaln_zero", "adaln", "cross_attn", "in_context"]
    assert len(scaling.configs) >= 6 and {c.model["patch_size"] for c in scaling.configs} == {4, 8}
    assert guidance.recipe == "latent-demo" and guidance.guidance_channels == ("all", 3)
    assert all(len(s.seeds) >= 2 for s in (blocks, scaling, guidance))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"name": "x", "configs": []}, "lists no configs"),
        ({"name": "x", "configs": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"name": "x", "recipe": "imagenet", "configs": [{"name": "a"}]}, "recipe must be one of"),
        ({"name": "x", "bogus": 1, "configs": [{"name": "a"}]}, r"unknown study spec fields \['bogus'\]"),
        ({"name": "x", "configs": [{"name": "a", "depth": 3}]}, "cannot take"),
    ],
)
def test_spec_errors(values, match):
    with pytest.raises(ValueError, match=match):
        spec_from_dict(values)


def test_spec_files_toml_and_json(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"name": "j", "seeds": [3, 4], "configs": [{"name": "a"}]}))
    assert load_spec(tmp_path / "s.json").seeds == (3, 4)
    (tmp_path / "s.toml").write_text('name = "t"\n[[configs]]\nname = "a"\nmodel = { depth = 2 }\n')
    assert load_spec(tmp_path / "s.toml").configs[0].model == {"depth": 2}
    with pytest.raises(ValueError, match="not found"):
        load_spec(tmp_path / "missing.toml")


def _fake_runs() -> dict:
    def run(gflops, fds):
        return {
            "evals": [(100, 0.5, fds[0]), (200, 0.8, fds[1])],
            "gflops": gflops,
            "train_gflops_per_step": 96 * gflops,
        }

    return {
        "small": {0: run(0.1, [30, 20]), 1: run(0.1, [31, 21])},
        "medium": {0: run(1.0, [20, 12]), 1: run(1.0, [22, 14])},
        "large": {0: run(10.0, [15, 10.5]), 1: run(10.0, [14, 10])},
        "broken": {0: {"error": "ValueError: boom"}, 1: {"error": "ValueError: boom"}},
    }


def test_summary_ranks_with_seed_spread_and_correlates_with_gflops(tmp_path):
    spec = StudySpec(name="s", configs=tuple(StudyConfig(name=n) for n in ("small", "medium", "large", "broken")))
    results = summarize(spec, _fake_runs())
    assert results["ranking_by_fd"] == ["large", "medium", "small"]
    assert results["configs"]["medium"]["fd"] == pytest.approx((13.0, 2**0.5))
    pairs = {(p["better"], p["worse"]): p["exceeds_seed_spread"] for p in results["adjacent_pairs"]}
    assert pairs == {("large", "medium"): True, ("medium", "small"): True}
    assert results["corr_log_gflops_fd"] < -0.9 and "boom" in results["configs"]["broken"]["errors"]["0"]
    text = study_report.results_markdown(results)
    assert "| medium | 1.000 | 200 | 2 | 0.800 +- 0.000 | 13.00 +- 1.41 |" in text and "failed" in text
    paths = study_report.write_plots(results, tmp_path)
    assert {p.name for p in paths} == {"fd_over_steps.png", "fd_vs_gflops.png", "fd_vs_training_compute.png"}
    assert results["configs"]["large"]["train_gflops_per_step"] == 960.0


def test_rerun_resumes_and_a_failed_config_does_not_stop_the_others(tmp_path, monkeypatch):
    calls = []
    runs = _fake_runs()

    def fake_run_one(spec, config, seed, out, shared):
        calls.append((config.name, seed))
        if config.name == "broken":
            raise ValueError("boom")
        return runs[config.name][seed]

    monkeypatch.setattr(study, "_run_one", fake_run_one)
    spec = StudySpec(name="s", configs=tuple(StudyConfig(name=n) for n in ("small", "broken", "large")))
    results = run_study(spec, tmp_path, seeds=1)
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
        "model": {"depth": 2, "hidden_size": 64},
        "train": {"sample_every_steps": 0, "device": "cpu", "precision": "fp32"},
        "sample": {"cfg_scale": 1.0, "num_steps": 4},
        "configs": [{"name": "adaLN-Zero"}, {"name": "in-context", "model": {"block": "in_context"}}],
    }
    (tmp_path / "tiny.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = invoke("study", str(tmp_path / "tiny.json"), "--out", str(out))
    assert "ranking by FD" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    for name in ("adaLN-Zero", "in-context"):
        config = results["configs"][name]
        assert config["seeds"] == 2 and config["final_step"] == 20 and config["fd"][0] > 0
        assert set(config["curve"]) == {"10", "20"}
    assert (out / "fd_over_steps.png").is_file() and (out / "runs" / "in-context-s1" / "metrics.jsonl").is_file()
    invoke("study", str(tmp_path / "tiny.json"), "--out", str(out))  # resumes: every run is complete
    assert json.loads((out / "results.json").read_text())["configs"] == results["configs"]
