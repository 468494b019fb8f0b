"""The `ditkit` command tells a bug from bad input: a library bug exits 70 with its traceback, never 2 with
one line that blames the user; bad input is one line that names the flag of the setting at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ditkit.config import get_preset
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights
from ditkit.runtime.errors import InputError
from ditkit.runtime.stopping import EXIT_BAD_INPUT, EXIT_BUG

from .test_cli import invoke


def _raises(err: BaseException):
    def fail(*args: object, **kwargs: object) -> None:
        raise err

    return fail


@pytest.mark.parametrize(
    "err", [ValueError("boom"), TypeError("boom"), KeyError("boom"), AttributeError("boom"), RuntimeError("boom")]
)
def test_a_library_bug_exits_70_with_its_traceback(monkeypatch: pytest.MonkeyPatch, err: Exception) -> None:
    import ditkit.model.flops

    monkeypatch.setattr(ditkit.model.flops, "costs_table", _raises(err))
    proc = invoke("flops", "--preset", "DiT-S/2", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_BUG != EXIT_BAD_INPUT
    assert "Traceback (most recent call last)" in proc.stderr and "costs_table" in proc.stderr
    assert len(lines) > 1 and not lines[0].startswith("ditkit flops: error:")
    assert lines[-1].startswith("ditkit flops: internal error (a bug in ditkit")
    assert f"{type(err).__name__}: " in lines[-1] and "boom" in lines[-1]


def test_a_bug_deep_in_a_command_is_a_bug_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ditkit.training.run

    monkeypatch.setattr(ditkit.training.run, "open_for_sampling", _raises(ValueError("shapes do not match")))
    proc = invoke("sample", "--ckpt", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == EXIT_BUG and "Traceback" in proc.stderr and "error: shapes" not in proc.stderr


def test_an_input_error_is_one_line_with_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import ditkit.model.flops

    err = InputError("image_size must be a multiple of 8; got 30", setting="image_size")
    monkeypatch.setattr(ditkit.model.flops, "costs_table", _raises(err))
    proc = invoke("flops", check=False)
    assert proc.returncode == EXIT_BAD_INPUT and "Traceback" not in proc.stderr
    assert proc.stderr == "ditkit flops: error: image_size must be a multiple of 8; got 30 (--image-size)\n"


def test_a_setting_without_a_flag_is_printed_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import ditkit.model.flops

    monkeypatch.setattr(
        ditkit.model.flops, "costs_table", _raises(InputError("grid_seed must be >= 0", setting="grid_seed"))
    )
    proc = invoke("flops", check=False)
    assert proc.returncode == EXIT_BAD_INPUT and proc.stderr == "ditkit flops: error: grid_seed must be >= 0\n"


def test_verbose_shows_the_traceback_of_bad_input_and_keeps_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import ditkit.model.flops

    monkeypatch.setattr(ditkit.model.flops, "costs_table", _raises(InputError("block is bad", setting="block")))
    proc = invoke("-v", "flops", check=False)
    assert proc.returncode == EXIT_BAD_INPUT and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "ditkit flops: error: block is bad (--block)"


def test_ctrl_c_still_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import ditkit.model.flops

    monkeypatch.setattr(ditkit.model.flops, "costs_table", _raises(KeyboardInterrupt()))
    proc = invoke("flops", check=False)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = get_preset("DiT-T/2", in_channels=1, input_size=8)
    torch.manual_seed(0)
    return save_weights(DiT(config).state_dict(), config, tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_the_cli_names_the_flag_of_a_bad_sampling_setting(weights: Path, tmp_path: Path) -> None:
    proc = invoke("sample", "--ckpt", str(weights), "--out", str(tmp_path / "o"), "--cfg-scale", "-1", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_BAD_INPUT and len(lines) == 1, proc.stderr
    assert lines[0].startswith("ditkit sample: error: cfg_scale ") and "-1" in lines[0]
    assert lines[0].endswith("(--cfg-scale)")


@pytest.mark.parametrize(
    ("argv", "ending"),
    [
        ("--max-steps 0", "max_steps must be an integer >= 1; got 0 (--max-steps)"),
        ("--ckpt-every 0", "(--ckpt-every)"),
        ("--learn-sigma --lr nan", "(--lr)"),
    ],
)
def test_the_cli_names_the_flag_of_a_bad_training_setting(tmp_path: Path, argv: str, ending: str) -> None:
    proc = invoke("train", "--out", str(tmp_path / "r"), *argv.split(), "--dry-run", check=False)
    assert proc.returncode == EXIT_BAD_INPUT and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.strip().endswith(ending) and proc.stderr.startswith("ditkit train: error: ")
