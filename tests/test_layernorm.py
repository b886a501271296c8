"""layernorm_forward / fused_residual_layernorm_forward / layernorm_backward against torch's F.layer_norm (and
its autograd) in fp32."""
import pytest
import torch
import torch.nn.functional as F

import llmc.ops as ops
from conftest import assert_close, devices_and_dtypes, poisoned, randn, requires_cuda

# N = 1, 7, 1023 rows with GPT-2's widths; (5, 8192) takes the widest rows the tests promise; (3, 8) and
# (4, 264) are narrower than a warp's 256 channels or not a multiple of them. The backward shares a row between
# ceil(C / 256) warps, one 16-byte pack per lane (C <= 2048): 8, 264, 768, 1024, 1032 (and 1280), 1288, 1600 and 2048
# give teams of 1 to 8 warps; 1032 and 1288 leave most lanes of their last warp without a pack; (2049, 1280) runs
# many rows per team, the next rows' copies in flight while the current one is worked.
SHAPES = [(n, c) for n in (1, 7, 1023) for c in (768, 1024, 1600, 2048)] + [(5, 8192), (3, 8), (4, 264), (7, 1032),
                                                                            (1023, 1288), (2049, 1280)]
EPS = 1e-5


def ln_inputs(shape, dtype, device):
    C = shape[-1]
    x = randn(shape, dtype, device, std=2.0) + 0.5  # a mean far from 0 tests the two-pass variance
    weight = randn((C,), dtype, device, std=0.5) + 1.0
    bias = randn((C,), dtype, device, std=0.5)
    return x, weight, bias


def torch_stats(x):
    x = x.float().cpu()
    mean = x.mean(-1)
    rstd = torch.rsqrt(x.var(-1, unbiased=False) + EPS)
    return mean, rstd


def torch_layer_norm(x, weight, bias):
    return F.layer_norm(x.float().cpu(), (x.shape[-1],), weight.float().cpu(), bias.float().cpu(), EPS)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_forward_matches_torch(device, dtype, shape):
    x, weight, bias = ln_inputs(shape, dtype, device)
    out = poisoned(shape, dtype, device)
    mean, rstd = poisoned(shape[:-1], torch.float32, device), poisoned(shape[:-1], torch.float32, device)
    ops.layernorm_forward(x, weight, bias, out=out, mean=mean, rstd=rstd, eps=EPS)
    expected_mean, expected_rstd = torch_stats(x)
    assert_close(out, torch_layer_norm(x, weight, bias), dtype, "out")
    assert_close(mean, expected_mean, torch.float32, "mean")
    assert_close(rstd, expected_rstd, torch.float32, "rstd")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_residual_layernorm_forward_matches_torch(device, dtype, shape):
    a, weight, bias = ln_inputs(shape, dtype, device)
    b = randn(shape, dtype, device)
    residual, out = poisoned(shape, dtype, device), poisoned(shape, dtype, device)
    mean, rstd = poisoned(shape[:-1], torch.float32, device), poisoned(shape[:-1], torch.float32, device)
    got = ops.fused_residual_layernorm_forward(a, b, weight, bias, residual=residual, out=out, mean=mean,
                                               rstd=rstd, eps=EPS)
    assert got[0] is residual and got[1] is out and got[2] is mean and got[3] is rstd
    assert_close(residual, a.float().cpu() + b.float().cpu(), dtype, "residual")
    # the kernel normalizes the residual it stored (rounded to the storage dtype)
    expected_mean, expected_rstd = torch_stats(residual)
    assert_close(out, torch_layer_norm(residual, weight, bias), dtype, "out")
    assert_close(mean, expected_mean, torch.float32, "mean")
    assert_close(rstd, expected_rstd, torch.float32, "rstd")


