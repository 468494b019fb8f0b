"""Train -> resume -> sample -> evaluate -> export, end to end through the `ditkit` command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ditkit.apps.demo import demo_train_config
from ditkit.model.weights import load_dit, read_diffusion_config

from .test_cli import invoke, run

pytestmark = pytest.mark.xdist_group("train_cli")  # one worker builds the module's run folder once

TINY = [
    "--preset",
    "DiT-T/2",
    "--image-size",
    "32",
    "--global-batch-size",
    "8",
    "--log-every",
    "1",
    "--sample-every",
    "0",
    "--eval-every",
    "0",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--num-workers",
    "0",
    "--deterministic",
]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")  # with pytest-xdist the tests below share one worker (xdist_group)
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "mnist"
    invoke("train", "--out", str(run_dir), *TINY, "--max-steps", "3", "--ckpt-every", "3")
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3]
    (run_dir / "checkpoints" / "latest").read_text()
    invoke("train", "--out", str(run_dir), *TINY, "--max-steps", "6", "--ckpt-every", "3")  # resumes at 3
    return run_dir


def test_train_resumes_where_it_stopped(trained_run: Path, tmp_path: Path) -> None:
    records = metrics(trained_run)
    assert [m["step"] for m in records] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["loss"]) for m in records)
    again = invoke("train", "--out", str(trained_run), *TINY, "--max-steps", "6")
    assert "nothing to do" in again.stderr  # a finished run is a no-op
    straight = tmp_path / "straight"
    invoke("train", "--out", str(straight), *TINY, "--max-steps", "6", "--ckpt-every", "6")
    assert [m["loss"] for m in metrics(straight)] == [m["loss"] for m in records]  # exact resume


def test_changed_settings_on_resume_are_refused(trained_run: Path) -> None:
    proc = invoke("train", "--out", str(trained_run), *TINY, "--max-steps", "7", "--seed", "5", check=False)
    assert proc.returncode == 2 and "seed: 0 -> 5" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_sample_and_digits_metric_from_run_folder(trained_run: Path, tmp_path: Path) -> None:
    npz = tmp_path / "s.npz"
    invoke(
        "sample",
        "--ckpt",
        str(trained_run),
        "--out",
        str(tmp_path),
        "--num",
        "20",
        "--npz",
        str(npz),
        "--steps",
        "3",
        "--sampler",
        "dpm++2m",
        "--cfg-scale",
        "2",
        "--class-balanced",
    )
    result = json.loads(invoke("evaluate", str(npz), "--metric", "digits", "--json").stdout)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["num_samples"] == 20 and np.isfinite(result["fd"])


def test_export_loads_with_load_dit(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ema.safetensors"
    invoke("export", str(trained_run), str(out))
    model = load_dit(out)
    assert model.config.in_channels == 1 and model.config.num_classes == 10 and model.config.input_size == 32
    trained_with = json.loads((trained_run / "config.json").read_text())["diffusion"]
    assert trained_with["predict_xstart"] and trained_with["noise_schedule"] == "cosine"  # not the paper's
    for source in (out, trained_run):  # samplers must use the process the model was trained with
        assert dataclasses.asdict(read_diffusion_config(source, model.config)) == trained_with


def test_embedded_default_needs_only_an_output_folder(tmp_path: Path) -> None:
    """The default is the demo recipe on the embedded MNIST; one step of it (grids and scoring off here)."""
    cfg = json.loads(invoke("train", "--out", str(tmp_path / "d"), "--dry-run").stdout)
    assert cfg == json.loads(json.dumps(demo_train_config(tmp_path / "d").to_dict()))
    assert cfg["data"] is None and cfg["vae"] == "none" and cfg["model"]["in_channels"] == 1
    invoke("train", "--out", str(tmp_path / "d"), "--max-steps", "1", "--sample-every", "0", "--eval-every", "0")
    assert metrics(tmp_path / "d")[-1]["step"] == 1


@pytest.mark.slow
def test_embedded_default_with_its_grid_and_scoring(tmp_path: Path) -> None:
    """The same with nothing but --out and --max-steps: the final step also writes a grid and scores."""
    run("train", "--out", str(tmp_path / "d"), "--max-steps", "1", "--device", "cpu")
    last = metrics(tmp_path / "d")[-1]
    assert last["step"] == 1 and 0.0 <= last["eval_accuracy"] <= 1.0 and last["eval_fd"] > 0
    assert (tmp_path / "d" / "samples" / "step_0000001.png").is_file()


@pytest.mark.slow
def test_latent_demo_end_to_end(tmp_path: Path) -> None:
    """`ditkit demo` (the latent route: the shipped autoencoder, a latent store, a DiT on 2x2 latent patches)."""
    out = tmp_path / "demo"
    proc = invoke("demo", "--out", str(out), "--max-steps", "4", "--num-samples", "20", "--precision", "fp32")
    assert "latent route" in proc.stdout and f"ditkit serve --ckpt {out / 'dit'}" in proc.stdout
    report = json.loads((out / "demo_report.json").read_text())
    assert report["route"] == "latent" and report["vae"]["digit_accuracy"] >= 0.98 and report["train_steps"] == 4
    with np.load(out / "samples_cfg.npz") as data:
        assert data["arr_0"].shape == (20, 32, 32, 1)  # decoded by the autoencoder, 32 px digits
    assert (out / "latents" / "meta.json").is_file() and (out / "dit" / "checkpoints" / "latest").is_file()


@pytest.mark.slow
def test_flow_demo_end_to_end(tmp_path: Path) -> None:
    """`ditkit demo --objective flow`: the latent recipe trained with SiT's flow matching, sampled with Heun."""
    out = tmp_path / "demo"
    args = ("--max-steps", "4", "--num-samples", "20", "--precision", "fp32")
    proc = invoke("demo", "--objective", "flow", "--out", str(out), *args)
    assert "latent route" in proc.stdout
    report = json.loads((out / "demo_report.json").read_text())
    assert report["objective"] == "flow" and report["sampler"] == "heun" and report["train_steps"] == 4
    assert 0.0 <= report["accuracy_cfg"] <= 1.0
    stored = json.loads((out / "dit" / "config.json").read_text())
    assert stored["diffusion"]["objective"] == "flow" and not stored["model"]["learn_sigma"]
    with np.load(out / "samples_cfg.npz") as data:
        assert data["arr_0"].shape == (20, 32, 32, 1)
