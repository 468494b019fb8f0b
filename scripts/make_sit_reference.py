"""Make tests/fixtures/sit_*.safetensors: outputs of the official SiT transport code (github.com/willisma/SiT).

Run from the repository root with a work tree of the official code (it needs torchdiffeq and tqdm):

    git -C /path/to/SiT.git archive HEAD | tar -x -C /tmp/sit
    .venv/bin/python scripts/make_sit_reference.py --sit /tmp/sit

The model is ditkit's own DiT-T/2 (learn_sigma=True, random weights) called as SiT calls its SiT: t in [0, 1] fed
to the timestep embedder, the learned-sigma half of the output dropped (SiT's `forward`). No SiT code is kept
here: this script imports it from --sit. Writes sit_model.safetensors (the weights) and sit_reference.safetensors
(inputs, noises and the official outputs); tests/equivalence/test_official_sit.py compares ditkit.flow to them.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ditkit.config import get_preset
from ditkit.model.dit import DiT

SIT_COMMIT = "947f95bd3a510e9af441d38c1e9f72e0eee873c5"  # the commit the fixtures were made from
SEED = 0
BATCH = 4
ODE_STEPS = 6  # grid points, as SiT counts them: 5 steps
SDE_STEPS = 5  # 4 stochastic steps and the last step
CFG_SCALE = 4.0
PATHS = {"linear": "Linear", "gvp": "GVP", "vp": "VP"}
PREDICTIONS = ("velocity", "score", "noise")
ODE_METHODS = {"euler": "euler", "heun": "heun2"}
DIFFUSION_FORMS = {"sigma": "sigma", "SBDM": "SBDM", "linear": "linear", "decreasing": "decreasing"}
# (path, prediction, SiT sampling method, diffusion form, SiT last step); SiT's CLI default is Euler / sigma / Mean.
SDE_CASES = [
    ("linear", "velocity", "Euler", "sigma", "Mean"),
    ("linear", "velocity", "Euler", "sigma", None),
    ("linear", "velocity", "Euler", "sigma", "Tweedie"),
    ("linear", "velocity", "Euler", "sigma", "Euler"),
    ("linear", "velocity", "Heun", "sigma", "Mean"),
    ("gvp", "score", "Euler", "SBDM", "Mean"),
    ("vp", "noise", "Euler", "SBDM", "Mean"),
    ("vp", "velocity", "Euler", "linear", "Tweedie"),
    ("linear", "noise", "Heun", "decreasing", "Mean"),
]


def load_sit(sit_dir: Path) -> tuple[types.ModuleType, Callable[..., Tensor]]:
    """The official `transport` package and the unbound `SiT.forward_with_cfg` (timm stubbed: only names)."""
    sys.path.insert(0, str(sit_dir))
    import transport

    for name in ("timm", "timm.models", "timm.models.vision_transformer"):
        sys.modules.setdefault(name, types.ModuleType(name))
    vit = sys.modules["timm.models.vision_transformer"]
    for name in ("PatchEmbed", "Attention", "Mlp"):
        setattr(vit, name, object)
    import models

    return transport, models.SiT.forward_with_cfg


def tiny_model() -> DiT:
    """DiT-T/2 with learned sigma, every parameter moved by 0.05 N(0, 1) (the zero init outputs exactly 0)."""
    torch.manual_seed(SEED)
    model = DiT(get_preset("DiT-T/2")).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model


class Counter:
    """SiT's model callable (x, t, y) with a call count."""

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn, self.calls = fn, 0

    def __call__(self, *args: object, **kwargs: object) -> Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sit", type=Path, required=True, help="a work tree of github.com/willisma/SiT")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    parser.add_argument("--commit", default=SIT_COMMIT, help="the SiT commit of --sit, recorded in the metadata")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transport, forward_with_cfg = load_sit(args.sit)
    model = tiny_model()
    channels = model.in_channels

    def sit_forward(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return model(x, t, y)[:, :channels]  # SiT's forward drops the learned-sigma half

    shim = types.SimpleNamespace(forward=sit_forward)  # `self` of SiT.forward_with_cfg: only .forward is used

    def sit_cfg(x: Tensor, t: Tensor, y: Tensor, cfg_scale: float) -> Tensor:
        return forward_with_cfg(shim, x, t, y, cfg_scale)

    gen = torch.Generator().manual_seed(SEED)
    shape = (BATCH, channels, 8, 8)
    ref: dict[str, Tensor] = {
        "x1": torch.randn(shape, generator=gen),
        "x0": torch.randn(shape, generator=gen),
        "z": torch.randn(shape, generator=gen),
        "v": torch.randn(shape, generator=gen),
        "u": torch.tensor([0.1, 0.35, 0.6, 0.9]),
        "t_path": torch.tensor([0.05, 0.3, 0.7, 0.95]),
        "y": torch.tensor([1, 3, 5, 7]),
    }
    y = ref["y"]
    torch.set_grad_enabled(False)

    for ours, theirs in PATHS.items():
        plan = transport.create_transport(theirs, "velocity").path_sampler
        t, x0, x1, v = ref["t_path"], ref["x0"], ref["x1"], ref["v"]
        _, ref[f"path/{ours}/x_t"], ref[f"path/{ours}/u_t"] = plan.plan(t, x0, x1)
        drift_mean, drift_var = plan.compute_drift(x1, t)
        ref[f"path/{ours}/drift_mean"], ref[f"path/{ours}/drift_var"] = drift_mean, torch.as_tensor(drift_var)
        ref[f"path/{ours}/score_from_velocity"] = plan.get_score_from_velocity(v, x1, t)
        ref[f"path/{ours}/noise_from_velocity"] = plan.get_noise_from_velocity(v, x1, t)
        ref[f"path/{ours}/velocity_from_score"] = plan.get_velocity_from_score(v, x1, t)
        for form in DIFFUSION_FORMS.values():
            ref[f"path/{ours}/diffusion/{form}"] = torch.as_tensor(plan.compute_diffusion(x1, t, form=form, norm=0.7))

        for prediction in PREDICTIONS:
            tr = transport.create_transport(theirs, prediction)
            intervals = [
                tr.check_interval(tr.train_eps, tr.sample_eps),
                tr.check_interval(tr.train_eps, tr.sample_eps, eval=True),
                tr.check_interval(tr.train_eps, tr.sample_eps, eval=True, reverse=True),
                tr.check_interval(tr.train_eps, tr.sample_eps, sde=True, eval=True, diffusion_form="sigma"),
                tr.check_interval(tr.train_eps, tr.sample_eps, sde=True, eval=True, last_step_size=0.04),
            ]
            ref[f"interval/{ours}/{prediction}"] = torch.tensor(intervals, dtype=torch.float64)
            for weight in (None, "velocity", "likelihood") if prediction != "velocity" else (None,):
                tr = transport.create_transport(theirs, prediction, weight)
                t0, t1 = tr.check_interval(tr.train_eps, tr.sample_eps)
                t = ref["u"] * (t1 - t0) + t0
                tr.sample = lambda x1_, t=t: (t, ref["x0"], x1_)  # fixed t and noise instead of SiT's draws
                key = f"loss/{ours}/{prediction}/{weight}"
                ref[key] = tr.training_losses(sit_forward, ref["x1"], {"y": y})["loss"]
                ref[f"{key}/t"] = t

            sampler = transport.Sampler(transport.create_transport(theirs, prediction))
            for method, sit_method in ODE_METHODS.items():
                counted = Counter(sit_forward)
                ode = sampler.sample_ode(sampling_method=sit_method, num_steps=ODE_STEPS)
                ref[f"ode/{ours}/{prediction}/{method}"] = ode(ref["z"], counted, y=y)[-1]
                ref[f"ode/{ours}/{prediction}/{method}/nfe"] = torch.tensor(counted.calls)

    # Adaptive dopri5 (SiT's default ODE sampler) on a 2-point grid, and SiT's 3-channel guidance.
    for ours, prediction in (("linear", "velocity"), ("gvp", "score")):
        sampler = transport.Sampler(transport.create_transport(PATHS[ours], prediction))
        ode = sampler.sample_ode(sampling_method="dopri5", num_steps=2, atol=1e-6, rtol=1e-3)
        ref[f"ode/{ours}/{prediction}/dopri5"] = ode(ref["z"], sit_forward, y=y)[-1]
    sampler = transport.Sampler(transport.create_transport("Linear", "velocity"))
    ode = sampler.sample_ode(sampling_method="euler", num_steps=ODE_STEPS)
    y_cfg = torch.cat([y, torch.full_like(y, model.config.num_classes)])
    out = ode(torch.cat([ref["z"], ref["z"]]), sit_cfg, y=y_cfg, cfg_scale=CFG_SCALE)[-1]
    ref["ode/linear/velocity/euler/cfg3"] = out[:BATCH]  # sample.py keeps the conditional half

    # SDE loops: SiT draws each step's noise from torch's global RNG; record the draws after the fact.
    for ours, prediction, method, form, last_step in SDE_CASES:
        sampler = transport.Sampler(transport.create_transport(PATHS[ours], prediction))
        sde = sampler.sample_sde(sampling_method=method, diffusion_form=form, last_step=last_step, num_steps=SDE_STEPS)
        counted = Counter(sit_forward)
        torch.manual_seed(SEED + 1)
        key = f"sde/{ours}/{prediction}/{method.lower()}/{form}/{str(last_step).lower()}"
        ref[key] = sde(ref["z"], counted, y=y)[-1]
        ref[f"{key}/nfe"] = torch.tensor(counted.calls)
    torch.manual_seed(SEED + 1)
    ref["sde_noise"] = torch.stack([torch.randn(shape) for _ in range(SDE_STEPS - 1)])

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"source": "github.com/willisma/SiT", "commit": args.commit, "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "sit_model.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.items()}, str(args.out / "sit_reference.safetensors"), metadata=meta)
    print(f"wrote {len(ref)} tensors to {args.out / 'sit_reference.safetensors'} ({meta})")


if __name__ == "__main__":
    main()
