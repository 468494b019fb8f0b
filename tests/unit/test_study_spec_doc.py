"""docs/studies/spec-format.md against the code: every spec field is documented, the page's examples are valid
specs, and `ditkit study --help` names the page."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ditkit.apps.study import check_spec, train_config
from ditkit.apps.study_eval import run_settings
from ditkit.apps.study_spec import SPEC_FORMAT_DOC, StudyConfig, StudySpec, spec_from_dict
from ditkit.cli.flags import STUDY_SPEC_DOC
from ditkit.config.sampling import check_sampler

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / SPEC_FORMAT_DOC


def _page() -> str:
    return PAGE.read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", _page(), flags=re.MULTILINE | re.DOTALL)


def _table_fields(heading: str) -> set[str]:
    """The first column (`name`) of the table under `heading`."""
    section = _page().split(heading, 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("cls", "heading"),
    [(StudySpec, "### Study fields (`StudySpec`)"), (StudyConfig, "### Config fields (`StudyConfig`")],
)
def test_every_field_has_a_row(cls, heading):
    assert {f.name for f in dataclasses.fields(cls)} == _table_fields(heading)


def test_the_examples_are_one_valid_spec():
    (toml_text,), (json_text,) = _blocks("toml"), _blocks("json")
    from_toml = spec_from_dict(tomllib.loads(toml_text), source="spec-format.md (toml)")
    from_json = spec_from_dict(json.loads(json_text), source="spec-format.md (json)")
    assert from_toml == from_json
    check_spec(from_toml)
    flow = next(c for c in from_toml.configs if c.process.get("objective") == "flow")
    assert flow.sweep and from_toml.guidance_scales
    for config in from_toml.configs:  # sweep and guidance settings are only applied after training: check here
        cfg = train_config(from_toml, config, from_toml.seeds[0], Path("check"), {})
        for _, change in run_settings(from_toml, config).values():
            check_sampler(cfg.sample.replace(**change).sampler, cfg.diffusion)


def test_study_help_names_the_page():
    assert STUDY_SPEC_DOC == SPEC_FORMAT_DOC
    proc = subprocess.run(
        [sys.executable, "-m", "ditkit", "study", "--help"], capture_output=True, text=True, check=True, timeout=120
    )
    assert SPEC_FORMAT_DOC in proc.stdout
