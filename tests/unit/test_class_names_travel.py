"""Class names travel: read from the data (class folders, an .npz key, a labels file), recorded by the latent
store and the run, accepted by `--classes` and the web page by name, and shown on grids and in exports."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ditkit.cli.main import main
from ditkit.config import TrainConfig, get_preset
from ditkit.data.class_names import caption, parse_classes, readable_names
from ditkit.data.datasets import ImageFolderDataset, NpzDataset
from ditkit.data.latent_store import LatentStore, extract_latents
from ditkit.data.loader import open_dataset
from ditkit.model.dit import DiT
from ditkit.runtime.errors import InputError
from ditkit.sampling.grid import save_grid, save_labelled_grid
from ditkit.training import checkpoint
from ditkit.training.run import build_train_config, open_for_sampling, read_run_config

NAMES = ("disc", "gradient", "square", "stripes")


def _image_folder(root: Path, names: tuple[str, ...] = NAMES, per_class: int = 2) -> Path:
    """32 px RGB images in one folder per class."""
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _drawn_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text PIL draws from now on (grid captions)."""
    texts: list[str] = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, text, *args, **kwargs):
        texts.append(str(text))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return texts


def _invoke(*args: str) -> tuple[int, str, str]:
    """`ditkit ARGS` in this process (as tests/smoke/test_cli.py `invoke`): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# Where names come from.


def test_an_image_folder_names_its_classes_by_folder_or_by_its_labels_file(tmp_path):
    folder = _image_folder(tmp_path / "data")
    assert ImageFolderDataset(folder, 32).class_names == NAMES
    (folder / "labels.txt").write_text("Disc\nGradient\nSquare\nStripes\n\n")  # not taken for a bad image
    assert open_dataset(str(folder), 32).class_names == ("Disc", "Gradient", "Square", "Stripes")
    (folder / "classes.txt").write_text("a\nb\n")  # classes.txt comes first; a wrong count is one line
    with pytest.raises(InputError, match="has 2 class names for 4 classes") as err:
        ImageFolderDataset(folder, 32)
    assert err.value.setting == "class_names"
    assert readable_names(["n01440764", "n01443537"]) == ("tench", "goldfish")  # ImageNet's folders
    assert readable_names(["n01440764", "cat"]) == ("n01440764", "cat")


def test_an_npz_names_its_classes_by_its_key_or_a_labels_file_beside_it(tmp_path):
    images = np.zeros((6, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(6) % 3, class_names=np.array(["x", "y", "z"]))
    assert NpzDataset(tmp_path / "a.npz").class_names == ("x", "y", "z")
    np.savez(tmp_path / "b.npz", images=images, labels=np.arange(6) % 3)
    assert NpzDataset(tmp_path / "b.npz").class_names is None
    (tmp_path / "classes.txt").write_text("cat\ndog\nowl\n")
    assert NpzDataset(tmp_path / "b.npz").class_names == ("cat", "dog", "owl")
    np.savez(tmp_path / "c.npz", images=images, labels=np.arange(6) % 3, class_names=np.array(["x", "X", "z"]))
    with pytest.raises(InputError, match="must be non-empty and differ"):
        NpzDataset(tmp_path / "c.npz")


# Parsing --classes.


def test_classes_parse_by_name_case_insensitively_and_by_id():
    assert parse_classes("disc,SQUARE", 4, NAMES) == [0, 2]
    assert parse_classes("3, gradient", 4, NAMES) == [3, 1]
    assert parse_classes(None, 4, NAMES) == [0, 1, 2, 3]
    with pytest.raises(InputError, match="disc, gradient, square, stripes") as err:
        parse_classes("circle", 4, NAMES)
    assert err.value.setting == "classes" and "unknown class 'circle'" in str(err.value)
    with pytest.raises(InputError, match="give ids in 0..3$"):
        parse_classes("disc", 4)  # a model without names takes ids
    assert parse_classes("golden retriever", 1000) == [207]  # ImageNet's names as before


def test_train_config_checks_and_round_trips_its_class_names(tmp_path):
    model = get_preset("DiT-T/2", num_classes=4)
    cfg = TrainConfig(out_dir=str(tmp_path), model=model, class_names=NAMES)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).class_names == NAMES
    with pytest.raises(InputError, match="3 names for a 4-class model") as err:
        cfg.replace(class_names=NAMES[:3])
    assert err.value.setting == "class_names"


# Grids.


def test_grid_captions_use_the_names(tmp_path, monkeypatch):
    assert caption(2, 4, NAMES) == "2 square" and caption(2, 4) == "class 2"
    assert caption(207, 1000) == "207 golden retriever"
    texts = _drawn_texts(monkeypatch)
    images = np.zeros((4, 8, 8, 3), np.uint8)
    save_labelled_grid(images, [0, 0, 2, 2], tmp_path / "g", nrow=2, num_classes=4, class_names=NAMES)
    assert texts == ["0 disc", "2 square"]
    texts.clear()
    path = save_grid(images, tmp_path / "t.png", scale=8, captions=list(NAMES))
    assert texts == list(NAMES)
    assert Image.open(path).size[1] > 2 * 8 * 8  # a caption strip under each row of images


def test_training_grids_caption_the_runs_names(tmp_path, monkeypatch):
    from ditkit.training.monitor import RunMonitor

    model = get_preset("DiT-T/2", num_classes=4, in_channels=3)
    cfg = TrainConfig(out_dir=str(tmp_path), model=model, vae="none", class_names=NAMES, num_grid_images=6).replace(
        sample=TrainConfig(out_dir="x").sample.replace(num_steps=2)
    )
    monitor = SimpleNamespace(info=SimpleNamespace(is_main=True), cfg=cfg, decoder=None, run_dir=tmp_path, tb=None)
    texts = _drawn_texts(monkeypatch)
    RunMonitor._write_grid(monitor, 7, DiT(model).eval())
    assert texts == [*NAMES, *NAMES[:2]] and (tmp_path / "samples" / "step_0000007.png").is_file()


# From the data through the store and the run to sampling and exports.


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on a latent store of a 4-class image folder (tiny VAE, DiT-T/2), with one checkpoint."""
    pytest.importorskip("diffusers")
    from ditkit.data.autoencoder import load_vae, make_tiny_vae

    root = tmp_path_factory.mktemp("named")
    vae = make_tiny_vae(root / "vae", in_channels=3)
    data = ImageFolderDataset(_image_folder(root / "data"), 32, flip=False)
    store = extract_latents(data, load_vae(str(vae)), root / "store", batch_size=4, vae_id=str(vae))
    cfg = build_train_config(root / "run", data=str(store), preset="DiT-T/2")
    (root / "run").mkdir()
    (root / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
    model = DiT(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint.save(root / "run", step=1, model=model, ema=model, optimizer=optimizer, config=cfg.to_dict())
    return root / "run"


def test_the_store_and_the_run_record_the_folder_names(named_run):
    store = named_run.parent / "store"
    assert json.loads((store / "meta.json").read_text())["class_names"] == list(NAMES)
    assert LatentStore(store, flip=False).class_names == NAMES
    cfg = read_run_config(named_run)
    assert cfg.class_names == NAMES and cfg.model.num_classes == 4
    opened = open_for_sampling(named_run)
    assert opened.class_names == NAMES
    assert parse_classes("disc,SQUARE", opened.model.config.num_classes, opened.class_names) == [0, 2]


def test_sample_cli_takes_a_class_name_and_captions_it(named_run, tmp_path, monkeypatch):
    texts = _drawn_texts(monkeypatch)
    out = tmp_path / "out"
    args = ("sample", "--ckpt", str(named_run), "--per-class", "1", "--num-steps", "2", "--device", "cpu")
    code, stdout, _ = _invoke(*args, "--classes", "disc,Stripes", "--out", str(out))
    assert code == 0 and "wrote 2 images" in stdout and (out / "grid.png").is_file()
    assert texts == ["0 disc", "3 stripes"]
    code, _, stderr = _invoke(*args, "--classes", "circle", "--out", str(tmp_path / "bad"))
    assert code == 2 and "disc, gradient, square, stripes" in stderr and "--classes" in stderr
    walk = ("walk", "--ckpt", str(named_run), "--kind", "class", "--frames", "2", "--num-steps", "2", "--device", "cpu")
    code, stdout, stderr = _invoke(*walk, "--classes", "Disc,square", "--out", str(tmp_path / "walk"))
    assert code == 0 and "class walk" in stdout, stderr


def test_the_web_page_offers_and_takes_the_names(named_run, tmp_path):
    from ditkit.apps.page_sampler import PageSampler

    sampler = PageSampler(open_for_sampling(named_run), tmp_path)
    assert sampler.class_choices() == ["0 disc", "1 gradient", "2 square", "3 stripes"]
    assert sampler.parse_classes(["2 square", "DISC", "1"]) == [2, 0, 1]


def test_export_labels_the_classes_with_the_runs_names(named_run, tmp_path):
    from ditkit.interop.diffusers_format import export_diffusers

    folder = export_diffusers(named_run, tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["id2label"] == {str(i): name for i, name in enumerate(NAMES)}
