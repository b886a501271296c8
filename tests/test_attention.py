"""attention_forward / attention_backward against torch's scaled_dot_product_attention(is_causal=True) in fp32,
on the CPU reference path and, on a GPU, on both CUDA backends: the plain kernels ("cuda") and cuDNN ("cudnn").

Determinism: the CPU path and the plain CUDA kernels are bit-identical from run to run. cuDNN's forward is too;
its backward sums dQ with atomics by default (not bit-identical between runs), and runs its ordered algorithm
when torch.use_deterministic_algorithms(True) is on, which the determinism test uses.
"""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import llmc.ops as ops
from conftest import TOLERANCES, assert_close, cuda_ready, devices_and_dtypes, poisoned, randn, requires_cuda

requires_cudnn = pytest.mark.skipif(not (cuda_ready() and ops._ext().has_cudnn()),
                                    reason="no GPU, or llmc was built without cuDNN attention")
requires_cuda_build = pytest.mark.skipif(not ops.build_info()["has_cuda"], reason="llmc was built without CUDA")

# (B, T, NH, HS): odd T (one tile, a partial tile, many tiles), NH 1..25, the head sizes cuDNN takes.
SHAPES = [(1, 1, 1, 64), (2, 7, 3, 64), (1, 129, 25, 64), (3, 200, 12, 64), (1, 1024, 2, 64),
          (1, 7, 2, 128), (2, 129, 5, 128)]
# Head sizes only the plain CUDA kernels take (cuDNN cases skip): below, between and off multiples of 32.
OTHER_HEAD_SIZES = [(1, 7, 1, 20), (2, 33, 3, 16), (2, 65, 3, 32), (1, 129, 2, 80), (1, 40, 2, 96)]


def devices_dtypes_backends():
    """(device, dtype, backend): the CPU reference, and each CUDA backend."""
    cases = []
    for p in devices_and_dtypes():
        device, dtype = p.values
        if device == "cpu":
            cases.append(pytest.param(device, dtype, "auto", id=p.id, marks=p.marks))
        else:
            cases.append(pytest.param(device, dtype, "cuda", id=f"{p.id}-cuda", marks=p.marks))
            cases.append(pytest.param(device, dtype, "cudnn", id=f"{p.id}-cudnn", marks=[*p.marks, requires_cudnn]))
    return cases


def skip_unsupported(backend, T, HS):
    if backend == "cudnn" and HS not in ops.CUDNN_ATTENTION_HEAD_SIZES:
        pytest.skip(f"cuDNN attention takes head sizes {ops.CUDNN_ATTENTION_HEAD_SIZES}")
    if backend == "cudnn" and T < 2:
        pytest.skip("cuDNN attention needs T >= 2 (test_attention_backend_reports_its_choice checks the error)")


def torch_attention(qkv, dout=None):
    """fp32 oracle on the CPU: out (B, T, NH, HS) from SDPA, the log-sum-exp of the masked scaled scores
    (B, NH, T), and with dout the gradient w.r.t. qkv, by autograd through SDPA."""
    x = qkv.detach().float().cpu().requires_grad_(dout is not None)
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)
    T, HS = q.shape[-2], q.shape[-1]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with torch.no_grad():
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
        lse = torch.logsumexp(scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), -1)
    grad = None
    if dout is not None:
        out.backward(dout.float().cpu().transpose(1, 2))
        grad = x.grad
    return out.detach().transpose(1, 2), lse, grad


def run_forward(qkv, backend):
    B, T, _, NH, HS = qkv.shape
    out = poisoned((B, T, NH, HS), qkv.dtype, qkv.device)
    stats = poisoned((B, NH, T), torch.float32, qkv.device)
    ops.attention_forward(qkv, out=out, stats=stats, backend=backend)
    return out, stats


def run_backward(dout, qkv, out, stats, backend):
    dqkv = poisoned(qkv.shape, qkv.dtype, qkv.device)
    ops.attention_backward(dout, qkv, out, stats, dqkv=dqkv, backend=backend)
    return dqkv


def check_gradients(dqkv, expected, dtype, label):
    for i, name in enumerate(("dq", "dk", "dv")):
        if dqkv.shape[1] > 1 or name == "dv":
            assert_close(dqkv[:, :, i], expected[:, :, i], dtype, f"{label} {name}")
        else:
            # T == 1: a single key, so dS = P (dP - delta) = 0 exactly and only rounding is left (in torch's
            # gradient too), at the scale of dV
            bound = TOLERANCES[dtype]["atol"] * expected[:, :, 2].abs().max().item()
            err = dqkv[:, :, i].float().abs().max().item()
            assert err <= bound, f"{label} {name}: expected zeros, max |value| {err:.3g} > {bound:.3g}"


