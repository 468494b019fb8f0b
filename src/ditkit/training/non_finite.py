"""inf / NaN detection in the weights, the EMA weights and the optimizer state, with one host sync.

The training loop checks before every checkpoint; `checkpoint.load` refuses a checkpoint that fails it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def non_finite(model: nn.Module, ema: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None) -> str:
    """Which of the weights, the EMA weights and the optimizer state hold inf or NaN ("" when none does).

    One max-abs reduction per tensor and a single host sync (cheap enough for every log interval).
    """
    state = nested_tensors(optimizer.state) if optimizer is not None else []
    groups = {
        "the weights": list(model.parameters()),
        "the EMA weights": list(ema.parameters()) if ema is not None else [],
        "the optimizer state": [t for t in state if t.is_floating_point()],
    }
    return ", ".join(non_finite_groups(groups))


def non_finite_groups(groups: dict[str, Iterable[Tensor]]) -> list[str]:
    """The names of the groups holding a non-finite value (max |x| is inf or NaN; NaN propagates)."""
    names, maxima, device = [], [], None
    for name, tensors in groups.items():
        tensors = [t.detach() for t in tensors if t.numel()]
        if tensors:
            device = device or tensors[0].device
            norms = torch._foreach_norm(tensors, float("inf"))
            names.append(name)
            maxima.append(torch.stack([n.float().to(device) for n in norms]).max())
    finite = torch.isfinite(torch.stack(maxima)).tolist() if maxima else []  # the one host sync
    return [name for name, ok in zip(names, finite) if not ok]


def nested_tensors(obj: Any) -> list[Tensor]:
    """Every tensor in a nest of dicts, lists and tuples (an optimizer's state), in order."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in nested_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in nested_tensors(v)]
    return []
