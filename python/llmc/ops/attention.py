"""Causal self-attention over the QKV matmul's output, forward and backward, on cuDNN (head sizes 64 and 128) or
llmc's own CUDA kernels; both save each row's log-sum-exp for the backward."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import reference
from .common import check_float, check_fp32, check_same_device, check_shape, extension, output, stream_handle

ATTENTION_BACKENDS = ("auto", "cudnn", "cuda")
CUDNN_ATTENTION_HEAD_SIZES = (64, 128)


def _check_attention_backend_name(backend) -> None:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")


def _resolve_attention_backend(backend: str, T: int, HS: int) -> str:
    """The backend that runs CUDA attention with head size HS, or a ValueError saying why none can.
    "auto" follows the environment variable LLMC_ATTENTION (auto | cudnn | cuda) when it is set."""
    _check_attention_backend_name(backend)
    if backend == "auto":
        backend = os.environ.get("LLMC_ATTENTION", "auto") or "auto"
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"LLMC_ATTENTION={backend!r}; expected one of {ATTENTION_BACKENDS}")
    ext = extension()
    cudnn_reason = None
    if not ext.has_cudnn():
        cudnn_reason = ("llmc was built without cuDNN attention (the build found no cuDNN, cudnn-frontend headers "
                        "or NVRTC; see the 'llmc:' lines of the build log)")
    elif HS not in CUDNN_ATTENTION_HEAD_SIZES:
        cudnn_reason = f"cuDNN attention takes head sizes {CUDNN_ATTENTION_HEAD_SIZES}, got {HS}"
    elif T < 2:
        cudnn_reason = "cuDNN attention needs T >= 2 (its backward rejects a single position)"
    if backend == "cudnn" and cudnn_reason:
        raise ValueError(f"backend='cudnn' is not available: {cudnn_reason}. Use backend='cuda' or 'auto'")
    if backend == "cudnn" or (backend == "auto" and cudnn_reason is None):
        return "cudnn"
    if HS > ext.ATTENTION_MAX_HEAD_SIZE:
        raise ValueError(f"head size {HS} is not supported: the plain CUDA attention takes up to "
                         f"{ext.ATTENTION_MAX_HEAD_SIZE}" + (f", and {cudnn_reason}" if cudnn_reason else ""))
    return "cuda"


def attention_backend(B: int, T: int, NH: int, HS: int) -> str:
    """Which backend backend="auto" runs for CUDA tensors of this shape: "cudnn" when llmc was built with cuDNN
    and HS is 64 or 128, else "cuda" (the plain kernels). Raises ValueError when neither takes the shape, and
    RuntimeError when llmc was built without CUDA."""
    for name, value in (("B", B), ("T", T), ("NH", NH), ("HS", HS)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    return _resolve_attention_backend("auto", T, HS)


def _check_qkv(qkv) -> tuple:
    check_float(qkv, "qkv")
    if qkv.dim() != 5 or qkv.shape[2] != 3 or qkv.numel() == 0:
        raise ValueError(f"qkv has shape {tuple(qkv.shape)}; expected (B, T, 3, NH, HS) with no zero sizes, i.e. "
                         f"the QKV matmul output (B, T, 3*C) viewed as .view(B, T, 3, NH, C // NH)")
    B, T, _, NH, HS = qkv.shape
    return B, T, NH, HS


def _check_cpu_attention_backend(backend: str) -> None:
    _check_attention_backend_name(backend)
    if backend != "auto":
        raise ValueError(f"backend={backend!r} runs CUDA tensors only; CPU tensors always use the fp32 reference "
                         f"(pass backend='auto')")


def attention_forward(qkv: torch.Tensor, out: Optional[torch.Tensor] = None, stats: Optional[torch.Tensor] = None,
                      backend: str = "auto"):
    """Causal self-attention softmax(Q K^T / sqrt(HS)) V. qkv (B, T, 3, NH, HS) -> (out (B, T, NH, HS),
    stats fp32 (B, NH, T)), stats being each row's log-sum-exp of the scaled, masked scores (kept for backward).
    backend: "auto" (see `attention_backend`), "cudnn" or "cuda"; both save the same stats."""
    B, T, NH, HS = _check_qkv(qkv)
    device = check_same_device(qkv=qkv, out=out, stats=stats)
    out = output(out, "out", (B, T, NH, HS), qkv.dtype, device)
    stats = output(stats, "stats", (B, NH, T), torch.float32, device)
    if device.type == "cuda":
        ext = extension()
        run = ext.attention_forward_cudnn if _resolve_attention_backend(backend, T, HS) == "cudnn" \
            else ext.attention_forward
        run(out.data_ptr(), stats.data_ptr(), qkv.data_ptr(), B, T, NH, HS, stream_handle(device))
    else:
        _check_cpu_attention_backend(backend)
        ref_out, ref_stats = reference.attention_forward(qkv)
        out.copy_(ref_out)
        stats.copy_(ref_stats)
    return out, stats


def attention_backward(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor,
                       dqkv: Optional[torch.Tensor] = None, backend: str = "auto",
                       deterministic: Optional[bool] = None) -> torch.Tensor:
    """dqkv (B, T, 3, NH, HS), overwritten, from dout (B, T, NH, HS) and the forward's qkv, out and stats.
    The plain CUDA backend is deterministic. cuDNN's sums dQ with atomics (last-bit differences between runs)
    unless deterministic=True (default: torch.are_deterministic_algorithms_enabled()), which picks its ordered
    algorithm (more workspace)."""
    B, T, NH, HS = _check_qkv(qkv)
    check_float(dout, "dout")
    check_float(out, "out")
    check_fp32(stats, "stats")
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be None or a bool, got {type(deterministic).__name__}")
    device = check_same_device(dout=dout, qkv=qkv, out=out, stats=stats, dqkv=dqkv)
    check_shape(dout, "dout", (B, T, NH, HS))
    check_shape(out, "out", (B, T, NH, HS))
    check_shape(stats, "stats", (B, NH, T))
    if not dout.dtype == out.dtype == qkv.dtype:
        raise TypeError(f"dout ({dout.dtype}), qkv ({qkv.dtype}) and out ({out.dtype}) must have the same dtype")
    dqkv = output(dqkv, "dqkv", qkv.shape, qkv.dtype, device)
    if dqkv.data_ptr() == qkv.data_ptr():
        raise ValueError("dqkv must not be qkv itself: the kernels read qkv while they write dqkv")
    if device.type == "cuda":
        ext = extension()
        if _resolve_attention_backend(backend, T, HS) == "cudnn":
            ext.attention_backward_cudnn(dqkv.data_ptr(), dout.data_ptr(), qkv.data_ptr(), out.data_ptr(),
                                         stats.data_ptr(), B, T, NH, HS,
                                         torch.are_deterministic_algorithms_enabled() if deterministic is None
                                         else deterministic,
                                         stream_handle(device))
        else:
            delta = torch.empty((B, NH, T), dtype=torch.float32, device=device)
            ext.attention_backward(dqkv.data_ptr(), delta.data_ptr(), dout.data_ptr(), qkv.data_ptr(), out.data_ptr(),
                                   stats.data_ptr(), B, T, NH, HS, stream_handle(device))
    else:
        _check_cpu_attention_backend(backend)
        dqkv.copy_(reference.attention_backward(dout, qkv, out, stats))
    return dqkv
