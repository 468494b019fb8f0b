"""Parameter and Gflops accounting (ditkit.model.flops) against the DiT paper's Table 4 and official counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ditkit.config import get_preset
from ditkit.model.dit import DiT, num_parameters
from ditkit.model.flops import format_table, model_cost

# Paper Gflops at 256 px (Table 4 of Peebles & Xie).
PAPER_GFLOPS = {
    "DiT-S/8": 0.36,
    "DiT-S/4": 1.41,
    "DiT-S/2": 6.06,
    "DiT-B/8": 1.42,
    "DiT-B/4": 5.56,
    "DiT-B/2": 23.01,
    "DiT-L/8": 5.01,
    "DiT-L/4": 19.70,
    "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39,
    "DiT-XL/4": 29.05,
    "DiT-XL/2": 118.64,
}
FAST = ["DiT-S/2", "DiT-B/4", "DiT-XL/2"]


@pytest.mark.parametrize("name", FAST)
def test_paper_gflops(name):
    assert model_cost(get_preset(name)).gflops == pytest.approx(PAPER_GFLOPS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(set(PAPER_GFLOPS) - set(FAST)))
def test_paper_gflops_all_sizes(name):
    assert model_cost(get_preset(name)).gflops == pytest.approx(PAPER_GFLOPS[name], rel=0.01)


def test_paper_gflops_512px():
    assert model_cost(get_preset("DiT-XL/2", input_size=64)).gflops == pytest.approx(524.6, rel=0.01)


@pytest.mark.parametrize(
    ("block", "gflops"),
    [("in_context", 119.4), ("cross_attn", 137.6), ("adaln", 118.6), ("adaln_zero", 118.6)],
)
def test_block_design_gflops(block, gflops):
    """Fig. 3 of the paper: the cost of each conditioning design for DiT-XL/2."""
    assert model_cost(get_preset("DiT-XL/2", block=block)).gflops == pytest.approx(gflops, rel=0.01)


@pytest.mark.parametrize(("name", "params"), [("DiT-S/2", 32_963_360), ("DiT-XL/2", 675_129_632)])
def test_parameter_counts_equal_official(name, params):
    cost = model_cost(get_preset(name), name)
    assert cost.params == params and cost.name == name and cost.tokens == 256


@pytest.mark.parametrize("block", ["adaln_zero", "cross_attn", "in_context"])
def test_depth_extrapolation_is_exact(block):
    """model_cost measures depths 1 and 2 and extrapolates; a full trace must give the same numbers."""
    config = get_preset("DiT-T/2", depth=5, block=block)
    model = DiT(config).eval()
    model.set_explicit_attention(True)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 4, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    cost = model_cost(config)
    assert cost.gflops * 2e9 == pytest.approx(counter.get_total_flops(), rel=1e-12)
    assert cost.params == num_parameters(model)


def test_unconditional_cost():
    conditional = model_cost(get_preset("DiT-T/2"))
    unconditional = model_cost(get_preset("DiT-T/2", num_classes=0))
    assert conditional.params - unconditional.params == 11 * 32  # the label table with its null row


def test_format_table():
    table = format_table([model_cost(get_preset("DiT-S/2"), "DiT-S/2")])
    assert "DiT-S/2" in table and "32,963,360" in table and "6.06" in table
