"""Model size, diffusion and recipe flags of `ditkit train`, the small presets, and the image-folder layouts that
`ref-stats` and `evaluate` read (the same as training's: flat or `<class>/*.png`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditkit.config import PRESETS, DiffusionConfig
from ditkit.config.recipes import LATENT_DEMO_MODEL, RECIPES, cpu_small_patch, recipe_fields
from ditkit.data.image_files import open_images
from ditkit.model.dit import DiT, num_parameters
from ditkit.model.flops import model_cost
from ditkit.runtime.errors import InputError
from ditkit.training.run import build_train_config
from smoke.test_cli import invoke
from stubs import RandomFeatureExtractor

DIGITS = ("--data", "digits", "--vae", "none", "--image-size", "32")  # small, offline, in pixel space


def dry_run(tmp_path: Path, *flags: str) -> dict:
    return json.loads(invoke("train", "--out", str(tmp_path / "run"), *flags, "--dry-run").stdout)


# Model size by flags.


def test_model_size_flags_reach_the_model_config(tmp_path: Path) -> None:
    cfg = dry_run(tmp_path, "--depth", "4", "--hidden-size", "64", "--heads", "4", "--patch-size", "2")
    model = cfg["model"]
    assert (model["depth"], model["hidden_size"], model["num_heads"], model["patch_size"]) == (4, 64, 4, 2)
    assert model["input_size"] == 24 and model["in_channels"] == 1  # the data's shape is untouched


def test_aliases_and_a_preset_under_the_flags(tmp_path: Path) -> None:
    cfg = dry_run(tmp_path, *DIGITS, "--preset", "DiT-XS/4", "--width", "96", "--num-heads", "3")
    model = cfg["model"]
    assert (model["depth"], model["hidden_size"], model["num_heads"], model["patch_size"]) == (6, 96, 3, 4)
    assert (model["input_size"], model["in_channels"], model["num_classes"]) == (32, 1, 10)


def test_diffusion_and_ema_flags(tmp_path: Path) -> None:
    cfg = dry_run(tmp_path, *DIGITS, "--preset", "DiT-T/2", "--predict", "x0", "--noise-schedule", "cosine")
    assert cfg["diffusion"]["predict_xstart"] and cfg["diffusion"]["noise_schedule"] == "cosine"
    assert not cfg["ema_warmup"]  # the paper's
    cfg = dry_run(tmp_path, *DIGITS, "--preset", "DiT-T/2", "--ema-warmup")
    assert cfg["ema_warmup"] and not cfg["diffusion"]["predict_xstart"]
    cfg = dry_run(tmp_path, "--predict", "eps", "--noise-schedule", "linear", "--no-ema-warmup")  # the demo's, undone
    assert cfg["diffusion"]["predict_xstart"] is False and cfg["diffusion"]["noise_schedule"] == "linear"
    assert cfg["ema_warmup"] is False


def test_bad_model_sizes_name_their_flag(tmp_path: Path) -> None:
    proc = invoke("train", "--out", str(tmp_path / "r"), "--hidden-size", "66", "--dry-run", check=False)
    assert proc.returncode == 2 and "--hidden-size" in proc.stderr and "66" in proc.stderr
    proc = invoke("train", "--out", str(tmp_path / "r"), "--patch-size", "3", "--dry-run", check=False)
    assert proc.returncode == 2 and "--patch-size" in proc.stderr
    proc = invoke("train", "--out", str(tmp_path / "r"), "--depth", "0", "--dry-run", check=False)
    assert proc.returncode == 2 and "--depth" in proc.stderr


# Recipes.


def test_cpu_small_sets_its_values(tmp_path: Path) -> None:
    cfg = dry_run(tmp_path, *DIGITS, "--recipe", "cpu-small")
    model, diffusion = cfg["model"], cfg["diffusion"]
    assert (model["depth"], model["hidden_size"], model["num_heads"]) == (6, 128, 4)
    assert model["patch_size"] == 4 and (model["input_size"] // model["patch_size"]) ** 2 == 64  # at most 64 tokens
    assert not model["learn_sigma"] and not diffusion["learn_sigma"]
    assert diffusion["predict_xstart"] and diffusion["noise_schedule"] == "cosine"
    assert (cfg["global_batch_size"], cfg["lr"], cfg["warmup_steps"]) == (64, 3e-3, 100)
    assert (cfg["ema_decay"], cfg["ema_warmup"], cfg["max_steps"]) == (0.999, True, 2000)
    assert cfg["sample"]["sampler"] == "dpm++2m"
    assert (cfg["vae"], cfg["image_size"], cfg["data"]) == ("none", 32, "digits")  # the data's, not the recipe's


def test_explicit_flags_win_over_the_recipe(tmp_path: Path) -> None:
    flags = ("--lr", "1e-3", "--global-batch-size", "32", "--ema-decay", "0.99", "--no-ema-warmup")
    flags += ("--predict", "eps", "--noise-schedule", "linear", "--depth", "2", "--patch-size", "2")
    cfg = dry_run(tmp_path, *DIGITS, "--recipe", "cpu-small", *flags)
    assert (cfg["lr"], cfg["global_batch_size"], cfg["ema_decay"], cfg["ema_warmup"]) == (1e-3, 32, 0.99, False)
    assert not cfg["diffusion"]["predict_xstart"] and cfg["diffusion"]["noise_schedule"] == "linear"
    assert (cfg["model"]["depth"], cfg["model"]["patch_size"], cfg["model"]["hidden_size"]) == (2, 2, 128)
    cfg = dry_run(tmp_path, *DIGITS, "--recipe", "cpu-small", "--preset", "DiT-T/2")  # a preset wins too
    assert (cfg["model"]["depth"], cfg["model"]["hidden_size"], cfg["model"]["patch_size"]) == (2, 32, 2)
    assert not cfg["model"]["learn_sigma"] and cfg["lr"] == 3e-3  # the recipe's diffusion stays


def test_paper_recipe_is_the_default_with_data(tmp_path: Path) -> None:
    assert dry_run(tmp_path, *DIGITS, "--recipe", "paper") == dry_run(tmp_path, *DIGITS)
    cfg = dry_run(tmp_path, *DIGITS, "--recipe", "paper")
    assert (cfg["global_batch_size"], cfg["lr"], cfg["ema_decay"]) == (256, 1e-4, 0.9999)
    assert cfg["model"]["depth"] == 28 and cfg["model"]["learn_sigma"] and not cfg["diffusion"]["predict_xstart"]


def test_recipes_on_the_embedded_digits(tmp_path: Path) -> None:
    cfg = dry_run(tmp_path, "--recipe", "cpu-small")
    assert cfg["model"]["patch_size"] == 4 and cfg["model"]["input_size"] == 24  # 36 tokens, like the demo
    assert (cfg["vae"], cfg["image_size"], cfg["lr"]) == ("none", 24, 3e-3)  # the demo's data settings stay


def test_recipe_fields_and_patches() -> None:
    assert set(RECIPES) == {"paper", "cpu-small"}
    assert recipe_fields("paper")["diffusion"] == DiffusionConfig()
    assert recipe_fields("cpu-small")["model"].replace(learn_sigma=True) == PRESETS["DiT-XS/2"]
    assert [cpu_small_patch(s) for s in (8, 16, 24, 32, 64, 28, 7)] == [2, 2, 4, 4, 8, 4, 2]
    with pytest.raises(InputError, match="cpu-small"):
        recipe_fields("fast")
    with pytest.raises(InputError, match="unknown recipe"):
        build_train_config("unused", recipe="fast")


# Presets.


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("DiT-XS/2", 1.0e6, 3.0e6), ("DiT-XS/4", 1.0e6, 3.0e6), ("DiT-LatentDemo/2", 1.8e6, 1.95e6)],
)
def test_new_presets_sizes(name: str, low: float, high: float) -> None:
    params = model_cost(PRESETS[name]).params
    assert low <= params <= high, params
    assert params < model_cost(PRESETS["DiT-S/2"]).params / 10
    if name != "DiT-XS/2":
        return
    assert num_parameters(DiT(PRESETS[name].replace(input_size=8, num_classes=10))) < high  # built for real too


def test_the_demos_models_are_presets() -> None:
    assert LATENT_DEMO_MODEL is PRESETS["DiT-LatentDemo/2"]
    assert (LATENT_DEMO_MODEL.num_tokens, LATENT_DEMO_MODEL.in_channels) == (16, 4)


def test_flops_table_still_lists_the_twelve_paper_models() -> None:
    proc = invoke("presets")
    assert "DiT-XS/2" in proc.stdout and "DiT-LatentDemo/2" in proc.stdout
    assert invoke("flops", "--preset", "DiT-XS/4", "--json").returncode == 0


# Image sets: `ref-stats` and `evaluate` read training's layouts.


def _write_pngs(folder: Path, n: int, seed: int, size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture
def stub_extractor(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The CLI's feature network replaced by the stub; the list records each build."""
    from ditkit.metrics import scoring

    built: list[str] = []

    def fake(metric: str, **_: object) -> RandomFeatureExtractor:
        built.append(metric)
        return RandomFeatureExtractor(seed=0, pool_dim=16)

    monkeypatch.setattr(scoring, "feature_extractor", fake)
    return built


