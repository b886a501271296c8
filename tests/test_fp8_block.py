"""Block-scaled FP8 (one power-of-two scale per 1x128 run of a row or per 128x128 tile): the quantizer against
a per-block loop written here and against the CPU reference bit for bit on a GPU, the scale layouts cuBLASLt reads,
and the block-scaled GEMM against fp64 math on the dequantized operands and against the unquantized product."""
import math

import pytest
import torch

import llmc.ops as ops
from conftest import FP8_ROUND_TRIP, poisoned
from llmc import reference

requires_fp8 = pytest.mark.skipif(not ops.fp8_block_supported(), reason="block-scaled FP8 needs a Hopper GPU "
                                  "(compute capability 9.x) and a CUDA build")
FP8_DEVICES = ["cpu", pytest.param("cuda", marks=[requires_fp8, pytest.mark.cuda])]
E4M3 = ops.FP8_E4M3
# Relative Frobenius error of the block-scaled FP8 product against the unquantized one, for Gaussian operands:
# both operands carry e4m3's rounding (half an ulp, 2^-4 relative at most, ~2.6% RMS), ~3.8% measured on the CPU
# reference for K = 768 to 6400.
FP8_BLOCK_GEMM_REL = 0.05
# Awkward shapes: partial 128-blocks along either side, a single block, K = 1600 (d48's width), a batch.
SHAPES = [(4, 16), (132, 272), (260, 1600), (128, 128), (3, 132, 48)]


def _input(shape, device, spread=3.0, seed=0):
    """Values over several binades, so e4m3's rounding is exercised at many exponents; one all-zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.empty(shape).uniform_(-spread, spread, generator=g))
    x[..., 1, :] = 0.0
    return x.to(torch.bfloat16 if device == "cuda" else torch.float32).to(device)


def _block_amax_loop(x: torch.Tensor, tile: bool) -> torch.Tensor:
    """max |x| of each block of a 2-D x, by explicit slicing."""
    R, K = x.shape
    rows = range(0, R, 128) if tile else range(R)
    out = torch.zeros(len(rows), math.ceil(K / 128))
    for i, r in enumerate(rows):
        for b in range(out.shape[1]):
            block = x[r:r + 128, b * 128:(b + 1) * 128] if tile else x[r, b * 128:(b + 1) * 128]
            out[i, b] = block.float().abs().max()
    return out


def _raw(scale: torch.Tensor) -> torch.Tensor:
    """The floats of a scale tensor's whole storage (padding included), in memory order: what the GEMM reads."""
    n = scale.untyped_storage().nbytes() // 4
    return torch.as_strided(scale, (n,), (1,), 0).cpu()


def _poison_padding(scale: torch.Tensor) -> None:
    """NaN into the floats of a 128x128-tile scale tensor's storage that pad its rows (never to be read)."""
    rows, cols = scale.shape[-2], scale.shape[-1]
    ld = scale.stride(-2)
    full = torch.as_strided(scale, (*scale.shape[:-1], ld), (*scale.stride()[:-1], 1))
    full[..., cols:] = float("nan")


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("tile", [False, True], ids=["1x128", "128x128"])
@pytest.mark.parametrize("shape", SHAPES)
def test_block_quantize_round_trip_and_scales(device, tile, shape):
    x = _input(shape, device)
    q, s = ops.fp8_quantize_blocks(x, tile=tile)
    assert q.dtype == E4M3 and q.shape == x.shape
    xs = x.float().cpu().reshape(-1, *shape[-2:])
    ss = s.cpu().reshape(-1, *s.shape[-2:])
    for xb, sb in zip(xs, ss):
        amax = _block_amax_loop(xb, tile)
        assert sb.shape == amax.shape
        _assert_pow2_scales(amax, sb)
    back = reference.fp8_dequantize_blocks(q.cpu(), s.cpu(), tile)
    scale_full = 1.0 / reference.fp8_dequantize_blocks(torch.ones_like(q.cpu()), s.cpu(), tile)
    _assert_round_trip(back, x.float().cpu(), scale_full)


