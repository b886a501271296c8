"""What every kernel family of `llmc.ops` shares: the backend (the `_llmc` extension, loaded on first use, or
the CPU reference) and the argument checks.

A check raises a TypeError/ValueError that names the argument and says what to fix, before any kernel runs.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch

_EXT = None
CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def build_info() -> dict:
    """What this installation was built with (CUDA, cuDNN, architectures)."""
    try:
        from .. import _build_config as cfg
    except ImportError:
        return {"has_cuda": False, "has_cudnn": False, "note": "llmc is not installed (no _build_config)"}
    return {
        "has_cuda": cfg.HAS_CUDA,
        "has_cudnn": cfg.HAS_CUDNN,
        "cuda_architectures": cfg.CUDA_ARCHITECTURES,
        "cuda_compiler_version": cfg.CUDA_COMPILER_VERSION,
    }


def extension():
    """The compiled extension, loaded on first use, with an error that says how to get it."""
    global _EXT
    if _EXT is None:
        if not build_info()["has_cuda"]:
            raise RuntimeError(
                "llmc was built without CUDA (no nvcc was found when it was installed), so CUDA tensors "
                "cannot be used. Install the CUDA toolkit's nvcc, then reinstall with `pip install .`; "
                "or keep your tensors on the CPU to use the reference ops."
            )
        from .. import _llmc

        _EXT = _llmc
    return _EXT


def cuda_available() -> bool:
    """True when the CUDA kernels are built and a GPU is visible."""
    return bool(build_info()["has_cuda"]) and torch.cuda.is_available()


# torch's raw current-stream lookup (what inductor's generated code calls) costs a few microseconds less per op
# than building a Stream object; fall back to the public API where a torch build lacks it.
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def stream_handle(device: torch.device) -> int:
    """torch's current stream on `device` as the raw cudaStream_t the launchers take."""
    if _RAW_STREAM is not None:
        return _RAW_STREAM(device.index)
    return torch.cuda.current_stream(device).cuda_stream


_SIDE_STREAMS = {}  # device index -> a stream for work that may overlap the caller's (see encoder_backward)


def side_stream(device: torch.device) -> "torch.cuda.Stream":
    side = _SIDE_STREAMS.get(device.index)
    if side is None:
        side = _SIDE_STREAMS.setdefault(device.index, torch.cuda.Stream(device))
    return side


def ptr(t: Optional[torch.Tensor]) -> int:
    """A tensor's device address, 0 (a null pointer) for None."""
    return 0 if t is None else t.data_ptr()


# ---------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------
def check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(t, name: str) -> torch.Tensor:
    """A float tensor: bf16 on CUDA (what the kernels store), any float dtype on the CPU."""
    check_tensor(t, name)
    if t.is_cuda:
        if t.dtype != torch.bfloat16:
            raise TypeError(f"{name} is a CUDA tensor of dtype {t.dtype}; the llmc kernels take torch.bfloat16 "
                            f"(convert with .bfloat16())")
    elif t.dtype not in CPU_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; expected a floating point tensor (float32 on the CPU)")
    check_layout(t, name)
    return t


def check_fp32(t, name: str) -> torch.Tensor:
    check_tensor(t, name)
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be torch.float32, got {t.dtype}")
    check_layout(t, name)
    return t


def check_index(t, name: str) -> torch.Tensor:
    """Token ids / targets: int32 on CUDA (the kernels read int32), int32 or int64 on the CPU."""
    check_tensor(t, name)
    allowed = (torch.int32,) if t.is_cuda else (torch.int32, torch.int64)
    if t.dtype not in allowed:
        raise TypeError(f"{name} must be an integer tensor of dtype torch.int32, got {t.dtype} "
                        f"(convert with .int())")
    check_layout(t, name)
    return t


def check_layout(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {tuple(t.stride())}); pass {name}.contiguous()")
    if t.is_cuda:
        if t.data_ptr() % 16 != 0:
            raise ValueError(f"{name} starts at an address that is not 16-byte aligned; the kernels use 128-bit "
                             f"loads. Use a fresh tensor or a view at an offset that is a multiple of 16 bytes")
    elif t.device.type != "cpu":
        raise ValueError(f"{name} is on device {t.device}; llmc runs on CUDA or the CPU")


def check_same_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    """The one device of the given tensors (None: not given), which on CUDA must be the current device."""
    present = {k: check_tensor(v, k) for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    device = devices.pop()
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        raise ValueError(f"tensors are on {device} but the current CUDA device is cuda:{torch.cuda.current_device()}; "
                         f"call torch.cuda.set_device({device.index}) first")
    return device


def check_same_dtype(**tensors: Optional[torch.Tensor]) -> torch.dtype:
    present = {k: v for k, v in tensors.items() if v is not None}
    dtypes = {v.dtype for v in present.values()}
    if len(dtypes) > 1:
        listing = ", ".join(f"{k} {v.dtype}" for k, v in present.items())
        raise TypeError(f"all float tensors must have one dtype, got {listing}")
    return dtypes.pop()


def check_shape(t: torch.Tensor, name: str, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_multiple_of(value: int, multiple: int, what: str) -> None:
    if value % multiple != 0:
        raise ValueError(f"{what} is {value}; it must be a multiple of {multiple} for the 128-bit kernels "
                         f"(pad it, e.g. to {(value + multiple - 1) // multiple * multiple})")


def check_bool(x, name: str) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return x


def check_real(x, name: str, low: float = -float("inf"), high: float = float("inf"),
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


def output(out: Optional[torch.Tensor], name: str, shape: Sequence[int], dtype: torch.dtype,
           device: torch.device) -> torch.Tensor:
    """Validate a caller-provided output buffer, or allocate one."""
    if out is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    check_tensor(out, name)
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if out.device != device:
        raise ValueError(f"{name} is on {out.device}, expected {device}")
    check_shape(out, name, shape)
    check_layout(out, name)
    return out


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors share any byte of memory."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def check_writes_disjoint(writes: dict, reads: dict) -> None:
    """No written tensor may share memory with another tensor of the call: a GEMM would read what it overwrites."""
    named = [(k, v) for k, v in {**writes, **reads}.items() if v is not None]
    for wname, w in writes.items():
        for name, t in named:
            if w is not None and name != wname and overlaps(w, t):
                raise ValueError(f"{wname} shares memory with {name}; the kernels would overwrite data they still "
                                 f"read. Pass a separate buffer as {wname}")
