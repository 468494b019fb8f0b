"""The web page's request handling (ditkit.apps.page_sampler.PageSampler) without Gradio or a browser, and
`ditkit serve`'s command line. The page itself, in headless Chromium: tests/smoke/test_serve.py (slow set)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.apps import serve
from ditkit.apps.demo import summary
from ditkit.apps.page_sampler import PageSampler, page_message, whole_number
from ditkit.cli.main import build_parser, main
from ditkit.config import default_diffusion, get_preset
from ditkit.model.dit import DiT
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import SamplingModel, generate
from ditkit.sampling.grid import make_grid

STEPS = 5  # the tiny model samples in milliseconds; the checks are about the plumbing


def tiny_sampler(work_dir: Path, **overrides: object) -> PageSampler:
    """A PageSampler over a perturbed DiT-T/2 in pixel space (8x8, 1 channel, 10 classes unless overridden)."""
    config = get_preset("DiT-T/2", in_channels=1).replace(**overrides)
    torch.manual_seed(0)
    model = DiT(config).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return PageSampler(SamplingModel(model, default_diffusion(config), None), work_dir)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> PageSampler:
    return tiny_sampler(tmp_path_factory.mktemp("page"))


def test_grid_is_the_library_grid_one_row_per_class(page: PageSampler) -> None:
    calls: list[tuple[int, int]] = []
    path, rows = page.grid(["3", "7"], 2, 4.0, "all channels", "ddim", STEPS, 11, lambda *c: calls.append(c))
    assert rows == "rows, top to bottom: class 3, class 7"
    picture = Image.open(path)
    assert picture.format == "PNG" and picture.size == (22 * 12, 22 * 12)  # 2x2 grid of 8 px + padding, x12
    config = page.sample_config("ddim", STEPS, 4.0)
    images = generate(page.opened.model, [3, 3, 7, 7], image_seeds(11, 4), config, diffusion=page.opened.diffusion)
    expected = make_grid(images, nrow=2).resize(picture.size, Image.Resampling.NEAREST)
    np.testing.assert_array_equal(np.asarray(picture), np.asarray(expected))  # same routine, same seed rule
    assert calls == [(k, STEPS) for k in range(1, STEPS + 1)]  # one progress report per sampling step
    assert np.asarray(picture).std() > 10  # not blank


def test_each_job_gets_its_own_file(page: PageSampler) -> None:
    first, _ = page.grid("5", 1, 1.0, "all channels", "ddpm", STEPS, 0)
    second, _ = page.grid("5", 1, 1.0, "all channels", "ddpm", STEPS, 0)
    assert first != second and first.read_bytes() == second.read_bytes()  # deterministic, never overwritten


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": ["bogus"]}, "classes: unknown class 'bogus': give ids in 0..9"),
        ({"classes": ["12"]}, "out of range for a 10-class model"),
        ({"classes": []}, "choose at least one class"),
        ({"steps": 0}, "steps must be a whole number from 2 to 1000; got 0"),
        ({"steps": 5000}, "steps must be a whole number from 2 to 1000; got 5000"),
        ({"steps": 10.5}, "steps must be a whole number"),
        ({"steps": None}, "steps must be a whole number"),
        ({"cfg": -1}, "cfg_scale must be a finite number >= 0 (1 = no guidance); got -1.0"),
        ({"cfg": "lots"}, "guidance scale must be a number >= 0"),
        ({"per_class": 17}, "images per class must be a whole number from 1 to 16; got 17"),
        ({"classes": [str(i) for i in range(10)], "per_class": 7}, "at most 64 images per request; got 10 classes"),
        ({"sampler": "euler"}, "sampler 'euler' is a flow-matching sampler but this model was trained with diffusion"),
        ({"seed": -1}, "seed must be a whole number from 0 to"),
        ({"guidance": "some"}, "guidance must be one of 'all channels', 'first 3 channels (official DiT)'"),
    ],
)
def test_bad_input_is_a_clear_one_line_message(page: PageSampler, change: dict, message: str) -> None:
    fields = {"classes": ["1"], "per_class": 1, "cfg": 4.0, "guidance": "all channels", "sampler": "ddim"}
    fields |= {"steps": STEPS, "seed": 0} | change
    with pytest.raises(ValueError) as err:
        page.grid(
            fields["classes"],
            fields["per_class"],
            fields["cfg"],
            fields["guidance"],
            fields["sampler"],
            fields["steps"],
            fields["seed"],
        )
    shown = page_message(err.value)
    assert message in shown and "\n" not in shown and "(--" not in shown  # no CLI flag hints in the page


def test_three_channel_guidance_is_all_channels_below_four(page: PageSampler, tmp_path: Path) -> None:
    assert page.sample_config("ddim", 10, 4.0, "first 3 channels (official DiT)").cfg_channels == "all"
    latent = tiny_sampler(tmp_path, in_channels=4)
    assert latent.sample_config("ddim", 10, 4.0, "first 3 channels (official DiT)").cfg_channels == 3
    assert latent.sample_config("ddim", 10, 4.0, "all channels").cfg_channels == "all"


def test_walks_are_gifs_and_need_a_deterministic_sampler(page: PageSampler) -> None:
    calls: list[tuple[int, int]] = []
    gif = page.walk("noise: seed A to seed B", "2", None, 0, 1, 4, 4.0, "ddim", STEPS, lambda *c: calls.append(c))
    picture = Image.open(gif)
    assert picture.format == "GIF" and picture.size == (192, 192) and picture.n_frames >= 2
    assert calls[-1] == (STEPS, STEPS)
    assert Image.open(page.walk("class: A to B", "2", "9", 0, 0, 3, 4.0, "dpm++2m", STEPS)).format == "GIF"
    with pytest.raises(ValueError, match="deterministic sampler"):
        page.walk("noise: seed A to seed B", "2", None, 0, 1, 4, 4.0, "ddpm", STEPS)
    with pytest.raises(ValueError, match="frames must be a whole number from 2 to 64; got 1"):
        page.walk("noise: seed A to seed B", "2", None, 0, 1, 1, 4.0, "ddim", STEPS)
    with pytest.raises(ValueError, match="class B: unknown class 'dog'"):
        page.walk("class: A to B", "2", "dog", 0, 0, 3, 4.0, "ddim", STEPS)


def test_unconditional_model(tmp_path: Path) -> None:
    page = tiny_sampler(tmp_path, num_classes=0)
    path, rows = page.grid(None, 3, 1.0, "all channels", "ddim", STEPS, 0)
    assert rows == "3 unconditional samples" and Image.open(path).size == (22 * 12, 22 * 12)  # 2 columns, 2 rows
    with pytest.raises(ValueError, match="class walk needs a class-conditional model"):
        page.walk("class: A to B", None, None, 0, 0, 3, 1.0, "ddim", STEPS)


def test_imagenet_classes_by_name_or_id(tmp_path: Path) -> None:
    page = tiny_sampler(tmp_path, num_classes=1000)
    assert page.class_choices()[207] == "207 golden retriever"
    assert page.default_classes() == ["207 golden retriever", "360 otter", "387 lesser panda", "974 geyser"]
    assert page.parse_classes(["207 golden retriever", "otter", "12", "Golden Retriever"]) == [207, 360, 12, 207]
    with pytest.raises(ValueError, match="ImageNet class names"):
        page.parse_classes(["golden"])


def test_whole_number() -> None:
    assert whole_number("n", 3.0, 1, 5) == 3 and whole_number("n", "4", 1, 5) == 4 and whole_number("n", 5, 1, 5) == 5
    for bad in (True, float("nan"), float("inf"), "x", 2.5, 0, 6, None):
        with pytest.raises(ValueError, match="n must be a whole number from 1 to 5"):
            whole_number("n", bad, 1, 5)


def test_serve_flags_default_to_localhost() -> None:
    args = build_parser().parse_args(["serve", "--ckpt", "runs/demo"])
    assert (args.host, args.port, args.device, args.vae, args.num_heads) == ("127.0.0.1", 7860, "auto", None, None)


def test_demo_ends_with_the_serve_command() -> None:
    report = {"seconds": 1.0, "accuracy_cfg": 0.9, "accuracy_nocfg": 0.5, "cfg_scale": 3.0, "num_samples": 10}
    assert "ditkit serve --ckpt runs/demo " in summary(report, "runs/demo").splitlines()[-1]
    latent = summary({**report, "route": "latent"}, "runs/demo").splitlines()
    assert "ditkit serve --ckpt runs/demo/dit " in latent[-1] and "latent route" in latent[0]


@pytest.mark.parametrize(
    "gradio, port, message",
    [
        ("ditkit_no_such_module", "7860", "the web page needs Gradio: pip install 'ditkit[web]'"),
        ("json", "70000", "port must be in 1..65535; got 70000 (--port)"),  # any module stands in for Gradio
    ],
)
def test_serve_fails_early_in_one_line(monkeypatch: pytest.MonkeyPatch, gradio: str, port: str, message: str) -> None:
    monkeypatch.setattr(serve, "_GRADIO", gradio)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["serve", "--ckpt", "missing.safetensors", "--port", port])  # before the model is opened
    assert code == 2 and err.getvalue() == f"ditkit serve: error: {message}\n"