def _assert_pow2_scales(amax: torch.Tensor, scale_inv: torch.Tensor) -> None:
    """Each scale a power of two, the largest with amax * scale <= 448 (scale 1 for an all-zero block)."""
    mant, _ = torch.frexp(scale_inv)
    assert torch.all(mant == 0.5)
    scale = 1.0 / scale_inv
    nonzero = amax > 0
    assert torch.all(amax[nonzero] * scale[nonzero] <= 448.0)
    assert torch.all(amax[nonzero] * scale[nonzero] * 2 > 448.0)
    assert torch.all(scale_inv[~nonzero] == 1.0)


def _assert_round_trip(back: torch.Tensor, xf: torch.Tensor, scale_full: torch.Tensor) -> None:
    """back (dequantized) against xf: e4m3's half ulp in the normal range; below it, at most half the smallest
    subnormal step, 2^-10 in scaled units."""
    normal = xf.abs() * scale_full >= 2.0 ** -6
    err = (back - xf).abs()
    assert torch.all(err[normal] <= FP8_ROUND_TRIP[E4M3] * xf.abs()[normal] * 1.0001)
    assert torch.all(err[~normal] * scale_full[~normal] <= 2.0 ** -10 * 1.0001)


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("tile", [False, True], ids=["1x128", "128x128"])
def test_block_scales_lie_where_the_gemm_reads_them(device, tile):
    R, K = 260, 272  # 3 row blocks and 3 column blocks, both partial
    x = _input((R, K), device)
    _, s = ops.fp8_quantize_blocks(x, tile=tile)
    raw = _raw(s)
    expected = 1.0 / reference.fp8_block_scale(_block_amax_loop(x.cpu(), tile))
    if tile:  # row blocks one after another, each padded from 3 to 4 floats
        assert raw.numel() == 3 * 4
        for i in range(3):
            assert torch.equal(raw[i * 4:i * 4 + 3], expected[i])
    else:  # block columns one after another, rows fastest
        assert raw.numel() == 3 * R
        for b in range(3):
            assert torch.equal(raw[b * R:(b + 1) * R], expected[:, b])


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("tile", [False, True], ids=["1x128", "128x128"])
@pytest.mark.parametrize("shape", [(132, 272), (256, 1600), (2, 4, 48)])
def test_transposed_copy_is_the_quantized_transpose(device, tile, shape):
    x = _input(shape, device)
    q, s, qt, st = ops.fp8_quantize_blocks(x, tile=tile, transpose=True)
    assert qt.shape == (*shape[:-2], shape[-1], shape[-2])
    q2, s2 = reference.fp8_quantize_blocks(x.transpose(-1, -2).cpu(), tile)  # (R may not be a multiple of 16)
    assert torch.equal(qt.cpu().view(torch.uint8), q2.cpu().view(torch.uint8))
    assert torch.equal(st.cpu(), s2.cpu())
    if tile:  # a tile keeps its scale when transposed, so both copies hold the same values
        assert torch.equal(qt.cpu().view(torch.uint8), q.cpu().transpose(-1, -2).view(torch.uint8))
        assert torch.equal(st.cpu(), s.cpu().transpose(-1, -2))


