"""Linear layers on cuBLASLt: out = inp @ weight.T + bias (optionally with GELU fused into the epilogue) and its
backward (dinp overwritten, dweight and dbias accumulated)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .common import (check_bool, check_float, check_layout, check_multiple_of, check_same_device, check_same_dtype,
                     check_shape, check_writes_disjoint, extension, output, ptr, stream_handle)


def _matmul_dims(inp: torch.Tensor, weight: torch.Tensor, cuda: bool):
    """(N, K, M) for inp (N, K) or (..., K) and weight (M, K)."""
    if inp.dim() < 2:
        raise ValueError(f"inp must be (N, K) or (..., K), got shape {tuple(inp.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be (M, K) = (out_features, in_features), got shape {tuple(weight.shape)}")
    M, K = weight.shape
    if inp.shape[-1] != K:
        raise ValueError(f"inp has shape {tuple(inp.shape)} but weight {tuple(weight.shape)} needs its last "
                         f"dimension to be K = {K}")
    if M == 0 or K == 0:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; M and K must be positive")
    if cuda:
        # cuBLASLt's bf16 GEMMs need 16-byte aligned rows
        check_multiple_of(K, 8, "K (inp.shape[-1] = weight.shape[1])")
        check_multiple_of(M, 8, "M (weight.shape[0])")
    return inp.numel() // K, K, M


def matmul_forward(inp: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   out: Optional[torch.Tensor] = None, gelu: bool = False,
                   pre_gelu: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out (N, M) = inp (N, K) @ weight (M, K).T + bias (M) (bias may be None; inp may be (..., K)).

    gelu=True returns GELU (tanh approximation) of that, fused into the cuBLASLt epilogue on CUDA, and writes the
    value before the GELU into `pre_gelu` (shaped like out) when given: what matmul_backward needs. On CUDA, K and
    M must be multiples of 8.
    """
    check_float(inp, "inp")
    check_float(weight, "weight")
    for t, name in ((bias, "bias"), (pre_gelu, "pre_gelu")):
        if t is not None:
            check_float(t, name)
    check_bool(gelu, "gelu")
    if pre_gelu is not None and not gelu:
        raise ValueError("pre_gelu is only written by the GELU epilogue: pass gelu=True, or drop pre_gelu")
    device = check_same_device(inp=inp, weight=weight, bias=bias, out=out, pre_gelu=pre_gelu)
    cuda = device.type == "cuda"
    dtype = check_same_dtype(inp=inp, weight=weight, bias=bias, pre_gelu=pre_gelu)
    N, K, M = _matmul_dims(inp, weight, cuda)
    if bias is not None:
        check_shape(bias, "bias", (M,))
    out_shape = (*inp.shape[:-1], M)
    out = output(out, "out", out_shape, dtype, device)
    if pre_gelu is not None:
        check_shape(pre_gelu, "pre_gelu", out_shape)
    check_writes_disjoint(dict(out=out, pre_gelu=pre_gelu), dict(inp=inp, weight=weight, bias=bias))
    if cuda:
        extension().matmul_forward(out.data_ptr(), ptr(pre_gelu), inp.data_ptr(), weight.data_ptr(), ptr(bias),
                                   N, K, M, gelu, stream_handle(device))
    else:
        pre = reference.matmul_forward(inp, weight, bias)
        if pre_gelu is not None:
            pre_gelu.copy_(pre)
        out.copy_(reference.gelu_forward(pre) if gelu else pre)
    return out


