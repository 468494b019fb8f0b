"""Whole training runs, train(), on a tiny model (CPU): the run folder, resuming, the recorded losses, stops
(non-finite loss, a signal), evaluation hooks, micro-batches, latent space, gradient checkpointing.

Every run here is DiT-T/2 on sklearn's 8x8 digits in pixel space, deterministic, one thread: ~1 s each.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ditkit.config import SampleConfig, TrainConfig, get_preset
from ditkit.model.weights import load_dit
from ditkit.runtime import stopping
from ditkit.runtime.seeds import image_seeds
from ditkit.runtime.stopping import NonFiniteLoss
from ditkit.sampling.generate import generate
from ditkit.training import monitor as monitor_mod
from ditkit.training.loop import train
from ditkit.training.run import read_run_config
from numerics import OPS_BACKWARD, approx_fp32

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REGRESSION_FILE = FIXTURES / "tiny_run_losses.json"
SMALL_SAMPLING = SampleConfig(sampler="ddim", num_steps=2, cfg_scale=1.0, batch_size=100)


def tiny_cfg(tmp_path: Path, **changes: object) -> TrainConfig:
    fields: dict = {
        "out_dir": str(tmp_path / "run"),
        "data": "digits",  # sklearn's 8x8 digits: opens in ~0.1 s (MNIST resizes 9,000 images per run)
        "model": get_preset("DiT-T/2", in_channels=1),
        "image_size": 8,
        "vae": "none",
        "max_steps": 6,
        "global_batch_size": 8,
        "num_workers": 0,
        "log_every_steps": 1,
        "ckpt_every_steps": 3,
        "sample_every_steps": 0,
        "deterministic": True,
        "num_threads": 1,
        "device": "cpu",  # also where CUDA exists: these runs (and the recorded losses) are CPU runs
        "precision": "fp32",  # "auto" picks bf16 on CPUs with bf16 units: the recorded losses are fp32
    }
    fields.update(changes)
    return TrainConfig(**fields)


def metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: str | Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / f"step_{step:07d}" / f"{name}.safetensors"))


def test_run_folder_layout_and_rerun_is_a_noop(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, sample_every_steps=3, num_grid_images=4, sample=SMALL_SAMPLING)
    run_dir = train(cfg)
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "metrics.jsonl",
        "loss_curve.png",
        "log.txt",
        "checkpoints/latest",
        "samples/step_0000003.png",
        "samples/step_0000006.png",
    } <= names
    for f in ("model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"):
        assert f"checkpoints/step_0000006/{f}" in names
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    assert read_run_config(run_dir) == cfg
    lines = metrics(run_dir)
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "mse", "vb", "grad_norm", "steps_per_sec", "img_per_sec", "lr"} <= set(lines[0])
    with caplog.at_level("INFO", logger="ditkit"):
        train(cfg)
    assert "is complete at step 6" in caplog.text
    assert len(metrics(run_dir)) == 6


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    run_dir = train(tiny_cfg(tmp_path, max_steps=2))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents*"))


def test_resume_repeats_an_uninterrupted_run_exactly(tmp_path):
    full = train(tiny_cfg(tmp_path / "a", ema_warmup=True))
    part = tiny_cfg(tmp_path / "b", ema_warmup=True)
    train(part.replace(max_steps=3))
    assert [r["step"] for r in metrics(part.out_dir)] == [1, 2, 3]
    train(part)  # the same command with the original max_steps resumes at step 3
    assert [r["loss"] for r in metrics(part.out_dir)] == [r["loss"] for r in metrics(full)]
    for name in ("model", "ema"):
        a, b = final_weights(full, 6, name), final_weights(part.out_dir, 6, name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_metrics_written_after_the_last_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, max_steps=5)
    train(cfg)
    ckpt = Path(cfg.out_dir) / "checkpoints"
    for path in ckpt.glob("step_0000005"):
        import shutil

        shutil.rmtree(path)  # as if killed between step 3's checkpoint and the end
    train(cfg)
    assert [r["step"] for r in metrics(cfg.out_dir)] == [1, 2, 3, 4, 5]


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path, max_steps=3)
    train(cfg)
    before = (Path(cfg.out_dir) / "config.json").read_text()
    with pytest.raises(ValueError, match=r"was started with other settings \(seed: 0 -> 1\)"):
        train(cfg.replace(seed=1, lr=1e-3, max_steps=6))  # lr may change on resume, the seed may not
    assert (Path(cfg.out_dir) / "config.json").read_text() == before


def _record_regression_run(tmp_path: Path) -> list[float]:
    cfg = tiny_cfg(tmp_path, max_steps=20, ckpt_every_steps=20, ema_warmup=True)
    return [r["loss"] for r in metrics(train(cfg))]


def test_recorded_tiny_run_losses_are_reproduced_bit_for_bit(tmp_path):
    """STYLE 'refactor rule': a change that should not alter numerics must reproduce these 20 losses.

    Bit for bit with the torch build that recorded them (seen so on Intel Cascade Lake and two AMD EPYC
    kinds, 1 thread); another torch build may pick other CPU kernels, so there fp32 rounding is allowed.
    """
    recorded = json.loads(REGRESSION_FILE.read_text())
    losses = _record_regression_run(tmp_path)
    if torch.__version__ == recorded["torch"]:
        assert losses == recorded["losses"]
    else:
        assert losses == approx_fp32(recorded["losses"], ops=20 * OPS_BACKWARD)


def test_non_finite_loss_stops_and_names_the_step(tmp_path):
    cfg = tiny_cfg(tmp_path, lr=1e30, ckpt_every_steps=1, log_every_steps=5)
    with pytest.raises(NonFiniteLoss, match=r"at step 2; training stopped \(the last good checkpoint step_0000001"):
        train(cfg)
    steps = sorted(p.name for p in (Path(cfg.out_dir) / "checkpoints").glob("step_*"))
    assert steps == ["step_0000001"]


def test_stop_signal_writes_a_checkpoint_and_raises(tmp_path, monkeypatch):
    calls = {"n": 0}

    def fake_requested(self):
        calls["n"] += 1
        return int(signal.SIGTERM) if calls["n"] == 2 else 0

    monkeypatch.setattr(stopping.StopSignal, "requested", fake_requested)
    cfg = tiny_cfg(tmp_path, ckpt_every_steps=100)
    with pytest.raises(stopping.Interrupted, match="stopped by SIGTERM at step 2") as info:
        train(cfg)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert (Path(cfg.out_dir) / "checkpoints" / "step_0000002" / "state.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_data_model_mismatches_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"the model takes 4x8x8 inputs but the data give 1x8x8"):
        train(tiny_cfg(tmp_path, model=get_preset("DiT-T/2")))
    with pytest.raises(ValueError, match="dataset has 10 classes but the model has 7"):
        train(tiny_cfg(tmp_path, model=get_preset("DiT-T/2", in_channels=1, num_classes=7)))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_hook_logs_metrics(tmp_path, monkeypatch):
    seen = []

    def fake_scorer(num_classes, image_shape, **kwargs):
        def score(images, labels):
            seen.append((images.shape, images.dtype, labels.tolist()))
            return {"eval_mean_pixel": float(images.mean())}

        return score

    monkeypatch.setattr(monitor_mod, "make_scorer", fake_scorer)
    cfg = tiny_cfg(
        tmp_path, max_steps=4, eval_every_steps=2, num_eval_samples=5, sample=SMALL_SAMPLING.replace(batch_size=2)
    )
    train(cfg)
    assert seen[0][0] == (5, 8, 8, 1) and str(seen[0][1]) == "uint8" and seen[0][2] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in metrics(cfg.out_dir) if "eval_mean_pixel" in r] == [2, 4]


def test_micro_batch_run_matches_full_batch_run(tmp_path):
    a = metrics(train(tiny_cfg(tmp_path / "a", max_steps=3)))
    b = metrics(train(tiny_cfg(tmp_path / "b", max_steps=3, micro_batch_size=2)))
    for ra, rb in zip(a, b):
        assert rb["loss"] == approx_fp32(ra["loss"], ops=3 * OPS_BACKWARD)  # 3 steps


def test_unconditional_model_trains(tmp_path):
    model = dataclasses.replace(get_preset("DiT-T/2", in_channels=1), num_classes=0)
    run_dir = train(
        tiny_cfg(tmp_path, model=model, max_steps=2, sample_every_steps=2, num_grid_images=2, sample=SMALL_SAMPLING)
    )
    assert (run_dir / "samples" / "step_0000002.png").is_file()
    assert all(math.isfinite(r["loss"]) for r in metrics(run_dir))
    ema = load_dit(run_dir)
    assert ema.config.num_classes == 0 and ema.y_embedder is None  # no label table was trained
    assert read_run_config(run_dir).model == model


def test_extract_latents_then_train_and_online_vae(tmp_path):
    """Latent space end to end with a tiny random VAE (downsample 2): a latent store, then online encoding."""
    pytest.importorskip("diffusers")
    from ditkit.data.autoencoder import load_vae, make_tiny_vae
    from ditkit.data.datasets import DigitsDataset
    from ditkit.data.latent_store import extract_latents

    vae_dir = make_tiny_vae(tmp_path / "vae", in_channels=1)
    vae = load_vae(str(vae_dir))
    store = extract_latents(DigitsDataset(image_size=8), vae, tmp_path / "latents", batch_size=512)
    model = get_preset("DiT-T/2", in_channels=4, input_size=4)
    common = {
        "model": model,
        "max_steps": 2,
        "ckpt_every_steps": 2,
        "sample_every_steps": 2,
        "num_grid_images": 2,
        "sample": SMALL_SAMPLING,
        "global_batch_size": 4,
    }
    run = train(tiny_cfg(tmp_path / "store", data=str(store), vae="none", **common))
    assert (run / "samples" / "step_0000002.png").is_file()  # decoded with the store's VAE
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(run))
    online = train(tiny_cfg(tmp_path / "online", data="digits", vae=str(vae_dir), **common))
    assert (online / "samples" / "step_0000002.png").is_file()
    with pytest.raises(ValueError, match=r"the model takes 4x4x4 inputs but the data give 4x8x8"):
        train(tiny_cfg(tmp_path / "bad", data="digits", image_size=16, vae=str(vae_dir), **common))


def test_grad_checkpointing_gives_the_same_run(tmp_path):
    a = metrics(train(tiny_cfg(tmp_path / "a", max_steps=3)))
    b = metrics(train(tiny_cfg(tmp_path / "b", max_steps=3, grad_checkpointing=True)))
    assert [r["loss"] for r in b] == approx_fp32([r["loss"] for r in a], ops=3 * OPS_BACKWARD)  # 3 steps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_compile_and_grad_checkpointing(tmp_path):
    run = train(
        tiny_cfg(
            tmp_path,
            device="cuda",
            precision="bf16",
            compile=True,
            grad_checkpointing=True,
            deterministic=False,
            max_steps=4,
            sample_every_steps=4,
            num_grid_images=2,
            sample=SMALL_SAMPLING,
        )
    )
    lines = metrics(run)
    assert len(lines) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    assert (run / "samples" / "step_0000004.png").is_file()


def test_digits_metrics_are_logged_for_mnist(tmp_path):
    """The real eval hook on 32x32 MNIST: the shipped digit classifier scores class-balanced EMA samples."""
    from importlib import resources

    if not resources.files("ditkit").joinpath("assets/mnist_classifier.safetensors").is_file():
        pytest.skip("the digit classifier weights are not shipped in this checkout")
    model = get_preset("DiT-T/4", in_channels=1, input_size=32)
    cfg = tiny_cfg(
        tmp_path,
        data=None,
        model=model,
        image_size=32,
        max_steps=2,
        eval_every_steps=2,
        num_eval_samples=20,
        sample=SMALL_SAMPLING,
        ckpt_every_steps=2,
    )
    run_dir = train(cfg)
    lines = metrics(run_dir)
    assert "eval_accuracy" not in lines[0]
    # The logged numbers are those of the final EMA's class-balanced samples (seeds image_seed(eval_seed, i),
    # labels i % 10), scored by the shipped classifier: recompute them from the saved checkpoint.
    from ditkit.metrics.digit_classifier import digits_metrics

    indices = list(range(cfg.num_eval_samples))
    labels = [i % 10 for i in indices]
    seeds = image_seeds(cfg.eval_seed, len(indices))
    images = generate(load_dit(run_dir), labels, seeds, cfg.sample, diffusion=cfg.diffusion)
    expected = digits_metrics(images, np.array(labels))
    assert lines[-1]["eval_accuracy"] == expected["accuracy"]
    assert lines[-1]["eval_fd"] == pytest.approx(expected["fd"], rel=1e-9) and expected["fd"] > 0


@pytest.mark.slow
def test_inception_fid_is_logged_for_rgb_images(tmp_path):
    """FID monitoring with the real FID Inception (reference: statistics of training images); ~1 min on CPU."""
    import numpy as np

    from ditkit.metrics.inception import load_inception

    try:
        load_inception()
    except ValueError as err:
        pytest.skip(str(err))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", images=rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), labels=np.arange(64) % 4)
    cfg = tiny_cfg(
        tmp_path,
        data=str(tmp_path / "rgb.npz"),
        model=get_preset("DiT-T/2", num_classes=4, in_channels=3),
        max_steps=2,
        eval_every_steps=2,
        num_eval_samples=16,
        sample=SMALL_SAMPLING,
    )
    lines = metrics(train(cfg))
    assert lines[-1]["eval_fid"] > 0 and (Path(cfg.out_dir) / "eval" / "ref_stats_16.npz").is_file()


if __name__ == "__main__":  # record the reference once: python tests/unit/test_train_run.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        REGRESSION_FILE.write_text(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "note": "test_train_run.py, 20 steps of DiT-T/2 on 8x8 sklearn digits, deterministic, 1 thread",
                    "losses": _record_regression_run(Path(tmp)),
                },
                indent=1,
            )
            + "\n"
        )
