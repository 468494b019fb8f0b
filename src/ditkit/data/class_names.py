"""Class labels: a dataset's own class names, the 1,000 ImageNet names shipped with ditkit, and parsing a
user's list of classes by id or by name.

A dataset names its classes by its class folders (ImageNet's WordNet ids read as their first lemma), by an
.npz's `class_names` array, or by a labels file (`classes.txt` or `labels.txt`, one name per line, line i
naming class i) in an image folder or beside an .npz. Latent stores and runs record the names, so sampling,
grids, the web page and exports speak them; a model without names of its own falls back to ImageNet's for
1000 classes and "class i" otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ditkit.runtime.errors import InputError

IMAGENET_NUM_CLASSES = 1000
LABEL_FILES = ("classes.txt", "labels.txt")  # one class name per line, in class-id order
NPZ_NAMES_KEY = "class_names"  # an .npz's array of class names (str), in class-id order
_LISTED_NAMES = 30  # an unknown-name error lists at most this many names


@lru_cache(maxsize=1)
def _imagenet_rows() -> list[tuple[str, str]]:
    """(WordNet id, its lemmas) of the 1,000 ImageNet-1k classes in index order."""
    text = resources.files("ditkit").joinpath("assets", "imagenet_classes.txt").read_text()
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return [(synset.strip(), lemmas.strip()) for synset, lemmas in rows]


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order (first lemma of each synset)."""
    return [lemmas.split(",")[0].strip() for _, lemmas in _imagenet_rows()]


def class_names(num_classes: int, names: Sequence[str] | None = None) -> list[str] | None:
    """Human names of a model's classes: its own `names` (recorded with its run), else ImageNet's for
    1000-class models, else None."""
    if names:
        return list(names)
    return imagenet_class_names() if num_classes == IMAGENET_NUM_CLASSES else None


def caption(label: int, num_classes: int, names: Sequence[str] | None = None) -> str:
    """'2 square' with the model's own names, '207 golden retriever' for ImageNet models, 'class 7' otherwise."""
    known = class_names(num_classes, names)
    return f"{label} {known[label]}" if known else f"class {label}"


def readable_names(names: Sequence[str]) -> tuple[str, ...]:
    """Class folder names as names: ImageNet's WordNet ids (n01440764, ...) become their first lemma ('tench')."""
    lemmas = {synset: name for (synset, _), name in zip(_imagenet_rows(), imagenet_class_names())}
    return tuple(lemmas[n] for n in names) if names and all(n in lemmas for n in names) else tuple(names)


def check_class_names(names: Sequence[str], num_classes: int, source: str) -> tuple[str, ...]:
    """`names` as a tuple when there is one non-empty name per class and no two alike (case-insensitive)."""
    names = tuple(str(n).strip() for n in names)
    if len(names) != num_classes:
        raise InputError(
            f"{source} has {len(names)} class names for {num_classes} classes; give one name per class "
            "(line i names class i), or remove it",
            setting="class_names",
        )
    lowered = [n.lower() for n in names]
    if not all(names) or len(set(lowered)) != len(lowered):
        twice = sorted({n for n in lowered if lowered.count(n) > 1})
        raise InputError(
            f"{source}: class names must be non-empty and differ (case-insensitive); "
            + (f"{twice} appear more than once" if twice else "one is empty"),
            setting="class_names",
        )
    return names


def read_labels_file(folder: str | Path, num_classes: int) -> tuple[str, ...] | None:
    """The names in `folder`/classes.txt (or labels.txt), checked against the class count; None without one."""
    for name in LABEL_FILES:
        path = Path(folder) / name
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"cannot read {str(path)!r} ({err})", setting="class_names") from None
            while lines and not lines[-1].strip():
                lines.pop()
            return check_class_names(lines, num_classes, repr(str(path)))
    return None


def npz_class_names(npz: np.lib.npyio.NpzFile, path: str | Path) -> list[str] | None:
    """An open .npz's `class_names` array (strings), or None without one."""
    if NPZ_NAMES_KEY not in npz.files:
        return None
    try:
        names = npz[NPZ_NAMES_KEY]
    except ValueError:  # an object array needs pickle, which ditkit never loads
        names = None
    if names is None or names.ndim != 1 or names.dtype.kind not in "US":
        raise InputError(
            f"{str(path)!r}: {NPZ_NAMES_KEY} must be a 1-D array of strings, e.g. np.array(['cat', 'dog'])",
            setting="class_names",
        )
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]


def parse_classes(
    spec: str | Sequence[int | str] | None, num_classes: int, names: Sequence[str] | None = None
) -> list[int]:
    """Class ids from "207,360", class names ("disc,SQUARE", "golden retriever,otter"; case-insensitive) or a
    list; None = every class. `names` are the model's own (its run's); without them ImageNet's for 1000
    classes. A number is always an id."""
    if spec is None or spec == "":
        return list(range(num_classes))
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    known = class_names(num_classes, names) or []
    lowered = [n.lower() for n in known]
    ids = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            ids.append(int(item))
            continue
        if str(item).strip().lower() not in lowered:
            raise InputError(f"unknown class {item!r}: " + _valid_classes(num_classes, names, known), setting="classes")
        ids.append(lowered.index(str(item).strip().lower()))
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise InputError(
            f"class ids {bad} are out of range for a {num_classes}-class model (0..{num_classes - 1})",
            setting="classes",
        )
    return ids


def _valid_classes(num_classes: int, names: Sequence[str] | None, known: list[str]) -> str:
    ids = f"give ids in 0..{num_classes - 1}"
    if not known:
        return ids
    if not names:  # ImageNet's 1,000
        return ids + " or ImageNet class names (see `ditkit classes`)"
    listed = ", ".join(known[:_LISTED_NAMES]) + (f", ... ({len(known)} in all)" if len(known) > _LISTED_NAMES else "")
    return f"{ids} or class names: {listed}"
