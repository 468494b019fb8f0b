"""The DiT model family: patchify, fixed 2D sin-cos positions, N conditioned blocks, linear decoder.

Follows Peebles & Xie, "Scalable Diffusion Models with Transformers" (https://arxiv.org/abs/2212.09748),
with the parameter names of facebookresearch/DiT so its published checkpoints load with strict keys.
All four block designs of the paper's Fig. 3 are here: adaLN-Zero (default), adaLN, cross-attention
and in-context conditioning. The model never sees the noise schedule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ditkit.config import TIMESTEP_FREQ_DIM, TIMESTEP_MAX_PERIOD, ModelConfig
from ditkit.runtime.errors import InputError

LN_EPS = 1e-6  # LayerNorm epsilon of the official blocks


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over the tokens of (N, T, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# Embeddings.


def timestep_embedding(t: Tensor, dim: int = TIMESTEP_FREQ_DIM, max_period: float = TIMESTEP_MAX_PERIOD) -> Tensor:
    """Sinusoidal features of (N,) timesteps -> (N, dim): [cos(t f_k), sin(t f_k)], f_k = P^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2D sin-cos positions (T, D), float64, row-major tokens; first D/2 channels encode the column.

    Matches MAE's get_2d_sincos_pos_embed as DiT uses it: per axis, [sin(pos w), cos(pos w)] with
    w_k = 10000^(-k / (D/4)); grid positions are the integers 0..grid_size-1.
    """
    coords = np.arange(grid_size, dtype=np.float64)
    cols, rows = np.meshgrid(coords, coords)  # cols varies along a row: the w coordinate

    def axis_embed(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([axis_embed(cols), axis_embed(rows)], axis=1)


class PatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, T, D) tokens with a p x p, stride-p convolution (timm PatchEmbed layout)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Integer diffusion steps (N,) -> (N, D) through sinusoidal features and a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = TIMESTEP_FREQ_DIM):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels (N,) -> (N, D). With dropout > 0 the table has a null row (id = num_classes) for CFG.

    Float labels of shape (N, rows) are mixing weights over the table's rows (never dropped). Label dropout
    is the training step's business (ditkit.training.loop draws the mask with the step's other random numbers, so a
    run is exact on resume and under any process count): the embedder drops only where `force_drop_ids`
    says so, unlike the official module, which draws torch.rand in train mode.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def drop(self, labels: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """Replace labels by the null id: at random with p = dropout_prob, or where force_drop_ids == 1."""
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: Tensor, train: bool = False, force_drop_ids: Tensor | None = None) -> Tensor:
        if labels.is_floating_point():
            # Soft labels (N, rows): a mixture of class embeddings, e.g. to interpolate between classes.
            return labels.to(self.embedding_table.weight.dtype) @ self.embedding_table.weight
        if force_drop_ids is not None:
            labels = self.drop(labels, force_drop_ids)
        return self.embedding_table(labels)


# Transformer pieces (timm-compatible parameter names: attn.qkv, attn.proj, mlp.fc1, mlp.fc2).


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention (flash / memory-efficient on GPU)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.explicit_matmul = False  # True: softmax(QK^T)V with plain matmuls (for FLOP counting)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, H, T, D/H)
        x = _attention(q, k, v, self.explicit_matmul)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class CrossAttention(nn.Module):
    """Tokens (N, T, D) attend to a short conditioning sequence (N, S, D) (the paper's [t, y] pair)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.explicit_matmul = False

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        n, t, d = x.shape
        h = self.num_heads
        q = self.q(x).reshape(n, t, h, d // h).transpose(1, 2)
        k, v = self.kv(context).reshape(n, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        x = _attention(q, k, v, self.explicit_matmul)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


def _attention(q: Tensor, k: Tensor, v: Tensor, explicit_matmul: bool) -> Tensor:
    if not explicit_matmul:
        return F.scaled_dot_product_attention(q, k, v)
    weights = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return weights.softmax(dim=-1) @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """One transformer block conditioned by `design` (Fig. 3 of the paper).

    adaln_zero: adaLN regresses shift, scale and a zero-initialised gate per residual from c = t + y.
    adaln:      adaLN shift and scale only (no gates).
    cross_attn: plain pre-norm block plus cross-attention over the [t, y] embeddings after self-attention.
    in_context: plain pre-norm ViT block; t and y travel as two extra tokens of the sequence.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, design: str):
        super().__init__()
        self.design = design
        adaptive = design in ("adaln_zero", "adaln")
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=LN_EPS)
        self.attn = Attention(hidden_size, num_heads)
        if design == "cross_attn":
            self.norm_cross = nn.LayerNorm(hidden_size, eps=LN_EPS)
            self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=LN_EPS)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        if adaptive:
            chunks = 6 if design == "adaln_zero" else 4
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, chunks * hidden_size))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None) -> Tensor:
        if self.design == "adaln_zero":
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
            x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        if self.design == "adaln":
            shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            x = x + self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            return x + self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        x = x + self.attn(self.norm1(x))
        if self.design == "cross_attn":
            x = x + self.cross_attn(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """LayerNorm, adaptive shift/scale from c (adaLN designs only), then a linear map to p*p*C_out."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, adaptive: bool):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=LN_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        if adaptive:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if hasattr(self, "adaLN_modulation"):
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            return self.linear(modulate(self.norm_final(x), shift, scale))
        return self.linear(self.norm_final(x))


# The model.


class DiT(nn.Module):
    """Diffusion Transformer: (x (N, C, H, W), t (N,), y (N,)) -> (N, C_out, H, W)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = p
        self.grad_checkpointing = False  # recompute block activations in backward (saves memory)
        self.x_embedder = PatchEmbed(p, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = (
            LabelEmbedder(config.num_classes, d, config.class_dropout_prob) if config.num_classes > 0 else None
        )
        grid = config.input_size // p
        # Fixed positions: a persistent buffer, so checkpoints carry `pos_embed` like the official ones
        # (where it is a frozen parameter) while optimizers and EMA never touch it.
        # Built from numpy (float64, then float32 like the official copy_), then moved to the parameters'
        # device: from_numpy ignores a `with torch.device("meta")` context, which left a CPU buffer there.
        pos = torch.from_numpy(sincos_pos_embed_2d(d, grid)).float().unsqueeze(0)
        pos = pos.to(self.x_embedder.proj.weight.device)
        self.register_buffer("pos_embed", pos, persistent=True)  # (1, T, D)
        self.blocks = nn.ModuleList(
            [DiTBlock(d, config.num_heads, config.mlp_ratio, config.block) for _ in range(config.depth)]
        )
        adaptive_final = config.block in ("adaln_zero", "adaln")
        self.final_layer = FinalLayer(d, p, self.out_channels, adaptive_final)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation: xavier linears, zero adaLN and output layers (identity blocks)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a Linear over the flattened patch
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            if hasattr(block, "adaLN_modulation"):
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
        if hasattr(self.final_layer, "adaLN_modulation"):
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, T, p*p*C), features ordered (p_row, p_col, channel) like the decoder."""
        n, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, T, p*p*C_out) -> (N, C_out, H, W) for a square token grid."""
        n, t, _ = x.shape
        p, c = self.patch_size, self.out_channels
        h = w = math.isqrt(t)
        x = x.reshape(n, h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, h * p, w * p)

    def condition(self, t: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Timestep and label embeddings (N, D) each, and their sum c (N, D)."""
        t_emb = self.t_embedder(t)
        if self.y_embedder is None:
            return t_emb, t_emb, None
        if y is None:
            raise InputError(
                "this model is class-conditional: pass labels y (use the null id for no class)", setting="y"
            )
        y_emb = self.y_embedder(y, self.training)
        return t_emb + y_emb, t_emb, y_emb

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c, t_emb, y_emb = self.condition(t, y)  # (N, D)
        cond_tokens = torch.stack([t_emb, y_emb if y_emb is not None else torch.zeros_like(t_emb)], dim=1)
        design = self.config.block
        num_tokens = x.shape[1]
        if design == "in_context":
            x = torch.cat([x, cond_tokens], dim=1)  # (N, T + 2, D)
        context = cond_tokens if design == "cross_attn" else None  # (N, 2, D)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, context, use_reentrant=False)
            else:
                x = block(x, c, context)  # (N, T, D)
        x = x[:, :num_tokens]  # in-context: drop the [t, y] tokens after the last block
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)

    def set_explicit_attention(self, enabled: bool) -> None:
        """Use plain-matmul attention (visible to FLOP counters) instead of the fused SDPA kernel."""
        for module in self.modules():
            if isinstance(module, (Attention, CrossAttention)):
                module.explicit_matmul = enabled


def num_parameters(model: nn.Module, include_buffers: bool = True) -> int:
    """Parameter count; with buffers, counts `pos_embed` as the official code (a frozen parameter there)."""
    total = sum(p.numel() for p in model.parameters())
    if include_buffers and isinstance(model, DiT):
        total += model.pos_embed.numel()
    return total
