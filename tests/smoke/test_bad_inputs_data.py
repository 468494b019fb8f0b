"""Bad data, sizes and flags that contradict the data (the table of test_bad_inputs.py, continued): exit code 2,
one line naming the file or value, nothing changed, and the check made before any VAE or model exists.

Each case runs in-process with `{placeholders}` for the inputs below; `load_vae` and the DiT constructor
fail loudly meanwhile, so a case that passes proves its check ran before them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from ditkit.config.recipes import shipped_mnist_vae
from ditkit.data.datasets import NpzDataset
from ditkit.data.latent_store import extract_latents
from ditkit.runtime.errors import InputError
from ditkit.training.loop import train
from ditkit.training.run import build_train_config

from .test_bad_inputs import SENTINEL, _snapshot
from .test_cli import invoke


def _image_folder(root: Path, extra: str | None = None, truncated: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    if extra:
        (root / "b" / extra).write_text("not an image\n")
    if truncated:
        data = (root / "a" / "0.png").read_bytes()
        (root / "a" / "trunc.png").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only inputs: image folders with a stray file or a truncated PNG, a 10-class latent store of 8 px images."""
    root = tmp_path_factory.mktemp("data_inputs")
    labels = np.arange(20) % 10
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(root / "ten.npz", images=images, labels=labels)
    store = extract_latents(
        NpzDataset(root / "ten.npz", flip=False),
        lambda x: (F.avg_pool2d(x, 2), F.avg_pool2d(x, 2).abs() * 0 + 0.1),
        root / "store",
        batch_size=10,
    )
    return {
        "txt_dir": _image_folder(root / "with_txt", extra="notes.txt"),
        "trunc_dir": _image_folder(root / "with_trunc", truncated=True),
        "store": Path(store),
        "missing_vae": root / "no_such_vae",
        "mnist_vae": shipped_mnist_vae() or root / "no_shipped_vae",
    }


@pytest.fixture(autouse=True)
def _no_vae_or_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a VAE or model was built before the data were checked")

    for module in ("ditkit.data.autoencoder", "ditkit.data.loader", "ditkit.data.latent_store", "ditkit.training.run"):
        monkeypatch.setattr(f"{module}.load_vae", fail, raising=False)
    monkeypatch.setattr("ditkit.model.dit.DiT.__init__", fail)


# (id, argv with {placeholders}, texts the one stderr line must contain)
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "train-non-image-file",
        "train --out {out}/r --data {txt_dir} --vae {missing_vae} --image-size 16",
        ("notes.txt",),
    ),
    (
        "train-truncated-png",
        "train --out {out}/r --data {trunc_dir} --vae none --image-size 16",
        ("trunc.png", "truncated"),
    ),
    ("train-vae-non-image-file", "train-vae --out {out}/v --data {txt_dir} --image-size 16", ("notes.txt",)),
    ("latents-non-image-file", "extract-latents --data {txt_dir} --out {out}/s --vae {mnist_vae}", ("notes.txt",)),
    ("latents-size-33", "extract-latents --data digits --out {out}/s --vae {mnist_vae} --image-size 33", ("33", "32")),
    ("train-store-size", "train --out {out}/r --data {store} --image-size 64", ("64", "8 px", "omit image_size")),
    ("train-store-classes", "train --out {out}/r --data {store} --num-classes 3", ("10 classes", "3")),
]


@pytest.mark.parametrize(("argv", "needles"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_data_is_one_line_exit_2_before_any_vae(
    inputs: dict[str, Path], tmp_path: Path, argv: str, needles: tuple[str, ...]
) -> None:
    if "{mnist_vae}" in argv and not inputs["mnist_vae"].is_dir():
        pytest.skip("the shipped MNIST autoencoder is not in this checkout")
    target = tmp_path / "target"
    target.mkdir()
    (target / "sentinel.txt").write_bytes(SENTINEL)
    watched = [target, *inputs.values()]
    before = _snapshot(*watched)
    proc = invoke(*argv.format(out=target, **{k: str(v) for k, v in inputs.items()}).split(), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _snapshot(*watched) == before, "a file was changed or written"
    assert sorted(p.name for p in target.iterdir()) == ["sentinel.txt"]


def test_channels_that_contradict_a_store_are_refused_before_the_run_folder(inputs: dict[str, Path], tmp_path: Path):
    with pytest.raises(InputError, match=r"takes 4x4x4 inputs but the data give 3x4x4"):  # also a dry run's
        build_train_config(tmp_path / "r", data=str(inputs["store"]), model_overrides={"in_channels": 4})
    cfg = build_train_config(tmp_path / "r", data=str(inputs["store"]))
    with pytest.raises(InputError, match=r"takes 4x4x4 inputs but the data give 3x4x4"):  # a TrainConfig made by hand
        train(cfg.replace(model=cfg.model.replace(in_channels=4), device="cpu", num_workers=0))
    assert not (tmp_path / "r").exists()