@requires_fp8
@pytest.mark.cuda
@pytest.mark.parametrize("tile", [False, True], ids=["1x128", "128x128"])
@pytest.mark.parametrize("shape", SHAPES + [(8192, 1600), (12, 2304, 768)])
def test_cuda_block_quantize_is_the_reference_bit_for_bit(tile, shape):
    x = _input(shape, "cuda", seed=1)
    q, s, qt, st = ops.fp8_quantize_blocks(x, tile=tile, transpose=True)
    q_ref, s_ref = reference.fp8_quantize_blocks(x.cpu(), tile)
    qt_ref, st_ref = reference.fp8_quantize_blocks(x.cpu().transpose(-1, -2), tile)
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(s.cpu(), s_ref)
    assert torch.equal(qt.cpu().view(torch.uint8), qt_ref.view(torch.uint8))
    assert torch.equal(st.cpu(), st_ref)


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_row_quantize_round_trip_and_scales(device, shape):
    """One power-of-two scale per row of x and one per row of its transposed copy (per column of x): the largest
    with amax * scale <= 448, amax taken by explicit slicing."""
    x = _input(shape, device)
    q, s, qt, st = ops.fp8_quantize_rows(x, transpose=True)
    *lead, R, K = shape
    assert q.shape == x.shape and s.shape == (*lead, R) and qt.shape == (*lead, K, R) and st.shape == (*lead, K)
    for copy, sc, xm in ((q, s, x), (qt, st, x.transpose(-1, -2))):
        xs = xm.float().cpu().reshape(-1, *xm.shape[-2:])
        for xb, sb, qb in zip(xs, sc.cpu().reshape(-1, xm.shape[-2]), copy.cpu().reshape(-1, *xm.shape[-2:])):
            _assert_pow2_scales(torch.stack([row.abs().max() for row in xb]), sb)
            _assert_round_trip(qb.float() * sb[:, None], xb, (1.0 / sb)[:, None].expand_as(xb))
    qt2, st2 = ops.fp8_quantize_rows(x, transpose=True, rows=False)
    assert torch.equal(qt2.cpu().view(torch.uint8), qt.cpu().view(torch.uint8)) and torch.equal(st2.cpu(), st.cpu())