def test_ref_stats_reads_every_image_of_class_folders(tmp_path: Path, stub_extractor: list[str]) -> None:
    heldout = tmp_path / "heldout"
    _write_pngs(heldout / "cat", 5, seed=0)
    _write_pngs(heldout / "dog" / "nested", 7, seed=1)  # recursively, as training reads them
    out = tmp_path / "stats.npz"
    invoke("ref-stats", str(heldout), "--out", str(out), "--device", "cpu")
    with np.load(out) as stats:
        assert int(stats["num_images"]) == 12 and stats["pool_features"].shape == (12, 16)
    assert open_images(heldout).num_images == 12 and stub_extractor == ["inception"]
    flat = tmp_path / "flat"
    _write_pngs(flat, 4, seed=2)
    invoke("ref-stats", str(flat), "--out", str(tmp_path / "flat.npz"), "--device", "cpu")
    with np.load(tmp_path / "flat.npz") as stats:
        assert int(stats["num_images"]) == 4


def test_ref_stats_fails_fast_on_bad_sets(tmp_path: Path, stub_extractor: list[str]) -> None:
    broken = tmp_path / "broken"
    _write_pngs(broken / "a", 3, seed=0)
    (broken / "a" / "001.png").write_bytes((broken / "a" / "001.png").read_bytes()[:40])  # truncated
    (tmp_path / "empty" / "a").mkdir(parents=True)
    for source, needle in ((broken, "001.png"), (tmp_path / "empty", "no images"), (tmp_path / "nope", "nope")):
        proc = invoke("ref-stats", str(source), "--out", str(tmp_path / "s.npz"), check=False)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert stub_extractor == [] and not (tmp_path / "s.npz").exists()  # no network was built


