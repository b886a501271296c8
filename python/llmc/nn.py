"""torch.nn modules running the llmc kernels (through `llmc.functional`), for use in your own torch models.

LayerNorm, GELU and Linear subclass their torch.nn counterparts: same constructor arguments, parameters,
initialisation and state_dict keys, so they swap in for the torch modules one for one. CausalSelfAttention
(c_attn -> causal attention -> c_proj, nanoGPT's naming) and FusedCrossEntropyLoss are small modules of their
own. On CUDA, make the model bf16 (`.bfloat16()`) or run it under torch.autocast("cuda", dtype=torch.bfloat16);
see llmc.functional for the dtype rules.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import functional, ops

__all__ = ["LayerNorm", "GELU", "Linear", "CausalSelfAttention", "FusedCrossEntropyLoss"]


class LayerNorm(torch.nn.LayerNorm):
    """torch.nn.LayerNorm over the last dimension only (normalized_shape = C or (C,))."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"llmc's LayerNorm normalizes over the last dimension only; normalized_shape must be "
                             f"an int or a 1-tuple, got {tuple(self.normalized_shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"input of shape {tuple(x.shape)} does not end in normalized_shape "
                             f"{tuple(self.normalized_shape)}")
        return functional.layer_norm(x, self.weight, self.bias, self.eps)


class GELU(torch.nn.GELU):
    """torch.nn.GELU(approximate="tanh"), GPT-2's GELU."""

    def __init__(self):
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.gelu(x)


class Linear(torch.nn.Linear):
    """torch.nn.Linear; with fuse_gelu=True it returns GELU(tanh) of the output, fused into the GEMM on CUDA
    (Linear(..., fuse_gelu=True) computes what Sequential(Linear(...), GELU()) does)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fuse_gelu: bool = False,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not isinstance(fuse_gelu, bool):
            raise TypeError(f"fuse_gelu must be a bool, got {type(fuse_gelu).__name__}")
        self.fuse_gelu = fuse_gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, self.weight, self.bias, gelu=self.fuse_gelu)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fuse_gelu={self.fuse_gelu}"


class CausalSelfAttention(torch.nn.Module):
    """GPT-2 multi-head causal self-attention on x (B, T, C): c_attn (C -> 3C, the q, k, v of every head in that
    order), causal attention per head, c_proj (C -> C). No dropout."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, backend: str = "auto", device=None,
                 dtype=None):
        super().__init__()
        for name, value in (("n_embd", n_embd), ("n_head", n_head)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head}): each head gets "
                             f"n_embd // n_head channels")
        if backend not in ops.ATTENTION_BACKENDS:
            raise ValueError(f"backend must be one of {ops.ATTENTION_BACKENDS}, got {backend!r}")
        self.n_embd, self.n_head, self.backend = n_embd, n_head, backend
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias, device=device, dtype=dtype)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"x must be (B, T, C) with C = n_embd = {self.n_embd}, got shape {tuple(x.shape)}")
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        y = functional.causal_attention(qkv, backend=self.backend)
        return self.c_proj(y.reshape(B, T, C))

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, n_head={self.n_head}, backend={self.backend!r}"


class FusedCrossEntropyLoss(torch.nn.Module):
    """Cross-entropy of logits (..., Vp) against targets (...) through the fused classifier kernel; the logits
    are not modified. See llmc.functional.cross_entropy."""

    def __init__(self, vocab_size: Optional[int] = None, ignore_index: int = -1, reduction: str = "mean"):
        super().__init__()
        if reduction not in functional.CROSS_ENTROPY_REDUCTIONS:
            raise ValueError(f"reduction must be one of {functional.CROSS_ENTROPY_REDUCTIONS}, got {reduction!r}")
        self.vocab_size, self.ignore_index, self.reduction = vocab_size, ignore_index, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(logits, targets, self.vocab_size, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
