"""Shared test helpers: the tolerance table, the CUDA skip marker, poisoned outputs and error reports.

Tolerances (one table, used by every kernel test). A tensor passes when, elementwise,
    |actual - expected| <= atol * max|expected| + rtol * |expected|
that is, atol is relative to the tensor's own scale, so one table serves activations and gradients alike.
  * bfloat16: rtol = atol = 1e-2. The kernels store bf16 (8 significant bits, half-ulp rounding error up
    to 2^-9 ~ 0.2% relative, 0.4% near powers of two); the reference sees the same bf16 inputs upcast to
    fp32, so what is left is the final rounding plus fp32 sums in another order: 1e-2 bounds that with
    margin while still failing on any real bug (a wrong element is off by O(1)).
  * float32 (the CPU reference path against torch's own ops): rtol = atol = 1e-5, a few fp32 ulps after
    sums of a few thousand terms.
Reductions over many rows (parameter gradients summed over B*T) are checked with the same table: the
kernels accumulate in fp32, so their error stays at the final bf16 rounding.

FP8 (test_fp8.py). The FP8 matmul is compared with fp32 math on the same FP8 inputs (dequantized), so only its
accumulation and the bf16 output remain: the bfloat16 row above. A cast is checked against torch's own float8
conversion bit for bit, and against the round trip bound FP8_ROUND_TRIP (half an ulp: 2^-4 relative for e4m3's
3 mantissa bits, 2^-3 for e5m2's 2, for values in the normal range). A GPT with fp8=True is not the bf16 model:
FP8_MODEL bounds how far its loss and gradients may move from the bf16 model's (same weights, same batch);
measured on an H100 before these bounds were set.
"""
from __future__ import annotations

import pytest
import torch

TOLERANCES = {
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
}


FP8_ROUND_TRIP = {torch.float8_e4m3fn: 2.0 ** -4, torch.float8_e5m2: 2.0 ** -3}
FP8_MODEL = dict(loss_rtol=2e-2, grad_cosine=0.98)


def cuda_ready() -> bool:
    import llmc.ops

    return llmc.ops.cuda_available()


def _cuda_skip_reason() -> str:
    import llmc.ops

    if not llmc.ops.build_info()["has_cuda"]:
        return "llmc was built without CUDA (no nvcc at install time)"
    return "no CUDA GPU visible to torch"


requires_cuda = pytest.mark.skipif(not cuda_ready(), reason=_cuda_skip_reason() if not cuda_ready() else "")


# Devices for tests that are not about one op's dtype: the CPU always, CUDA when present.
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


def devices_and_dtypes():
    """(device, dtype) pairs every op test runs on: the CPU reference path always, CUDA bf16 when present."""
    return [
        pytest.param("cpu", torch.float32, id="cpu-fp32"),
        pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[requires_cuda, pytest.mark.cuda]),
    ]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str,
                 scale: float = 1.0) -> None:
    """Compare against an fp32 reference with the table above; `scale` widens both bounds when a test
    has a stated reason (e.g. a long bf16 accumulation chain)."""
    tol = TOLERANCES[dtype]
    a = actual.detach().float().cpu()
    e = expected.detach().float().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{name}: {int((~torch.isfinite(a)).sum())} non-finite elements (unwritten?)"
    err = (a - e).abs()
    ref_scale = e.abs().max().item() if e.numel() else 0.0
    bound = scale * (tol["atol"] * ref_scale + tol["rtol"] * e.abs())
    bad = err > bound
    if bad.any():
        idx = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements out of tolerance ({dtype}, rtol={tol['rtol']}, "
            f"atol={tol['atol']} x max|ref|={ref_scale:.3g}, scale={scale}); max abs err {err.max().item():.3g}, "
            f"mean abs err {err.mean().item():.3g}; first bad flat index {idx}: got {a.flatten()[idx].item():.6g}, "
            f"expected {e.flatten()[idx].item():.6g}")


def poisoned(shape, dtype, device) -> torch.Tensor:
    """An output buffer full of NaN, so any element a kernel forgets to write fails the comparison."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)


def randn(shape, dtype, device, std: float = 1.0, seed: int | None = None) -> torch.Tensor:
    """Fresh random data (never zeros), generated in fp32 then cast so CPU and CUDA see the same values."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.randn(tuple(shape), generator=g) * std).to(dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Each test draws different random inputs every run, reproducible from the printed seed."""
    seed = torch.randint(0, 2**31 - 1, (1,)).item() if request.config.getoption("--llmc-seed") is None \
        else request.config.getoption("--llmc-seed")
    torch.manual_seed(seed)
    yield
    if hasattr(request.node, "rep_call") and request.node.rep_call.failed:
        print(f"\n[llmc] test inputs seeded with torch.manual_seed({seed}); rerun with --llmc-seed={seed}")


def pytest_addoption(parser):
    parser.addoption("--llmc-seed", type=int, default=None, help="seed for the tests' random inputs")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
