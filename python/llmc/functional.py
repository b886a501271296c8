"""The llmc kernels as differentiable torch functions, to drop into your own torch model.

Each op is a `torch.autograd.Function` over `llmc.ops` (forward and backward kernels, no autograd inside) with a
functional alias: `layer_norm`, `gelu`, `linear` (optionally with a fused GELU), `causal_attention` and
`cross_entropy`. `llmc.nn` wraps them as modules.

Dtypes. CUDA tensors run the kernels, which store bfloat16: pass bf16 tensors (a model made with `.bfloat16()`),
or call inside `torch.autocast("cuda", dtype=torch.bfloat16)`, which casts the inputs (fp32 parameters included)
to bf16 here and hands gradients back in each input's own dtype. fp32 CUDA tensors outside autocast raise a
TypeError rather than being converted silently. CPU tensors run `llmc.reference` in fp32 (under CPU autocast
the inputs are cast to fp32); all float tensors of one call share a dtype.

Shapes: inputs may have any leading dimensions; they are flattened to the 2-D rows the kernels take and the
results are shaped back. Non-contiguous (or, on CUDA, not 16-byte aligned) inputs are copied first, as the
kernels read dense rows with 128-bit loads. Double backward is not supported.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import ops

__all__ = ["LayerNormFunction", "GELUFunction", "LinearFunction", "CausalAttentionFunction",
           "CrossEntropyFunction", "layer_norm", "gelu", "linear", "causal_attention", "cross_entropy"]

CROSS_ENTROPY_REDUCTIONS = ("mean", "sum", "none")


def _amp_forward(forward):
    """Under CUDA autocast the kernels get bf16 inputs, under CPU autocast the reference gets fp32 ones; either
    way the forward itself runs with autocast off (the ops pick their own precision)."""
    forward = torch.amp.custom_fwd(forward, device_type="cpu", cast_inputs=torch.float32)
    return torch.amp.custom_fwd(forward, device_type="cuda", cast_inputs=torch.bfloat16)


def _amp_backward(backward):
    backward = torch.amp.custom_bwd(once_differentiable(backward), device_type="cpu")
    return torch.amp.custom_bwd(backward, device_type="cuda")


def _check_bf16_on_cuda(**tensors: Optional[torch.Tensor]) -> None:
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_cuda and t.is_floating_point() and t.dtype != torch.bfloat16:
            raise TypeError(f"{name} is a CUDA tensor of dtype {t.dtype}; the llmc kernels store torch.bfloat16. "
                            f"Convert the model/tensors with .bfloat16(), or run under "
                            f"torch.autocast('cuda', dtype=torch.bfloat16)")


def _dense(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t itself when the kernels can read it (contiguous; 16-byte aligned on CUDA), else a dense copy."""
    if not isinstance(t, torch.Tensor):
        return t
    if not t.is_contiguous():
        return t.contiguous()
    if t.is_cuda and t.data_ptr() % 16 != 0:
        return t.clone()
    return t


