"""matmul_forward / matmul_backward against F.linear (+ tanh GELU) and torch autograd in fp32."""
import pytest
import torch
import torch.nn.functional as F

import llmc.ops as ops
from conftest import assert_close, devices_and_dtypes, poisoned, randn, requires_cuda

ROWS = [1, 7, 1023]
# (K, M): GPT-2 124M's QKV and MLP down projections, 1.5B's attention projection, and a small odd one
FEATURES = [(768, 2304), (3072, 768), (1600, 1600), (40, 24)]


def _cpu32(*tensors):
    """fp32 CPU copies (never views of the originals) as the oracle's inputs."""
    return [None if t is None else t.detach().to("cpu", torch.float32, copy=True) for t in tensors]


def _layer(N, K, M, with_bias, dtype, device):
    """inp (N, K), weight (M, K) scaled so outputs are O(1) (the GELU's curved range), bias (M) or None."""
    x = randn((N, K), dtype, device)
    w = randn((M, K), dtype, device, std=K ** -0.5)
    b = randn((M,), dtype, device, std=0.5) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("K,M", FEATURES)
@pytest.mark.parametrize("N", ROWS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("epilogue", ["none", "gelu", "gelu+pre"])
def test_matmul_forward_matches_torch(device, dtype, N, K, M, with_bias, epilogue):
    x, w, b = _layer(N, K, M, with_bias, dtype, device)
    out = poisoned((N, M), dtype, device)
    pre = poisoned((N, M), dtype, device) if epilogue == "gelu+pre" else None
    ops.matmul_forward(x, w, b, out=out, gelu=epilogue != "none", pre_gelu=pre)
    linear = F.linear(*_cpu32(x, w, b))
    if pre is not None:
        assert_close(pre, linear, dtype, "pre_gelu")
    assert_close(out, linear if epilogue == "none" else F.gelu(linear, approximate="tanh"), dtype, "out")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("K,M", FEATURES)
@pytest.mark.parametrize("N", ROWS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_gelu", [False, True], ids=["plain", "dgelu"])
def test_matmul_backward_matches_autograd(device, dtype, N, K, M, with_bias, with_gelu):
    """Two backward calls with fresh data: dweight and dbias hold their initial values plus both gradients,
    dinp holds the latest gradient only."""
    w = randn((M, K), dtype, device, std=K ** -0.5)
    dweight = randn((M, K), dtype, device, std=0.1)
    dbias = randn((M,), dtype, device, std=0.1) if with_bias else None
    expected_dweight, expected_dbias = _cpu32(dweight, dbias)
    for step in range(2):
        pre = randn((N, K), dtype, device, std=2.0) if with_gelu else None
        x = F.gelu(pre.float(), approximate="tanh").to(dtype) if with_gelu else randn((N, K), dtype, device)
        dout = randn((N, M), dtype, device)
        dinp = poisoned((N, K), dtype, device)
        returned = ops.matmul_backward(dout, x, w, dweight, dbias, dinp=dinp, pre_gelu=pre)
        assert returned is dinp

        src, wr = (t.requires_grad_(True) for t in _cpu32(pre if with_gelu else x, w))
        br = torch.zeros(M, requires_grad=True) if with_bias else None
        F.linear(F.gelu(src, approximate="tanh") if with_gelu else src, wr, br).backward(dout.float().cpu())
        assert_close(dinp, src.grad, dtype, f"dinp (call {step + 1})")
        expected_dweight += wr.grad
        if with_bias:
            expected_dbias += br.grad
    assert_close(dweight, expected_dweight, dtype, "dweight after two calls")
    if with_bias:
        assert_close(dbias, expected_dbias, dtype, "dbias after two calls")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("N,K,M", [(1, 40, 24), (7, 768, 3072), (7, 3072, 768), (1023, 3072, 768), (64, 6400, 1600)])
def test_matmul_backward_dinp_may_alias_pre_gelu(device, dtype, N, K, M):
    """The in-place DGELU (dinp is pre_gelu), including a small-N, large-M shape where cuBLASLt picks split-K; at
    (1, 40, 24) and (7, 3072, 768) cuBLASLt's DGELU epilogue written over its own aux input gave wrong values on
    an H200 (session 10), hence the temporary in ops.matmul_backward."""
    pre = randn((N, K), dtype, device, std=2.0)
    x = F.gelu(pre.float(), approximate="tanh").to(dtype)
    w = randn((M, K), dtype, device, std=K ** -0.5)
    dout = randn((N, M), dtype, device)
    dweight = torch.zeros((M, K), dtype=dtype, device=device)
    in_place = pre.clone()
    returned = ops.matmul_backward(dout, x, w, dweight, dinp=in_place, pre_gelu=in_place)
    assert returned is in_place
    expected = (dout.float().cpu() @ w.float().cpu()) * _gelu_tanh_grad(pre.float().cpu())
    assert_close(in_place, expected, dtype, "dinp written over pre_gelu")


def _gelu_tanh_grad(x):
    x = x.detach().clone().requires_grad_(True)
    F.gelu(x, approximate="tanh").sum().backward()
    return x.grad


@requires_cuda
@pytest.mark.cuda
def test_matmul_backward_dgelu_at_gpt2_350m_fcproj():
    """fcproj's input gradient at d24 (C = 1024, B*T = 32768), where cuBLASLt on an H200 offers a single DGELU
    algorithm, an sm80 CUTLASS kernel (dev/experiments/dgelu.py, session 8): whatever runs there must give the
    gradient, twice the same. The reference is fp32 torch on the GPU (on the CPU this size would take minutes)."""
    N, K, M = 32768, 4096, 1024
    dtype = torch.bfloat16
    w = randn((M, K), dtype, "cuda", std=K ** -0.5)
    pre = randn((N, K), dtype, "cuda", std=2.0)
    x = F.gelu(pre.float(), approximate="tanh").to(dtype)
    dout = randn((N, M), dtype, "cuda")
    outs = []
    for _ in range(2):
        dinp = poisoned((N, K), dtype, "cuda")
        ops.matmul_backward(dout, x, w, torch.zeros_like(w), dinp=dinp, pre_gelu=pre)
        outs.append(dinp)
    assert torch.equal(outs[0], outs[1]), "dinp differs between identical calls"
    p32 = pre.float().requires_grad_(True)
    F.linear(F.gelu(p32, approximate="tanh"), w.float()).backward(dout.float())
    assert_close(outs[0], p32.grad, dtype, "dinp")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_matmul_backward_is_deterministic(device, dtype):
    """Bit-identical gradients on a repeat, with enough rows that the bias reduction splits them over many blocks."""
    N, K, M = 4096, 256, 1600
    x, w, _ = _layer(N, K, M, False, dtype, device)
    dout = randn((N, M), dtype, device)
    start_dweight, start_dbias = randn((M, K), dtype, device, std=0.1), randn((M,), dtype, device, std=0.1)
    results = []
    for _ in range(2):
        dweight, dbias = start_dweight.clone(), start_dbias.clone()
        dinp = ops.matmul_backward(dout, x, w, dweight, dbias)
        results.append((dinp, dweight, dbias))
    for name, first, second in zip(("dinp", "dweight", "dbias"), *results):
        assert torch.equal(first, second), f"{name} differs between two identical backward calls"
    expected_dbias = start_dbias.float().cpu() + dout.float().cpu().sum(0)
    assert_close(results[0][2], expected_dbias, dtype, "dbias over 4096 rows")


@requires_cuda
@pytest.mark.parametrize("N,K,M", [(8192, 768, 3072), (8192, 3072, 768), (4096, 1600, 4800), (65536, 768, 768),
                                   (7, 40, 24)])
def test_matmul_autotuning_changes_no_bits(monkeypatch, N, K, M):
    """After the tuning (on other inputs), every output of forward (GELU epilogue + pre_gelu) and backward (dgelu
    written over pre_gelu and not, dweight and dbias +=) is bit-identical with the autotuned algorithms and with
    the heuristic's first choice. dout at a gradient's scale, as the long-k dweight GEMMs see it."""
    dtype, device = torch.bfloat16, "cuda"

    def outputs(seed):
        torch.manual_seed(seed)
        x, w, b = _layer(N, K, M, True, dtype, device)
        dout, pre_in = randn((N, M), dtype, device, std=1e-3), randn((N, K), dtype, device, std=2.0)
        dweight, dbias = randn((M, K), dtype, device, std=1e-2), randn((M,), dtype, device, std=1e-2)
        pre = torch.empty((N, M), dtype=dtype, device=device)
        out = ops.matmul_forward(x, w, b, gelu=True, pre_gelu=pre)
        inp, in_place = F.gelu(pre_in.float(), approximate="tanh").to(dtype), pre_in.clone()
        ops.matmul_backward(dout, inp, w, dweight, dbias, dinp=in_place, pre_gelu=in_place)  # over pre_gelu
        dinp = ops.matmul_backward(dout, inp, w, dweight, dbias, pre_gelu=pre_in)  # dweight, dbias: +=
        return out, pre, in_place, dinp, dweight, dbias

    monkeypatch.setenv("LLMC_GEMM_AUTOTUNE", "1")
    outputs(seed=1)  # the first call of each plan tunes it on these inputs
    tuned = outputs(seed=2)
    monkeypatch.setenv("LLMC_GEMM_AUTOTUNE", "0")
    first = outputs(seed=2)
    names = ("out", "pre_gelu", "dinp over pre_gelu", "dinp", "dweight", "dbias")
    for name, a, b in zip(names, tuned, first):
        assert torch.equal(a, b), f"{name} differs between autotuned and first-choice algorithms"
    if N >= 4096:  # big enough that cuBLASLt offers several algorithms for the forward GEMM
        assert any(line.startswith(f"m={M} n={N} k={K} ") for line in ops.matmul_tuning_log()), \
            "the forward GEMM's plan is not in the tuning log"


def test_matmul_tuning_log_needs_a_gpu():
    if not ops.build_info()["has_cuda"] or torch.cuda.is_available():
        pytest.skip("for a CUDA build on a machine without a GPU (the log itself is checked by the test above)")
    with pytest.raises(RuntimeError):  # no device to hold a cuBLASLt handle: the extension says so
        ops.matmul_tuning_log()


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_matmul_leading_dims_and_empty_rows(device, dtype):
    x, w, b = _layer(6, 16, 24, True, dtype, device)
    x = x.view(2, 3, 16)
    out = ops.matmul_forward(x, w, b)
    assert out.shape == (2, 3, 24)
    assert_close(out, F.linear(*_cpu32(x, w, b)), dtype, "out (B, T, M)")

    empty = torch.empty((0, 16), dtype=dtype, device=device)
    assert ops.matmul_forward(empty, w, b).shape == (0, 24)
    dweight, dbias = randn((24, 16), dtype, device), randn((24,), dtype, device)
    before = dweight.clone(), dbias.clone()
    dinp = ops.matmul_backward(torch.empty((0, 24), dtype=dtype, device=device), empty, w, dweight, dbias)
    assert dinp.shape == (0, 16)
    assert torch.equal(dweight, before[0]) and torch.equal(dbias, before[1])


def _bf16_values_in(lo, hi):
    """Every finite bf16 number in [lo, hi]."""
    bits = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    values = bits[torch.isfinite(bits.float())]
    return values[(values.float() >= lo) & (values.float() <= hi)]


@requires_cuda
@pytest.mark.cuda
def test_cublaslt_gelu_epilogues_are_tanh_approximation():
    """GPT-2 uses the tanh GELU; erf's differs by < 5e-4, below bf16 tolerance but visible bit by bit: make the
    GEMM exact (identity weight, every bf16 value in [-6, 6] as input, dout of ones), then compare the epilogues'
    outputs with both GELUs rounded to bf16 where those two roundings differ."""
    values = _bf16_values_in(-6.0, 6.0)
    values = values[: values.numel() // 8 * 8]
    pre = values.view(-1, 8).cuda()
    eye = torch.eye(8, dtype=torch.bfloat16, device="cuda")
    out = ops.matmul_forward(pre, eye, gelu=True)
    ones = torch.ones_like(pre)
    dinp = ops.matmul_backward(ones, out, eye, torch.zeros_like(eye), pre_gelu=pre)

    x = pre.double().cpu()
    xr = x.clone().requires_grad_(True)
    F.gelu(xr, approximate="tanh").sum().backward()
    tanh_grad = xr.grad.clone()
    xr.grad = None
    F.gelu(xr).sum().backward()
    candidates = {
        "gelu forward": (out, F.gelu(x, approximate="tanh"), F.gelu(x)),
        "gelu backward": (dinp, tanh_grad, xr.grad),
    }
    for name, (got, tanh_ref, erf_ref) in candidates.items():
        got, tanh_ref, erf_ref = got.cpu(), tanh_ref.bfloat16(), erf_ref.bfloat16()
        differ = tanh_ref != erf_ref
        like_tanh = int((got[differ] == tanh_ref[differ]).sum())
        like_erf = int((got[differ] == erf_ref[differ]).sum())
        assert like_tanh > like_erf, (f"{name}: where tanh and erf GELU round differently ({int(differ.sum())} "
                                      f"values) cuBLASLt matches tanh {like_tanh}x and erf {like_erf}x")


def test_matmul_rejects_bad_input():
    x, w, b = torch.randn(4, 16), torch.randn(8, 16), torch.randn(8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.matmul_forward([[1.0]], w)
    with pytest.raises(TypeError, match="float"):
        ops.matmul_forward(x, torch.ones(8, 16, dtype=torch.int64))
    with pytest.raises(TypeError, match="one dtype"):
        ops.matmul_forward(x, w.bfloat16())
    with pytest.raises(TypeError, match="bool"):
        ops.matmul_forward(x, w, gelu="tanh")
    with pytest.raises(ValueError, match="last dimension"):
        ops.matmul_forward(torch.randn(4, 12), w)
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        ops.matmul_forward(x, torch.randn(16))
    with pytest.raises(ValueError, match="bias"):
        ops.matmul_forward(x, w, torch.randn(16))
    with pytest.raises(ValueError, match="contiguous"):
        ops.matmul_forward(x, torch.randn(16, 8).t())
    with pytest.raises(ValueError, match="shape"):
        ops.matmul_forward(x, w, out=torch.empty(4, 16))
    with pytest.raises(ValueError, match="gelu=True"):
        ops.matmul_forward(x, w, pre_gelu=torch.empty(4, 8))
    with pytest.raises(ValueError, match="pre_gelu"):
        ops.matmul_forward(x, w, gelu=True, pre_gelu=torch.empty(4, 16))
    buf = torch.empty(4, 8)
    with pytest.raises(ValueError, match="shares memory"):
        ops.matmul_forward(x, w, gelu=True, out=buf, pre_gelu=buf)

    dout, dweight = torch.randn(4, 8), torch.zeros(8, 16)
    with pytest.raises(ValueError, match="dout"):
        ops.matmul_backward(torch.randn(4, 16), x, w, dweight)
    with pytest.raises(ValueError, match="dweight"):
        ops.matmul_backward(dout, x, w, torch.zeros(16, 8))
    with pytest.raises(ValueError, match="dbias"):
        ops.matmul_backward(dout, x, w, dweight, torch.zeros(16))
    with pytest.raises(ValueError, match="pre_gelu"):
        ops.matmul_backward(dout, x, w, dweight, pre_gelu=torch.randn(4, 8))
    square_w, square_dout = torch.randn(8, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="shares memory"):
        ops.matmul_backward(square_dout, torch.randn(4, 8), square_w, torch.zeros(8, 8), dinp=square_dout)
    with pytest.raises(ValueError, match="shares memory"):
        ops.matmul_backward(dout, x, w, w)


@requires_cuda
@pytest.mark.cuda
def test_matmul_cuda_rejects_bad_input():
    def bf16(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    x, w = bf16(4, 16), bf16(8, 16)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.matmul_forward(x.float(), w.float())
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.matmul_forward(bf16(4, 12), bf16(8, 12))
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.matmul_forward(x, bf16(12, 16))
    with pytest.raises(ValueError, match="one device"):
        ops.matmul_forward(x, w.cpu())
    with pytest.raises(ValueError, match="aligned"):
        ops.matmul_forward(bf16(4 * 16 + 1)[1:].view(4, 16), w)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.matmul_backward(bf16(4, 12), bf16(4, 16), bf16(12, 16), bf16(12, 16))
