"""A `ditkit study`'s spec: what it trains and measures (StudySpec), read from TOML/JSON or a built-in name.

The built-in specs are assets/studies/*.toml (blocks, scaling, guidance); a spec is checked when it is made.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ditkit.metrics.digit_views import SECOND_VIEWS
from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

BUILT_IN = ("blocks", "scaling", "guidance", "dit-vs-sit", "guidance-grid", "compute", "patches")
RECIPES = ("demo", "latent-demo")
SPEC_FORMAT_DOC = "docs/studies/spec-format.md"  # every field, its default and an example
STUDY_OWNED_FIELDS = frozenset({"out_dir", "seed", "max_steps", "eval_every_steps", "num_eval_samples", "eval_seed"})
EVAL_SEED = 1_000_000  # evaluations during training of seed s draw the noise of job seed EVAL_SEED + s ...
FINAL_SEED = 2_000_000  # ... and the scoring after training that of FINAL_SEED + s (ditkit.apps.study_eval)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    preset: str | None = None  # a ditkit preset for the model's size (else the recipe's model)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    process: dict[str, Any] = field(default_factory=dict)  # objective = "flow" and FlowConfig fields, or
    # DiffusionConfig fields (what `ditkit train --objective/--path/--prediction/...` set)
    sample: dict[str, Any] = field(default_factory=dict)  # SampleConfig fields of this config's scoring (a flow
    # config needs a flow sampler: the spec's sample changes come first, these after)
    sweep: tuple[dict[str, Any], ...] = ()  # after training: score again with each of these SampleConfig changes
    # (e.g. {sampler = "heun", num_steps = 10}): FD against model evaluations per sampler

    def __post_init__(self) -> None:
        if not all(isinstance(c, dict) for c in self.sweep):
            raise InputError(
                f"config {self.name!r}: sweep must be a list of tables of SampleConfig fields "
                f"(e.g. {{sampler = 'heun', num_steps = 10}}); got {list(self.sweep)!r}",
                setting="sweep",
            )
        labels = [setting_label(c) for c in self.sweep]
        if not all(self.sweep) or len(set(labels)) != len(labels) or any("@" in label for label in labels):
            raise InputError(
                f"config {self.name!r}: every sweep entry must change something, differ from the others and hold "
                f"no '@'; got {list(self.sweep)!r}",
                setting="sweep",
            )
        object.__setattr__(self, "sweep", tuple(dict(c) for c in self.sweep))


@dataclass(frozen=True)
class StudySpec:
    """What a study trains and measures (the fields of the TOML/JSON spec)."""

    name: str
    description: str = ""
    recipe: str = "demo"  # the base TrainConfig: "demo" (pixel digits) or "latent-demo" (the latent route)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds per config (>= 2 for an interval; paired across configs)
    max_steps: int = 600
    eval_every_steps: int = 200
    num_eval_samples: int = 1000  # class-balanced samples per evaluation during training (FD over training)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields for every config
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every config
    sample: dict[str, Any] = field(default_factory=dict)  # SampleConfig fields of the evaluation
    configs: tuple[StudyConfig, ...] = ()
    final_samples: int = 1000  # after training: two disjoint sets of this many samples per run (see study_eval)
    bootstrap: int = 200  # resamples for a run's FD interval and for correlations over configs (0: none)
    second_view: str = "pixels"  # a second feature space for FD: "pixels", "inception" (slow on CPU) or "none"
    guidance_scales: tuple[float, ...] = ()  # after training: score each run at these scales ...
    guidance_channels: tuple[str | int, ...] = ("all",)  # ... guiding these channels ("all" or 3)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"study recipe must be one of {', '.join(RECIPES)}; got {self.recipe!r}", setting="recipe")
        if not self.configs:
            raise InputError(
                f"study {self.name!r} lists no configs; add [[configs]] entries with a name", setting="configs"
            )
        names = [c.name for c in self.configs]
        if len(set(names)) != len(names):
            raise InputError(f"study config names must be unique; got {names}", setting="configs")
        folders = [slug(n) for n in names]
        if len(set(folders)) != len(folders):  # "a b" and "a_b" would share runs/a_b-s0
            raise InputError(
                f"study config names {names} give the same run folder names {folders}; make them differ in "
                "letters or digits, not only in spaces or punctuation",
                setting="configs",
            )
        if (
            not self.seeds
            or self.max_steps < 1
            or self.eval_every_steps < 1
            or min(self.num_eval_samples, self.final_samples) < 2
        ):
            raise InputError(
                "a study needs seeds, max_steps >= 1, eval_every_steps >= 1, num_eval_samples >= 2 and "
                f"final_samples >= 2; got seeds={list(self.seeds)}, max_steps={self.max_steps}, "
                f"eval_every_steps={self.eval_every_steps}, num_eval_samples={self.num_eval_samples}, "
                f"final_samples={self.final_samples}"
            )
        if self.second_view not in SECOND_VIEWS:
            raise InputError(
                f"second_view must be one of {', '.join(SECOND_VIEWS)}; got {self.second_view!r}", setting="second_view"
            )
        if self.bootstrap < 0 or (self.bootstrap == 1):
            raise InputError(f"bootstrap must be 0 (none) or >= 2 resamples; got {self.bootstrap}", setting="bootstrap")


def load_spec(source: str | Path) -> StudySpec:
    """A spec from a .toml / .json file or a built-in name."""
    if str(source) in BUILT_IN:
        text, suffix = resources.files("ditkit").joinpath("assets", "studies", f"{source}.toml").read_text(), ".toml"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(
                f"study spec {str(source)!r} not found; pass a .toml/.json file or one of {BUILT_IN}", setting="spec"
            )
        text, suffix = path.read_text(), path.suffix.lower()
    return spec_from_dict(_parse(text, suffix, str(source)), source=str(source))


def _parse(text: str, suffix: str, source: str) -> dict[str, Any]:
    try:
        if suffix == ".json":
            return json.loads(text)
        import tomllib  # the standard library's TOML reader (Python 3.11+, what ditkit requires)

        return tomllib.loads(text)
    except (ValueError, TypeError) as err:
        raise InputError(f"cannot read study spec {source}: {err}", setting="spec") from None


def spec_from_dict(values: Any, *, source: str = "") -> StudySpec:
    """A StudySpec from the parsed file: a table (TOML) or object (JSON) of StudySpec's fields, with a name."""
    where = f"study spec {source!r}" if source else "study spec"
    known = {f.name for f in dataclasses.fields(StudySpec)}
    if not isinstance(values, dict) or "name" not in values:
        got = f"a {type(values).__name__}" if not isinstance(values, dict) else "no name"
        raise InputError(
            f"{where} holds {got}; it must be a table of fields with at least name = '...' and [[configs]] "
            f"entries (allowed fields: {', '.join(sorted(known))})",
            setting="spec",
        )
    if "guidance_samples" in values:  # specs written before final_samples (the committed first studies' spec.json)
        values = dict(values)
        samples = values.pop("guidance_samples")
        values.setdefault("final_samples", samples)
        logger.warning("%s: guidance_samples is now final_samples (%s samples per setting)", where, samples)
    unknown = sorted(map(str, set(values) - known))
    if unknown:
        allowed = ", ".join(sorted(known))
        raise InputError(
            f"unknown study spec fields {unknown} in {where}; allowed: {allowed} (see {SPEC_FORMAT_DOC})",
            setting="spec",
        )
    fields = dict(values)
    try:
        fields["configs"] = tuple(StudyConfig(**c) for c in fields.get("configs", ()))
    except TypeError as err:
        raise InputError(
            f"{where}: a config has a field it cannot take ({err}); use name, preset, model, train, process, "
            f"sample, sweep (see {SPEC_FORMAT_DOC})",
            setting="spec",
        ) from None
    try:
        for key in ("seeds", "guidance_scales", "guidance_channels"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return StudySpec(**fields)
    except TypeError as err:  # e.g. seeds = 3, max_steps = "many"
        message = f"{where}: a field has the wrong type ({err}); see {SPEC_FORMAT_DOC}"
        raise InputError(message, setting="spec") from None


def setting_label(change: dict[str, Any]) -> str:
    """A sweep setting's key: its SampleConfig changes, e.g. "num_steps=10,sampler=heun" (guidance settings are
    "<channels>@<scale>", the final scoring "final")."""
    return ",".join(f"{k}={v}" for k, v in sorted(change.items())) or "final"


def run_folder(out: Path, config_name: str, seed: int) -> Path:
    """The run folder of one (config, seed) of a study in `out`."""
    return out / "runs" / f"{slug(config_name)}-s{seed}"


def slug(name: str) -> str:
    """A config's name as a file name (its runs' folders, its plots)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
