"""Flow matching wired into ditkit: train -> sample -> walk -> export through the CLI, the recorded process,
the sampler checks, per-seed determinism and guidance (the flow maths itself: test_flow.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ditkit.config import (
    IMAGE_SAMPLING,
    WALK_SAMPLING,
    DiffusionConfig,
    FlowConfig,
    SampleConfig,
    TrainConfig,
    check_sampler,
    for_process,
    get_preset,
)
from ditkit.flow.objective import FlowMatching
from ditkit.model.dit import DiT
from ditkit.model.weights import load_model, read_diffusion_config
from ditkit.runtime.errors import InputError
from ditkit.sampling.generate import generate
from ditkit.training.run import open_for_sampling
from ditkit.training.step import build_process, draw_step, process_times
from smoke.test_cli import invoke
from stubs import TINY_DIGITS_RUN

pytestmark = pytest.mark.xdist_group("flow_wiring")  # one worker trains the module's run once

FAST = [*TINY_DIGITS_RUN, "--log-every", "1", "--num-workers", "0", "--deterministic"]
SAMPLE = ["--num-steps", "4", "--per-class", "1", "--classes", "0,1", "--device", "cpu", "--precision", "fp32"]
FLOW_SAMPLERS = ["euler", "heun", "sde-euler", "sde-heun"]
if importlib.util.find_spec("torchdiffeq") is not None:
    FLOW_SAMPLERS.append("dopri5")


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("flow") / "run"
    invoke("train", "--out", str(run_dir), *FAST, "--objective", "flow", "--max-steps", "3", "--sample-every", "3")
    return run_dir


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# The run and its weights record the process.


def test_flow_run_trains_and_records_its_objective(flow_run: Path) -> None:
    records = [json.loads(line) for line in (flow_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert list((flow_run / "samples").glob("*.png")), "the training grid samples with a flow sampler"
    stored = json.loads((flow_run / "config.json").read_text())
    assert stored["diffusion"]["objective"] == "flow"
    assert stored["diffusion"]["flow"]["path"] == "linear"
    assert stored["diffusion"]["flow"]["prediction"] == "velocity"
    assert stored["model"]["learn_sigma"] is False and stored["diffusion"]["learn_sigma"] is False
    assert stored["sample"]["sampler"] == "heun"  # the grids' default for a flow run
    model, process = load_model(flow_run)
    assert process.is_flow and process.flow == FlowConfig()
    ema = flow_run / "checkpoints" / "step_0000003" / "ema.safetensors"
    assert read_diffusion_config(ema, model.config) == process  # the weights themselves carry it


def test_train_flags_choose_the_flow(tmp_path: Path) -> None:
    proc = invoke(
        "train",
        "--out",
        str(tmp_path / "r"),
        *FAST,
        "--objective",
        "flow",
        "--path",
        "gvp",
        "--prediction",
        "noise",
        "--loss-weight",
        "likelihood",
        "--dry-run",
    )
    diffusion = json.loads(proc.stdout)["diffusion"]
    assert diffusion["objective"] == "flow"
    assert diffusion["flow"] == {
        "path": "gvp",
        "prediction": "noise",
        "loss_weight": "likelihood",
        "train_eps": None,
        "sample_eps": None,
    }


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--objective", "flow", "--learn-sigma"], "learns no variance.*--learn-sigma"),
        (["--path", "gvp"], "flow-matching settings; add objective 'flow'.*--objective"),
        (["--objective", "flow", "--predict", "x0"], "diffusion settings"),
    ],
)
def test_train_refuses_mixed_processes_in_one_line(tmp_path: Path, flags: list[str], match: str) -> None:
    line = one_line_error(invoke("train", "--out", str(tmp_path / "r"), *FAST, *flags, "--dry-run", check=False))
    assert re.search(match, line), line


# Sampling a flow run.


@pytest.mark.parametrize("sampler", FLOW_SAMPLERS)
def test_sample_with_each_flow_sampler(flow_run: Path, tmp_path: Path, sampler: str) -> None:
    out = tmp_path / sampler
    invoke("sample", "--ckpt", str(flow_run), "--out", str(out), "--sampler", sampler, *SAMPLE)
    assert (out / "grid.png").is_file()
    assert len(list((out / "images").glob("*.png"))) == 2


def test_sample_and_walk_pick_the_flow_without_flags(
    flow_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ditkit")
    invoke("sample", "--ckpt", str(flow_run), "--out", str(tmp_path / "s"), *SAMPLE)
    assert "heun: 6 model evaluations for 2 images" in caplog.text  # NFE 2 x (4 - 1), at debug
    invoke("walk", "--ckpt", str(flow_run), "--out", str(tmp_path / "w"), "--frames", "2", "--num-steps", "3")
    assert (tmp_path / "w" / "noise_walk.gif").is_file() and (tmp_path / "w" / "class_walk.gif").is_file()


def test_a_diffusion_sampler_on_a_flow_run_is_one_line(flow_run: Path, tmp_path: Path) -> None:
    proc = invoke("sample", "--ckpt", str(flow_run), "--out", str(tmp_path / "s"), "--sampler", "ddpm", check=False)
    line = one_line_error(proc)
    assert "'ddpm' is a diffusion sampler" in line and "flow matching" in line and "heun" in line
    assert "--sampler" in line


def test_export_refuses_a_flow_model_in_one_line(flow_run: Path, tmp_path: Path) -> None:
    proc = invoke("export", str(flow_run), str(tmp_path / "pipe"), "--format", "diffusers", check=False)
    assert "DiTPipeline samples ADM's eps-prediction diffusion only" in one_line_error(proc)
    assert not (tmp_path / "pipe").exists()


def test_same_seeds_same_images(flow_run: Path) -> None:
    opened = open_for_sampling(flow_run)
    assert opened.diffusion.is_flow
    for sampler in ("heun", "sde-euler"):
        config = SampleConfig(sampler=sampler, num_steps=5, cfg_scale=1.0, precision="fp32")
        runs = [
            generate(opened.model, [3, 1, 4], [7, 8, 9], config.replace(batch_size=b), diffusion=opened.diffusion)
            for b in (3, 3, 1)
        ]
        assert np.array_equal(runs[0], runs[1]), sampler
        assert np.array_equal(runs[0], runs[2]), f"{sampler}: an image depends on its seed, not its batch"
    sde = SampleConfig(sampler="sde-euler", num_steps=5, cfg_scale=1.0, precision="fp32")
    a = generate(opened.model, [1, 1], [7, 8], sde, diffusion=opened.diffusion)
    assert not np.array_equal(a[0], a[1])


# The pieces.


def test_old_files_without_the_keys_load_as_diffusion(tmp_path: Path) -> None:
    old = {"num_steps": 1000, "noise_schedule": "linear", "learn_sigma": True, "predict_xstart": False}
    assert DiffusionConfig.from_dict(old) == DiffusionConfig()
    assert not DiffusionConfig.from_dict(old).is_flow
    run = TrainConfig(out_dir=str(tmp_path)).to_dict()
    for key in ("objective", "flow"):
        del run["diffusion"][key]
    for key in ("sde_diffusion_form", "sde_diffusion_norm", "sde_last_step", "sde_last_step_size"):
        del run["sample"][key]
    assert TrainConfig.from_dict(run).diffusion.objective == "diffusion"
    flow = DiffusionConfig(objective="flow", learn_sigma=False, flow=FlowConfig(path="vp"))
    assert DiffusionConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(flow)))) == flow


def test_process_configs_are_checked() -> None:
    assert DiffusionConfig(objective="flow", learn_sigma=False).flow == FlowConfig()
    assert DiffusionConfig(objective="flow").learn_sigma  # SiT's checkpoints: the extra channels are ignored
    with pytest.raises(InputError, match="need objective 'flow'"):
        DiffusionConfig(flow=FlowConfig())
    with pytest.raises(InputError, match="path must be one of"):
        FlowConfig(path="cosine")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="train_eps must be in"):
        FlowConfig(train_eps=0.7)
    with pytest.raises(InputError, match="sde_last_step must be one of"):
        SampleConfig(sde_last_step="last")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="sde_diffusion_form must be one of"):
        SampleConfig(sde_diffusion_form="cubic")  # type: ignore[arg-type]


def test_for_process_picks_and_checks_the_sampler() -> None:
    flow = DiffusionConfig(objective="flow", learn_sigma=False)
    assert for_process(IMAGE_SAMPLING, flow).sampler == "heun"
    assert for_process(IMAGE_SAMPLING, flow).num_steps == 50
    walk = for_process(WALK_SAMPLING.replace(num_steps=7), flow, given={"num_steps"})
    assert (walk.sampler, walk.num_steps, walk.cfg_scale) == ("heun", 7, WALK_SAMPLING.cfg_scale)
    assert for_process(IMAGE_SAMPLING, DiffusionConfig()) == IMAGE_SAMPLING
    with pytest.raises(InputError, match="'ddim' is a diffusion sampler"):
        for_process(WALK_SAMPLING, flow, given={"sampler"})
    with pytest.raises(InputError, match="'euler' is a flow-matching sampler"):
        check_sampler("euler", DiffusionConfig())


def test_flow_draws_are_continuous_in_the_interval_and_seeded() -> None:
    process = build_process(DiffusionConfig(objective="flow", learn_sigma=False, flow=FlowConfig(path="vp")))
    assert isinstance(process, FlowMatching)
    t0, t1 = process_times(process)
    assert (t0, t1) == process.check_interval() and t1 < 1.0
    draws = [draw_step(torch.Generator().manual_seed(3), 64, (1, 8, 8), (t0, t1)) for _ in range(2)]
    assert torch.equal(draws[0]["t"], draws[1]["t"]) and torch.equal(draws[0]["noise"], draws[1]["noise"])
    t = draws[0]["t"]
    assert t.is_floating_point() and bool(((t >= t0) & (t <= t1)).all()) and len(t.unique()) == 64
    assert process_times(build_process(DiffusionConfig())) == 1000


def test_guidance_on_a_flow_model_all_and_three_channels() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DiT(get_preset("DiT-T/2", learn_sigma=False)).eval()
        for p in model.parameters():  # adaLN-Zero starts at a zero output: give guidance something to move
            torch.nn.init.normal_(p, std=0.1)
    flow = DiffusionConfig(objective="flow", learn_sigma=False)
    base = SampleConfig(sampler="euler", num_steps=4, precision="fp32")
    images = {
        (scale, channels): generate(
            model, [1, 2], [5, 6], base.replace(cfg_scale=scale, cfg_channels=channels), diffusion=flow
        )
        for scale, channels in ((1.0, "all"), (4.0, "all"), (4.0, 3))
    }
    assert images[(1.0, "all")].shape == (2, 8, 8, 4)
    assert not np.array_equal(images[(1.0, "all")], images[(4.0, "all")])
    assert not np.array_equal(images[(4.0, "all")], images[(4.0, 3)])


def test_the_page_offers_the_flow_samplers(flow_run: Path, tmp_path: Path) -> None:
    from ditkit.apps.page_sampler import PageSampler

    page = PageSampler(open_for_sampling(flow_run), tmp_path)
    assert page.start.sampler == "heun" and "ddpm" not in page.samplers and "sde-euler" in page.samplers
    assert page.grid(["1"], 1, 1.0, "all channels", "euler", 3, 0)[0].is_file()
    with pytest.raises(InputError, match="'ddim' is a diffusion sampler"):
        page.grid(["1"], 1, 1.0, "all channels", "ddim", 3, 0)


def test_the_flow_demo_recipe(tmp_path: Path) -> None:
    from ditkit.config.recipes import demo_train_config, objective_fields

    cfg = demo_train_config(tmp_path, **objective_fields("flow"))
    assert cfg.diffusion.is_flow and cfg.diffusion.flow == FlowConfig() and not cfg.model.learn_sigma
    assert (cfg.sample.sampler, cfg.sample.num_steps) == ("heun", 10)
    assert objective_fields("diffusion") == {}
    with pytest.raises(InputError, match="objective must be"):
        objective_fields("score")
