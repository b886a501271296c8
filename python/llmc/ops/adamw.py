"""AdamW over a flat range of parameters in one launch: fp32 moments, optional fp32 master weights written back
to bf16 with stochastic rounding, weight decay per tensor, and gradient clipping by a norm read on the device."""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence

import torch

from .. import reference
from .._validate import check_int
from .common import check_float, check_fp32, check_real, check_same_device, extension, stream_handle


def _check_partition(tensor_sizes, tensor_decay, n: int) -> tuple[list, list]:
    """tensor_sizes: ints >= 0 adding up to n; tensor_decay: one bool per tensor."""
    if isinstance(tensor_sizes, (str, bytes)) or not isinstance(tensor_sizes, Sequence):
        raise TypeError(f"tensor_sizes must be a list of ints, got {type(tensor_sizes).__name__}")
    if isinstance(tensor_decay, (str, bytes)) or not isinstance(tensor_decay, Sequence):
        raise TypeError(f"tensor_decay must be a list of bools, got {type(tensor_decay).__name__}")
    if len(tensor_sizes) != len(tensor_decay):
        raise ValueError(f"tensor_sizes has {len(tensor_sizes)} entries but tensor_decay has {len(tensor_decay)}; "
                         f"give one decay flag per tensor")
    sizes = [check_int(s, f"tensor_sizes[{i}]", 0) for i, s in enumerate(tensor_sizes)]
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
    check_float(params, "params")
    check_float(grads, "grads")
    check_fp32(m, "m")
    check_fp32(v, "v")
    if master is not None:
        check_fp32(master, "master")
    device = check_same_device(params=params, grads=grads, m=m, v=v, master=master)
    if grads.dtype != params.dtype:
        raise TypeError(f"grads ({grads.dtype}) and params ({params.dtype}) must have the same dtype")
    n = params.numel()
    for name, t in (("grads", grads), ("m", m), ("v", v), ("master", master)):
        if t is not None and t.numel() != n:
            raise ValueError(f"{name} has {t.numel()} elements but params has {n}; every AdamW buffer covers the "
                             f"same flat range")
    hyper = dict(lr=check_real(lr, "lr", 0.0), beta1=check_real(beta1, "beta1", 0.0, 1.0, high_inclusive=False),
                 beta2=check_real(beta2, "beta2", 0.0, 1.0, high_inclusive=False),
                 eps=check_real(eps, "eps", 0.0), weight_decay=check_real(weight_decay, "weight_decay", 0.0),
                 step=check_int(step, "step", 1), grad_scale=check_real(grad_scale, "grad_scale"))
    seed = check_int(seed, "seed", 0, 2**64)
    sizes, decay = _check_partition(tensor_sizes, tensor_decay, n)
    if (grad_norm_squared is None) != (max_grad_norm is None):
        raise ValueError("clipping needs both grad_norm_squared and max_grad_norm (or neither)")
    if grad_norm_squared is not None:
        check_fp32(grad_norm_squared, "grad_norm_squared")
        check_same_device(params=params, grad_norm_squared=grad_norm_squared)
        if grad_norm_squared.numel() != 1:
            raise ValueError(f"grad_norm_squared must hold one value (the squared global norm), got "
                             f"{grad_norm_squared.numel()}")
        max_grad_norm = check_real(max_grad_norm, "max_grad_norm", 0.0)
        if max_grad_norm == 0:
            raise ValueError("max_grad_norm must be > 0")
    if device.type == "cuda":
        ext = extension()
        limit = ext.ADAMW_MAX_SEGMENTS
        runs = _decay_segments(sizes, decay, hyper["weight_decay"])
        if runs > limit:
            raise ValueError(f"the tensors form {runs} runs of alternating weight decay; one launch takes at most "
                             f"{limit}. Order the tensors so those with decay are adjacent, or split the update")
        ext.adamw_update(params.data_ptr(), grads.data_ptr(), m.data_ptr(), v.data_ptr(),
                         0 if master is None else master.data_ptr(), n, hyper["lr"], hyper["beta1"],
                         hyper["beta2"], hyper["eps"], hyper["weight_decay"], hyper["step"], seed,
                         hyper["grad_scale"], 0 if grad_norm_squared is None else grad_norm_squared.data_ptr(),
                         1.0 if max_grad_norm is None else max_grad_norm, sizes, decay, stream_handle(device))
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
