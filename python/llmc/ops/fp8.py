"""FP8 (opt-in matmuls on H100-class GPUs; the CPU runs the same math in torch for tests): amax, the scaled casts
to e4m3/e5m2 (optionally transposed, or summing a bias gradient in the same pass), the FP8 GEMM, and delayed
scaling's history update."""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import reference
from .._validate import check_int
from .common import (check_bool, check_float, check_fp32, check_layout, check_multiple_of, check_same_device,
                     check_same_dtype, check_shape, check_tensor, check_writes_disjoint, cuda_available, extension,
                     output, ptr, stream_handle)

FP8_E4M3 = torch.float8_e4m3fn  # activations and weights
FP8_E5M2 = torch.float8_e5m2    # gradients
FP8_MAX = {FP8_E4M3: 448.0, FP8_E5M2: 57344.0}


@functools.lru_cache(maxsize=None)  # asked on every matmul_fp8 call; a device's answer does not change
def fp8_supported(device=None) -> bool:
    """Whether FP8 matmuls can run: a CUDA build and a GPU of compute capability 8.9 or more (Ada, Hopper)."""
    if not cuda_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


@functools.lru_cache(maxsize=None)
def fp8_block_supported(device=None) -> bool:
    """Whether block-scaled FP8 matmuls can run: a CUDA build and a Hopper GPU (compute capability 9.x), the one
    architecture whose cuBLASLt takes 1x128 and 128x128 scales."""
    if not cuda_available():
        return False
    return torch.cuda.get_device_capability(device)[0] == 9


def _check_scalar_fp32(t, name: str, device: torch.device) -> torch.Tensor:
    """One fp32 element on `device` (a scale or an amax; any 4-byte aligned slot of a bigger tensor will do)."""
    check_tensor(t, name)
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
    check_tensor(t, name)
    if t.dtype not in FP8_MAX:
        raise TypeError(f"{name} must be torch.float8_e4m3fn or torch.float8_e5m2, got {t.dtype}")
    check_layout(t, name)
    return t


