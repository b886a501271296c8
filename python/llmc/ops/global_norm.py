"""The squared global L2 norm of a gradient range, accumulated in fp32 in a fixed order (deterministic)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .common import CPU_DTYPES, check_same_device, check_tensor, extension, output, stream_handle


def _check_float_range(t, name: str) -> torch.Tensor:
    """A contiguous float range like check_float checks, but starting at any element: a shard of a flat buffer."""
    check_tensor(t, name)
    if t.device.type not in ("cuda", "cpu"):
        raise ValueError(f"{name} is on device {t.device}; llmc runs on CUDA or the CPU")
    allowed = (torch.bfloat16,) if t.is_cuda else CPU_DTYPES
    if t.dtype not in allowed:
        raise TypeError(f"{name} has dtype {t.dtype}; expected torch.bfloat16 on CUDA or a float dtype on the CPU")
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {tuple(t.stride())}); pass {name}.contiguous()")
    return t


def global_norm_squared(grads: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum(grads**2) accumulated in fp32, as a tensor of shape (1,) (out is overwritten). Deterministic: the same
    input gives the same bits. `grads` is any contiguous range, e.g. a shard of the flat gradient buffer at any
    element offset."""
    _check_float_range(grads, "grads")
    device = check_same_device(grads=grads, out=out)
    out = output(out, "out", (1,), torch.float32, device)
    if device.type == "cuda":
        ext = extension()
        scratch = torch.empty(ext.GLOBAL_NORM_PARTIALS, dtype=torch.float32, device=device)
        ext.global_norm_squared(out.data_ptr(), grads.data_ptr(), grads.numel(), scratch.data_ptr(),
                                stream_handle(device))
    else:
        out.copy_(reference.global_norm_squared(grads))
    return out
