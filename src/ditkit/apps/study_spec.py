"""A `ditkit study`'s spec: what it trains and measures (StudySpec), read from TOML/JSON or a built-in name.

The built-in specs are assets/studies/*.toml (blocks, scaling, guidance); a spec is checked when it is made.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ditkit.runtime.errors import InputError

BUILT_IN = ("blocks", "scaling", "guidance")
RECIPES = ("demo", "latent-demo")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    preset: str | None = None  # a ditkit preset for the model's size (else the recipe's model)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


@dataclass(frozen=True)
class StudySpec:
    """What a study trains and measures (the fields of the TOML/JSON spec)."""

    name: str
    description: str = ""
    recipe: str = "demo"  # the base TrainConfig: "demo" (pixel digits) or "latent-demo" (the latent route)
    seeds: tuple[int, ...] = (0, 1)  # training seeds per config (>= 2: a ranking needs the seed spread)
    max_steps: int = 600
    eval_every_steps: int = 200
    num_eval_samples: int = 500
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields for every config
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every config
    sample: dict[str, Any] = field(default_factory=dict)  # SampleConfig fields of the evaluation
    configs: tuple[StudyConfig, ...] = ()
    guidance_scales: tuple[float, ...] = ()  # after training: sample each run at these scales ...
    guidance_channels: tuple[str | int, ...] = ("all",)  # ... guiding these channels ("all" or 3)
    guidance_samples: int = 500

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
        if not self.seeds or self.max_steps < 1 or self.eval_every_steps < 1 or self.num_eval_samples < 2:
            raise InputError(
                "a study needs seeds, max_steps >= 1, eval_every_steps >= 1 and num_eval_samples >= 2; got "
                f"seeds={list(self.seeds)}, max_steps={self.max_steps}, eval_every_steps={self.eval_every_steps}, "
                f"num_eval_samples={self.num_eval_samples}"
            )


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
    unknown = sorted(map(str, set(values) - known))
    if unknown:
        allowed = ", ".join(sorted(known))
        raise InputError(f"unknown study spec fields {unknown} in {where}; allowed: {allowed}", setting="spec")
    fields = dict(values)
    try:
        fields["configs"] = tuple(StudyConfig(**c) for c in fields.get("configs", ()))
    except TypeError as err:
        raise InputError(
            f"{where}: a config has a field it cannot take ({err}); use name, preset, model, train", setting="spec"
        ) from None
    try:
        for key in ("seeds", "guidance_scales", "guidance_channels"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return StudySpec(**fields)
    except TypeError as err:  # e.g. seeds = 3, max_steps = "many"
        message = f"{where}: a field has the wrong type ({err}); see the built-in specs (assets/studies)"
        raise InputError(message, setting="spec") from None


def slug(name: str) -> str:
    """A config's name as a file name (its runs' folders, its plots)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
