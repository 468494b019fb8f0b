"""Honest failures: bad input is an `InputError` that speaks Python; every other exception is a bug.

The library names the setting at fault (`cfg_scale`), never a command-line flag; `exit_status` gives the
bad-input exit code only to an InputError (and to damaged or unreadable files), never to a bare ValueError.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ditkit.config import SampleConfig
from ditkit.runtime.errors import InputError, InputTypeError, check_count
from ditkit.runtime.stopping import EXIT_BAD_INPUT, EXIT_BUG, exit_status

SRC = Path(__file__).resolve().parents[2] / "src" / "ditkit"
# Flags of other tools that a message may tell the user to pass to them.
OTHER_TOOLS_FLAGS = {"--local-dir", "--no-deps", "--nproc_per_node"}


def test_bad_sampling_settings_name_the_setting_in_python_words() -> None:
    with pytest.raises(InputError) as err:
        SampleConfig(cfg_scale=-1)
    assert err.value.setting == "cfg_scale"
    assert "cfg_scale" in str(err.value) and "-1" in str(err.value) and "--" not in str(err.value)
    assert isinstance(err.value, ValueError)  # `except ValueError` keeps working for Python callers


@pytest.mark.parametrize(
    ("fields", "setting"),
    [({"num_steps": 0}, "num_steps"), ({"eta": 2.0, "sampler": "ddim"}, "eta"), ({"sampler": "lms"}, "sampler")],
)
def test_every_bad_sampling_setting_is_an_input_error(fields: dict, setting: str) -> None:
    with pytest.raises(InputError) as err:
        SampleConfig(**fields)
    assert err.value.setting == setting and "--" not in str(err.value)


def test_check_count_names_the_setting() -> None:
    check_count("max_steps", 1, minimum=1)
    for value in (0, True, 1.5, "3"):
        with pytest.raises(InputError) as err:
            check_count("max_steps", value, minimum=1)
        assert err.value.setting == "max_steps" and str(err.value).startswith("max_steps must be an integer >= 1")
    with pytest.raises(InputError, match="at most 10"):
        check_count("num", 11, minimum=1, maximum=10)


def test_input_type_error_is_a_type_error_and_an_input_error() -> None:
    err = InputTypeError("labels must be a list of ints; got 'a'", setting="labels")
    assert isinstance(err, TypeError) and isinstance(err, InputError) and err.setting == "labels"


def test_only_input_errors_are_bad_input() -> None:
    code, line = exit_status(InputError("max_steps must be an integer >= 1; got 0", setting="max_steps"))
    assert code == EXIT_BAD_INPUT == 2 and line == "error: max_steps must be an integer >= 1; got 0"


@pytest.mark.parametrize(
    "err",
    [
        ValueError("boom"),
        TypeError("boom"),
        KeyError("boom"),
        AttributeError("boom"),
        RuntimeError("boom"),
        IndexError("boom"),
        AssertionError(),
    ],
)
def test_any_other_exception_is_a_bug(err: BaseException) -> None:
    assert exit_status(err, ["in.npz"]) is None  # the CLI prints the traceback and exits EXIT_BUG
    assert EXIT_BUG == 70 and EXIT_BUG != EXIT_BAD_INPUT


def test_damaged_files_stay_bad_input() -> None:
    import json
    import zipfile

    for err in (zipfile.BadZipFile("not a zip"), json.JSONDecodeError("x", "{", 0), EOFError()):
        assert exit_status(err, ["in.npz"])[0] == EXIT_BAD_INPUT
    assert exit_status(ValueError("Object arrays cannot be loaded when allow_pickle=False"))[0] == EXIT_BAD_INPUT


def _input_error_calls() -> list[tuple[str, int, str]]:
    """(file, line, the text of its string parts) of every `InputError(...)` / `InputTypeError(...)` call."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("InputError", "InputTypeError"):
                text = " ".join(
                    part.value
                    for arg in node.args
                    for part in ast.walk(arg)
                    if isinstance(part, ast.Constant) and isinstance(part.value, str)
                )
                found.append((str(path.relative_to(SRC)), node.lineno, text))
    return found


def test_no_input_error_message_names_a_command_line_flag() -> None:
    calls = _input_error_calls()
    assert len(calls) > 150  # the scan sees the library's checks
    flags = [
        f"{name}:{line}: {flag}"
        for name, line, text in calls
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text)
        if flag not in OTHER_TOOLS_FLAGS
    ]
    assert flags == []


def test_settings_are_identifiers() -> None:
    """`setting=` names a field or argument (what front ends map to their own words), not a sentence."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("InputError", "InputTypeError"):
                for keyword in node.keywords:
                    value = keyword.value
                    if keyword.arg == "setting" and isinstance(value, ast.Constant):
                        if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", value.value):
                            bad.append(f"{path.name}:{node.lineno}: {value.value!r}")
    assert bad == []


def test_the_cli_maps_settings_to_its_flags() -> None:
    from ditkit.cli.flags import flag_of
    from ditkit.cli.main import _subcommand, build_parser

    parser = build_parser()
    train, sample = _subcommand(parser, "train"), _subcommand(parser, "sample")
    assert flag_of(train, "max_steps") == "--max-steps"
    assert flag_of(train, "ckpt_every_steps") == "--ckpt-every"
    assert flag_of(train, "out_dir") == "--out"
    assert flag_of(train, "model.learn_sigma") == "--learn-sigma"
    assert flag_of(train, "keep_last_ckpts") is None  # no flag sets it
    assert flag_of(train, "sample.cfg_scale") is None  # train has no --cfg-scale
    assert flag_of(train, None) is None
    assert flag_of(sample, "num_steps") == "--num-steps"
    assert flag_of(sample, "cfg_scale") == "--cfg-scale"
    assert flag_of(_subcommand(parser, "train-vae"), "out_dir") == "--out"


def test_the_page_names_its_own_field_not_a_flag() -> None:
    from ditkit.apps.page_sampler import page_message

    with pytest.raises(InputError) as err:
        SampleConfig(cfg_scale=-1)
    shown = page_message(err.value)
    assert "Guidance scale" in shown and "--" not in shown
    assert page_message(InputError("steps must be a whole number", setting="steps")) == "steps must be a whole number"
