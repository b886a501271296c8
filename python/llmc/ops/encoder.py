"""Token and position embeddings: out = wte[idx] + wpe[:T], and their gradients (deterministic, no atomics)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .common import (check_bool, check_float, check_index, check_multiple_of, check_same_device, check_same_dtype,
                     check_shape, check_writes_disjoint, extension, output, side_stream, stream_handle)


def _encoder_dims(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, cuda: bool, wte_name: str,
                  wpe_name: str) -> tuple:
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
    if cuda:
        check_multiple_of(C, 8, f"C ({wte_name}.shape[1])")
    return B, T, V, C


def _check_token_range(idx: torch.Tensor, V: int) -> None:
    """Every id in [0, V); on CUDA this waits for the device (one small copy back of the ids' min and max)."""
    lowest, highest = torch.stack(torch.aminmax(idx)).tolist()
    if lowest < 0 or highest >= V:
        raise ValueError(f"idx holds token ids from {lowest} to {highest}, but the embedding table has V = {V} "
                         f"rows; every id must lie in [0, {V})")


def encoder_forward(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor,
                    out: Optional[torch.Tensor] = None, *, validate: bool = True) -> torch.Tensor:
    """out (B, T, C) = wte[idx] + wpe[:T] for token ids idx (B, T), wte (V, C), wpe (max_seq_len, C).

    The ids are checked against V (one synchronizing read of their min and max on CUDA). validate=False
    skips that check on CUDA, and so the sync, for callers that know their ids lie in [0, V): an id outside
    it makes the kernel read out of bounds. Tensor types, shapes and layouts are checked either way.
    """
    check_index(idx, "idx")
    check_float(wte, "wte")
    check_float(wpe, "wpe")
    check_bool(validate, "validate")
    device = check_same_device(idx=idx, wte=wte, wpe=wpe, out=out)
    cuda = device.type == "cuda"
    dtype = check_same_dtype(wte=wte, wpe=wpe)
    B, T, V, C = _encoder_dims(idx, wte, wpe, cuda, "wte", "wpe")
    out = output(out, "out", (B, T, C), dtype, device)
    if idx.numel() == 0:
        return out
    if validate or not cuda:
        _check_token_range(idx, V)
    if cuda:
        extension().encoder_forward(out.data_ptr(), idx.data_ptr(), wte.data_ptr(), wpe.data_ptr(), B, T, C,
                                    stream_handle(device))
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
    check_float(dout, "dout")
    check_index(idx, "idx")
    check_float(dwte, "dwte")
    check_float(dwpe, "dwpe")
    check_bool(validate, "validate")
    device = check_same_device(dout=dout, idx=idx, dwte=dwte, dwpe=dwpe)
    cuda = device.type == "cuda"
    check_same_dtype(dout=dout, dwte=dwte, dwpe=dwpe)
    B, T, V, C = _encoder_dims(idx, dwte, dwpe, cuda, "dwte", "dwpe")
    check_shape(dout, "dout", (B, T, C))
    check_writes_disjoint(dict(dwte=dwte, dwpe=dwpe), dict(dout=dout))
    if idx.numel() == 0:
        return
    if validate or not cuda:
        _check_token_range(idx, V)
    if cuda:
        ext = extension()
        scratch = torch.empty(ext.encoder_backward_scratch_bytes(B * T, C, V), dtype=torch.uint8, device=device)
        # dwpe's kernel runs on a side stream beside the id sort and the dwte kernels (fork and join, which CUDA
        # graph capture keeps)
        stream, side = torch.cuda.current_stream(device), side_stream(device)
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