def run_backward(shape, dtype, device, accumulate):
    """llmc's backward from random starting gradients, and torch autograd's expected results."""
    x, weight, bias = ln_inputs(shape, dtype, device)
    dout = randn(shape, dtype, device)
    mean, rstd = (t.to(device) for t in torch_stats(x))
    dweight0, dbias0 = randn(weight.shape, dtype, device), randn(weight.shape, dtype, device)
    dinp0 = randn(shape, dtype, device) if accumulate else poisoned(shape, dtype, device)
    dweight, dbias, dinp = dweight0.clone(), dbias0.clone(), dinp0.clone()
    ops.layernorm_backward(dout, x, weight, mean, rstd, dweight, dbias, dinp=dinp, accumulate=accumulate)

    xr, wr, br = (t.float().cpu().requires_grad_(True) for t in (x, weight, bias))
    F.layer_norm(xr, (shape[-1],), wr, br, EPS).backward(dout.float().cpu())
    expected_dinp = xr.grad + (dinp0.float().cpu() if accumulate else 0.0)
    assert_close(dinp, expected_dinp, dtype, "dinp")
    assert_close(dweight, dweight0.float().cpu() + wr.grad, dtype, "dweight")
    assert_close(dbias, dbias0.float().cpu() + br.grad, dtype, "dbias")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_backward_matches_torch(device, dtype, shape):
    run_backward(shape, dtype, device, accumulate=False)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
# (4097, 1600): more rows than the backward's resident warps, so each warp sums several rows (widest GPT-2 rows)
@pytest.mark.parametrize("shape", [(7, 768), (1023, 1600), (4097, 1600), (5, 8192)])
def test_layernorm_backward_accumulates_into_dinp(device, dtype, shape):
    run_backward(shape, dtype, device, accumulate=True)


# dinp_colsum: the fused column sums (C <= 2048 in the register kernel, except where they would cost resident
# blocks, e.g. C = 1280) and the separate pass (8192, 1280): both accumulate modes, odd row counts.
@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", [(1, 768), (7, 1600), (1023, 768), (4097, 1600), (2049, 1280), (1023, 1288),
                                   (3, 8), (5, 8192)])
@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
def test_layernorm_backward_sums_dinp_columns(device, dtype, shape, accumulate):
    x, weight, bias = ln_inputs(shape, dtype, device)
    dout = randn(shape, dtype, device)
    mean, rstd = (t.to(device) for t in torch_stats(x))
    dweight, dbias = torch.zeros_like(weight), torch.zeros_like(weight)
    dinp0 = randn(shape, dtype, device) if accumulate else poisoned(shape, dtype, device)
    colsum0 = randn(weight.shape, dtype, device)
    dinp, colsum = dinp0.clone(), colsum0.clone()
    ops.layernorm_backward(dout, x, weight, mean, rstd, dweight, dbias, dinp=dinp, accumulate=accumulate,
                           dinp_colsum=colsum)

    xr, wr, br = (t.float().cpu().requires_grad_(True) for t in (x, weight, bias))
    F.layer_norm(xr, (shape[-1],), wr, br, EPS).backward(dout.float().cpu())
    expected_dinp = xr.grad + (dinp0.float().cpu() if accumulate else 0.0)
    assert_close(dinp, expected_dinp, dtype, "dinp")
    assert_close(dweight, wr.grad, dtype, "dweight")
    assert_close(dbias, br.grad, dtype, "dbias")
    # the column sums of the dinp written (as stored), added to colsum's old values
    assert_close(colsum, colsum0.float().cpu() + dinp.float().cpu().sum(0), dtype, "dinp_colsum")
    # the same bits as without the sums, and the same sums every run
    dinp2, colsum2 = dinp0.clone(), colsum0.clone()
    dweight2, dbias2 = torch.zeros_like(weight), torch.zeros_like(weight)
    ops.layernorm_backward(dout, x, weight, mean, rstd, dweight2, dbias2, dinp=dinp2, accumulate=accumulate,
                           dinp_colsum=colsum2)
    assert torch.equal(colsum, colsum2), "dinp_colsum differs between identical calls"
    plain, dweight3, dbias3 = dinp0.clone(), torch.zeros_like(weight), torch.zeros_like(weight)
    ops.layernorm_backward(dout, x, weight, mean, rstd, dweight3, dbias3, dinp=plain, accumulate=accumulate)
    for name, a, b in (("dinp", dinp, plain), ("dweight", dweight, dweight3), ("dbias", dbias, dbias3)):
        assert torch.equal(a, b), f"{name} differs with dinp_colsum"


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_layernorm_backward_deterministic_in_place_and_accumulating(device, dtype):
    shape = (4097, 768)
    x, weight, _ = ln_inputs(shape, dtype, device)
    dout = randn(shape, dtype, device)
    mean, rstd = (t.to(device) for t in torch_stats(x))
    runs = []
    for _ in range(2):
        dweight, dbias = torch.zeros_like(weight), torch.zeros_like(weight)
        dinp = ops.layernorm_backward(dout, x, weight, mean, rstd, dweight, dbias)
        runs.append((dinp, dweight.clone(), dbias.clone()))
        ops.layernorm_backward(dout, x, weight, mean, rstd, dweight, dbias)
        assert_close(dweight, 2 * runs[-1][1].float(), dtype, "dweight after two calls")
        assert_close(dbias, 2 * runs[-1][2].float(), dtype, "dbias after two calls")
    for name, first, second in zip(("dinp", "dweight", "dbias"), *runs):
        assert torch.equal(first, second), f"{name} differs between identical calls"
    in_place = dout.clone()
    ops.layernorm_backward(in_place, x, weight, mean, rstd, torch.zeros_like(weight), torch.zeros_like(weight),
                           dinp=in_place)
    assert torch.equal(in_place, runs[0][0]), "dinp computed in place (dinp = dout) differs"
    over_inp = x.clone()
    ops.layernorm_backward(dout, over_inp, weight, mean, rstd, torch.zeros_like(weight), torch.zeros_like(weight),
                           dinp=over_inp)
    assert torch.equal(over_inp, runs[0][0]), "dinp computed over its input (dinp = inp) differs"