def fp8_amax(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """max |x| as a one-element fp32 tensor (written into out when given)."""
    check_float(x, "x")
    device = x.device
    out = _scalar_output(out, "out", device)
    check_same_device(x=x, out=out)
    check_writes_disjoint(dict(out=out), dict(x=x))
    if device.type == "cuda":
        extension().fp8_amax(out.data_ptr(), x.data_ptr(), x.numel(), stream_handle(device))
    else:
        out.copy_(reference.fp8_amax(x).reshape(1))
    return out


def fp8_amax_rows(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """max |x[r]| for each r < x.shape[0] as an fp32 tensor (x.shape[0],): e.g. one amax per layer of a stacked
    weight, in one launch."""
    check_float(x, "x")
    if x.dim() < 2 or not 0 < x.shape[0] < 65536:
        raise ValueError(f"x must have at least 2 dimensions and 1 to 65535 rows, got shape {tuple(x.shape)}")
    device = x.device
    R, n = x.shape[0], x[0].numel()
    out = output(out, "out", (R,), torch.float32, device)
    check_writes_disjoint(dict(out=out), dict(x=x))
    if device.type == "cuda":
        check_multiple_of(n, 8, "the row size x[0].numel()")
        extension().fp8_amax_rows(out.data_ptr(), x.data_ptr(), R, n, stream_handle(device))
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
    check_float(x, "x")
    if not isinstance(dtype, torch.dtype) or dtype not in FP8_MAX:
        raise TypeError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    check_bool(transpose, "transpose")
    device = x.device
    cuda = device.type == "cuda"
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
        check_float(dbias, "dbias")
        check_shape(dbias, "dbias", (x.shape[-1],))
        check_same_dtype(x=x, dbias=dbias)
    if cuda and dbias is not None:
        check_multiple_of(x.shape[-1], 8, "x.shape[-1] (with dbias)")
    elif cuda and not transpose:
        check_multiple_of(x.numel(), 16, "x.numel()")
    shape = (x.shape[1], x.shape[0]) if transpose else tuple(x.shape)
    out = output(out, "out", shape, dtype, device)
    scale_inv = _scalar_output(scale_inv, "scale_inv", device)
    check_same_device(x=x, amax_ref=amax_ref, out=out, scale_inv=scale_inv, amax_out=amax_out, dbias=dbias)
    check_writes_disjoint(dict(out=out, scale_inv=scale_inv, amax_out=amax_out, dbias=dbias),
                          dict(x=x, amax_ref=amax_ref))
    if cuda:
        ext, stream, e5m2 = extension(), stream_handle(device), dtype == FP8_E5M2
        if transpose and not x.numel():  # nothing to cast, but scale_inv is still an output
            scale_inv.copy_(reference.fp8_cast(x, amax_ref, dtype, FP8_MAX[dtype])[1].reshape(1))
        elif dbias is not None and x.numel():  # (with nothing to sum, dbias stays as it is)
            M = x.shape[-1]
            N = x.numel() // M if M else 0
            floats = ext.bias_grad_scratch_floats(N, M)
            scratch = torch.empty(floats, dtype=torch.float32, device=device)
            ext.fp8_cast_dbias(out.data_ptr(), dbias.data_ptr(), x.data_ptr(), N, M, e5m2, amax_ref.data_ptr(),
                               scale_inv.data_ptr(), ptr(amax_out), scratch.data_ptr(), floats, stream)
        elif transpose:
            ext.fp8_cast_transpose(out.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1], e5m2, amax_ref.data_ptr(),
                                   scale_inv.data_ptr(), ptr(amax_out), stream)
        else:
            ext.fp8_cast(out.data_ptr(), x.data_ptr(), x.numel(), e5m2, amax_ref.data_ptr(), scale_inv.data_ptr(),
                         ptr(amax_out), stream)
    else:
        q, inv = reference.fp8_cast(x.t() if transpose else x, amax_ref, dtype, FP8_MAX[dtype])
        out.copy_(q)
        scale_inv.copy_(inv.reshape(1))
        if amax_out is not None:
            torch.maximum(amax_out, reference.fp8_amax(x).reshape(1), out=amax_out)
        if dbias is not None:
            dbias.add_(x.float().reshape(-1, x.shape[-1]).sum(0))
    return out, scale_inv


FP8_BLOCK = reference.FP8_BLOCK


def _blocks(n: int) -> int:
    return -(-n // FP8_BLOCK)


def _tile_scale_ld(cols: int) -> int:
    """Floats per row of a 128x128-tile scale tensor (cuBLASLt reads its rows at 16-byte steps)."""
    return -(-_blocks(cols) // 4) * 4


def fp8_block_scales(lead: tuple, R: int, K: int, tile: bool, device) -> torch.Tensor:
    """A new inverse-scale tensor of an (*lead, R, K) block-scaled operand, indexed by block, whose memory is
    what the GEMM reads: 1x128 runs of each row: (*lead, R, ceil(K/128)), one block column after another (row
    fastest); 128x128 tiles: (*lead, ceil(R/128), ceil(K/128)), rows padded to a multiple of 4 floats."""
    f = dict(dtype=torch.float32, device=device)
    if tile:
        return torch.empty(*lead, _blocks(R), _tile_scale_ld(K), **f)[..., :_blocks(K)]
    return torch.empty(*lead, _blocks(K), R, **f).transpose(-1, -2)


def _block_scaling(scale: torch.Tensor, rows: int, K: int, name: str) -> int:
    """0 for a one-element scale of at most 1 dimension, 3 for one scale per row ((rows,), contiguous), 1 for
    fp8_block_scales' 1x128 layout of a (rows, K) operand, 2 for its 128x128 one (2-D, even when they hold one
    block); a ValueError naming what is expected otherwise."""
    if scale.numel() == 1 and scale.dim() <= 1:
        return 0
    if tuple(scale.shape) == (rows,) and scale.stride() == (1,):
        return 3
    cb = _blocks(K)
    if tuple(scale.shape) == (rows, cb) and scale.stride() == (1, rows):
        return 1
    if tuple(scale.shape) == (_blocks(rows), cb) and scale.stride() == (_tile_scale_ld(K), 1):
        return 2
    raise ValueError(f"{name} must be one element (shape () or (1,)), one per row ({rows},), or block scales of a "
                     f"({rows}, {K}) operand as "
                     f"fp8_quantize_blocks returns them: ({rows}, {cb}) with strides (1, {rows}) for 1x128 runs, or "
                     f"({_blocks(rows)}, {cb}) with strides ({_tile_scale_ld(K)}, 1) for 128x128 tiles; got shape "
                     f"{tuple(scale.shape)}, strides {scale.stride()}")


def _fp8_copies(x: torch.Tensor, transpose: bool, rows: bool, scales, launch, quantize_ref) -> tuple:
    """The FP8 quantizers' shared part: argument checks, the copies q (..., R, K) and qt (..., K, R) with the scale
    tensors scales(lead, R, K) makes, then launch(q, s, qt, st, batch, R, K) on a GPU or quantize_ref(t) -> (q, s)
    of x and of its transpose on the CPU."""
    check_float(x, "x")
    check_bool(transpose, "transpose")
    check_bool(rows, "rows")
    if not (rows or transpose):
        raise ValueError("rows=False needs transpose=True (there is nothing to write otherwise)")
    if x.dim() < 2 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"x must have at least 2 dimensions, none empty, got shape {tuple(x.shape)}")
    check_layout(x, "x")
    *lead, R, K = x.shape
    lead = tuple(lead)
    device = x.device
    q = torch.empty(x.shape, dtype=FP8_E4M3, device=device) if rows else None
    s = scales(lead, R, K) if rows else None
    qt = torch.empty(*lead, K, R, dtype=FP8_E4M3, device=device) if transpose else None
    st = scales(lead, K, R) if transpose else None
    if device.type == "cuda":
        check_multiple_of(K, 16, "x.shape[-1]")
        check_multiple_of(R, 4, "x.shape[-2]")
        batch = x.numel() // (R * K)
        if batch >= 65536:
            raise ValueError(f"x has {batch} matrices; at most 65535")
        launch(q, s, qt, st, batch, R, K)
    else:
        for copy, scale, t in ((q, s, x), (qt, st, x.transpose(-1, -2))):
            if copy is not None:
                q_ref, s_ref = quantize_ref(t)
                copy.copy_(q_ref)
                scale.copy_(s_ref)
    if not rows:
        return qt, st
    return (q, s, qt, st) if transpose else (q, s)


def fp8_quantize_blocks(x: torch.Tensor, *, tile: bool = False, transpose: bool = False, rows: bool = True) -> tuple:
    """Block-scaled e4m3 copies of x (..., R, K) for matmul_fp8: (q, scale_inv), and with transpose=True also
    (qt, scale_inv_t), qt = the copy of x's transpose (..., K, R) scaled along its own rows; rows=False (with
    transpose=True) skips q and returns (qt, scale_inv_t) alone.

    Each block (1x128 run of a row, or 128x128 tile when tile=True) has its own power-of-two scale, the largest
    2^e <= 448 / amax(block) (at most 2^64; 1 for an all-zero block or one holding an infinity; NaNs do not count
    in the amax and stay NaN), so x * scale is exact and q's only error is e4m3's rounding (half an ulp, 2^-4
    relative, in the normal range). scale_inv = 1 / scale per block, laid out as fp8_block_scales describes. On a
    GPU x is bf16, K a multiple of 16 and R of 4; one pass over x writes both copies."""
    check_bool(tile, "tile")

    def launch(q, s, qt, st, batch, R, K):
        extension().fp8_quantize_blocks(ptr(q), ptr(s), ptr(qt), ptr(st), x.data_ptr(), batch, R, K, tile,
                                        stream_handle(x.device))

    return _fp8_copies(x, transpose, rows, lambda lead, R, K: fp8_block_scales(lead, R, K, tile, x.device), launch,
                       lambda t: reference.fp8_quantize_blocks(t, tile))


def fp8_quantize_rows(x: torch.Tensor, *, transpose: bool = False, rows: bool = True) -> tuple:
    """Row-scaled e4m3 copies of x (..., R, K) for matmul_fp8's per-row scaling: (q, scale_inv), scale_inv (..., R)
    one per row; with transpose=True also (qt, scale_inv_t), qt = the copy of x's transpose (..., K, R) with one
    scale per row of qt (per column of x), scale_inv_t (..., K); rows=False (with transpose=True) returns
    (qt, scale_inv_t) alone.

    A row's scale is the largest power of two 2^e <= 448 / amax(row) (fp8_quantize_blocks' rule, with the whole
    row as the block). On a GPU x is bf16, K a multiple of 16 and R of 4; two passes over x (the amaxes, then both
    copies)."""
    def launch(q, s, qt, st, batch, R, K):
        amax = torch.empty(batch * (R + K), dtype=torch.float32, device=x.device)
        extension().fp8_quantize_rows(ptr(q), ptr(s), ptr(qt), ptr(st), x.data_ptr(), amax.data_ptr(), batch, R, K,
                                      stream_handle(x.device))

    return _fp8_copies(x, transpose, rows,
                       lambda lead, R, K: torch.empty(*lead, R, dtype=torch.float32, device=x.device), launch,
                       reference.fp8_quantize_rows)


def matmul_fp8(x: torch.Tensor, w: torch.Tensor, x_scale_inv: torch.Tensor, w_scale_inv: torch.Tensor,
               bias: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None, gelu: bool = False,
               pre_gelu: Optional[torch.Tensor] = None, dgelu_of: Optional[torch.Tensor] = None,
               fast_accum: bool = False, accumulate: bool = False) -> torch.Tensor:
    """out (N, M) = (x (N, K) @ w (M, K).T) * x_scale_inv * w_scale_inv [+ bias (M)] in bf16, from FP8 x and w
    (fp8_cast's outputs; at most one of them e5m2), fp32 accumulation (fast_accum: Hopper's faster, coarser
    one). gelu=True: out = gelu(.) and pre_gelu (required, (N, M) bf16) receives the value before it.
    dgelu_of=pre (N, M): out = (.) * gelu'(pre), the backward of a GELU (no bias); on an H100 cuBLASLt runs it as
    the GEMM plus a separate, slow epilogue kernel (see llmc.fp8). K and M multiples of 16.

    Scales: both one-element tensors (per-tensor scaling), both one per row (x_scale_inv (N,), w_scale_inv (M,)),
    or both block scales from fp8_quantize_blocks (x's in
    1x128 runs, w's in 1x128 runs or 128x128 tiles; no fast_accum, N a multiple of 4). accumulate=True: out +=
    the product (no bias, no GELU; out must be given)."""
    _check_fp8(x, "x")
    _check_fp8(w, "w")
    check_bool(gelu, "gelu")
    check_bool(fast_accum, "fast_accum")
    check_bool(accumulate, "accumulate")
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
    device = check_same_device(x=x, w=w, bias=bias, out=out, pre_gelu=pre_gelu, dgelu_of=dgelu_of)
    cuda = device.type == "cuda"
    N, K = x.shape
    M = w.shape[0]
    check_multiple_of(K, 16, "K (x.shape[1])")
    check_multiple_of(M, 16, "M (w.shape[0])")
    for t, name in ((x_scale_inv, "x_scale_inv"), (w_scale_inv, "w_scale_inv")):
        check_tensor(t, name)
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be torch.float32, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device}")
        if t.dim() == 2 and t.is_cuda and t.data_ptr() % 16:
            raise ValueError(f"{name} must start at a 16-byte aligned address (use fp8_quantize_blocks' output)")
    x_scaling = _block_scaling(x_scale_inv, N, K, "x_scale_inv")
    w_scaling = _block_scaling(w_scale_inv, M, K, "w_scale_inv")
    if {x_scaling, w_scaling} == {0, 3}:  # a one-row operand's per-row scale looks like a scalar: it is one
        x_scaling = 3 if N == 1 and x_scale_inv.shape == (1,) else x_scaling
        w_scaling = 3 if M == 1 and w_scale_inv.shape == (1,) else w_scaling
    if x_scaling == 2:
        raise ValueError("x_scale_inv: x takes 1x128 block scales (fp8_quantize_blocks with tile=False), not tiles")
    if (x_scaling == 0) != (w_scaling == 0) or (x_scaling == 3) != (w_scaling == 3):
        raise ValueError("x_scale_inv and w_scale_inv must both be one element, both one per row, or both be "
                         "block scales")
    if x_scaling and device.type == "cuda" and not fp8_block_supported(device):
        raise RuntimeError(f"per-row and block-scaled FP8 matmuls need a Hopper GPU (compute capability 9.x); "
                           f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}")
    if x_scaling in (1, 2):
        if fast_accum:
            raise ValueError("fast_accum=True is not available with block scales (cuBLASLt accumulates them "
                             "precisely); use fast_accum=False")
        if device.type == "cuda":
            check_multiple_of(N, 4, "N (x.shape[0]) with block scales")
    if accumulate and (out is None or bias is not None or gelu or dgelu_of is not None):
        raise ValueError("accumulate=True adds to a given out, with no bias and no GELU")
    for t, name in ((bias, "bias"), (pre_gelu, "pre_gelu"), (dgelu_of, "dgelu_of")):
        if t is not None:
            check_float(t, name)
    if bias is not None:
        check_shape(bias, "bias", (M,))
    for t, name in ((pre_gelu, "pre_gelu"), (dgelu_of, "dgelu_of")):
        if t is not None:
            check_shape(t, name, (N, M))
    dtype = torch.bfloat16 if cuda else (bias.dtype if bias is not None else torch.float32)
    out = output(out, "out", (N, M), out.dtype if out is not None and not cuda else dtype, device)
    check_writes_disjoint(dict(out=out, pre_gelu=pre_gelu), dict(x=x, w=w, bias=bias, dgelu_of=dgelu_of,
                                                                 x_scale_inv=x_scale_inv, w_scale_inv=w_scale_inv))
    if cuda:
        if not fp8_supported(device):
            raise RuntimeError(f"matmul_fp8 needs a GPU of compute capability 8.9 or more (an H100); "
                               f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}")
        epilogue = 1 if gelu else 2 if dgelu_of is not None else 0
        extension().matmul_fp8(out.data_ptr(), ptr(pre_gelu if gelu else dgelu_of), x.data_ptr(), w.data_ptr(),
                               x.dtype == FP8_E5M2, w.dtype == FP8_E5M2, x_scale_inv.data_ptr(),
                               w_scale_inv.data_ptr(), ptr(bias), N, K, M, epilogue, fast_accum, x_scaling,
                               w_scaling, accumulate, stream_handle(device))
    else:
        if x_scaling == 3:
            pre = (x.float() @ w.float().t()) * (x_scale_inv[:, None] * w_scale_inv[None, :])
            if bias is not None:
                pre = pre + bias.float()
        elif x_scaling:
            xd = reference.fp8_dequantize_blocks(x, x_scale_inv, False)
            wd = reference.fp8_dequantize_blocks(w, w_scale_inv, w_scaling == 2)
            pre = xd @ wd.t()
            if bias is not None:
                pre = pre + bias.float()
        else:
            pre = reference.matmul_fp8(x, w, x_scale_inv, w_scale_inv, bias)
        if accumulate:
            pre = pre + out.float()
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
        check_fp32(t, name)
    device = check_same_device(amax_ref=amax_ref, history=history, amax=amax)
    if history.dim() != 2 or history.shape[0] < 1 or history.shape[1] < 1:
        raise ValueError(f"history must be (S, H) with S, H >= 1, got {tuple(history.shape)}")
    S, H = history.shape
    check_shape(amax_ref, "amax_ref", (S,))
    check_shape(amax, "amax", (S,))
    pos = check_int(pos, "pos", 0)
    if pos >= H:
        raise ValueError(f"pos = {pos} must be < the history length {H}")
    if device.type == "cuda":
        extension().fp8_update_scales(amax_ref.data_ptr(), history.data_ptr(), amax.data_ptr(), S, H, pos,
                                      stream_handle(device))
    else:
        recorded = (amax > 0) & torch.isfinite(amax)
        history[:, pos] = torch.where(recorded, amax, history[:, pos])
        amax.zero_()
        torch.amax(history, dim=1, out=amax_ref)
