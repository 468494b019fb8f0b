"""The web page's request handling without Gradio: the page's limits, its fields checked, grid and walk jobs.

`PageSampler` takes a model opened once and answers what the page asks; bad input raises InputError with a
message meant for the page (`page_message`). ditkit.apps.serve puts the Gradio page over it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ditkit.config import DIFFUSION_SAMPLERS, FLOW_SAMPLERS, WALK_SAMPLING, SampleConfig, for_process
from ditkit.data.class_names import caption, class_names, imagenet_class_names, parse_classes
from ditkit.runtime.errors import InputError
from ditkit.runtime.seeds import image_seeds
from ditkit.runtime.stopping import one_line
from ditkit.sampling.generate import SamplingModel, generate
from ditkit.sampling.grid import save_grid
from ditkit.sampling.walk import class_walk, noise_walk, save_walk

PAGE_SAMPLING = WALK_SAMPLING  # the page's starting values: DDIM 50 steps, cfg 4 (5x fewer steps than DDPM 250)
MAX_STEPS = 1000  # and at most the length of the model's training chain
MAX_PER_CLASS = 16
MAX_IMAGES = 64  # per grid request: a request holds the queue while it runs
MAX_FRAMES = 64
MAX_SEED = 2**63 - 1
TILE_PIXELS = 96  # small images are enlarged (nearest neighbours) to about this size in the grid
WALK_PIXELS = 192  # ... and walk frames to about this size
GUIDANCE = {"all channels": "all", "first 3 channels (official DiT)": 3}
WALK_KINDS = {"noise: seed A to seed B": "noise", "class: A to B": "class"}
WALK_SAMPLERS = ("ddim", "dpm++2m")  # deterministic: a frame is a smooth function of its inputs
FLOW_WALK_SAMPLERS = ("euler", "heun", "dopri5")  # a flow model's: its probability-flow ODE
FIRST_IMAGENET_CLASSES = (207, 360, 387, 974)  # golden retriever, otter, lesser panda, geyser (official sample.py)
# The page's field for a setting named in an InputError (the CLI names its flag instead).
PAGE_FIELDS = {
    "cfg_scale": "Guidance scale",
    "cfg_channels": "Guide",
    "guidance": "Guide",
    "sampler": "Sampler",
    "num_steps": "Steps",
    "per_class": "Images per class",
    "kind": "Walk",
    "classes": "Classes",
}

OnStep = Callable[[int, int], None]  # (network calls done, calls in the job)


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """`value` (a page field: int, float or text) as an int in low..high, or an InputError naming the field."""
    number: int | float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, (float, str)):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}; got {value!r}", setting=name)
    return int(number)


def page_message(err: BaseException) -> str:
    """An exception as one line for the page, naming the page's field of the setting at fault."""
    message = one_line(err)
    field = PAGE_FIELDS.get(str(getattr(err, "setting", None) or "").rsplit(".", 1)[-1])
    return message + (f" (the {field} field)" if field and field.lower() not in message.lower() else "")