# Ascending, so each kernel's smallest width is its first call in the process: 8, 264, 520, 1024, 1032, 1288, 1600
# and 2048 open the backward kernels of teams of 1 to 8 warps; 2048 asks exactly 48 KB of dynamic shared memory.
FRESH_PROCESS_WIDTHS = (8, 264, 512, 520, 768, 1024, 1032, 1280, 1288, 1536, 1600, 2048)
_FRESH_PROCESS_SCRIPT = """
import sys, torch
import llmc.ops as ops
cases = torch.load(sys.argv[1])
outs = {}
for C, (dout, x, w, mean, rstd) in sorted(cases.items()):
    dw, db = torch.zeros(C, device="cuda").bfloat16(), torch.zeros(C, device="cuda").bfloat16()
    dinp = ops.layernorm_backward(*(t.cuda() for t in (dout, x, w, mean, rstd)), dw, db)
    outs[C] = tuple(t.cpu() for t in (dinp, dw, db))
torch.save(outs, sys.argv[2])
"""


@requires_cuda
def test_layernorm_backward_first_call_in_a_fresh_process(tmp_path):
    # Kernel attributes (the shared-memory opt-in) persist in a process: a launch that only works after a wider
    # call of the same kernel passes in-process tests run in the wrong order. Each width here is the first call
    # of its kernel, or of its shared-memory size, in a new process.
    import subprocess
    import sys
    cases, expected = {}, {}
    for C in FRESH_PROCESS_WIDTHS:
        x, weight, bias = ln_inputs((33, C), torch.bfloat16, "cpu")
        dout = randn((33, C), torch.bfloat16, "cpu")
        mean, rstd = torch_stats(x)
        cases[C] = (dout, x, weight, mean, rstd)
        xr, wr, br = (t.float().requires_grad_(True) for t in (x, weight, bias))
        F.layer_norm(xr, (C,), wr, br, EPS).backward(dout.float())
        expected[C] = (xr.grad, wr.grad, br.grad)
    torch.save(cases, tmp_path / "in.pt")
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_SCRIPT, str(tmp_path / "in.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    for C in FRESH_PROCESS_WIDTHS:
        for name, a, e in zip(("dinp", "dweight", "dbias"), got[C], expected[C]):
            assert_close(a, e, torch.bfloat16, f"C={C} {name}")


def test_layernorm_rejects_bad_input():
    x, w, b = torch.randn(4, 8), torch.randn(8), torch.randn(8)
    mean, rstd = torch.randn(4), torch.rand(4) + 0.5
    dw, db = torch.zeros(8), torch.zeros(8)
    with pytest.raises(TypeError, match="float"):
        ops.layernorm_forward(x.int(), w, b)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.layernorm_forward(x, w.tolist(), b)
    with pytest.raises(ValueError, match="contiguous"):
        ops.layernorm_forward(torch.randn(8, 4).t(), w, b)
    with pytest.raises(ValueError, match=r"weight has shape \(9,\)"):
        ops.layernorm_forward(x, torch.randn(9), b)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        ops.layernorm_forward(torch.randn(8), w, b)
    with pytest.raises(ValueError, match="eps"):
        ops.layernorm_forward(x, w, b, eps=-1.0)
    with pytest.raises(TypeError, match="one dtype"):
        ops.layernorm_forward(x, w.bfloat16(), b)
    with pytest.raises(TypeError, match="float32"):
        ops.layernorm_forward(x, w, b, mean=torch.empty(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="inp2 has shape"):
        ops.fused_residual_layernorm_forward(x, torch.randn(4, 16), w, b)
    with pytest.raises(TypeError, match="float32"):
        ops.layernorm_backward(x, x, w, mean.bfloat16(), rstd, dw, db)
    with pytest.raises(ValueError, match="dout has shape"):
        ops.layernorm_backward(torch.randn(5, 8), x, w, mean, rstd, dw, db)
    with pytest.raises(ValueError, match="mean has shape"):
        ops.layernorm_backward(x, x, w, torch.randn(5), rstd, dw, db)
    big = torch.randn(5, 8)
    with pytest.raises(ValueError, match="dinp partly overlaps dout"):
        ops.layernorm_backward(big[:4], x, w, mean, rstd, dw, db, dinp=big[1:])
    with pytest.raises(ValueError, match="dinp partly overlaps inp"):
        ops.layernorm_backward(x, big[1:], w, mean, rstd, dw, db, dinp=big[:4])
    with pytest.raises(ValueError, match="dinp must be given"):
        ops.layernorm_backward(x, x, w, mean, rstd, dw, db, accumulate=True)
    with pytest.raises(TypeError, match="accumulate"):
        ops.layernorm_backward(x, x, w, mean, rstd, dw, db, accumulate=1)
    grads = torch.zeros(12)
    with pytest.raises(ValueError, match="shares memory"):
        ops.layernorm_backward(x, x, w, mean, rstd, grads[:8], grads[4:12])
    with pytest.raises(ValueError, match=r"dinp_colsum has shape \(9,\)"):
        ops.layernorm_backward(x, x, w, mean, rstd, dw, db, dinp_colsum=torch.zeros(9))
    for bad in (torch.float64, torch.int32):
        with pytest.raises(TypeError, match="dinp_colsum has dtype"):
            ops.layernorm_backward(x, x, w, mean, rstd, dw, db, dinp_colsum=torch.zeros(8, dtype=bad))
    with pytest.raises(ValueError, match="shares memory"):
        ops.layernorm_backward(x, x, w, mean, rstd, dw, db, dinp_colsum=dw)
    with pytest.raises(ValueError, match="shares memory"):
        ops.layernorm_backward(x, x.clone(), w, mean, rstd, dw, db, dinp=x.clone(), dinp_colsum=x[0])


@requires_cuda
@pytest.mark.cuda
def test_layernorm_cuda_rejects_bad_input():
    kw = dict(device="cuda", dtype=torch.bfloat16)
    x, w, b = torch.randn(4, 8, **kw), torch.randn(8, **kw), torch.randn(8, **kw)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.layernorm_forward(x.float(), w.float(), b.float())
    with pytest.raises(ValueError, match="one device"):
        ops.layernorm_forward(x, w.cpu(), b)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.layernorm_forward(torch.randn(4, 12, **kw), torch.randn(12, **kw), torch.randn(12, **kw))
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.fused_residual_layernorm_forward(torch.randn(4, 12, **kw), torch.randn(4, 12, **kw),
                                             torch.randn(12, **kw), torch.randn(12, **kw))
    mean = torch.zeros(4, 12, device="cuda")[:, 0].contiguous()
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.layernorm_backward(torch.randn(4, 12, **kw), torch.randn(4, 12, **kw), torch.randn(12, **kw), mean,
                               mean, torch.zeros(12, **kw), torch.zeros(12, **kw))
    with pytest.raises(ValueError, match="aligned"):
        ops.layernorm_forward(torch.randn(41, 8, **kw).flatten()[1:33].view(4, 8), w, b)
