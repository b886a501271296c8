"""Typed entry points to the llmc kernels.

Each op validates its tensors (type, device, dtype, contiguity, shape, alignment) and raises a
TypeError/ValueError that says what to fix before any kernel runs. CUDA tensors (bf16) go to the
`_llmc` extension on torch's current stream; CPU tensors go to `llmc.reference` (fp32 math, results
written back in the tensors' dtype). Outputs are allocated here unless passed in with `out=`-style
arguments; parameter gradients are accumulated (+=), activation gradients overwritten.
"""
from __future__ import annotations

import functools
import math
import numbers
import operator
import os
from typing import Optional, Sequence

import torch

from . import reference
from ._validate import check_int as _check_int

_EXT = None
CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def build_info() -> dict:
    """What this installation was built with (CUDA, cuDNN, architectures)."""
    try:
        from . import _build_config as cfg
    except ImportError:
        return {"has_cuda": False, "has_cudnn": False, "note": "llmc is not installed (no _build_config)"}
    return {
        "has_cuda": cfg.HAS_CUDA,
        "has_cudnn": cfg.HAS_CUDNN,
        "cuda_architectures": cfg.CUDA_ARCHITECTURES,
        "cuda_compiler_version": cfg.CUDA_COMPILER_VERSION,
    }


def _ext():
    """The compiled extension, loaded on first use, with an error that says how to get it."""
    global _EXT
    if _EXT is None:
        if not build_info()["has_cuda"]:
            raise RuntimeError(
                "llmc was built without CUDA (no nvcc was found when it was installed), so CUDA tensors "
                "cannot be used. Install the CUDA toolkit's nvcc, then reinstall with `pip install .`; "
                "or keep your tensors on the CPU to use the reference ops."
            )
        from . import _llmc

        _EXT = _llmc
    return _EXT


def cuda_available() -> bool:
    """True when the CUDA kernels are built and a GPU is visible."""
    return bool(build_info()["has_cuda"]) and torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------------------
def _check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_float(t, name: str) -> torch.Tensor:
    """A float tensor: bf16 on CUDA (what the kernels store), any float dtype on the CPU."""
    _check_tensor(t, name)
    if t.is_cuda:
        if t.dtype != torch.bfloat16:
            raise TypeError(f"{name} is a CUDA tensor of dtype {t.dtype}; the llmc kernels take torch.bfloat16 "
                            f"(convert with .bfloat16())")
    elif t.dtype not in CPU_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; expected a floating point tensor (float32 on the CPU)")
    _check_layout(t, name)
    return t


def _check_fp32(t, name: str) -> torch.Tensor:
    _check_tensor(t, name)
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be torch.float32, got {t.dtype}")
    _check_layout(t, name)
    return t


def _check_index(t, name: str) -> torch.Tensor:
    """Token ids / targets: int32 on CUDA (the kernels read int32), int32 or int64 on the CPU."""
    _check_tensor(t, name)
    allowed = (torch.int32,) if t.is_cuda else (torch.int32, torch.int64)
    if t.dtype not in allowed:
        raise TypeError(f"{name} must be an integer tensor of dtype torch.int32, got {t.dtype} "
                        f"(convert with .int())")
    _check_layout(t, name)
    return t


def _check_layout(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {tuple(t.stride())}); pass {name}.contiguous()")
    if t.is_cuda:
        if t.data_ptr() % 16 != 0:
            raise ValueError(f"{name} starts at an address that is not 16-byte aligned; the kernels use 128-bit "
                             f"loads. Use a fresh tensor or a view at an offset that is a multiple of 16 bytes")
    elif t.device.type != "cpu":
        raise ValueError(f"{name} is on device {t.device}; llmc runs on CUDA or the CPU")


def _check_same_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    device = devices.pop()
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        raise ValueError(f"tensors are on {device} but the current CUDA device is cuda:{torch.cuda.current_device()}; "
                         f"call torch.cuda.set_device({device.index}) first")
    return device