@contextlib.contextmanager
def deterministic_algorithms():
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


@pytest.mark.parametrize("device,dtype,backend", devices_dtypes_backends())
@pytest.mark.parametrize("shape", SHAPES + OTHER_HEAD_SIZES)
def test_attention_forward_matches_torch(device, dtype, backend, shape):
    B, T, NH, HS = shape
    skip_unsupported(backend, T, HS)
    qkv = randn((B, T, 3, NH, HS), dtype, device)
    out, stats = run_forward(qkv, backend)
    expected_out, expected_lse, _ = torch_attention(qkv)
    assert_close(out, expected_out, dtype, f"attention_forward[{backend}] out")
    assert_close(stats, expected_lse, dtype, f"attention_forward[{backend}] stats")


@pytest.mark.parametrize("device,dtype,backend", devices_dtypes_backends())
@pytest.mark.parametrize("shape", SHAPES + OTHER_HEAD_SIZES)
def test_attention_backward_matches_torch(device, dtype, backend, shape):
    B, T, NH, HS = shape
    skip_unsupported(backend, T, HS)
    qkv = randn((B, T, 3, NH, HS), dtype, device)
    dout = randn((B, T, NH, HS), dtype, device)
    out, stats = run_forward(qkv, backend)
    dqkv = run_backward(dout, qkv, out, stats, backend)
    _, _, expected = torch_attention(qkv, dout)
    check_gradients(dqkv, expected, dtype, f"attention_backward[{backend}]")


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", pytest.param("cudnn", marks=requires_cudnn)])
def test_attention_long_sequence(backend):
    """T = 4096, the longest context the model supports, through forward and backward."""
    qkv = randn((1, 4096, 3, 2, 64), torch.bfloat16, "cuda")
    dout = randn((1, 4096, 2, 64), torch.bfloat16, "cuda")
    out, stats = run_forward(qkv, backend)
    dqkv = run_backward(dout, qkv, out, stats, backend)
    expected_out, expected_lse, expected_grad = torch_attention(qkv, dout)
    assert_close(out, expected_out, torch.bfloat16, f"attention_forward[{backend}] out")
    assert_close(stats, expected_lse, torch.bfloat16, f"attention_forward[{backend}] stats")
    check_gradients(dqkv, expected_grad, torch.bfloat16, f"attention_backward[{backend}]")


@requires_cudnn
@pytest.mark.cuda
@pytest.mark.parametrize("HS", ops.CUDNN_ATTENTION_HEAD_SIZES)
def test_attention_backends_share_stats(HS):
    """Both backends save the same log-sum-exp, so either backward can follow either forward."""
    qkv = randn((2, 129, 3, 3, HS), torch.bfloat16, "cuda")
    dout = randn((2, 129, 3, HS), torch.bfloat16, "cuda")
    _, _, expected = torch_attention(qkv, dout)
    cudnn_out, cudnn_stats = run_forward(qkv, "cudnn")
    cuda_out, cuda_stats = run_forward(qkv, "cuda")
    assert_close(cuda_stats, cudnn_stats, torch.bfloat16, "stats cuda vs cudnn")
    check_gradients(run_backward(dout, qkv, cudnn_out, cudnn_stats, "cuda"), expected, torch.bfloat16,
                    "cuda backward after cudnn forward")
    check_gradients(run_backward(dout, qkv, cuda_out, cuda_stats, "cudnn"), expected, torch.bfloat16,
                    "cudnn backward after cuda forward")


@pytest.mark.parametrize("device,dtype,backend", devices_dtypes_backends())
def test_attention_reruns_are_bit_identical(device, dtype, backend):
    qkv = randn((4, 300, 3, 12, 64), dtype, device)
    dout = randn((4, 300, 12, 64), dtype, device)
    out, stats = run_forward(qkv, backend)
    again_out, again_stats = run_forward(qkv, backend)
    assert torch.equal(out, again_out) and torch.equal(stats, again_stats)
    # cuDNN's default backward is not bit-identical between runs (atomic dQ sums); its deterministic one is.
    with deterministic_algorithms() if backend == "cudnn" else contextlib.nullcontext():
        dqkv = run_backward(dout, qkv, out, stats, backend)
        again = run_backward(dout, qkv, out, stats, backend)
    assert torch.equal(dqkv, again)


