"""Class labels: the 1,000 ImageNet names shipped with ditkit, and parsing a user's list of classes."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from ditkit.runtime.errors import InputError

IMAGENET_NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order (first lemma of each synset)."""
    text = resources.files("ditkit").joinpath("assets", "imagenet_classes.txt").read_text()
    rows = [line.split("\t", 1)[1] for line in text.splitlines() if line and not line.startswith("#")]
    return [row.split(",")[0].strip() for row in rows]


def class_names(num_classes: int) -> list[str] | None:
    """Human names of a model's classes: ImageNet's for 1000-class models, None otherwise."""
    return imagenet_class_names() if num_classes == IMAGENET_NUM_CLASSES else None


def caption(label: int, num_classes: int) -> str:
    """'207 golden retriever' for ImageNet models, 'class 7' otherwise."""
    names = class_names(num_classes)
    return f"{label} {names[label]}" if names else f"class {label}"


def parse_classes(spec: str | Sequence[int | str] | None, num_classes: int) -> list[int]:
    """Class ids from "207,360", ImageNet names ("golden retriever,otter") or a list; None = every class."""
    if spec is None or spec == "":
        return list(range(num_classes))
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n.lower() for n in class_names(num_classes) or []]
    ids = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            ids.append(int(item))
            continue
        if str(item).lower() not in names:
            raise InputError(
                f"unknown class {item!r}: give ids in 0..{num_classes - 1}"
                + (" or ImageNet class names (see `ditkit classes`)" if names else ""),
                setting="classes",
            )
        ids.append(names.index(str(item).lower()))
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise InputError(
            f"class ids {bad} are out of range for a {num_classes}-class model (0..{num_classes - 1})",
            setting="classes",
        )
    return ids