def _check_shape(t: torch.Tensor, name: str, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def _check_multiple_of(value: int, multiple: int, what: str) -> None:
    if value % multiple != 0:
        raise ValueError(f"{what} is {value}; it must be a multiple of {multiple} for the 128-bit kernels "
                         f"(pad it, e.g. to {(value + multiple - 1) // multiple * multiple})")


def _output(out: Optional[torch.Tensor], name: str, shape: Sequence[int], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """Validate a caller-provided output buffer, or allocate one."""
    if out is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    _check_tensor(out, name)
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if out.device != device:
        raise ValueError(f"{name} is on {out.device}, expected {device}")
    _check_shape(out, name, shape)
    _check_layout(out, name)
    return out


# torch's raw current-stream lookup (what inductor's generated code calls) costs a few microseconds less per op
# than building a Stream object; fall back to the public API where a torch build lacks it.
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


_SIDE_STREAMS = {}  # device index -> a stream for work that may overlap the caller's (see encoder_backward)


def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    side = _SIDE_STREAMS.get(device.index)
    if side is None:
        side = _SIDE_STREAMS.setdefault(device.index, torch.cuda.Stream(device))
    return side


def _stream(device: torch.device) -> int:
    if _RAW_STREAM is not None:
        return _RAW_STREAM(device.index)
    return torch.cuda.current_stream(device).cuda_stream


def _check_real(x, name: str, low: float = -float("inf"), high: float = float("inf"),
                high_inclusive: bool = True) -> float:
    """A finite real number (not a bool) in [low, high] (or [low, high)); returned as a Python float."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if x < low or x > high or (x == high and not high_inclusive):
        bound = "]" if high_inclusive else ")"
        raise ValueError(f"{name} = {x} is outside [{low}, {high}{bound}")
    return x


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _check_same_dtype(**tensors: Optional[torch.Tensor]) -> torch.dtype:
    present = {k: v for k, v in tensors.items() if v is not None}
    dtypes = {v.dtype for v in present.values()}
    if len(dtypes) > 1:
        listing = ", ".join(f"{k} {v.dtype}" for k, v in present.items())
        raise TypeError(f"all float tensors must have one dtype, got {listing}")
    return dtypes.pop()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors share any byte of memory."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def _check_writes_disjoint(writes: dict, reads: dict) -> None:
    """No written tensor may share memory with another tensor of the call: a GEMM would read what it overwrites."""
    named = [(k, v) for k, v in {**writes, **reads}.items() if v is not None]
    for wname, w in writes.items():
        for name, t in named:
            if w is not None and name != wname and _overlaps(w, t):
                raise ValueError(f"{wname} shares memory with {name}; the kernels would overwrite data they still "
                                 f"read. Pass a separate buffer as {wname}")


# ---------------------------------------------------------------------------------------------------------
# gelu
# ---------------------------------------------------------------------------------------------------------
def gelu_forward(inp: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out = GELU(inp), tanh approximation. Any shape whose element count is a multiple of 8 on CUDA."""
    _check_float(inp, "inp")
    device = _check_same_device(inp=inp, out=out)
    out = _output(out, "out", inp.shape, inp.dtype, device)
    if device.type == "cuda":
        _check_multiple_of(inp.numel(), 8, "inp.numel()")
        _ext().gelu_forward(out.data_ptr(), inp.data_ptr(), inp.numel(), _stream(device))
    else:
        out.copy_(reference.gelu_forward(inp))
    return out


def gelu_backward(dout: torch.Tensor, inp: torch.Tensor, dinp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dinp = dout * GELU'(inp). `dinp` may be `dout` itself (in-place)."""
    _check_float(dout, "dout")
    _check_float(inp, "inp")
    device = _check_same_device(dout=dout, inp=inp, dinp=dinp)
    _check_shape(dout, "dout", inp.shape)
    if dout.dtype != inp.dtype:
        raise TypeError(f"dout ({dout.dtype}) and inp ({inp.dtype}) must have the same dtype")
    dinp = _output(dinp, "dinp", inp.shape, inp.dtype, device)
    if device.type == "cuda":
        _check_multiple_of(inp.numel(), 8, "inp.numel()")
        _ext().gelu_backward(dinp.data_ptr(), dout.data_ptr(), inp.data_ptr(), inp.numel(), _stream(device))
    else:
        dinp.copy_(reference.gelu_backward(dout, inp))
    return dinp


# ---------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------
def _encoder_dims(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, device: torch.device,
                  wte_name: str, wpe_name: str) -> tuple:
    """(B, T, V, C) for idx (B, T), wte (V, C), wpe (maxT, C) with T <= maxT."""
    if idx.dim() != 2:
        raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
    for t, name, rows in ((wte, wte_name, "V (vocabulary)"), (wpe, wpe_name, "max_seq_len")):
        if t.dim() != 2:
            raise ValueError(f"{name} must be ({rows}, C), got shape {tuple(t.shape)}")
    B, T = idx.shape
    V, C = wte.shape
    if wpe.shape[1] != C:
        raise ValueError(f"{wte_name} {tuple(wte.shape)} and {wpe_name} {tuple(wpe.shape)} must have the same "
                         f"number of channels C")
    if T > wpe.shape[0]:
        raise ValueError(f"idx has T = {T} positions but {wpe_name} has only {wpe.shape[0]} rows (max_seq_len); "
                         f"use sequences of at most {wpe.shape[0]} tokens")
    if device.type == "cuda":
        _check_multiple_of(C, 8, f"C ({wte_name}.shape[1])")
    return B, T, V, C


def _check_token_range(lowest: int, highest: int, V: int) -> None:
    if lowest < 0 or highest >= V:
        raise ValueError(f"idx holds token ids from {lowest} to {highest}, but the embedding table has V = {V} "
                         f"rows; every id must lie in [0, {V})")


def _token_extremes(idx: torch.Tensor) -> tuple:
    """(min, max) of the ids; on CUDA this waits for the device (one small copy back)."""
    lowest, highest = torch.aminmax(idx)
    return tuple(torch.stack((lowest, highest)).tolist())


def encoder_forward(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor,
                    out: Optional[torch.Tensor] = None, *, validate: bool = True) -> torch.Tensor:
    """out (B, T, C) = wte[idx] + wpe[:T] for token ids idx (B, T), wte (V, C), wpe (max_seq_len, C).

    The ids are checked against V (one synchronizing read of their min and max on CUDA). validate=False
    skips that check on CUDA, and so the sync, for callers that know their ids lie in [0, V): an id outside
    it makes the kernel read out of bounds. Tensor types, shapes and layouts are checked either way.
    """
    _check_index(idx, "idx")
    _check_float(wte, "wte")
    _check_float(wpe, "wpe")
    device = _check_same_device(idx=idx, wte=wte, wpe=wpe, out=out)
    dtype = _check_same_dtype(wte=wte, wpe=wpe)
    B, T, V, C = _encoder_dims(idx, wte, wpe, device, "wte", "wpe")
    out = _output(out, "out", (B, T, C), dtype, device)
    if idx.numel() == 0:
        return out
    if validate or device.type != "cuda":
        _check_token_range(*_token_extremes(idx), V)
    if device.type == "cuda":
        _ext().encoder_forward(out.data_ptr(), idx.data_ptr(), wte.data_ptr(), wpe.data_ptr(), B, T, C,
                               _stream(device))
    else:
        out.copy_(reference.encoder_forward(idx, wte, wpe))
    return out


def encoder_backward(dout: torch.Tensor, idx: torch.Tensor, dwte: torch.Tensor, dwpe: torch.Tensor, *,
                     validate: bool = True) -> None:
    """dwte (V, C) += and dwpe (max_seq_len, C) += the gradients of encoder_forward, from dout (B, T, C).

    Deterministic: on CUDA the ids are sorted (stably) on the device and every token's rows are summed in a
    fixed order, without atomics. The ids are checked against V (one synchronizing read of their min and max on
    CUDA); validate=False skips that check on CUDA and so the sync, as in encoder_forward (an id outside
    [0, V) makes the kernels write out of bounds). On CUDA, dwpe's kernel runs on a side stream that forks from
    and joins back into the current one.
    """
    _check_float(dout, "dout")
    _check_index(idx, "idx")
    _check_float(dwte, "dwte")
    _check_float(dwpe, "dwpe")
    device = _check_same_device(dout=dout, idx=idx, dwte=dwte, dwpe=dwpe)
    _check_same_dtype(dout=dout, dwte=dwte, dwpe=dwpe)
    B, T, V, C = _encoder_dims(idx, dwte, dwpe, device, "dwte", "dwpe")
    _check_shape(dout, "dout", (B, T, C))
    _check_writes_disjoint(dict(dwte=dwte, dwpe=dwpe), dict(dout=dout))
    if idx.numel() == 0:
        return
    if validate or device.type != "cuda":
        _check_token_range(*_token_extremes(idx), V)
    if device.type == "cuda":
        ext = _ext()
        scratch = torch.empty(ext.encoder_backward_scratch_bytes(B * T, C, V), dtype=torch.uint8, device=device)
        # dwpe's kernel runs on a side stream beside the id sort and the dwte kernels (fork and join, which CUDA
        # graph capture keeps)
        stream, side = torch.cuda.current_stream(device), _side_stream(device)
        side.wait_stream(stream)
        ext.encoder_backward_sort(scratch.data_ptr(), scratch.numel(), idx.data_ptr(), B * T, C, V,
                                  stream.cuda_stream)
        ext.encoder_backward(dwte.data_ptr(), dwpe.data_ptr(), scratch.data_ptr(), scratch.numel(), dout.data_ptr(),
                             B, T, C, V, stream.cuda_stream, side.cuda_stream)
        stream.wait_stream(side)
    else:
        grad_wte, grad_wpe = reference.encoder_backward(dout, idx, V, dwpe.shape[0])
        dwte.add_(grad_wte)
        dwpe.add_(grad_wpe)


# ---------------------------------------------------------------------------------------------------------
# layernorm
# ---------------------------------------------------------------------------------------------------------
def _layernorm_dims(inp: torch.Tensor, device: torch.device, inp_name: str = "inp", **params) -> tuple:
    """(N, C) for inp (..., C) (at least 2-D) and parameters of shape (C,)."""
    if inp.dim() < 2:
        raise ValueError(f"{inp_name} must be (N, C) or (..., C), got shape {tuple(inp.shape)}")
    C = inp.shape[-1]
    if C == 0:
        raise ValueError(f"{inp_name} has shape {tuple(inp.shape)}; C (the last dimension) must be positive")
    for name, t in params.items():
        _check_shape(t, name, (C,))
    if device.type == "cuda":
        _check_multiple_of(C, 8, f"C ({inp_name}.shape[-1])")
    return inp.numel() // C, C


def _layernorm_outputs(out, mean, rstd, shape, dtype, device) -> tuple:
    return (_output(out, "out", shape, dtype, device), _output(mean, "mean", shape[:-1], torch.float32, device),
            _output(rstd, "rstd", shape[:-1], torch.float32, device))


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
    _check_float(inp, "inp")
    _check_float(weight, "weight")
    _check_float(bias, "bias")
    device = _check_same_device(inp=inp, weight=weight, bias=bias, out=out, mean=mean, rstd=rstd)
    dtype = _check_same_dtype(inp=inp, weight=weight, bias=bias)
    N, C = _layernorm_dims(inp, device, weight=weight, bias=bias)
    eps = _check_real(eps, "eps", low=0.0)
    out, mean, rstd = _layernorm_outputs(out, mean, rstd, inp.shape, dtype, device)
    if device.type == "cuda":
        _ext().layernorm_forward(out.data_ptr(), mean.data_ptr(), rstd.data_ptr(), inp.data_ptr(),
                                 weight.data_ptr(), bias.data_ptr(), N, C, eps, _stream(device))
    else:
        _layernorm_reference_into(out, mean, rstd, inp, weight, bias, eps)
    return out, mean, rstd


def fused_residual_layernorm_forward(inp1: torch.Tensor, inp2: torch.Tensor, weight: torch.Tensor,
                                     bias: torch.Tensor, residual: Optional[torch.Tensor] = None,
                                     out: Optional[torch.Tensor] = None, mean: Optional[torch.Tensor] = None,
                                     rstd: Optional[torch.Tensor] = None, eps: float = 1e-5) -> tuple:
    """(residual, out, mean, rstd): residual = inp1 + inp2 (stored in the inputs' dtype), then the LayerNorm of
    that stored residual, in one pass over memory on CUDA. Shapes as in layernorm_forward."""
    _check_float(inp1, "inp1")
    _check_float(inp2, "inp2")
    _check_float(weight, "weight")
    _check_float(bias, "bias")
    device = _check_same_device(inp1=inp1, inp2=inp2, weight=weight, bias=bias, residual=residual, out=out,
                                mean=mean, rstd=rstd)
    dtype = _check_same_dtype(inp1=inp1, inp2=inp2, weight=weight, bias=bias)
    _check_shape(inp2, "inp2", inp1.shape)
    N, C = _layernorm_dims(inp1, device, "inp1", weight=weight, bias=bias)
    eps = _check_real(eps, "eps", low=0.0)
    residual = _output(residual, "residual", inp1.shape, dtype, device)
    out, mean, rstd = _layernorm_outputs(out, mean, rstd, inp1.shape, dtype, device)
    if device.type == "cuda":
        _ext().fused_residual_layernorm_forward(residual.data_ptr(), out.data_ptr(), mean.data_ptr(),
                                                rstd.data_ptr(), inp1.data_ptr(), inp2.data_ptr(),
                                                weight.data_ptr(), bias.data_ptr(), N, C, eps, _stream(device))
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
        _check_float(t, name)
    if dinp_colsum is not None:
        _check_float(dinp_colsum, "dinp_colsum")
    _check_fp32(mean, "mean")
    _check_fp32(rstd, "rstd")
    if not isinstance(accumulate, bool):
        raise TypeError(f"accumulate must be a bool, got {type(accumulate).__name__}")
    if accumulate and dinp is None:
        raise ValueError("accumulate=True adds into dinp, so dinp must be given")
    device = _check_same_device(dout=dout, inp=inp, weight=weight, mean=mean, rstd=rstd, dweight=dweight,
                                dbias=dbias, dinp=dinp, dinp_colsum=dinp_colsum)
    sums = dict(dweight=dweight, dbias=dbias) if dinp_colsum is None else \
        dict(dweight=dweight, dbias=dbias, dinp_colsum=dinp_colsum)
    dtype = _check_same_dtype(dout=dout, inp=inp, weight=weight, **sums)
    N, C = _layernorm_dims(inp, device, weight=weight, **sums)
    _check_shape(dout, "dout", inp.shape)
    _check_shape(mean, "mean", inp.shape[:-1])
    _check_shape(rstd, "rstd", inp.shape[:-1])
    dinp = _output(dinp, "dinp", inp.shape, dtype, device)
    _check_writes_disjoint(sums, dict(dout=dout, inp=inp, weight=weight, mean=mean, rstd=rstd, dinp=dinp))
    _check_writes_disjoint(dict(dinp=dinp), dict(weight=weight, mean=mean, rstd=rstd))
    for name, t in (("dout", dout), ("inp", inp)):
        # a row is read whole before its dinp row is written, so dinp may BE dout or inp, but a shifted overlap
        # would let one row's write land in a row another warp has yet to read
        if _overlaps(dinp, t) and dinp.data_ptr() != t.data_ptr():
            raise ValueError(f"dinp partly overlaps {name}: pass {name} itself as dinp (in place) or a separate "
                             f"buffer")
    if device.type == "cuda":
        ext = _ext()
        scratch = torch.empty(ext.layernorm_backward_scratch_floats(N, C), dtype=torch.float32, device=device)
        ext.layernorm_backward(dinp.data_ptr(), dweight.data_ptr(), dbias.data_ptr(), scratch.data_ptr(),
                               dout.data_ptr(), inp.data_ptr(), weight.data_ptr(), mean.data_ptr(),
                               rstd.data_ptr(), N, C, accumulate, _stream(device),
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


# ---------------------------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------------------------
def _matmul_dims(inp: torch.Tensor, weight: torch.Tensor, device: torch.device):
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
    if device.type == "cuda":
        # cuBLASLt's bf16 GEMMs need 16-byte aligned rows
        _check_multiple_of(K, 8, "K (inp.shape[-1] = weight.shape[1])")
        _check_multiple_of(M, 8, "M (weight.shape[0])")
    return inp.numel() // K, K, M


def matmul_forward(inp: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   out: Optional[torch.Tensor] = None, gelu: bool = False,
                   pre_gelu: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out (N, M) = inp (N, K) @ weight (M, K).T + bias (M) (bias may be None; inp may be (..., K)).

    gelu=True returns GELU (tanh approximation) of that, fused into the cuBLASLt epilogue on CUDA, and writes the
    value before the GELU into `pre_gelu` (shaped like out) when given: what matmul_backward needs. On CUDA, K and
    M must be multiples of 8.
    """
    _check_float(inp, "inp")
    _check_float(weight, "weight")
    for t, name in ((bias, "bias"), (pre_gelu, "pre_gelu")):
        if t is not None:
            _check_float(t, name)
    if not isinstance(gelu, bool):
        raise TypeError(f"gelu must be a bool, got {type(gelu).__name__}")
    if pre_gelu is not None and not gelu:
        raise ValueError("pre_gelu is only written by the GELU epilogue: pass gelu=True, or drop pre_gelu")
    device = _check_same_device(inp=inp, weight=weight, bias=bias, out=out, pre_gelu=pre_gelu)
    dtype = _check_same_dtype(inp=inp, weight=weight, bias=bias, pre_gelu=pre_gelu)
    N, K, M = _matmul_dims(inp, weight, device)
    if bias is not None:
        _check_shape(bias, "bias", (M,))
    out_shape = (*inp.shape[:-1], M)
    out = _output(out, "out", out_shape, dtype, device)
    if pre_gelu is not None:
        _check_shape(pre_gelu, "pre_gelu", out_shape)
    _check_writes_disjoint(dict(out=out, pre_gelu=pre_gelu), dict(inp=inp, weight=weight, bias=bias))
    if device.type == "cuda":
        _ext().matmul_forward(out.data_ptr(), _ptr(pre_gelu), inp.data_ptr(), weight.data_ptr(), _ptr(bias),
                              N, K, M, gelu, _stream(device))
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
    if not compute_dinp and (dinp is not None or pre_gelu is not None):
        raise ValueError("compute_dinp=False takes neither dinp nor pre_gelu")
    for t, name in ((dout, "dout"), (inp, "inp"), (weight, "weight"), (dweight, "dweight")):
        _check_float(t, name)
    for t, name in ((dbias, "dbias"), (pre_gelu, "pre_gelu")):
        if t is not None:
            _check_float(t, name)
    device = _check_same_device(dout=dout, inp=inp, weight=weight, dweight=dweight, dbias=dbias, dinp=dinp,
                                pre_gelu=pre_gelu)
    dtype = _check_same_dtype(dout=dout, inp=inp, weight=weight, dweight=dweight, dbias=dbias, pre_gelu=pre_gelu)
    N, K, M = _matmul_dims(inp, weight, device)
    _check_shape(dout, "dout", (*inp.shape[:-1], M))
    _check_shape(dweight, "dweight", (M, K))
    if dbias is not None:
        _check_shape(dbias, "dbias", (M,))
    if pre_gelu is not None:
        _check_shape(pre_gelu, "pre_gelu", inp.shape)
    if compute_dinp:
        dinp = _output(dinp, "dinp", inp.shape, dtype, device)
    in_place = pre_gelu is not None and dinp.numel() > 0 and dinp.data_ptr() == pre_gelu.data_ptr()
    _check_writes_disjoint(dict(dinp=dinp, dweight=dweight, dbias=dbias),
                           dict(dout=dout, inp=inp, weight=weight, pre_gelu=None if in_place else pre_gelu))
    if device.type == "cuda":
        target = torch.empty_like(dinp) if in_place else dinp
        _ext().matmul_backward(_ptr(target), dweight.data_ptr(), _ptr(dbias), dout.data_ptr(), inp.data_ptr(),
                               weight.data_ptr(), _ptr(pre_gelu), N, K, M, _stream(device))
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
    return list(_ext().matmul_tuning_log())


# ---------------------------------------------------------------------------------------------------------
# FP8 (opt-in matmuls on H100-class GPUs; the CPU runs the same math in torch for tests)
# ---------------------------------------------------------------------------------------------------------
FP8_E4M3 = torch.float8_e4m3fn  # activations and weights
FP8_E5M2 = torch.float8_e5m2    # gradients
FP8_MAX = {FP8_E4M3: 448.0, FP8_E5M2: 57344.0}


@functools.lru_cache(maxsize=None)  # asked on every matmul_fp8 call; a device's answer does not change
def fp8_supported(device=None) -> bool:
    """Whether FP8 matmuls can run: a CUDA build and a GPU of compute capability 8.9 or more (Ada, Hopper)."""
    if not cuda_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _check_scalar_fp32(t, name: str, device: torch.device) -> torch.Tensor:
    """One fp32 element on `device` (a scale or an amax; any 4-byte aligned slot of a bigger tensor will do)."""
    _check_tensor(t, name)
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be torch.float32, got {t.dtype}")
    if t.numel() != 1:
        raise ValueError(f"{name} must hold one element, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    return t


def _scalar_output(t: Optional[torch.Tensor], name: str, device: torch.device) -> torch.Tensor:
    """A one-element fp32 output (a scale or an amax): t checked as _check_scalar_fp32 does, or a new one."""
    if t is None:
        return torch.empty(1, dtype=torch.float32, device=device)
    return _check_scalar_fp32(t, name, device)


def _check_fp8(t, name: str) -> torch.Tensor:
    _check_tensor(t, name)
    if t.dtype not in FP8_MAX:
        raise TypeError(f"{name} must be torch.float8_e4m3fn or torch.float8_e5m2, got {t.dtype}")
    _check_layout(t, name)
    return t


def fp8_amax(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """max |x| as a one-element fp32 tensor (written into out when given)."""
    _check_float(x, "x")
    device = x.device
    out = _scalar_output(out, "out", device)
    _check_same_device(x=x, out=out)
    _check_writes_disjoint(dict(out=out), dict(x=x))
    if device.type == "cuda":
        _ext().fp8_amax(out.data_ptr(), x.data_ptr(), x.numel(), _stream(device))
    else:
        out.copy_(reference.fp8_amax(x).reshape(1))
    return out


def fp8_amax_rows(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """max |x[r]| for each r < x.shape[0] as an fp32 tensor (x.shape[0],): e.g. one amax per layer of a stacked
    weight, in one launch."""
    _check_float(x, "x")
    if x.dim() < 2 or not 0 < x.shape[0] < 65536:
        raise ValueError(f"x must have at least 2 dimensions and 1 to 65535 rows, got shape {tuple(x.shape)}")
    device = x.device
    R, n = x.shape[0], x[0].numel()
    out = _output(out, "out", (R,), torch.float32, device)
    _check_writes_disjoint(dict(out=out), dict(x=x))
    if device.type == "cuda":
        _check_multiple_of(n, 8, "the row size x[0].numel()")
        _ext().fp8_amax_rows(out.data_ptr(), x.data_ptr(), R, n, _stream(device))
    else:
        out.copy_(x.reshape(R, -1).float().abs().amax(dim=1) if n else torch.zeros(R))
    return out


def fp8_cast(x: torch.Tensor, amax_ref: torch.Tensor, dtype: torch.dtype = FP8_E4M3, *,
             out: Optional[torch.Tensor] = None, scale_inv: Optional[torch.Tensor] = None,
             amax_out: Optional[torch.Tensor] = None, transpose: bool = False,
             dbias: Optional[torch.Tensor] = None) -> tuple:
    """Scale x (bf16; 2-D when transpose) into FP8 for matmul_fp8: q = saturate(x * s) with s = fp8_max /
    amax_ref (s = 1 when amax_ref is 0), the largest |x| the scale is made for (fp8_amax(x) for an exact fit;
    larger values saturate at +-fp8_max). Returns (q, scale_inv), scale_inv = 1/s (one fp32 element) for
    matmul_fp8. amax_out, when given, is raised to max |x| (so the next cast can scale by it; it must start >= 0,
    as the maxima are combined on the bits of non-negative floats). transpose=True
    writes q as x.T (rows and columns swapped). dtype: FP8_E4M3 (activations, weights) or FP8_E5M2 (gradients).
    dbias (x.shape[-1],), when given: dbias += x summed over all its other dimensions, in the same pass over x
    (a layer's output gradient is cast for the FP8 input-gradient matmul and also gives its bias gradient; on a
    GPU the sum is matmul_backward's, bit for bit). Not with transpose."""
    _check_float(x, "x")
    if dtype not in FP8_MAX:
        raise TypeError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    device = x.device
    _check_scalar_fp32(amax_ref, "amax_ref", device)
    if amax_out is not None:
        _check_scalar_fp32(amax_out, "amax_out", device)
    if transpose and x.dim() != 2:
        raise ValueError(f"transpose=True takes a 2-D x, got shape {tuple(x.shape)}")
    if dbias is not None:
        if transpose:
            raise ValueError("dbias is not computed with transpose=True; cast without transposing")
        if x.dim() == 0:
            raise ValueError("dbias needs x with at least one dimension (its last is the bias's)")
        _check_float(dbias, "dbias")
        _check_shape(dbias, "dbias", (x.shape[-1],))
        _check_same_dtype(x=x, dbias=dbias)
    if device.type == "cuda" and dbias is not None:
        _check_multiple_of(x.shape[-1], 8, "x.shape[-1] (with dbias)")
    elif device.type == "cuda" and not transpose:
        _check_multiple_of(x.numel(), 16, "x.numel()")
    shape = (x.shape[1], x.shape[0]) if transpose else tuple(x.shape)
    out = _output(out, "out", shape, dtype, device)
    scale_inv = _scalar_output(scale_inv, "scale_inv", device)
    _check_same_device(x=x, amax_ref=amax_ref, out=out, scale_inv=scale_inv, amax_out=amax_out, dbias=dbias)
    _check_writes_disjoint(dict(out=out, scale_inv=scale_inv, amax_out=amax_out, dbias=dbias),
                           dict(x=x, amax_ref=amax_ref))
    if device.type == "cuda":
        ext, stream, e5m2 = _ext(), _stream(device), dtype == FP8_E5M2
        if transpose and not x.numel():  # nothing to cast, but scale_inv is still an output
            scale_inv.copy_(reference.fp8_cast(x, amax_ref, dtype, FP8_MAX[dtype])[1].reshape(1))
        elif dbias is not None and x.numel():  # (with nothing to sum, dbias stays as it is)
            M = x.shape[-1]
            N = x.numel() // M if M else 0
            floats = ext.bias_grad_scratch_floats(N, M)
            scratch = torch.empty(floats, dtype=torch.float32, device=device)
            ext.fp8_cast_dbias(out.data_ptr(), dbias.data_ptr(), x.data_ptr(), N, M, e5m2, amax_ref.data_ptr(),
                               scale_inv.data_ptr(), _ptr(amax_out), scratch.data_ptr(), floats, stream)
        elif transpose:
            ext.fp8_cast_transpose(out.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1], e5m2, amax_ref.data_ptr(),
                                   scale_inv.data_ptr(), _ptr(amax_out), stream)
        else:
            ext.fp8_cast(out.data_ptr(), x.data_ptr(), x.numel(), e5m2, amax_ref.data_ptr(), scale_inv.data_ptr(),
                         _ptr(amax_out), stream)
    else:
        q, inv = reference.fp8_cast(x.t() if transpose else x, amax_ref, dtype, FP8_MAX[dtype])
        out.copy_(q)
        scale_inv.copy_(inv.reshape(1))
        if amax_out is not None:
            torch.maximum(amax_out, reference.fp8_amax(x).reshape(1), out=amax_out)
        if dbias is not None:
            dbias.add_(x.float().reshape(-1, x.shape[-1]).sum(0))
    return out, scale_inv


def matmul_fp8(x: torch.Tensor, w: torch.Tensor, x_scale_inv: torch.Tensor, w_scale_inv: torch.Tensor,
               bias: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None, gelu: bool = False,
               pre_gelu: Optional[torch.Tensor] = None, dgelu_of: Optional[torch.Tensor] = None,
               fast_accum: bool = False) -> torch.Tensor:
    """out (N, M) = (x (N, K) @ w (M, K).T) * x_scale_inv * w_scale_inv [+ bias (M)] in bf16, from FP8 x and w
    (fp8_cast's outputs; at most one of them e5m2), fp32 accumulation (fast_accum: Hopper's faster, coarser
    one). gelu=True: out = gelu(.) and pre_gelu (required, (N, M) bf16) receives the value before it.
    dgelu_of=pre (N, M): out = (.) * gelu'(pre), the backward of a GELU (no bias); on an H100 cuBLASLt runs it as
    the GEMM plus a separate, slow epilogue kernel (see llmc.model._Fp8). K and M multiples of 16."""
    _check_fp8(x, "x")
    _check_fp8(w, "w")
    if x.dtype == FP8_E5M2 and w.dtype == FP8_E5M2:
        raise TypeError("x and w are both float8_e5m2; FP8 matmuls take at most one e5m2 operand")
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x (N, K) and w (M, K) must be 2-D with the same K, got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")
    if gelu and dgelu_of is not None:
        raise ValueError("gelu=True and dgelu_of are exclusive (a forward GELU or a backward one)")
    if gelu != (pre_gelu is not None):
        raise ValueError("gelu=True needs pre_gelu (and pre_gelu needs gelu=True)")
    if dgelu_of is not None and bias is not None:
        raise ValueError("dgelu_of takes no bias")
    device = _check_same_device(x=x, w=w, bias=bias, out=out, pre_gelu=pre_gelu, dgelu_of=dgelu_of)
    N, K = x.shape
    M = w.shape[0]
    _check_multiple_of(K, 16, "K (x.shape[1])")
    _check_multiple_of(M, 16, "M (w.shape[0])")
    _check_scalar_fp32(x_scale_inv, "x_scale_inv", device)
    _check_scalar_fp32(w_scale_inv, "w_scale_inv", device)
    for t, name in ((bias, "bias"), (pre_gelu, "pre_gelu"), (dgelu_of, "dgelu_of")):
        if t is not None:
            _check_float(t, name)
    if bias is not None:
        _check_shape(bias, "bias", (M,))
    for t, name in ((pre_gelu, "pre_gelu"), (dgelu_of, "dgelu_of")):
        if t is not None:
            _check_shape(t, name, (N, M))
    dtype = torch.bfloat16 if device.type == "cuda" else (bias.dtype if bias is not None else torch.float32)
    out = _output(out, "out", (N, M), out.dtype if out is not None and device.type == "cpu" else dtype, device)
    _check_writes_disjoint(dict(out=out, pre_gelu=pre_gelu), dict(x=x, w=w, bias=bias, dgelu_of=dgelu_of,
                                                                   x_scale_inv=x_scale_inv, w_scale_inv=w_scale_inv))
    if device.type == "cuda":
        if not fp8_supported(device):
            raise RuntimeError(f"matmul_fp8 needs a GPU of compute capability 8.9 or more (an H100); "
                               f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}")
        epilogue = 1 if gelu else 2 if dgelu_of is not None else 0
        _ext().matmul_fp8(out.data_ptr(), _ptr(pre_gelu if gelu else dgelu_of), x.data_ptr(), w.data_ptr(),
                          x.dtype == FP8_E5M2, w.dtype == FP8_E5M2, x_scale_inv.data_ptr(), w_scale_inv.data_ptr(),
                          _ptr(bias), N, K, M, epilogue, bool(fast_accum), _stream(device))
    else:
        pre = reference.matmul_fp8(x, w, x_scale_inv, w_scale_inv, bias)
        if gelu:
            pre_gelu.copy_(pre)
            out.copy_(reference.gelu_forward(pre))
        elif dgelu_of is not None:
            out.copy_(reference.gelu_backward(pre, dgelu_of))
        else:
            out.copy_(pre)
    return out


def fp8_update_scales(amax_ref: torch.Tensor, history: torch.Tensor, amax: torch.Tensor, pos: int) -> None:
    """Delayed scaling's bookkeeping for S tensors: history (S, H) column pos = amax (S) where amax is > 0 and
    finite (a tensor not cast since the last update keeps its history), then amax = 0 and amax_ref (S) = each row's
    max over the history: the amax_ref the next fp8_cast of each tensor scales by."""
    for t, name in ((amax_ref, "amax_ref"), (history, "history"), (amax, "amax")):
        _check_fp32(t, name)
    device = _check_same_device(amax_ref=amax_ref, history=history, amax=amax)
    if history.dim() != 2 or history.shape[0] < 1 or history.shape[1] < 1:
        raise ValueError(f"history must be (S, H) with S, H >= 1, got {tuple(history.shape)}")
    S, H = history.shape
    _check_shape(amax_ref, "amax_ref", (S,))
    _check_shape(amax, "amax", (S,))
    pos = _check_int(pos, "pos", 0)
    if pos >= H:
        raise ValueError(f"pos = {pos} must be < the history length {H}")
    if device.type == "cuda":
        _ext().fp8_update_scales(amax_ref.data_ptr(), history.data_ptr(), amax.data_ptr(), S, H, pos, _stream(device))
    else:
        recorded = (amax > 0) & torch.isfinite(amax)
        history[:, pos] = torch.where(recorded, amax, history[:, pos])
        amax.zero_()
        torch.amax(history, dim=1, out=amax_ref)


# ---------------------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------------------
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
    ext = _ext()
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
    _check_float(qkv, "qkv")
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
    device = _check_same_device(qkv=qkv, out=out, stats=stats)
    out = _output(out, "out", (B, T, NH, HS), qkv.dtype, device)
    stats = _output(stats, "stats", (B, NH, T), torch.float32, device)
    if device.type == "cuda":
        ext = _ext()
        run = ext.attention_forward_cudnn if _resolve_attention_backend(backend, T, HS) == "cudnn" \
            else ext.attention_forward
        run(out.data_ptr(), stats.data_ptr(), qkv.data_ptr(), B, T, NH, HS, _stream(device))
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
    _check_float(dout, "dout")
    _check_float(out, "out")
    _check_fp32(stats, "stats")
    device = _check_same_device(dout=dout, qkv=qkv, out=out, stats=stats, dqkv=dqkv)
    _check_shape(dout, "dout", (B, T, NH, HS))
    _check_shape(out, "out", (B, T, NH, HS))
    _check_shape(stats, "stats", (B, NH, T))
    if not dout.dtype == out.dtype == qkv.dtype:
        raise TypeError(f"dout ({dout.dtype}), qkv ({qkv.dtype}) and out ({out.dtype}) must have the same dtype")
    dqkv = _output(dqkv, "dqkv", qkv.shape, qkv.dtype, device)
    if dqkv.data_ptr() == qkv.data_ptr():
        raise ValueError("dqkv must not be qkv itself: the kernels read qkv while they write dqkv")
    if device.type == "cuda":
        ext = _ext()
        if _resolve_attention_backend(backend, T, HS) == "cudnn":
            ext.attention_backward_cudnn(dqkv.data_ptr(), dout.data_ptr(), qkv.data_ptr(), out.data_ptr(),
                                         stats.data_ptr(), B, T, NH, HS,
                                         torch.are_deterministic_algorithms_enabled() if deterministic is None
                                         else bool(deterministic),
                                         _stream(device))
        else:
            delta = torch.empty((B, NH, T), dtype=torch.float32, device=device)
            ext.attention_backward(dqkv.data_ptr(), delta.data_ptr(), dout.data_ptr(), qkv.data_ptr(), out.data_ptr(),
                                   stats.data_ptr(), B, T, NH, HS, _stream(device))
    else:
        _check_cpu_attention_backend(backend)
        dqkv.copy_(reference.attention_backward(dout, qkv, out, stats))
    return dqkv


# ---------------------------------------------------------------------------------------------------------
# fused_classifier
# ---------------------------------------------------------------------------------------------------------
def fused_classifier(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, dloss: Optional[float] = None,
                     losses: Optional[torch.Tensor] = None, *, validate: bool = True) -> torch.Tensor:
    """Cross-entropy per position and its gradient in one pass. `logits` (N, Vp) (or (B, T, Vp)) is OVERWRITTEN
    with dlogits = (softmax - onehot(target)) * dloss over the first `vocab_size` columns, 0 in the padding
    columns vocab_size..Vp-1. `targets` (N) (or (B, T)) int32, -1 = ignore: loss 0 and a zero gradient row.
    `dloss` defaults to 1 / (number of non-ignored targets), so sum(losses) * dloss is the mean loss and dlogits
    its gradient. Returns the per-position losses, fp32. The targets' range is checked on their device, which
    waits for it (one host synchronisation); validate=False (only with an explicit dloss) skips that check for
    callers that validated the targets already: an out-of-range target then reads outside its row."""
    _check_float(logits, "logits")
    _check_index(targets, "targets")
    device = _check_same_device(logits=logits, targets=targets, losses=losses)
    if logits.dim() < 2 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match: expected "
                         f"logits (N, Vp) with targets (N), or logits (B, T, Vp) with targets (B, T)")
    Vp, N = logits.shape[-1], targets.numel()
    V = _check_int(vocab_size, "vocab_size", 1)
    if V > Vp:
        raise ValueError(f"vocab_size={V} is larger than logits.shape[-1]={Vp}, the padded vocabulary; the logits "
                         f"need at least vocab_size columns")
    if dloss is not None:
        dloss = _check_real(dloss, "dloss")
    losses = _output(losses, "losses", targets.shape, torch.float32, device)
    if device.type == "cuda":
        _check_multiple_of(Vp, 8, "the padded vocabulary size logits.shape[-1]")
        if N >= 2**31:
            raise ValueError(f"{N} positions is too many for one call (the kernel runs one block per position); "
                             f"split the rows into chunks below 2**31")
    if not validate and dloss is None:
        raise ValueError("validate=False needs an explicit dloss (the default dloss counts the targets)")
    bad, count = torch.stack([((targets < -1) | (targets >= V)).sum(), (targets >= 0).sum()]).tolist() \
        if validate or device.type == "cpu" else (0, 0)
    if bad:
        raise ValueError(f"targets has {bad} entries outside [0, {V}) that are not -1 (ignore); every target must "
                         f"be a token id below vocab_size={V} or -1")
    if dloss is None:
        dloss = 1.0 / max(count, 1)
    if device.type == "cuda":
        _ext().fused_classifier(logits.data_ptr(), losses.data_ptr(), targets.data_ptr(), dloss, N, V, Vp,
                                _stream(device))
    else:
        row_losses, dlogits = reference.fused_classifier(logits, targets, V, dloss)
        logits.copy_(dlogits)
        losses.copy_(row_losses)
    return losses


# ---------------------------------------------------------------------------------------------------------
# adamw
# ---------------------------------------------------------------------------------------------------------
def _check_partition(tensor_sizes, tensor_decay, n: int) -> tuple[list, list]:
    """tensor_sizes: ints >= 0 adding up to n; tensor_decay: one bool per tensor."""
    if isinstance(tensor_sizes, (str, bytes)) or not isinstance(tensor_sizes, Sequence):
        raise TypeError(f"tensor_sizes must be a list of ints, got {type(tensor_sizes).__name__}")
    if isinstance(tensor_decay, (str, bytes)) or not isinstance(tensor_decay, Sequence):
        raise TypeError(f"tensor_decay must be a list of bools, got {type(tensor_decay).__name__}")
    if len(tensor_sizes) != len(tensor_decay):
        raise ValueError(f"tensor_sizes has {len(tensor_sizes)} entries but tensor_decay has {len(tensor_decay)}; "
                         f"give one decay flag per tensor")
    sizes = [_check_int(s, f"tensor_sizes[{i}]", 0) for i, s in enumerate(tensor_sizes)]
    decay = []
    for i, d in enumerate(tensor_decay):
        try:
            flag = operator.index(d)
        except TypeError:
            flag = None
        if flag not in (0, 1):
            raise TypeError(f"tensor_decay[{i}] must be a bool, got {d!r}")
        decay.append(bool(flag))
    if sum(sizes) != n:
        raise ValueError(f"tensor_sizes add up to {sum(sizes)} but params has {n} elements; they must partition "
                         f"the flat range exactly")
    return sizes, decay


def _decay_segments(sizes: Sequence[int], decay: Sequence[bool], weight_decay: float) -> int:
    """How many runs of adjacent (non-empty) tensors with the same effective weight decay the range has."""
    runs, last = 0, None
    for size, d in zip(sizes, decay):
        value = weight_decay if d else 0.0
        if size and value != last:
            runs, last = runs + 1, value
    return runs


def adamw_update(params: torch.Tensor, grads: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                 master: Optional[torch.Tensor], *, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, step: int, seed: int, grad_scale: float = 1.0, tensor_sizes: Sequence[int],
                 tensor_decay: Sequence[bool], grad_norm_squared: Optional[torch.Tensor] = None,
                 max_grad_norm: Optional[float] = None) -> None:
    """One AdamW step (torch.optim.AdamW's math, decoupled weight decay) over a flat range, in one launch.
    params/grads: bf16 on CUDA; m, v, master: fp32, all with the same number of elements. The range is the
    concatenation of tensors of `tensor_sizes`; weight decay applies to those with `tensor_decay` set. Gradients
    are multiplied by `grad_scale` first; `step` counts from 1 (bias correction). With master weights, master
    is updated and params get its value stochastically rounded to bf16 (from `seed` and the element index:
    the same seed gives the same bits); with master=None params are updated directly (rounded the same way on
    CUDA, written plainly on the CPU).
    Gradient clipping without a host sync: with grad_norm_squared (fp32, one element, on the device: the squared
    global gradient norm, e.g. from global_norm_squared) and max_grad_norm, the gradients are also multiplied by
    max_grad_norm / norm when norm = sqrt(grad_norm_squared) exceeds max_grad_norm; the kernel reads the norm."""
    _check_float(params, "params")
    _check_float(grads, "grads")
    _check_fp32(m, "m")
    _check_fp32(v, "v")
    if master is not None:
        _check_fp32(master, "master")
    device = _check_same_device(params=params, grads=grads, m=m, v=v, master=master)
    if grads.dtype != params.dtype:
        raise TypeError(f"grads ({grads.dtype}) and params ({params.dtype}) must have the same dtype")
    n = params.numel()
    for name, t in (("grads", grads), ("m", m), ("v", v), ("master", master)):
        if t is not None and t.numel() != n:
            raise ValueError(f"{name} has {t.numel()} elements but params has {n}; every AdamW buffer covers the "
                             f"same flat range")
    hyper = dict(lr=_check_real(lr, "lr", 0.0), beta1=_check_real(beta1, "beta1", 0.0, 1.0, high_inclusive=False),
                 beta2=_check_real(beta2, "beta2", 0.0, 1.0, high_inclusive=False),
                 eps=_check_real(eps, "eps", 0.0), weight_decay=_check_real(weight_decay, "weight_decay", 0.0),
                 step=_check_int(step, "step", 1), grad_scale=_check_real(grad_scale, "grad_scale"))
    seed = _check_int(seed, "seed", 0, 2**64)
    sizes, decay = _check_partition(tensor_sizes, tensor_decay, n)
    if (grad_norm_squared is None) != (max_grad_norm is None):
        raise ValueError("clipping needs both grad_norm_squared and max_grad_norm (or neither)")
    if grad_norm_squared is not None:
        _check_fp32(grad_norm_squared, "grad_norm_squared")
        _check_same_device(params=params, grad_norm_squared=grad_norm_squared)
        if grad_norm_squared.numel() != 1:
            raise ValueError(f"grad_norm_squared must hold one value (the squared global norm), got "
                             f"{grad_norm_squared.numel()}")
        max_grad_norm = _check_real(max_grad_norm, "max_grad_norm", 0.0)
        if max_grad_norm == 0:
            raise ValueError("max_grad_norm must be > 0")
    if device.type == "cuda":
        limit = _ext().ADAMW_MAX_SEGMENTS
        runs = _decay_segments(sizes, decay, hyper["weight_decay"])
        if runs > limit:
            raise ValueError(f"the tensors form {runs} runs of alternating weight decay; one launch takes at most "
                             f"{limit}. Order the tensors so those with decay are adjacent, or split the update")
        _ext().adamw_update(params.data_ptr(), grads.data_ptr(), m.data_ptr(), v.data_ptr(),
                            0 if master is None else master.data_ptr(), n, hyper["lr"], hyper["beta1"],
                            hyper["beta2"], hyper["eps"], hyper["weight_decay"], hyper["step"], seed,
                            hyper["grad_scale"], 0 if grad_norm_squared is None else grad_norm_squared.data_ptr(),
                            1.0 if max_grad_norm is None else max_grad_norm, sizes, decay, _stream(device))
    else:
        if grad_norm_squared is not None:  # the host computes the same factor the kernel would
            norm = math.sqrt(grad_norm_squared.item())
            if norm > max_grad_norm:
                hyper["grad_scale"] = hyper["grad_scale"] * max_grad_norm / norm
        w, m_new, v_new = reference.adamw_update(params if master is None else master, grads, m, v,
                                                 tensor_sizes=sizes, tensor_decay=decay, **hyper)
        m.copy_(m_new.view_as(m))
        v.copy_(v_new.view_as(v))
        if master is not None:
            master.copy_(w.view_as(master))
        params.copy_(w.view_as(params))


# ---------------------------------------------------------------------------------------------------------
# global_norm
# ---------------------------------------------------------------------------------------------------------
def _check_float_range(t, name: str) -> torch.Tensor:
    """A contiguous float range like _check_float checks, but starting at any element: a shard of a flat buffer."""
    _check_tensor(t, name)
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
    device = _check_same_device(grads=grads, out=out)
    out = _output(out, "out", (1,), torch.float32, device)
    if device.type == "cuda":
        scratch = torch.empty(_ext().GLOBAL_NORM_PARTIALS, dtype=torch.float32, device=device)
        _ext().global_norm_squared(out.data_ptr(), grads.data_ptr(), grads.numel(), scratch.data_ptr(),
                                   _stream(device))
    else:
        out.copy_(reference.global_norm_squared(grads))
    return out