@requires_fp8
@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES + [(8192, 1600), (12, 2304, 768)])
def test_cuda_row_quantize_is_the_reference_bit_for_bit(shape):
    x = _input(shape, "cuda", seed=2)
    x.view(-1)[7] = float("nan")  # NaNs do not count in the amax and stay NaN
    x.view(-1)[x.numel() // 2] = float("inf")  # an infinite row (and column): scale 1
    q, s, qt, st = ops.fp8_quantize_rows(x, transpose=True)
    q_ref, s_ref = reference.fp8_quantize_rows(x.cpu())
    qt_ref, st_ref = reference.fp8_quantize_rows(x.cpu().transpose(-1, -2))
    assert torch.equal(s.cpu(), s_ref)
    assert torch.equal(st.cpu(), st_ref)
    for got, ref in ((q, q_ref), (qt, qt_ref)):
        got = got.cpu()
        nan = ref.float().isnan()  # (NaN's sign bit is not specified)
        assert torch.equal(got.float().isnan(), nan)
        assert torch.equal(got.view(torch.uint8)[~nan], ref.view(torch.uint8)[~nan])


def _gemm_case(N, K, M, w_tile, device, seed=0):
    """Operands whose blocks all have other scales (each row of x and each 128x128 tile of w its own power of two
    on top of Gaussian values), so a scale read from the wrong place changes the product; the padding of w's tile
    scales is NaN, so reading it shows."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(N, K, generator=g) * torch.exp2(torch.randint(-3, 4, (N, 1), generator=g).float())
    tiles = torch.exp2(torch.randint(-4, 4, (-(-M // 128), -(-K // 128)), generator=g).float())
    w = torch.randn(M, K, generator=g) * 0.02 * reference._expand_blocks(tiles, M, K, True)
    x, w = x.to(dtype).to(device), w.to(dtype).to(device)
    xq, xs = ops.fp8_quantize_blocks(x)
    wq, ws = ops.fp8_quantize_blocks(w, tile=w_tile)
    if w_tile:
        _poison_padding(ws)
    exact = (reference.fp8_dequantize_blocks(xq.cpu(), xs.cpu(), False).double()
             @ reference.fp8_dequantize_blocks(wq.cpu(), ws.cpu(), w_tile).double().t())
    return x, w, xq, xs, wq, ws, exact


def _assert_gemm_close(out: torch.Tensor, exact: torch.Tensor, K: int, roundings: int = 1) -> None:
    """bf16 output rounding (2^-8 relative, per rounding) plus fp32 accumulation over K, against fp64 math.
    roundings=2 where the product may be rounded to bf16 before the bias is added (matmul_fp8's fallback when
    cuBLASLt has no block-scaled kernel with the bias or GELU epilogue)."""
    err = (out.double().cpu() - exact).abs()
    bound = roundings * 2.0 ** -8 * exact.abs() + K * 2.0 ** -22 * exact.abs().max() + 1e-30
    assert torch.all(err <= bound), f"max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("w_tile", [True, False], ids=["w128x128", "w1x128"])
@pytest.mark.parametrize("N,K,M", [(64, 768, 2304), (132, 1600, 4800), (256, 6400, 1600), (4, 16, 16)])
def test_block_matmul_is_fp32_math_on_the_dequantized_operands(device, w_tile, N, K, M):
    x, w, xq, xs, wq, ws, exact = _gemm_case(N, K, M, w_tile, device)
    out = ops.matmul_fp8(xq, wq, xs, ws, out=poisoned((N, M), x.dtype, device))
    _assert_gemm_close(out, exact, K)
    full = x.double().cpu() @ w.double().cpu().t()
    assert ((out.double().cpu() - full).norm() / full.norm()).item() <= FP8_BLOCK_GEMM_REL


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("fast_accum", [False, True])
def test_row_scaled_matmul_is_fp32_math_on_the_dequantized_operands(device, fast_accum):
    """One scale per row of x and of w (cuBLASLt's outer-vector scaling), each row on its own power of two."""
    N, K, M = 132, 1600, 4800
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, K, generator=g) * torch.exp2(torch.randint(-3, 4, (N, 1), generator=g).float())
    w = torch.randn(M, K, generator=g) * 0.02 * torch.exp2(torch.randint(-4, 4, (M, 1), generator=g).float())
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x, w = x.to(dtype).to(device), w.to(dtype).to(device)
    xq, xs = ops.fp8_quantize_rows(x)
    wq, ws = ops.fp8_quantize_rows(w)
    assert xs.shape == (N,) and ws.shape == (M,)
    assert len(set(xs.tolist())) > 1 and len(set(ws.tolist())) > 1
    bias = (torch.randn(M, generator=g) * 0.1).to(dtype).to(device)
    out = ops.matmul_fp8(xq, wq, xs, ws, bias, out=poisoned((N, M), x.dtype, device), fast_accum=fast_accum)
    exact = (xq.cpu().double() * xs.cpu().double()[:, None]) @ (wq.cpu().double() * ws.cpu().double()[:, None]).t()
    exact = exact + bias.double().cpu()
    if fast_accum:  # Hopper's fast accumulation keeps fewer bits: the bf16-vs-FP8 bound alone
        assert ((out.double().cpu() - exact).norm() / exact.norm()).item() <= 2e-3
    else:
        _assert_gemm_close(out, exact, K, roundings=2)
    full = x.double().cpu() @ w.double().cpu().t() + bias.double().cpu()
    assert ((out.double().cpu() - full).norm() / full.norm()).item() <= FP8_BLOCK_GEMM_REL


@pytest.mark.parametrize("device", FP8_DEVICES)
def test_row_scaled_matmul_of_one_row(device):
    """A one-row x's per-row scale has one element, like a per-tensor scale: it still pairs with w's per-row ones."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(1, 64, generator=g) * 8).to(dtype).to(device)
    w = (torch.randn(32, 64, generator=g) * torch.exp2(torch.randint(-3, 4, (32, 1), generator=g).float()))
    w = w.to(dtype).to(device)
    (xq, xs), (wq, ws) = ops.fp8_quantize_rows(x), ops.fp8_quantize_rows(w)
    assert xs.shape == (1,) and ws.shape == (32,)
    out = ops.matmul_fp8(xq, wq, xs, ws)
    exact = (xq.cpu().double() * xs.cpu().double()[:, None]) @ (wq.cpu().double() * ws.cpu().double()[:, None]).t()
    _assert_gemm_close(out, exact, 64)


@pytest.mark.parametrize("device", FP8_DEVICES)
def test_block_matmul_accumulates_and_adds_a_bias(device):
    N, K, M = 128, 1600, 4800
    x, w, xq, xs, wq, ws, exact = _gemm_case(N, K, M, True, device, seed=3)
    dtype = x.dtype
    start = (torch.randn(N, M) * 0.1).to(dtype)
    out = start.clone().to(device)
    ops.matmul_fp8(xq, wq, xs, ws, out=out, accumulate=True)
    _assert_gemm_close(out, exact + start.double(), K)
    bias = (torch.randn(M) * 0.1).to(dtype).to(device)
    out = ops.matmul_fp8(xq, wq, xs, ws, bias)
    _assert_gemm_close(out, exact + bias.double().cpu(), K, roundings=2)


@pytest.mark.parametrize("device", FP8_DEVICES)
def test_block_matmul_with_the_gelu_epilogue(device):
    N, K, M = 132, 768, 3072
    x, w, xq, xs, wq, ws, exact = _gemm_case(N, K, M, True, device, seed=4)
    bias = (torch.randn(M) * 0.1).to(x.dtype).to(device)
    pre = poisoned((N, M), x.dtype, device)
    out = ops.matmul_fp8(xq, wq, xs, ws, bias, gelu=True, pre_gelu=pre)
    _assert_gemm_close(pre, exact + bias.double().cpu(), K, roundings=2)
    expected = reference.gelu_forward(pre.float().cpu())
    assert torch.allclose(out.float().cpu(), expected, rtol=2.0 ** -7, atol=1e-3 * expected.abs().max().item())


def test_block_scaled_arguments_are_checked():
    x = torch.randn(8, 256)
    w = torch.randn(128, 256)
    xq, xs = ops.fp8_quantize_blocks(x)
    wq, ws = ops.fp8_quantize_blocks(w, tile=True)
    with pytest.raises(ValueError, match="block scales of a \\(8, 256\\) operand"):
        ops.matmul_fp8(xq, wq, xs.contiguous(), ws)
    with pytest.raises(ValueError, match="not tiles"):
        ops.matmul_fp8(xq, wq, ops.fp8_quantize_blocks(x, tile=True)[1], ws)
    with pytest.raises(ValueError, match="both be block scales"):
        ops.matmul_fp8(xq, wq, xs, torch.ones(1))
    with pytest.raises(ValueError, match="fast_accum=True is not available"):
        ops.matmul_fp8(xq, wq, xs, ws, fast_accum=True)
    with pytest.raises(ValueError, match="accumulate=True adds to a given out"):
        ops.matmul_fp8(xq, wq, xs, ws, accumulate=True)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ops.fp8_quantize_blocks(torch.randn(16))
    with pytest.raises(TypeError):
        ops.fp8_quantize_blocks(x, tile=1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().flatten(), b.float().flatten()
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("recompute", [0, 2])
@pytest.mark.parametrize("mode", ["blocks", "rows"])
def test_fp8_model_stays_near_the_bf16_model_and_is_deterministic(device, recompute, mode):
    from conftest import FP8_MODEL
    from llmc.model import GPT
    from model_helpers import random_batch, randomize_params, tiny_config

    cfg = tiny_config(n_layer=2, n_embd=256, n_head=4, max_seq_len=64)
    models = {}
    for name, fp8 in (("bf16", False), ("fp8", mode), ("fp8 again", mode)):
        m = GPT(cfg, device=device, recompute=recompute, fp8=fp8)
        randomize_params(m, seed=3)
        models[name] = m
    for step in range(2):
        idx, targets = random_batch(cfg, 4, 64, seed=10 + step)
        losses = {}
        for name, m in models.items():
            m.zero_grad()
            losses[name] = m.forward(idx, targets)
            m.backward()
        assert losses["fp8"] == pytest.approx(losses["bf16"], rel=FP8_MODEL["loss_rtol"])
        assert losses["fp8"] != losses["bf16"]  # the FP8 matmuls did run
        for name in ("qkvw", "attprojw", "fcw", "fcprojw", "qkvb", "fcb", "wte", "ln1w"):
            cos = _cosine(models["fp8"].grad_tensors[name], models["bf16"].grad_tensors[name])
            assert cos >= FP8_MODEL["grad_cosine"], f"step {step}: {name} gradient cosine {cos:.4f}"
        assert torch.equal(models["fp8"].grads, models["fp8 again"].grads)
        assert losses["fp8"] == losses["fp8 again"]


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("mode", ["blocks", "rows"])
def test_fp8_weights_are_quantized_once_per_change(device, mode, monkeypatch):
    from llmc.model import GPT
    from llmc.optim import AdamW
    from model_helpers import random_batch, tiny_config

    cfg = tiny_config(n_layer=2, n_embd=128, n_head=4, max_seq_len=32)
    m = GPT(cfg, device=device, fp8=mode, seed=2)
    opt = AdamW(m, lr=1e-2)
    calls = []
    quantizer = "fp8_quantize_blocks" if mode == "blocks" else "fp8_quantize_rows"
    real = getattr(ops, quantizer)

    def counting(x, **kw):
        if x.dim() == 3:  # a stacked weight family (activations and gradients are 2-D)
            calls.append(x.data_ptr())
        return real(x, **kw)

    monkeypatch.setattr(ops, quantizer, counting)
    idx, targets = random_batch(cfg, 2, 32, seed=1)

    def micro_step():
        m.forward(idx, targets)
        m.backward()

    def copies_match_params():
        for name in ("qkvw", "attprojw", "fcw", "fcprojw"):
            q, s, qt, st = m._fp8.weights[name]
            w = m.param_tensors[name].cpu()
            q_ref, s_ref = (reference.fp8_quantize_blocks(w, True) if mode == "blocks" else
                            reference.fp8_quantize_rows(w))
            assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8)), name
            assert torch.equal(s.cpu(), s_ref), name

    micro_step()
    micro_step()  # gradient accumulation: the weights did not change
    assert len(calls) == 4  # one launch per weight family
    copies_match_params()
    opt.step()
    micro_step()
    assert len(calls) == 8
    copies_match_params()
    m.param_tensors["fcw"].mul_(0.5)  # an in-place change torch records
    micro_step()
    assert len(calls) == 12
    copies_match_params()
    m.load_params_(m.params.clone().mul_(2.0))
    micro_step()
    assert len(calls) == 16
    copies_match_params()


def test_block_fp8_is_chosen_by_name_and_checked():
    from llmc.cli import _fp8_mode
    from llmc.model import GPT
    from model_helpers import tiny_config

    assert _fp8_mode("blocks") == "blocks" and _fp8_mode("1") is True and _fp8_mode("0") is False
    assert _fp8_mode("Rows") == "rows"
    with pytest.raises(Exception, match="expected 0, 1, blocks, rows; got 'block'"):
        _fp8_mode("block")
    with pytest.raises(TypeError, match="False, True, 'blocks', 'rows'"):
        GPT(tiny_config(n_layer=1, n_embd=64, n_head=4, max_seq_len=16), device="cpu", fp8="tiles")
    with pytest.raises(ValueError, match="multiple of 16"):
        GPT(tiny_config(n_layer=1, n_embd=72, n_head=9, max_seq_len=16), device="cpu", fp8="blocks")
    m = GPT(tiny_config(n_layer=1, n_embd=64, n_head=4, max_seq_len=16), device="cpu", fp8="blocks")
    assert m._fp8.state_dict() == {}
    with pytest.raises(ValueError, match="keeps no scaling state"):
        m._fp8.load_state_dict({"amax": 1})


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("mode", ["blocks", "rows"])
def test_fp8_training_follows_bf16_training(device, mode):
    """30 AdamW steps on one batch: block- or row-scaled FP8 learns it about as bf16 does, the weights' FP8 copies
    following every step."""
    from llmc.model import GPT
    from llmc.optim import AdamW
    from model_helpers import random_batch, tiny_config

    cfg = tiny_config(n_layer=2, n_embd=128, n_head=4, max_seq_len=64)
    idx, targets = random_batch(cfg, 4, 64, seed=1)
    curves = {}
    for fp8 in (False, mode):
        m = GPT(cfg, device=device, fp8=fp8, seed=5)
        opt = AdamW(m, lr=3e-3)
        curves[fp8] = []
        for _ in range(30):
            m.zero_grad()
            curves[fp8].append(m.forward(idx, targets))
            m.backward()
            opt.step()
    bf16, fp8 = curves[False], curves[mode]
    assert bf16[-1] < 0.7 * bf16[0], bf16
    assert fp8[-1] < 0.7 * fp8[0], fp8
    assert abs(fp8[-1] - bf16[-1]) < 0.01 * bf16[0], (bf16, fp8)


@pytest.mark.parametrize("mode", ["blocks", "rows"])
def test_fp8_trainer_runs_and_resumes_on_the_cpu(tmp_path, mode):
    """The Trainer with fp8="blocks" or "rows" (the CPU runs the reference math): a run, its checkpoint (no FP8
    state), a resume that continues it exactly, and a resume with another fp8 refused."""
    from llmc import TrainConfig, Trainer
    from llmc.data import write_shard

    tokens = torch.randint(0, 97, (20_000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    shard = tmp_path / "train_000000.bin"
    write_shard(shard, tokens)
    base = dict(input_train=str(shard), model="d2c64h4t32", batch_size=2, seq_len=32, learning_rate=1e-3,
                val_every=0, sample_every=0, device="cpu", fp8=mode)
    full = Trainer(config=TrainConfig(output_dir=None, num_iterations=6, **base)).fit()
    out = tmp_path / "run"
    Trainer(config=TrainConfig(output_dir=str(out), num_iterations=6, checkpoint_every=3, **base)).fit()
    # a second run from the step-3 checkpoint: drop the later ones so it resumes from step 3
    for later in out.glob("*00006*"):
        later.unlink()
    resumed = Trainer(config=TrainConfig(output_dir=str(out), num_iterations=6, checkpoint_every=3, resume=True,
                                         **base)).fit()
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full[3:]]
    with pytest.raises(ValueError, match=f"trained with fp8='{mode}'"):
        Trainer(config=TrainConfig(output_dir=str(out), num_iterations=6, resume=True, **{**base, "fp8": False})).fit()


@requires_fp8
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["blocks", "rows"])
def test_fp8_training_needs_positions_a_multiple_of_16(mode):
    from llmc.model import GPT
    from model_helpers import random_batch, tiny_config

    cfg = tiny_config(n_layer=1, n_embd=64, n_head=4, max_seq_len=32)
    m = GPT(cfg, device="cuda", fp8=mode)
    idx, targets = random_batch(cfg, 1, 9, seed=0)
    with pytest.raises(ValueError, match="multiple of 16, got B=1, T=9"):
        m.forward(idx, targets)
    with torch.no_grad():  # a forward that cannot train runs in bf16
        bf16 = GPT(cfg, device="cuda")
        bf16.load_params_(m.params)
        assert m.forward(idx, targets) == bf16.forward(idx, targets)
