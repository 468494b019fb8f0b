"""End to end through the installed `ditkit` console script."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ditkit.cli.main import main
from ditkit.config import get_preset
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights

DITKIT = shutil.which("ditkit") or str(Path(sys.executable).with_name("ditkit"))
SUBCOMMANDS = [
    "flops",
    "presets",
    "classes",
    "sample",
    "walk",
    "bench",
    "train",
    "extract-latents",
    "export",
    "evaluate",
    "ref-stats",
    "demo",
    "import",
    "serve",
    "train-vae",
    "study",
]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ditkit ARGS` as a user types it: the installed console script in a new process."""
    proc = subprocess.run([DITKIT, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"ditkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def invoke(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ditkit ARGS` through `ditkit.cli.main.main` in this process: the same code path as `run` without paying
    ~5 s of torch start-up per command (torch.optim imports the compiler stack). Log lines go to stderr."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    ditkit_logger = logging.getLogger("ditkit")
    ditkit_logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors and --help
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        ditkit_logger.removeHandler(handler)
    proc = subprocess.CompletedProcess(["ditkit", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"ditkit {' '.join(args)} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_for_every_subcommand() -> None:
    top = run("--help").stdout  # the console script itself
    assert all(name in top for name in SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert invoke(name, "--help").stdout.startswith("usage: ditkit " + name)


def test_help_does_not_import_torch() -> None:
    code = "import sys; from ditkit.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_console_script_reports_errors_as_one_line() -> None:
    proc = run("flops", "--preset", "DiT-Q/2", check=False)  # the installed script: exit code and stderr
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "invalid choice: 'DiT-Q/2'" in proc.stderr


def test_python_dash_m_works() -> None:
    proc = subprocess.run([sys.executable, "-m", "ditkit", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("ditkit ")


def test_flops_json_matches_the_paper() -> None:
    rows = json.loads(invoke("flops", "--preset", "DiT-XL/2", "--preset", "DiT-S/8", "--json").stdout)
    by_name = {r["model"]: r for r in rows}
    assert by_name["DiT-XL/2"]["gflops"] == pytest.approx(118.64, rel=0.01)
    assert by_name["DiT-S/8"]["gflops"] == pytest.approx(0.36, rel=0.02)
    assert by_name["DiT-XL/2"]["params"] == 675_129_632


@pytest.mark.parametrize(
    "args, needle",
    [
        (["flops", "--preset", "DiT-Q/2"], "invalid choice: 'DiT-Q/2'"),
        (["sample", "--ckpt", "/nonexistent.pt", "--out", "x"], "/nonexistent.pt"),
        (["bench", "--steps", "many"], "--steps: must be an integer >= 1; got 'many'"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args: list[str], needle: str) -> None:
    proc = invoke(*args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = get_preset("DiT-T/2", in_channels=1, input_size=8)
    model = DiT(config)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return save_weights(model.state_dict(), config, tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_sample_grid_and_npz(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    invoke(
        "sample",
        "--ckpt",
        str(tiny_weights),
        "--out",
        str(out),
        "--classes",
        "1,2",
        "--per-class",
        "2",
        "--steps",
        "5",
        "--sampler",
        "dpm++2m",
        "--cfg-scale",
        "3",
    )
    assert (out / "grid.png").is_file() and len(list((out / "images").glob("*.png"))) == 4
    npz = tmp_path / "s.npz"
    invoke(
        "sample",
        "--ckpt",
        str(tiny_weights),
        "--out",
        str(tmp_path),
        "--num",
        "10",
        "--npz",
        str(npz),
        "--steps",
        "4",
        "--sampler",
        "ddim",
        "--batch-size",
        "3",
        "--class-balanced",
    )
    with np.load(npz) as data:
        assert data["arr_0"].shape == (10, 8, 8, 1) and data["arr_0"].dtype == np.uint8
        assert sorted(np.bincount(data["labels"], minlength=10)) == [1] * 10


def test_walk_writes_gif_and_strip(tiny_weights: Path, tmp_path: Path) -> None:
    invoke(
        "walk", "--ckpt", str(tiny_weights), "--out", str(tmp_path), "--classes", "1,7", "--frames", "3", "--steps", "3"
    )
    for name in ("noise_walk.gif", "noise_walk_strip.png", "class_walk.gif", "class_walk_strip.png"):
        assert (tmp_path / name).is_file()
