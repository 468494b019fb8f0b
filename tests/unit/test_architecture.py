"""The package's shape (docs/architecture.md): the public API, the layers, file sizes and citations."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ditkit

SRC = Path(ditkit.__file__).parent
MAX_LINES = 400  # STYLE.md: a module past ~400 lines does too much
LAYERS = (
    "runtime",
    "config",
    "model",
    "diffusion",
    "flow",
    "data",
    "metrics",
    "sampling",
    "interop",
    "training",
    "apps",
    "cli",
)
PUBLIC = ("load_dit", "load_model", "create_diffusion", "SampleConfig", "generate", "train", "build_train_config")


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_public_api_imports_as_before() -> None:
    for name in PUBLIC:
        assert callable(getattr(ditkit, name)), name
    assert set(ditkit.__all__) >= set(PUBLIC)


def test_every_module_imports() -> None:
    for info in pkgutil.walk_packages(ditkit.__path__, "ditkit."):
        if info.name != "ditkit.__main__":  # runs the CLI
            importlib.import_module(info.name)


def test_layers_are_subpackages_listed_in_the_contract() -> None:
    import tomllib

    pyproject = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    (contract,) = pyproject["tool"]["importlinter"]["contracts"]
    named = {part.strip() for layer in contract["layers"] for part in layer.replace(":", "|").split("|")}
    assert named == set(LAYERS)
    for layer in LAYERS:
        assert (SRC / layer / "__init__.py").is_file(), layer
    flat = sorted(p.name for p in SRC.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"], f"modules outside a layer: {flat}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_files_fit_the_size_guide_without_formatter_escapes(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: {len(text.splitlines())} lines"
    assert "fmt: skip" not in text and "fmt: off" not in text


def test_docstrings_cite_only_public_sources() -> None:
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node) or ""
                assert "anchors" not in doc and "shared/" not in doc, f"{path.name}: {doc[:80]}"


def test_the_layers_contract_holds() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (the dev extra)")
    done = subprocess.run([str(lint)], capture_output=True, text=True, cwd=SRC.parents[1])
    assert done.returncode == 0, done.stdout[-2000:]