def _rows(t, name: str) -> torch.Tensor:
    """t (..., C) as dense (N, C) rows."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (..., C) with C > 0")
    return _dense(t.reshape(-1, t.shape[-1]))


class LayerNormFunction(torch.autograd.Function):
    """LayerNorm over the last dimension: forward layernorm_forward, backward layernorm_backward."""

    @staticmethod
    @_amp_forward
    def forward(ctx, x, weight, bias, eps):
        _check_bf16_on_cuda(x=x, weight=weight, bias=bias)
        rows = _rows(x, "x")
        C = rows.shape[1]
        ctx.has_weight, ctx.has_bias, ctx.x_shape = weight is not None, bias is not None, x.shape
        weight = torch.ones(C, dtype=rows.dtype, device=rows.device) if weight is None else _dense(weight)
        bias = torch.zeros(C, dtype=rows.dtype, device=rows.device) if bias is None else _dense(bias)
        out, mean, rstd = ops.layernorm_forward(rows, weight, bias, eps=eps)
        ctx.save_for_backward(rows, weight, mean, rstd)
        return out.view(x.shape)

    @staticmethod
    @_amp_backward
    def backward(ctx, dout):
        rows, weight, mean, rstd = ctx.saved_tensors
        dweight, dbias = torch.zeros_like(weight), torch.zeros_like(weight)
        dinp = ops.layernorm_backward(_dense(dout.reshape(rows.shape)), rows, weight, mean, rstd, dweight, dbias)
        return (dinp.view(ctx.x_shape), dweight if ctx.has_weight else None, dbias if ctx.has_bias else None,
                None)


class GELUFunction(torch.autograd.Function):
    """GELU with the tanh approximation: forward gelu_forward, backward gelu_backward."""

    @staticmethod
    @_amp_forward
    def forward(ctx, x):
        _check_bf16_on_cuda(x=x)
        x = _dense(x)
        ctx.save_for_backward(x)
        return ops.gelu_forward(x)

    @staticmethod
    @_amp_backward
    def backward(ctx, dout):
        x, = ctx.saved_tensors
        return ops.gelu_backward(_dense(dout), x)


class LinearFunction(torch.autograd.Function):
    """x @ weight.T + bias (optionally followed by GELU, fused into the GEMM's epilogue on CUDA): forward
    matmul_forward; backward matmul_backward into zeroed dweight/dbias buffers (the op accumulates with +=)."""

    @staticmethod
    @_amp_forward
    def forward(ctx, x, weight, bias, gelu):
        _check_bf16_on_cuda(x=x, weight=weight, bias=bias)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D tensor (out_features, in_features), got "
                             f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
        rows, weight, bias = _rows(x, "x"), _dense(weight), _dense(bias)
        pre = torch.empty((rows.shape[0], weight.shape[0]), dtype=rows.dtype, device=rows.device) if gelu else None
        out = ops.matmul_forward(rows, weight, bias, gelu=gelu, pre_gelu=pre)
        ctx.has_bias, ctx.x_shape = bias is not None, x.shape
        ctx.save_for_backward(rows, weight, pre)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @_amp_backward
    def backward(ctx, dout):
        rows, weight, pre = ctx.saved_tensors
        dout = _dense(dout.reshape(rows.shape[0], weight.shape[0]))
        if pre is not None:
            dout = ops.gelu_backward(dout, pre)
        dweight = torch.zeros_like(weight)
        dbias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if ctx.has_bias else None
        dinp = ops.matmul_backward(dout, rows, weight, dweight, dbias)
        return dinp.view(ctx.x_shape), dweight, dbias, None


class CausalAttentionFunction(torch.autograd.Function):
    """Causal softmax(Q K^T / sqrt(HS)) V from qkv (B, T, 3, NH, HS): forward attention_forward (its log-sum-exp
    stats are kept for the backward), backward attention_backward."""

    @staticmethod
    @_amp_forward
    def forward(ctx, qkv, backend):
        _check_bf16_on_cuda(qkv=qkv)
        qkv = _dense(qkv)
        out, stats = ops.attention_forward(qkv, backend=backend)
        ctx.backend = backend
        ctx.save_for_backward(qkv, out, stats)
        return out

    @staticmethod
    @_amp_backward
    def backward(ctx, dout):
        qkv, out, stats = ctx.saved_tensors
        return ops.attention_backward(_dense(dout), qkv, out, stats, backend=ctx.backend), None


class CrossEntropyFunction(torch.autograd.Function):
    """Cross-entropy of logits (..., Vp) against targets (...) through the fused classifier, which computes the
    losses and dlogits in one pass. The kernel overwrites the logits it is given with dlogits, so it runs on a
    private copy: the caller's logits are never modified (the copy is what the backward returns, scaled)."""

    @staticmethod
    @_amp_forward
    def forward(ctx, logits, targets, vocab_size, ignore_index, reduction):
        _check_bf16_on_cuda(logits=logits)
        if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise TypeError(f"logits and targets must be torch.Tensors, got {type(logits).__name__} and "
                            f"{type(targets).__name__}")
        if logits.dim() == 0 or tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match: "
                             f"expected logits (..., Vp) and targets (...) with the same leading dimensions")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        if reduction not in CROSS_ENTROPY_REDUCTIONS:
            raise ValueError(f"reduction must be one of {CROSS_ENTROPY_REDUCTIONS}, got {reduction!r}")
        Vp = logits.shape[-1]
        flat_targets = targets.reshape(-1)
        if ignore_index != -1:
            flat_targets = torch.where(flat_targets == ignore_index, -1, flat_targets)
        if flat_targets.dtype == torch.int64:
            flat_targets = flat_targets.to(torch.int32)
        dlogits = torch.empty((flat_targets.numel(), Vp), dtype=logits.dtype, device=logits.device)
        dlogits.view(logits.shape).copy_(logits)
        # mean: dloss = 1/count (the op's default), so dlogits is the mean loss's gradient; else per-row gradients
        losses = ops.fused_classifier(dlogits, _dense(flat_targets), Vp if vocab_size is None else vocab_size,
                                      dloss=None if reduction == "mean" else 1.0)
        ctx.reduction, ctx.logits_shape = reduction, logits.shape
        ctx.save_for_backward(dlogits)
        if reduction == "none":
            return losses.view(targets.shape)
        if reduction == "sum":
            return losses.sum()
        return losses.sum() / (flat_targets >= 0).sum().clamp(min=1)

    @staticmethod
    @_amp_backward
    def backward(ctx, dloss):
        dlogits, = ctx.saved_tensors
        scale = dloss.reshape(-1, 1) if ctx.reduction == "none" else dloss
        # fp32 multiply, one rounding into the logits' dtype; a new tensor, so a retained graph stays valid
        grad = torch.mul(dlogits, scale, out=torch.empty_like(dlogits))
        return grad.view(ctx.logits_shape), None, None, None, None


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm of x (..., C) over its last dimension with weight and bias (C) (None: ones / zeros)."""
    return LayerNormFunction.apply(x, weight, bias, eps)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (F.gelu(x, approximate="tanh")), any shape (on CUDA, numel a multiple of 8)."""
    return GELUFunction.apply(x)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           gelu: bool = False) -> torch.Tensor:
    """x (..., K) @ weight (M, K).T + bias (M), like F.linear; with gelu=True, GELU (tanh) of that, fused on CUDA.
    On CUDA, K and M must be multiples of 8."""
    return LinearFunction.apply(x, weight, bias, gelu)


def causal_attention(qkv: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Causal self-attention: qkv (B, T, 3, NH, HS) -> (B, T, NH, HS), i.e. F.scaled_dot_product_attention(q, k, v,
    is_causal=True) with the heads in the third dimension. backend as in llmc.ops.attention_forward."""
    return CausalAttentionFunction.apply(qkv, backend)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab_size: Optional[int] = None,
                  ignore_index: int = -1, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (..., Vp) against integer targets (...), returned in fp32.

    Only the first `vocab_size` columns (default: all Vp) take part; the padding columns get zero gradient.
    Targets equal to ignore_index (and -1, llm.c's marker, always) contribute no loss and no gradient.
    reduction "mean" averages over the non-ignored targets (0 when all are ignored, where torch gives nan),
    "sum" adds them up, "none" returns the per-position losses shaped like targets.

    The logits are left unchanged: the fused kernel overwrites its input with dlogits, so this runs on a copy
    (one extra logits-sized buffer, kept until backward). To save that memory, call llmc.ops.fused_classifier on
    a buffer you own, as llmc.GPT does.
    """
    return CrossEntropyFunction.apply(logits, targets, vocab_size, ignore_index, reduction)