@requires_cuda_build
def test_attention_backend_reports_its_choice(monkeypatch):
    monkeypatch.delenv("LLMC_ATTENTION", raising=False)
    auto = "cudnn" if ops._ext().has_cudnn() else "cuda"
    assert ops.attention_backend(4, 1, 3, 64) == "cuda"
    if ops._ext().has_cudnn() and torch.cuda.is_available():
        qkv = torch.randn(4, 1, 3, 3, 64, device="cuda", dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="T >= 2"):
            ops.attention_forward(qkv, backend="cudnn")
    monkeypatch.setenv("LLMC_ATTENTION", "cuda")
    assert ops.attention_backend(64, 1024, 12, 64) == "cuda"
    monkeypatch.setenv("LLMC_ATTENTION", "flash")
    with pytest.raises(ValueError, match="LLMC_ATTENTION"):
        ops.attention_backend(64, 1024, 12, 64)
    monkeypatch.delenv("LLMC_ATTENTION")
    assert ops.attention_backend(64, 1024, 12, 64) == auto
    assert ops.attention_backend(8, 1024, 25, 128) == auto
    assert ops.attention_backend(1, 7, 3, 32) == "cuda"
    assert ops.attention_backend(1, 7, 3, 80) == "cuda"
    with pytest.raises(ValueError, match="head size 256"):
        ops.attention_backend(1, 7, 3, 256)


def test_attention_rejects_bad_input():
    qkv = torch.randn(2, 5, 3, 2, 8)
    out, stats = ops.attention_forward(qkv)
    dout = torch.randn(2, 5, 2, 8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.attention_forward(qkv.numpy())
    with pytest.raises(TypeError, match="float"):
        ops.attention_forward(qkv.long())
    with pytest.raises(ValueError, match=r"\(B, T, 3, NH, HS\)"):
        ops.attention_forward(qkv.view(2, 5, 48))
    with pytest.raises(ValueError, match=r"\(B, T, 3, NH, HS\)"):
        ops.attention_forward(torch.randn(2, 5, 2, 2, 8))
    with pytest.raises(ValueError, match="contiguous"):
        ops.attention_forward(qkv.transpose(1, 3))
    with pytest.raises(ValueError, match="shape"):
        ops.attention_forward(qkv, out=torch.empty(2, 2, 5, 8))
    with pytest.raises(TypeError, match="float32"):
        ops.attention_forward(qkv, stats=torch.empty(2, 2, 5, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.attention_forward(qkv, backend="flash")
    with pytest.raises(ValueError, match="CUDA tensors only"):
        ops.attention_forward(qkv, backend="cudnn")
    with pytest.raises(ValueError, match="shape"):
        ops.attention_backward(dout[:, :4].contiguous(), qkv, out, stats)
    with pytest.raises(ValueError, match="shape"):
        ops.attention_backward(dout, qkv, out, stats[:, :, :4].contiguous())
    with pytest.raises(TypeError, match="float32"):
        ops.attention_backward(dout, qkv, out, stats.half())
    with pytest.raises(TypeError, match="same dtype"):
        ops.attention_backward(dout.double().float().bfloat16(), qkv, out, stats)
    with pytest.raises(ValueError, match="must not be qkv"):
        ops.attention_backward(dout, qkv, out, stats, dqkv=qkv)
    with pytest.raises(ValueError, match="positive"):
        ops.attention_backend(0, 8, 2, 64)
    with pytest.raises(TypeError, match="int"):
        ops.attention_backend(1, 8.0, 2, 64)


@requires_cuda
@pytest.mark.cuda
def test_attention_cuda_rejects_bad_input():
    qkv = torch.randn(2, 5, 3, 2, 32, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.attention_forward(qkv.float())
    # head size 32: cuDNN's attention lacks it; a build without cuDNN says that backend is missing instead
    with pytest.raises(ValueError, match="head sizes" if ops._ext().has_cudnn() else "not available"):
        ops.attention_forward(qkv, backend="cudnn")
    with pytest.raises(ValueError, match="head size 256"):
        ops.attention_forward(torch.randn(1, 4, 3, 1, 256, device="cuda", dtype=torch.bfloat16), backend="cuda")
    with pytest.raises(ValueError, match="one device"):
        ops.attention_forward(qkv, out=torch.empty(2, 5, 2, 32, dtype=torch.bfloat16))
    out, stats = ops.attention_forward(qkv)
    with pytest.raises(ValueError, match="one device"):
        ops.attention_backward(torch.randn(2, 5, 2, 32, dtype=torch.bfloat16), qkv, out, stats)
