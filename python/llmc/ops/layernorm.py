"""LayerNorm over the last dimension (fp32 statistics), the residual add fused with it, and its backward."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .common import (check_bool, check_float, check_fp32, check_multiple_of, check_real, check_same_device,
                     check_same_dtype, check_shape, check_writes_disjoint, extension, output, overlaps, stream_handle)


def _layernorm_dims(inp: torch.Tensor, cuda: bool, inp_name: str = "inp", **params) -> tuple:
    """(N, C) for inp (..., C) (at least 2-D) and parameters of shape (C,)."""
    if inp.dim() < 2:
        raise ValueError(f"{inp_name} must be (N, C) or (..., C), got shape {tuple(inp.shape)}")
    C = inp.shape[-1]
    if C == 0:
        raise ValueError(f"{inp_name} has shape {tuple(inp.shape)}; C (the last dimension) must be positive")
    for name, t in params.items():
        check_shape(t, name, (C,))
    if cuda:
        check_multiple_of(C, 8, f"C ({inp_name}.shape[-1])")
    return inp.numel() // C, C


def _layernorm_outputs(out, mean, rstd, shape, dtype, device) -> tuple:
    return (output(out, "out", shape, dtype, device), output(mean, "mean", shape[:-1], torch.float32, device),
            output(rstd, "rstd", shape[:-1], torch.float32, device))


def _layernorm_reference_into(out, mean, rstd, inp, weight, bias, eps) -> None:
    o, m, r = reference.layernorm_forward(inp, weight, bias, eps)
    out.copy_(o)
    mean.copy_(m)
    rstd.copy_(r)


def layernorm_forward(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      out: Optional[torch.Tensor] = None, mean: Optional[torch.Tensor] = None,
                      rstd: Optional[torch.Tensor] = None, eps: float = 1e-5) -> tuple:
    """(out, mean, rstd): LayerNorm of inp (N, C) (or (..., C)) over C with weight, bias (C); mean and rstd
    (fp32, shaped inp.shape[:-1]) are what layernorm_backward needs. On CUDA, C must be a multiple of 8."""
    check_float(inp, "inp")
    check_float(weight, "weight")
    check_float(bias, "bias")
    device = check_same_device(inp=inp, weight=weight, bias=bias, out=out, mean=mean, rstd=rstd)
    cuda = device.type == "cuda"
    dtype = check_same_dtype(inp=inp, weight=weight, bias=bias)
    N, C = _layernorm_dims(inp, cuda, weight=weight, bias=bias)
    eps = check_real(eps, "eps", low=0.0)
    out, mean, rstd = _layernorm_outputs(out, mean, rstd, inp.shape, dtype, device)
    if cuda:
        extension().layernorm_forward(out.data_ptr(), mean.data_ptr(), rstd.data_ptr(), inp.data_ptr(),
                                      weight.data_ptr(), bias.data_ptr(), N, C, eps, stream_handle(device))
    else:
        _layernorm_reference_into(out, mean, rstd, inp, weight, bias, eps)
    return out, mean, rstd


def fused_residual_layernorm_forward(inp1: torch.Tensor, inp2: torch.Tensor, weight: torch.Tensor,
                                     bias: torch.Tensor, residual: Optional[torch.Tensor] = None,
                                     out: Optional[torch.Tensor] = None, mean: Optional[torch.Tensor] = None,
                                     rstd: Optional[torch.Tensor] = None, eps: float = 1e-5) -> tuple:
    """(residual, out, mean, rstd): residual = inp1 + inp2 (stored in the inputs' dtype), then the LayerNorm of
    that stored residual, in one pass over memory on CUDA. Shapes as in layernorm_forward."""
    check_float(inp1, "inp1")
    check_float(inp2, "inp2")
    check_float(weight, "weight")
    check_float(bias, "bias")
    device = check_same_device(inp1=inp1, inp2=inp2, weight=weight, bias=bias, residual=residual, out=out,
                               mean=mean, rstd=rstd)
    cuda = device.type == "cuda"
    dtype = check_same_dtype(inp1=inp1, inp2=inp2, weight=weight, bias=bias)
    check_shape(inp2, "inp2", inp1.shape)
    N, C = _layernorm_dims(inp1, cuda, "inp1", weight=weight, bias=bias)
    eps = check_real(eps, "eps", low=0.0)
    residual = output(residual, "residual", inp1.shape, dtype, device)
    out, mean, rstd = _layernorm_outputs(out, mean, rstd, inp1.shape, dtype, device)
    if cuda:
        extension().fused_residual_layernorm_forward(residual.data_ptr(), out.data_ptr(), mean.data_ptr(),
                                                     rstd.data_ptr(), inp1.data_ptr(), inp2.data_ptr(),
                                                     weight.data_ptr(), bias.data_ptr(), N, C, eps,
                                                     stream_handle(device))
    else:
        residual.copy_(reference.residual_forward(inp1, inp2))
        _layernorm_reference_into(out, mean, rstd, residual, weight, bias, eps)
    return residual, out, mean, rstd


def layernorm_backward(dout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor, dweight: torch.Tensor, dbias: torch.Tensor,
                       dinp: Optional[torch.Tensor] = None, accumulate: bool = False,
                       dinp_colsum: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gradients of layernorm_forward from dout (shaped like inp) and the saved mean and rstd (fp32).

    dweight (C) += and dbias (C) += (deterministic: fixed-order fp32 sums, no atomics). dinp is overwritten,
    or, with accumulate=True, dinp += the input gradient (the residual stream's gradient). dinp may be dout.
    dinp_colsum (C), when given, += the column sums of dinp as written (its final values, after accumulate): the
    bias gradient of a linear layer whose output gradient dinp is (the residual stream feeds GPT-2's attention and
    MLP projections), summed on a GPU in the same pass where the row fits the register kernel (C <= 2048) and the
    extra sums cost it no resident blocks (not at C = 1280), else in a separate pass over dinp.
    """
    for t, name in ((dout, "dout"), (inp, "inp"), (weight, "weight"), (dweight, "dweight"), (dbias, "dbias")):
        check_float(t, name)
    if dinp_colsum is not None:
        check_float(dinp_colsum, "dinp_colsum")
    check_fp32(mean, "mean")
    check_fp32(rstd, "rstd")
    check_bool(accumulate, "accumulate")
    if accumulate and dinp is None:
        raise ValueError("accumulate=True adds into dinp, so dinp must be given")
    device = check_same_device(dout=dout, inp=inp, weight=weight, mean=mean, rstd=rstd, dweight=dweight,
                               dbias=dbias, dinp=dinp, dinp_colsum=dinp_colsum)
    cuda = device.type == "cuda"
    sums = dict(dweight=dweight, dbias=dbias) if dinp_colsum is None else \
        dict(dweight=dweight, dbias=dbias, dinp_colsum=dinp_colsum)
    dtype = check_same_dtype(dout=dout, inp=inp, weight=weight, **sums)
    N, C = _layernorm_dims(inp, cuda, weight=weight, **sums)
    check_shape(dout, "dout", inp.shape)
    check_shape(mean, "mean", inp.shape[:-1])
    check_shape(rstd, "rstd", inp.shape[:-1])
    dinp = output(dinp, "dinp", inp.shape, dtype, device)
    check_writes_disjoint(sums, dict(dout=dout, inp=inp, weight=weight, mean=mean, rstd=rstd, dinp=dinp))
    check_writes_disjoint(dict(dinp=dinp), dict(weight=weight, mean=mean, rstd=rstd))
    for name, t in (("dout", dout), ("inp", inp)):
        # a row is read whole before its dinp row is written, so dinp may BE dout or inp, but a shifted overlap
        # would let one row's write land in a row another warp has yet to read
        if overlaps(dinp, t) and dinp.data_ptr() != t.data_ptr():
            raise ValueError(f"dinp partly overlaps {name}: pass {name} itself as dinp (in place) or a separate "
                             f"buffer")
    if cuda:
        ext = extension()
        scratch = torch.empty(ext.layernorm_backward_scratch_floats(N, C), dtype=torch.float32, device=device)
        ext.layernorm_backward(dinp.data_ptr(), dweight.data_ptr(), dbias.data_ptr(), scratch.data_ptr(),
                               dout.data_ptr(), inp.data_ptr(), weight.data_ptr(), mean.data_ptr(),
                               rstd.data_ptr(), N, C, accumulate, stream_handle(device),
                               0 if dinp_colsum is None else dinp_colsum.data_ptr())
    else:
        grad_inp, grad_weight, grad_bias = reference.layernorm_backward(dout, inp, weight, mean, rstd)
        dweight.add_(grad_weight)
        dbias.add_(grad_bias)
        if accumulate:
            dinp.add_(grad_inp)
        else:
            dinp.copy_(grad_inp)
        if dinp_colsum is not None:
            dinp_colsum.add_(dinp.reshape(-1, C).sum(0))
    return dinp