def test_evaluate_reads_folders_and_fails_fast(tmp_path: Path, stub_extractor: list[str]) -> None:
    _write_pngs(tmp_path / "samples", 6, seed=3)
    _write_pngs(tmp_path / "ref" / "a", 4, seed=4)
    _write_pngs(tmp_path / "ref" / "b", 4, seed=5)
    proc = invoke("evaluate", str(tmp_path / "samples"), "--ref", str(tmp_path / "ref"), "--json", "--device", "cpu")
    result = json.loads(proc.stdout)
    assert result["num_samples"] == 6 and result["fid"] >= 0
    (tmp_path / "ref" / "b" / "notes.txt").write_text("not an image")
    stub_extractor.clear()
    proc = invoke("evaluate", str(tmp_path / "samples"), "--ref", str(tmp_path / "ref"), check=False)
    assert proc.returncode == 2 and "notes.txt" in proc.stderr and stub_extractor == []


def test_mixed_sizes_are_one_line(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "mixed", 2, seed=0, size=16)
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "zzz.png")
    images = open_images(tmp_path / "mixed")
    with pytest.raises(InputError, match="share one size"):
        list(images.batches(8, images.num_images))
    empty = tmp_path / "empty.npz"
    np.savez(empty, arr_0=np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="no images"):
        open_images(empty)