def matmul_backward(dout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, dweight: torch.Tensor,
                    dbias: Optional[torch.Tensor] = None, dinp: Optional[torch.Tensor] = None,
                    pre_gelu: Optional[torch.Tensor] = None, *, compute_dinp: bool = True) -> Optional[torch.Tensor]:
    """Backward of matmul_forward. Returns dinp = dout @ weight (N, K), overwritten; accumulates
    dweight (M, K) += dout.T @ inp and, when given, dbias (M) += dout summed over rows (deterministically).

    With pre_gelu (shaped like inp) given, inp was gelu(pre_gelu) and dinp = (dout @ weight) * gelu'(pre_gelu),
    the gradient with respect to pre_gelu (fused into the cuBLASLt epilogue on CUDA); dinp may then be pre_gelu
    itself (on CUDA through a temporary of its size and a copy: cuBLASLt's epilogue reads pre_gelu while it
    writes dinp, and some of its kernels clobbered pre_gelu when the two were one buffer). compute_dinp=False:
    only dweight and dbias (returns None; the caller computes dinp otherwise, e.g. with matmul_fp8).
    """
    check_bool(compute_dinp, "compute_dinp")
    if not compute_dinp and (dinp is not None or pre_gelu is not None):
        raise ValueError("compute_dinp=False takes neither dinp nor pre_gelu")
    for t, name in ((dout, "dout"), (inp, "inp"), (weight, "weight"), (dweight, "dweight")):
        check_float(t, name)
    for t, name in ((dbias, "dbias"), (pre_gelu, "pre_gelu")):
        if t is not None:
            check_float(t, name)
    device = check_same_device(dout=dout, inp=inp, weight=weight, dweight=dweight, dbias=dbias, dinp=dinp,
                               pre_gelu=pre_gelu)
    cuda = device.type == "cuda"
    dtype = check_same_dtype(dout=dout, inp=inp, weight=weight, dweight=dweight, dbias=dbias, pre_gelu=pre_gelu)
    N, K, M = _matmul_dims(inp, weight, cuda)
    check_shape(dout, "dout", (*inp.shape[:-1], M))
    check_shape(dweight, "dweight", (M, K))
    if dbias is not None:
        check_shape(dbias, "dbias", (M,))
    if pre_gelu is not None:
        check_shape(pre_gelu, "pre_gelu", inp.shape)
    if compute_dinp:
        dinp = output(dinp, "dinp", inp.shape, dtype, device)
    in_place = pre_gelu is not None and dinp.numel() > 0 and dinp.data_ptr() == pre_gelu.data_ptr()
    check_writes_disjoint(dict(dinp=dinp, dweight=dweight, dbias=dbias),
                          dict(dout=dout, inp=inp, weight=weight, pre_gelu=None if in_place else pre_gelu))
    if cuda:
        target = torch.empty_like(dinp) if in_place else dinp
        extension().matmul_backward(ptr(target), dweight.data_ptr(), ptr(dbias), dout.data_ptr(), inp.data_ptr(),
                                    weight.data_ptr(), ptr(pre_gelu), N, K, M, stream_handle(device))
        if in_place:
            dinp.copy_(target)
    else:
        d_inp, d_weight, d_bias = reference.matmul_backward(dout, inp, weight, pre_gelu)
        dweight.add_(d_weight)
        if dbias is not None:
            dbias.add_(d_bias)
        if dinp is not None:
            dinp.copy_(d_inp)
    return dinp


def matmul_tuning_log() -> list:
    """One line per cuBLASLt plan autotuning looked at on the current CUDA device so far: the GEMM's shape
    (cuBLASLt's column-major m, n, k), its epilogue, and which of the heuristic's algorithms was kept, with its
    time against the heuristic's first choice. A forward or dinp GEMM is tuned the first time its shape runs:
    every algorithm the heuristic offers is timed on that call's inputs, and only those whose output has the
    first choice's exact bits may be chosen, so tuning changes speed, not results (accumulating GEMMs, dweight +=,
    run in a scratch output from zeros and from a pattern, and an algorithm must match both times). Nothing is
    tuned or listed with LLMC_GEMM_AUTOTUNE=0 or while a CUDA graph is being captured."""
    return list(extension().matmul_tuning_log())


def bias_grad(dout: torch.Tensor, dbias: torch.Tensor) -> torch.Tensor:
    """dbias (M) += dout (..., M) summed over all its other dimensions; on a GPU bit for bit matmul_backward's
    bias gradient (a fixed order of additions, no atomics). Returns dbias."""
    check_float(dout, "dout")
    check_layout(dout, "dout")
    check_float(dbias, "dbias")
    if dout.dim() < 1:
        raise ValueError("dout needs at least one dimension (its last is the bias's)")
    M = dout.shape[-1]
    check_shape(dbias, "dbias", (M,))
    check_same_device(dout=dout, dbias=dbias)
    check_same_dtype(dout=dout, dbias=dbias)
    check_writes_disjoint(dict(dbias=dbias), dict(dout=dout))
    N = dout.numel() // M if M else 0
    if dbias.is_cuda:
        if N:
            check_multiple_of(M, 8, "dout.shape[-1]")
            ext = extension()
            floats = ext.bias_grad_scratch_floats(N, M)
            scratch = torch.empty(floats, dtype=torch.float32, device=dbias.device)
            ext.bias_grad_accumulate(dbias.data_ptr(), dout.data_ptr(), N, M, scratch.data_ptr(), floats,
                                     stream_handle(dbias.device))
    elif N:
        dbias.add_(dout.float().reshape(-1, M).sum(0).to(dbias.dtype))
    return dbias