@contextlib.contextmanager
def count_network_calls(model: nn.Module, total: int, on_step: OnStep | None) -> Iterator[None]:
    """Report each forward pass of `model` (one per sampling step and batch) as on_step(done, total)."""
    if on_step is None:
        yield
        return
    done = 0

    def hook(*_: Any) -> None:
        nonlocal done
        done += 1
        on_step(min(done, total), total)

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def enlarge(images: np.ndarray, pixels: int) -> np.ndarray:
    """(N, H, W, C) uint8 enlarged by a whole factor (nearest neighbours) to about `pixels` high."""
    scale = max(1, pixels // images.shape[1])
    return images.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else images


class PageSampler:
    """The model, opened once, and what the page asks of it: grids and walks into `work_dir`.

    Every field arrives as the page sends it (numbers may be floats or None, classes are text); bad values
    raise InputError with a message meant for the page. Not thread-safe: the app runs one job at a time.
    """

    def __init__(self, opened: SamplingModel, work_dir: str | os.PathLike) -> None:
        self.opened = opened
        self.config = opened.model.config
        self.num_classes = self.config.num_classes
        self.class_names = class_names(self.num_classes, opened.class_names)  # its run's, ImageNet's or None
        self.work_dir = Path(work_dir)
        self.max_steps = min(MAX_STEPS, opened.diffusion.num_train_steps)
        flow = opened.diffusion.is_flow  # the page offers the samplers of the model's own process
        self.start = for_process(PAGE_SAMPLING, opened.diffusion)  # the fields' starting values
        self.samplers = FLOW_SAMPLERS if flow else DIFFUSION_SAMPLERS
        self.walk_samplers = FLOW_WALK_SAMPLERS if flow else WALK_SAMPLERS
        self._jobs = itertools.count()

    # What the page shows.

    def class_choices(self) -> list[str]:
        """'2 square' with the run's class names, '207 golden retriever' for ImageNet models, the bare id ('7')
        otherwise (digits for the demo)."""
        names = self.class_names
        return [caption(i, self.num_classes, names) if names else str(i) for i in range(self.num_classes)]

    def default_classes(self) -> list[str]:
        ids = FIRST_IMAGENET_CLASSES if self.class_names == imagenet_class_names() else range(min(self.num_classes, 10))
        return [self.class_choices()[i] for i in ids]

    def describe(self) -> str:
        """One line about the model, for the page's header."""
        c = self.config
        space = "pixel space" if self.opened.vae is None else f"{c.in_channels}-channel latents decoded by a VAE"
        classes = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        device = next(self.opened.model.parameters()).device
        return (
            f"DiT: depth {c.depth}, width {c.hidden_size}, patch {c.patch_size}; {c.input_size}x{c.input_size} "
            f"{space}; {classes}; sampling on {device}"
        )

    # Parsing the fields.

    def parse_classes(self, values: str | Sequence[str] | None, field: str = "classes") -> list[int]:
        """Class ids from the page's choices ('207 golden retriever', '7'), ids or class names."""
        items = [values] if isinstance(values, str) else list(values or [])
        items = [str(v).strip() for v in items if str(v).strip()]
        if not items:
            raise InputError(f"choose at least one class ({field})", setting="classes")
        choices = {label.lower(): i for i, label in enumerate(self.class_choices())}
        ids = []
        for item in items:
            if item.lower() in choices:
                ids.append(choices[item.lower()])
                continue
            try:
                ids.extend(parse_classes(item, self.num_classes, self.opened.class_names))
            except InputError as err:  # name the field: the page has several class boxes
                raise InputError(f"{field}: {err}", setting="classes") from None
        return ids

    def sample_config(self, sampler: Any, steps: Any, cfg_scale: Any, guidance: Any = "all channels") -> SampleConfig:
        """The page's sampling fields as a SampleConfig (which validates them)."""
        num_steps = whole_number("steps", steps, 2, self.max_steps)
        if guidance not in GUIDANCE:
            raise InputError(
                f"guidance must be one of {', '.join(map(repr, GUIDANCE))}; got {guidance!r}", setting="guidance"
            )
        channels = GUIDANCE[guidance]
        if channels != "all" and channels >= self.config.in_channels:  # 3 of 3 (or of 1) channels is all of them
            channels = "all"
        try:
            scale = float(cfg_scale)
        except (TypeError, ValueError):
            raise InputError(
                f"guidance scale must be a number >= 0 (1 = no guidance); got {cfg_scale!r}", setting="cfg_scale"
            ) from None
        return self.start.replace(sampler=sampler, num_steps=num_steps, cfg_scale=scale, cfg_channels=channels)

    # Jobs.

    def grid(
        self,
        classes: str | Sequence[str] | None,
        per_class: Any,
        cfg_scale: Any,
        guidance: Any,
        sampler: Any,
        steps: Any,
        seed: Any,
        on_step: OnStep | None = None,
    ) -> tuple[Path, str]:
        """Sample a grid (one row per class) into a PNG; returns its path and a caption of the rows."""
        config = self.sample_config(sampler, steps, cfg_scale, guidance)
        seed = whole_number("seed", seed, 0, MAX_SEED)
        if self.num_classes:
            ids = self.parse_classes(classes)
            per_class = whole_number("images per class", per_class, 1, MAX_PER_CLASS)
            if len(ids) * per_class > MAX_IMAGES:
                raise InputError(
                    f"at most {MAX_IMAGES} images per request; got {len(ids)} classes x {per_class} images: "
                    "choose fewer classes or fewer images per class",
                    setting="per_class",
                )
            labels: list[int] | None = [c for c in ids for _ in range(per_class)]
            num, nrow = len(ids) * per_class, per_class
            rows = "rows, top to bottom: " + ", ".join(caption(c, self.num_classes, self.class_names) for c in ids)
        else:
            num = whole_number("images", per_class, 1, MAX_IMAGES)
            labels, nrow, rows = None, math.ceil(math.sqrt(num)), f"{num} unconditional samples"
        images = self._generate(labels, image_seeds(seed, num), config, on_step)
        path = self.work_dir / f"ditkit_grid_{next(self._jobs):04d}_seed{seed}.png"
        save_grid(images, path, nrow=nrow, scale=max(1, TILE_PIXELS // images.shape[1]))
        return path, rows

    def walk(
        self,
        kind: Any,
        class_a: Any,
        class_b: Any,
        seed_a: Any,
        seed_b: Any,
        num_frames: Any,
        cfg_scale: Any,
        sampler: Any,
        steps: Any,
        on_step: OnStep | None = None,
    ) -> Path:
        """A latent walk as an animated GIF: noise from seed A to seed B, or class A to class B; returns its path."""
        if kind not in WALK_KINDS:
            raise InputError(f"walk must be one of {', '.join(map(repr, WALK_KINDS))}; got {kind!r}", setting="kind")
        if sampler not in self.walk_samplers:
            raise InputError(
                f"a walk needs a deterministic sampler ({' or '.join(self.walk_samplers)}); got {sampler!r}",
                setting="sampler",
            )
        config = self.sample_config(sampler, steps, cfg_scale)
        frames = whole_number("frames", num_frames, 2, MAX_FRAMES)
        seed_a = whole_number("seed A", seed_a, 0, MAX_SEED)
        common = {"diffusion": self.opened.diffusion, "vae": self.opened.vae}
        model = self.opened.model
        total = config.num_steps * math.ceil(frames / config.batch_size_on(next(model.parameters()).device.type))
        if WALK_KINDS[kind] == "noise":
            seed_b = whole_number("seed B", seed_b, 0, MAX_SEED)
            label = self.parse_classes(class_a, "class A")[0] if self.num_classes else None
            with count_network_calls(model, total, on_step):
                images = noise_walk(model, label, seed_a, seed_b, frames, config, **common)
        else:
            if not self.num_classes:
                raise InputError(
                    "a class walk needs a class-conditional model; this one is unconditional", setting="kind"
                )
            a, b = self.parse_classes(class_a, "class A")[0], self.parse_classes(class_b, "class B")[0]
            with count_network_calls(model, total, on_step):
                images = class_walk(model, a, b, seed_a, frames, config, **common)
        name = f"ditkit_walk_{next(self._jobs):04d}_{WALK_KINDS[kind]}"
        return save_walk(enlarge(images, WALK_PIXELS), self.work_dir, name, formats=("gif",))["gif"]  # the page: a GIF

    def _generate(
        self, labels: list[int] | None, seeds: list[int], config: SampleConfig, on_step: OnStep | None
    ) -> np.ndarray:
        model = self.opened.model
        device = next(model.parameters()).device
        total = config.num_steps * math.ceil(len(seeds) / config.batch_size_on(device.type))
        with count_network_calls(model, total, on_step):
            return generate(
                model, labels, seeds, config, diffusion=self.opened.diffusion, vae=self.opened.vae, device=device
            )
