"""Parameter and Gflops accounting in the DiT paper's convention, measured from the model itself.

The paper counts forward-pass multiply-adds of the matrix multiplies for one image, without the
guidance doubling (DiT issue #14). We run one forward on the meta device (no memory, no time) under
torch's FlopCounterMode with plain-matmul attention (the fused SDPA kernel is invisible to the
counter on CPU) and halve its count (it counts a multiply-add as 2 FLOPs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ditkit.config import PRESETS, VAE_DOWNSAMPLE, ModelConfig, get_preset
from ditkit.model.dit import DiT, num_parameters


@dataclass(frozen=True)
class ModelCost:
    name: str
    params: int  # all parameters, counting the fixed pos_embed as the official code does
    gflops: float  # forward multiply-adds per image, in 1e9
    tokens: int


def model_cost(config: ModelConfig, name: str = "") -> ModelCost:
    """Parameters and paper-convention Gflops of `config` for one image at config.input_size.

    The blocks are identical, so both counts are affine in depth: we measure depth 1 and depth 2 and
    extrapolate, which is exact and ~depth/2 times faster than tracing the full model.
    """
    params_1, flops_1 = _measure(config.replace(depth=1))
    params_2, flops_2 = _measure(config.replace(depth=2))
    extra_blocks = config.depth - 1
    flops = flops_1 + extra_blocks * (flops_2 - flops_1)
    params = params_1 + extra_blocks * (params_2 - params_1)
    return ModelCost(name=name, params=params, gflops=flops / 2 / 1e9, tokens=config.num_tokens)


def _measure(config: ModelConfig) -> tuple[int, int]:
    """(parameters, FLOPs as counted by FlopCounterMode) of one forward on the meta device."""
    with torch.device("meta"):
        model = DiT(config)
    model = model.to("meta").eval()
    model.set_explicit_attention(True)
    x = torch.empty(1, config.in_channels, config.input_size, config.input_size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    y = torch.zeros(1, dtype=torch.long, device="meta") if config.num_classes > 0 else None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t, y)
    return num_parameters(model), counter.get_total_flops()


def format_table(costs: list[ModelCost]) -> str:
    lines = [f"{'model':<12} {'params':>14} {'tokens':>7} {'Gflops':>9}"]
    lines += [f"{c.name:<12} {c.params:>14,} {c.tokens:>7} {c.gflops:>9.2f}" for c in costs]
    return "\n".join(lines)


def costs_table(
    presets: list[str] | None = None, *, image_size: int = 256, block: str | None = None, as_json: bool = False
) -> str:
    """`ditkit flops`: the paper's 12 models (or `presets`) at `image_size` px through the SD VAE."""
    names = presets or [n for n in PRESETS if n.split("-")[1].split("/")[0] in ("S", "B", "L", "XL")]
    overrides: dict[str, object] = {"input_size": image_size // VAE_DOWNSAMPLE}
    if block:
        overrides["block"] = block
    costs = [model_cost(get_preset(n, **overrides), n) for n in names]
    if as_json:
        rows = [
            {
                "model": c.name,
                "params": c.params,
                "gflops": round(c.gflops, 4),
                "tokens": c.tokens,
                "image_size": image_size,
                "block": block or "adaln_zero",
            }
            for c in costs
        ]
        return json.dumps(rows, indent=1)
    header = f"Forward Gflops per image (multiply-adds, the paper's convention) at {image_size} px"
    return header + "\n" + format_table(costs)
