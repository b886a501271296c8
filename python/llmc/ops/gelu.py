"""GELU (tanh approximation), forward and backward, elementwise over any shape."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .common import check_float, check_multiple_of, check_same_device, check_shape, extension, output, stream_handle


def gelu_forward(inp: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out = GELU(inp), tanh approximation. Any shape whose element count is a multiple of 8 on CUDA."""
    check_float(inp, "inp")
    device = check_same_device(inp=inp, out=out)
    out = output(out, "out", inp.shape, inp.dtype, device)
    if device.type == "cuda":
        check_multiple_of(inp.numel(), 8, "inp.numel()")
        extension().gelu_forward(out.data_ptr(), inp.data_ptr(), inp.numel(), stream_handle(device))
    else:
        out.copy_(reference.gelu_forward(inp))
    return out


def gelu_backward(dout: torch.Tensor, inp: torch.Tensor, dinp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dinp = dout * GELU'(inp). `dinp` may be `dout` itself (in-place)."""
    check_float(dout, "dout")
    check_float(inp, "inp")
    device = check_same_device(dout=dout, inp=inp, dinp=dinp)
    check_shape(dout, "dout", inp.shape)
    if dout.dtype != inp.dtype:
        raise TypeError(f"dout ({dout.dtype}) and inp ({inp.dtype}) must have the same dtype")
    dinp = output(dinp, "dinp", inp.shape, inp.dtype, device)
    if device.type == "cuda":
        check_multiple_of(inp.numel(), 8, "inp.numel()")
        extension().gelu_backward(dinp.data_ptr(), dout.data_ptr(), inp.data_ptr(), inp.numel(),
                                  stream_handle(device))
    else:
        dinp.copy_(reference.gelu_backward(dout, inp))
    return dinp
