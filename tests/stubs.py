"""Test stand-ins for the heavy feature networks (not part of the package), and the flags of the tiny run."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ditkit.data.image_files import check_images
from ditkit.metrics.evaluate import FEATURE_KINDS

# `ditkit train` flags of the tests' tiny run: DiT-T/2 on 8 px digits in pixel space, batch 8, CPU, fp32, no
# evaluation. Tests add their own cadence, workers and steps (argparse keeps the last value of a repeated flag).
TINY_DIGITS_RUN = (
    *("--data", "digits", "--preset", "DiT-T/2", "--image-size", "8", "--vae", "none", "--global-batch-size", "8"),
    *("--eval-every", "0", "--device", "cpu", "--precision", "fp32"),
)


class RandomFeatureExtractor(torch.nn.Module):
    """A tiny seeded random conv net with pool/spatial/logits heads: a fast stand-in for Inception in tests."""

    available = frozenset(FEATURE_KINDS)

    def __init__(self, seed: int = 0, pool_dim: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.name = f"random-{seed}-{pool_dim}-{num_classes}"
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("conv1", torch.randn(16, 3, 3, 3, generator=gen) / 27**0.5)
        self.register_buffer("conv2", torch.randn(pool_dim, 16, 3, 3, generator=gen) / 144**0.5)
        self.register_buffer("fc", torch.randn(num_classes, pool_dim, generator=gen))

    @torch.no_grad()
    def forward(self, images: np.ndarray) -> dict[str, Tensor]:
        x = torch.as_tensor(check_images(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = F.interpolate(x.expand(-1, 3, -1, -1), size=(16, 16), mode="bilinear", antialias=True)
        h = F.relu(F.conv2d(x, self.conv1, stride=2, padding=1))  # (N, 16, 8, 8)
        h = F.relu(F.conv2d(h, self.conv2, stride=2, padding=1))  # (N, pool_dim, 4, 4)
        pool = h.mean(dim=(2, 3))
        return {"pool": pool, "spatial": h[:, :2].flatten(1), "logits": 4.0 * pool @ self.fc.T}
