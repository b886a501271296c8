"""FP8 casts, FP8 matmuls and GPT(fp8=True): against torch's float8 conversion, fp32 math on the dequantized
operands, and the bf16 model (tolerances in conftest.py)."""
import pytest
import torch
import torch.nn.functional as F

import llmc.ops as ops
from conftest import DEVICES, FP8_MODEL, FP8_ROUND_TRIP, assert_close, poisoned, randn
from llmc import reference

FP8 = [ops.FP8_E4M3, ops.FP8_E5M2]
requires_fp8 = pytest.mark.skipif(not ops.fp8_supported(), reason="FP8 needs a GPU of compute capability 8.9+ "
                                  "(H100) and a CUDA build" if not ops.fp8_supported() else "")
FP8_DEVICES = ["cpu", pytest.param("cuda", marks=[requires_fp8, pytest.mark.cuda])]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().view(torch.uint8)


def _input(shape, device, spread=3.0):
    """bf16 values over several binades (so the FP8 rounding is exercised at many exponents)."""
    x = torch.randn(shape) * torch.exp2(torch.empty(shape).uniform_(-spread, spread))
    return x.to(torch.bfloat16 if device == "cuda" else torch.float32).to(device)


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("dtype", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("shape", [(16,), (7, 48), (1023, 768), (64, 3072)])
@pytest.mark.parametrize("headroom", [1.0, 0.25], ids=["exact", "saturating"])
def test_cast_round_trip_and_scale(device, dtype, shape, headroom):
    x = _input(shape, device)
    amax = ops.fp8_amax(x)
    assert amax.item() == x.float().abs().max().item()
    ref = amax * headroom
    q, scale_inv = ops.fp8_cast(x, ref, dtype, out=torch.empty(shape, dtype=dtype, device=device))
    fmax = ops.FP8_MAX[dtype]
    assert scale_inv.item() == pytest.approx(ref.item() / fmax, rel=1e-6)
    back = q.float() * scale_inv
    xf = x.float()
    limit = ref.item()  # |x| above this saturates to +-fmax, i.e. +-ref after the round trip
    inside = xf.abs() <= limit
    normal = xf.abs() * (fmax / limit) >= (2.0 ** -6 if dtype == ops.FP8_E4M3 else 2.0 ** -14)
    err = (back - xf).abs()
    assert (err[inside & normal] <= FP8_ROUND_TRIP[dtype] * xf.abs()[inside & normal] * 1.0001).all()
    # below the normal range the absolute error is at most half the smallest subnormal step
    sub_step = (2.0 ** -9 if dtype == ops.FP8_E4M3 else 2.0 ** -16) * limit / fmax
    assert (err[inside & ~normal] <= 0.5 * sub_step * 1.0001).all()
    sat = ~inside
    assert torch.equal(back[sat], torch.sign(xf[sat]) * (fmax * scale_inv.item()))
    if headroom == 1.0:
        assert sat.sum() == 0


@requires_fp8
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("shape", [(16,), (1023, 768), (8, 6400)])
def test_cuda_cast_is_torchs_conversion_bit_for_bit(dtype, shape):
    x = _input(shape, "cuda")
    ref = ops.fp8_amax(x) * 0.5
    q, scale_inv = ops.fp8_cast(x, ref, dtype)
    s = torch.tensor(ops.FP8_MAX[dtype], dtype=torch.float32) / ref.cpu()
    expected = (x.cpu().float() * s).clamp(-ops.FP8_MAX[dtype], ops.FP8_MAX[dtype]).to(dtype)
    assert torch.equal(_bits(q), _bits(expected))
    assert scale_inv.item() == (1.0 / s).item()


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("shape", [(1, 16), (12, 3072, 768), (48, 256, 640), (5, 3, 8)])
def test_amax_rows_is_each_rows_max(device, shape):
    x = _input(shape, device)
    x[-1].mul_(8.0)  # rows of different scales
    out = ops.fp8_amax_rows(x, out=poisoned((shape[0],), torch.float32, device))
    assert torch.equal(out.cpu(), x.float().abs().reshape(shape[0], -1).amax(1).cpu())


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("rows,cols", [(48, 16), (3072, 768), (80, 136), (1600, 6400), (33, 70)])
def test_cast_transpose_and_amax_out(device, rows, cols):
    x = _input((rows, cols), device)
    ref = ops.fp8_amax(x)
    low = torch.full((1,), 1e-3, device=device)
    q_t, si_t = ops.fp8_cast(x, ref, ops.FP8_E4M3, transpose=True, amax_out=low)
    assert q_t.shape == (cols, rows)
    assert low.item() == ref.item()  # raised to max |x|
    high = torch.full((1,), 1e9, device=device)
    if (rows * cols) % 16 == 0:
        q, si = ops.fp8_cast(x, ref, ops.FP8_E4M3, amax_out=high)
        assert torch.equal(_bits(q_t), _bits(q.t().contiguous()))
        assert si.item() == si_t.item()
    else:
        ops.fp8_cast(x, ref, ops.FP8_E4M3, transpose=True, amax_out=high)
    assert high.item() == 1e9  # not lowered


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("dtype", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("shape", [(1, 16), (7, 48), (1023, 3072), (8, 1024, 6400), (5, 272)])
def test_cast_with_dbias_is_the_cast_plus_matmul_backwards_bias_gradient(device, dtype, shape):
    x = _input(shape, device, 1.0)
    M = shape[-1]
    ref = ops.fp8_amax(x) * 0.5  # some values saturate: the sum is of x, not of the cast
    dbias = randn((M,), x.dtype, device)
    start = dbias.clone()
    amax_out = torch.zeros(1, device=device)
    q, si = ops.fp8_cast(x, ref, dtype, dbias=dbias, amax_out=amax_out)
    q_plain, si_plain = ops.fp8_cast(x, ref, dtype)
    assert torch.equal(_bits(q), _bits(q_plain)) and si.item() == si_plain.item()
    assert amax_out.item() == ops.fp8_amax(x).item()
    assert_close(dbias, start.float() + x.float().reshape(-1, M).sum(0), x.dtype, "dbias")
    if device == "cuda":  # bit for bit what matmul_backward gives the same dbias (one code path for the sum)
        rows = x.reshape(-1, M)
        inp = randn((rows.shape[0], 16), x.dtype, device)
        via_matmul = start.clone()
        ops.matmul_backward(rows, inp, randn((M, 16), x.dtype, device), torch.zeros(M, 16, device=device,
                            dtype=x.dtype), via_matmul, compute_dinp=False)
        assert torch.equal(dbias, via_matmul)
        again = start.clone()
        ops.fp8_cast(x, ref, dtype, dbias=again)
        assert torch.equal(again, dbias)


def test_cast_with_dbias_checks_its_arguments():
    one = torch.ones(1)
    with pytest.raises(ValueError, match="transpose"):
        ops.fp8_cast(torch.ones(4, 16), one, transpose=True, dbias=torch.zeros(4))
    with pytest.raises(ValueError, match="dbias has shape"):
        ops.fp8_cast(torch.ones(4, 16), one, dbias=torch.zeros(4))
    with pytest.raises(TypeError, match="dbias has dtype"):
        ops.fp8_cast(torch.ones(4, 16), one, dbias=torch.zeros(16, dtype=torch.int32))
    dbias = torch.zeros(16)
    with pytest.raises(ValueError, match="shares memory"):
        ops.fp8_cast(torch.ones(4, 16), one, dbias=dbias, amax_out=dbias[:1])


@requires_fp8
@pytest.mark.cuda
def test_cast_with_dbias_refuses_rows_not_a_multiple_of_8_before_writing():
    x = _input((4, 12), "cuda")
    dbias = torch.zeros(12, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.fp8_cast(x, ops.fp8_amax(x), dbias=dbias)
    assert not dbias.any()


def _operands(N, K, M, device, x_dtype=ops.FP8_E4M3):
    x, w = _input((N, K), device, 1.0), _input((M, K), device, 1.0) * K ** -0.5
    x8, xs = ops.fp8_cast(x, ops.fp8_amax(x), x_dtype)
    w8, ws = ops.fp8_cast(w, ops.fp8_amax(w), ops.FP8_E4M3)
    return x8, xs, w8, ws


@pytest.mark.parametrize("device", FP8_DEVICES)
@pytest.mark.parametrize("N", [1, 7, 1023])
@pytest.mark.parametrize("K,M", [(768, 3072), (3072, 768), (1600, 6400), (48, 32)])
@pytest.mark.parametrize("epilogue", ["none", "bias", "gelu", "dgelu"])
@pytest.mark.parametrize("x_dtype", FP8, ids=["x-e4m3", "x-e5m2"])
@pytest.mark.parametrize("fast_accum", [False, True], ids=["precise", "fast"])
def test_matmul_fp8_matches_fp32_math_on_the_fp8_operands(device, N, K, M, epilogue, x_dtype, fast_accum):
    if device == "cpu" and (K * M > 768 * 3072 or fast_accum):
        pytest.skip("the CPU path has no fast accumulation; its math is checked on the smaller shapes")
    x8, xs, w8, ws = _operands(N, K, M, device, x_dtype)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    bias = randn((M,), dtype, device, std=0.5) if epilogue in ("bias", "gelu") else None
    pre = poisoned((N, M), dtype, device) if epilogue == "gelu" else None
    aux = randn((N, M), dtype, device) if epilogue == "dgelu" else None
    out = poisoned((N, M), dtype, device)
    ops.matmul_fp8(x8, w8, xs, ws, bias, out=out, gelu=epilogue == "gelu", pre_gelu=pre, dgelu_of=aux,
                   fast_accum=fast_accum)
    exact = (x8.cpu().float() * xs.cpu()) @ (w8.cpu().float() * ws.cpu()).t()
    if bias is not None:
        exact = exact + bias.cpu().float()
    if epilogue == "gelu":
        assert_close(pre, exact, dtype, "pre_gelu")
        exact = F.gelu(exact, approximate="tanh")
    elif epilogue == "dgelu":
        exact = reference.gelu_backward(exact, aux.cpu().float())
    assert_close(out, exact, dtype, "out")


@pytest.mark.parametrize("device", DEVICES)
def test_update_scales_keeps_a_history(device):
    S, H = 5, 4
    amax_ref, history, amax = torch.zeros(S, device=device), torch.zeros(S, H, device=device), \
        torch.zeros(S, device=device)
    seen = []
    for step in range(7):
        values = torch.rand(S) * 10
        seen.append(values)
        amax.copy_(values)
        ops.fp8_update_scales(amax_ref, history, amax, step % H)
        assert torch.equal(amax.cpu(), torch.zeros(S))
        assert torch.equal(amax_ref.cpu(), torch.stack(seen[-H:]).amax(0))


@pytest.mark.parametrize("device", DEVICES)
def test_update_scales_keeps_the_history_of_tensors_not_cast(device):
    """A forward without backward (evaluation) leaves the gradients' amax at 0: their history must stay (a
    history of zeros would scale them by 1 and flush small gradients to zero in e5m2); inf is not recorded."""
    amax_ref, history, amax = torch.zeros(3, device=device), torch.zeros(3, 4, device=device), \
        torch.zeros(3, device=device)
    amax.copy_(torch.tensor([1e-5, 2.0, 3.0]))
    ops.fp8_update_scales(amax_ref, history, amax, 0)
    for step in range(1, 9):
        amax.copy_(torch.tensor([0.0, float("inf"), 1.0]))
        ops.fp8_update_scales(amax_ref, history, amax, step % 4)
    assert amax_ref.cpu().tolist() == [pytest.approx(1e-5), 2.0, 1.0]


def test_delayed_scaling_bookkeeping_of_the_model():
    """llmc.fp8._Fp8 driven directly (its ops run on the CPU): the first cast of a slot uses the exact amax,
    the next forward scales by it, and forwards that skip a slot (no backward) keep its scale."""
    from llmc.fp8 import _Fp8
    from model_helpers import tiny_config

    fp8 = _Fp8(tiny_config(n_layer=1), torch.device("cpu"))
    acts = {"fp8_x": [torch.empty(4096, dtype=torch.uint8)], "fp8_w": [torch.empty(4096, dtype=torch.uint8)]}
    params = {"qkvw": torch.randn(1, 192, 64), "fcw": torch.randn(1, 256, 64), "fcprojw": torch.randn(1, 64, 256)}
    grad = torch.randn(16, 64) * 1e-5
    fc_in, fc_dout = fp8.slot(0, _Fp8.FC_IN), fp8.slot(0, _Fp8.FC_DOUT)
    fp8.next_step(params)
    assert fp8.w_amax["fcw"].item() == params["fcw"].abs().max().item()
    fp8._cast(acts, torch.randn(16, 64), fc_in, ops.FP8_E4M3)
    q, scale_inv = fp8._cast(acts, grad, fc_dout, ops.FP8_E5M2)
    exact = grad.abs().max().item()
    assert scale_inv.item() == pytest.approx(exact / 57344.0, rel=1e-6)
    for _ in range(2 * _Fp8.HISTORY):  # evaluation forwards: fc's input cast, its output gradient not
        fp8.next_step(params)
        fp8._cast(acts, torch.randn(16, 64), fc_in, ops.FP8_E4M3)
    fp8.next_step(params)
    assert fp8.amax_ref[fc_dout].item() == pytest.approx(exact, rel=1e-6)
    q, scale_inv = fp8._cast(acts, grad, fc_dout, ops.FP8_E5M2)
    assert scale_inv.item() == pytest.approx(exact / 57344.0, rel=1e-6)
    assert (q.float() != 0).float().mean() > 0.99


def test_fp8_state_round_trips_and_a_state_of_another_shape_is_refused():
    """What the Trainer saves in a checkpoint (state_dict) loads back exactly; a state of another slot count (another
    depth) is a ValueError."""
    from llmc.fp8 import _Fp8
    from model_helpers import tiny_config

    layers = 2
    saved = _Fp8(tiny_config(n_layer=layers), torch.device("cpu"))
    slots = _Fp8.PER_LAYER * layers
    saved.amax.copy_(torch.rand(slots))
    saved.amax_ref.copy_(torch.rand(slots))
    saved.history.copy_(torch.rand(slots, _Fp8.HISTORY))
    saved.seen, saved.forwards = [True, False] * (slots // 2), 7
    state = saved.state_dict()
    fp8 = _Fp8(tiny_config(n_layer=layers), torch.device("cpu"))
    fp8.load_state_dict(state)
    for name in ("amax", "amax_ref", "history"):
        assert torch.equal(getattr(fp8, name), getattr(saved, name))
    assert fp8.seen == saved.seen and fp8.forwards == 7
    with pytest.raises(ValueError, match="slots"):
        fp8.load_state_dict({**state, "seen": state["seen"][:-1]})
    with pytest.raises(ValueError, match="slots"):
        _Fp8(tiny_config(n_layer=layers + 1), torch.device("cpu")).load_state_dict(state)


def test_fp8_arguments_are_checked():
    x8 = torch.zeros(8, 32, dtype=ops.FP8_E5M2)
    one = torch.ones(1)
    with pytest.raises(TypeError, match="at most one e5m2"):
        ops.matmul_fp8(x8, torch.zeros(16, 32, dtype=ops.FP8_E5M2), one, one)
    with pytest.raises(TypeError, match="float8"):
        ops.matmul_fp8(torch.zeros(8, 32), torch.zeros(16, 32, dtype=ops.FP8_E4M3), one, one)
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.matmul_fp8(x8, torch.zeros(24, 32, dtype=ops.FP8_E4M3), one, one)
    with pytest.raises(ValueError, match="same K"):
        ops.matmul_fp8(x8, torch.zeros(16, 48, dtype=ops.FP8_E4M3), one, one)
    with pytest.raises(ValueError, match="needs pre_gelu"):
        ops.matmul_fp8(x8, torch.zeros(16, 32, dtype=ops.FP8_E4M3), one, one, gelu=True)
    with pytest.raises(ValueError, match="one element"):
        ops.matmul_fp8(x8, torch.zeros(16, 32, dtype=ops.FP8_E4M3), torch.ones(2), one)
    with pytest.raises(TypeError, match="float8"):
        ops.fp8_cast(torch.ones(16), one, torch.bfloat16)
    with pytest.raises(ValueError, match="2-D"):
        ops.fp8_cast(torch.ones(16), one, transpose=True)
    with pytest.raises(ValueError, match="pos"):
        ops.fp8_update_scales(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), 3)
    amax = torch.ones(1)
    with pytest.raises(ValueError, match="shares memory"):
        ops.fp8_cast(torch.ones(16), amax, scale_inv=amax)
    with pytest.raises(ValueError, match="shares memory"):
        ops.fp8_cast(torch.ones(16), amax, amax_out=amax)


def test_fp8_model_needs_an_fp8_gpu_and_is_checked():
    from llmc import TrainConfig, Trainer
    from llmc.cli import train_config
    from llmc.model import GPT
    from model_helpers import tiny_config

    with pytest.raises(ValueError, match="fp8=True needs a CUDA GPU"):
        GPT(tiny_config(), device="cpu", fp8=True)
    with pytest.raises(TypeError, match="fp8 must be False, True, 'blocks', 'rows'"):
        GPT(tiny_config(), device="cpu", fp8=1)
    if ops.fp8_supported():
        with pytest.raises(ValueError, match="multiple of 16"):
            GPT(tiny_config(n_embd=72, n_head=1), device="cuda", fp8=True)
    with pytest.raises(TypeError, match="fp8 must be False, True, 'blocks', 'rows'"):
        Trainer("d6", TrainConfig(fp8="yes", device="cpu"))
    with pytest.raises(ValueError, match="fp8 needs a CUDA GPU"):
        Trainer("d6", TrainConfig(fp8=True, device="cpu"))
    assert train_config(["--fp8", "1", "-e", "d6"]).fp8 is True
    assert train_config(["--fp8", "blocks", "-e", "d6"]).fp8 == "blocks"
    assert train_config(["-e", "d6"]).fp8 is False
    with pytest.raises(ValueError, match="property of the model"):
        device = "cuda" if ops.cuda_available() else "cpu"  # the run's device "auto": the model's
        Trainer(GPT(tiny_config(), device=device), TrainConfig(fp8=True, device="auto", num_iterations=1,
                                                               seq_len=32)).fit()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().flatten(), b.float().flatten()
    return (a @ b / (a.norm() * b.norm())).item()


@requires_fp8
@pytest.mark.cuda
@pytest.mark.parametrize("n_embd,n_head,every_fp8_matmul", [(256, 4, False), (1024, 8, False), (1024, 8, True)],
                         ids=["c256", "c1024", "c1024-every-fp8-matmul"])
@pytest.mark.parametrize("recompute", [0, 1, 2])
def test_fp8_model_stays_near_the_bf16_model_and_is_deterministic(n_embd, n_head, every_fp8_matmul, recompute,
                                                                  monkeypatch):
    from llmc.fp8 import _Fp8
    from llmc.model import GPT
    from model_helpers import random_batch, randomize_params, tiny_config

    if every_fp8_matmul:  # fcproj's forward and the input gradients of fc and qkv in FP8 too, whatever the defaults
        monkeypatch.setattr(_Fp8, "FCPROJ_FWD_FROM", 0)
        monkeypatch.setattr(_Fp8, "DINP_FROM", 0)
    cfg = tiny_config(n_layer=2, n_embd=n_embd, n_head=n_head, max_seq_len=64)
    models = {}
    for name, fp8 in (("bf16", False), ("fp8", True), ("fp8 again", True)):
        m = GPT(cfg, device="cuda", recompute=recompute, fp8=fp8)
        randomize_params(m, seed=3)
        models[name] = m
    def applies(width_from):  # None: never (the defaults)
        return width_from is not None and n_embd >= width_from

    assert models["fp8"]._fp8.fcproj_fwd == applies(_Fp8.FCPROJ_FWD_FROM)
    assert models["fp8"]._fp8.dinp == applies(_Fp8.DINP_FROM)
    assert models["fp8"]._fp8.dinp == every_fp8_matmul  # the defaults leave the input gradients in bf16
    losses = {name: [] for name in models}
    for step in range(3):  # the first step scales exactly, the later ones from the amax history
        idx, targets = random_batch(cfg, 4, 64, seed=10 + step)
        for name, m in models.items():
            m.zero_grad()
            losses[name].append(m.forward(idx, targets))
            m.backward()
        ref = models["bf16"]
        assert losses["fp8"][-1] == pytest.approx(losses["bf16"][-1], rel=FP8_MODEL["loss_rtol"])
        for name in ("qkvw", "fcw", "fcprojw", "wte", "ln2w"):
            cos = _cosine(models["fp8"].grad_tensors[name], ref.grad_tensors[name])
            assert cos >= FP8_MODEL["grad_cosine"], f"step {step}: {name} gradient cosine {cos:.4f}"
        assert torch.equal(models["fp8"].grads, models["fp8 again"].grads)
    assert losses["fp8"] == losses["fp8 again"]


@requires_fp8
@pytest.mark.cuda
def test_fp8_training_follows_bf16_training():
    """40 AdamW steps on one batch: FP8 learns it about as bf16 does (delayed scaling through a changing
    model)."""
    from llmc.model import GPT
    from llmc.optim import AdamW
    from model_helpers import random_batch, tiny_config

    cfg = tiny_config(n_layer=2, n_embd=256, n_head=4, max_seq_len=64)
    idx, targets = random_batch(cfg, 4, 64, seed=1)
    curves = {}
    for fp8 in (False, True):
        m = GPT(cfg, device="cuda", fp8=fp8, seed=5)
        opt = AdamW(m, lr=2e-3)
        curves[fp8] = []
        for _ in range(40):
            m.zero_grad()
            curves[fp8].append(m.forward(idx, targets))
            m.backward()
            opt.step()
    bf16, fp8 = curves[False], curves[True]
    assert bf16[-1] < 0.8 * bf16[0], bf16
    assert fp8[-1] < 0.8 * fp8[0], fp8
    assert abs(fp8[-1] - bf16[-1]) < 0.05 * bf16[0], (bf16, fp8)
