"""Typed entry points to the llmc kernels.

Each op validates its tensors (type, device, dtype, contiguity, shape, alignment) and raises a
TypeError/ValueError that says what to fix before any kernel runs. CUDA tensors (bf16) go to the
`_llmc` extension on torch's current stream; CPU tensors go to `llmc.reference` (fp32 math, results
written back in the tensors' dtype). Outputs are allocated here unless passed in with `out=`-style
arguments; parameter gradients are accumulated (+=), activation gradients overwritten.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import reference

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


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


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

# ---------------------------------------------------------------------------------------------------------
# layernorm
# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# fused_classifier
# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# adamw
# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# global_norm
# ---------------------------------------------------------------------------------------------------------
