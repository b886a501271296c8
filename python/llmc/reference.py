"""The llmc ops in plain torch, computed in fp32.

This is the CPU backend of `llmc.ops` and the oracle the CUDA kernels are tested against. Every function
takes tensors of any float dtype, upcasts them to fp32, and returns fp32 results; accumulation into
existing buffers (+=) is done by `llmc.ops`, not here.
"""
from __future__ import annotations

import math

import torch

_GELU_SCALE = math.sqrt(2.0 / math.pi)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float()


# ---- gelu ----
def gelu_forward(inp: torch.Tensor) -> torch.Tensor:
    x = _f32(inp)
    return 0.5 * x * (1.0 + torch.tanh(_GELU_SCALE * (x + 0.044715 * x.pow(3))))


def gelu_backward(dout: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    x = _f32(inp)
    th = torch.tanh(_GELU_SCALE * (x + 0.044715 * x.pow(3)))
    dgelu = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * _GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
    return _f32(dout) * dgelu


# ---- encoder ----

# ---- layernorm ----

# ---- matmul ----

# ---- attention ----

# ---- fused_classifier ----

# ---- adamw ----

# ---- global_norm ----
