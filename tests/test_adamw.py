"""adamw_update against torch.optim.AdamW over several steps, and the stochastic rounding of the bf16 params."""
import math

import pytest
import torch

import llmc.ops as ops
import llmc.reference as reference
from conftest import assert_close, devices_and_dtypes, randn, requires_cuda

# Odd sizes, so tensors straddle the kernel's 8-element packs and 10095 % 8 = 7 elements are left over.
SIZES = [768 * 3, 13, 5000, 1, 2000, 777]
DECAY = [True, False, True, False, True, False]
HYPER = dict(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
STEPS = 10


def torch_adamw(w0, grads, lrs, grad_scale):
    """torch.optim.AdamW in fp32 on the CPU over the same tensors (decay and no-decay groups); (w, m, v) flat."""
    pieces = [p.clone().requires_grad_(True) for p in w0.split(SIZES)]
    groups = [dict(params=[p for p, d in zip(pieces, DECAY) if d], weight_decay=HYPER["weight_decay"]),
              dict(params=[p for p, d in zip(pieces, DECAY) if not d], weight_decay=0.0)]
    opt = torch.optim.AdamW(groups, lr=lrs[0], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"])
    for g, lr in zip(grads, lrs):
        for p, gp in zip(pieces, (g.float().cpu() * grad_scale).split(SIZES)):
            p.grad = gp.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    flat = lambda key: torch.cat([opt.state[p][key] for p in pieces])
    return torch.cat([p.detach() for p in pieces]), flat("exp_avg"), flat("exp_avg_sq")


def run_llmc(params, master, device, dtype, grad_scale):
    """STEPS updates with a decaying lr; returns the gradients and lrs used. m and v start at zero, as in torch."""
    n = params.numel()
    m, v = torch.zeros(n, device=device), torch.zeros(n, device=device)
    grads = [randn((n,), dtype, device) for _ in range(STEPS)]
    lrs = [1e-2 * (1.0 - k / (2 * STEPS)) for k in range(STEPS)]
    for step, (g, lr) in enumerate(zip(grads, lrs), start=1):
        ops.adamw_update(params, g, m, v, master, lr=lr, step=step, seed=1000 + step, grad_scale=grad_scale,
                         tensor_sizes=SIZES, tensor_decay=DECAY, **HYPER)
    return grads, lrs, m, v


def bf16_neighbours(x):
    """The bf16 values around each fp32 value: truncated toward zero, and the next one away from zero."""
    low = x.float().cpu().view(torch.int32) & -65536
    return low.view(torch.float32), (low + 65536).view(torch.float32)


# m, v and the master weights are fp32 on both paths and see the same fp32 inputs, so they are held to the fp32
# table (differences are the order of a few fp32 roundings per step). grad_scale is checked through m and v: the
# weights barely depend on it (Adam divides the gradient's scale out).
@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_adamw_matches_torch_with_master_weights(device, dtype):
    n, grad_scale = sum(SIZES), 0.5
    w0 = randn((n,), torch.float32, "cpu")
    params = w0.clone().to(device=device, dtype=dtype)
    master = w0.clone().to(device)
    grads, lrs, m, v = run_llmc(params, master, device, dtype, grad_scale)
    w_ref, m_ref, v_ref = torch_adamw(w0, grads, lrs, grad_scale)
    assert_close(master, w_ref, torch.float32, "master")
    assert_close(m, m_ref, torch.float32, "m")
    assert_close(v, v_ref, torch.float32, "v")
    if device == "cpu":
        assert torch.equal(params, master)
    else:
        lo, hi = bf16_neighbours(master)
        p = params.float().cpu()
        assert torch.all((p == lo) | (p == hi)), "params must be master rounded to one of its bf16 neighbours"


def test_adamw_without_master_matches_torch_cpu():
    n, grad_scale = sum(SIZES), 2.0
    w0 = randn((n,), torch.float32, "cpu")
    params = w0.clone()
    grads, lrs, m, v = run_llmc(params, None, "cpu", torch.float32, grad_scale)
    w_ref, m_ref, v_ref = torch_adamw(w0, grads, lrs, grad_scale)
    assert_close(params, w_ref, torch.float32, "params")
    assert_close(m, m_ref, torch.float32, "m")
    assert_close(v, v_ref, torch.float32, "v")


def round_via_adamw(params, master, grads, seed):
    """An AdamW step with lr = 0: master stays as it is and params receives its stochastic rounding."""
    n = params.numel()
    m = randn((n,), torch.float32, params.device, std=0.1)
    v = randn((n,), torch.float32, params.device).abs() + 0.1
    ops.adamw_update(params, grads, m, v, master, lr=0.0, step=3, seed=seed, tensor_sizes=SIZES, tensor_decay=DECAY,
                     **HYPER)


@requires_cuda
@pytest.mark.cuda
def test_adamw_without_master_cuda_rounds_the_fp32_update():
    n, lr = sum(SIZES), 1.0
    params = randn((n,), torch.bfloat16, "cuda")
    w0 = params.float().cpu()
    m0 = randn((n,), torch.float32, "cuda", std=0.1)
    v0 = randn((n,), torch.float32, "cuda").abs() + 0.1
    grads = randn((n,), torch.bfloat16, "cuda")
    m, v = m0.clone(), v0.clone()
    ops.adamw_update(params, grads, m, v, None, lr=lr, step=3, seed=7, tensor_sizes=SIZES, tensor_decay=DECAY,
                     **HYPER)
    w_ref, m_ref, v_ref = reference.adamw_update(w0, grads.cpu(), m0.cpu(), v0.cpu(), lr=lr, step=3, grad_scale=1.0,
                                                 tensor_sizes=SIZES, tensor_decay=DECAY, **HYPER)
    assert_close(m, m_ref, torch.float32, "m")
    assert_close(v, v_ref, torch.float32, "v")
    # The bf16 result is one of the two bf16 values around the fp32 update (lr = 1 moves the weights by several
    # bf16 steps, so an update left out fails).
    lo, hi = bf16_neighbours(w_ref)
    err = (params.float().cpu() - w_ref).abs()
    assert torch.all(err <= (hi - lo).abs() * 1.001), f"max error {err.max().item():.3g} exceeds one bf16 step"


@requires_cuda
@pytest.mark.cuda
def test_stochastic_rounding_is_unbiased_and_deterministic():
    n, seeds = sum(SIZES), 256
    x = randn((n,), torch.float32, "cuda")
    lo, hi = bf16_neighbours(x)
    p_up = (x.cpu().view(torch.int32) & 0xFFFF).double() / 65536  # chance to round away from zero
    params = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    grads = randn((n,), torch.bfloat16, "cuda")
    ups = torch.zeros(n, dtype=torch.float64)
    for seed in range(seeds):
        master = x.clone()
        round_via_adamw(params, master, grads, seed)
        assert torch.equal(master, x)
        p = params.float().cpu()
        assert torch.all((p == lo) | (p == hi))
        ups += (p == hi).double()
    # Each element rounds up in a Binomial(seeds, p_up) count: std <= 0.5 / sqrt(seeds). By Hoeffding, a deviation
    # beyond 6 such std has probability 2 exp(-18) ~ 3e-8 per element (3e-4 over all of them); the same bound on
    # the mean over all n * seeds draws. Round-to-nearest or truncation fail the per-element bound by far.
    sigma = 0.5 / math.sqrt(seeds)
    dev = ups / seeds - p_up
    assert dev.abs().max() < 6 * sigma, f"an element's rounding frequency is off by {dev.abs().max():.3f}"
    assert abs(dev.mean()) < 6 * sigma / math.sqrt(n), f"rounding is biased by {dev.mean():.2e} on average"
    first = x.clone()
    round_via_adamw(params, first, grads, 5)
    bits = params.clone()
    round_via_adamw(params, first, grads, 5)
    assert torch.equal(params.view(torch.int16), bits.view(torch.int16)), "the same seed must give the same bits"
    round_via_adamw(params, first, grads, 6)
    assert not torch.equal(params, bits), "another seed must round differently"


# Clipping read on the device must give the very bits of the host computing the factor itself (as the Trainer
# did before): both form max_norm / sqrt(norm_squared) in double from the same fp32 squared norm.
@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("max_norm_factor", [0.5, 2.0])  # clipping active / inactive
def test_adamw_clips_by_a_norm_read_on_the_device(device, dtype, max_norm_factor):
    n = sum(SIZES)
    w0 = randn((n,), torch.float32, "cpu")
    grads = randn((n,), dtype, device)
    norm_sq = ops.global_norm_squared(grads)
    norm = math.sqrt(norm_sq.item())
    max_norm = max_norm_factor * norm
    host_scale = 0.25 * max_norm / norm if norm > max_norm else 0.25
    m0, v0 = randn((n,), torch.float32, device).abs(), randn((n,), torch.float32, device).abs()
    results = []
    for clip in (dict(grad_scale=host_scale), dict(grad_scale=0.25, grad_norm_squared=norm_sq, max_grad_norm=max_norm)):
        params = w0.clone().to(device=device, dtype=dtype)
        master = w0.clone().to(device) if dtype != torch.float32 else None
        m, v = m0.clone(), v0.clone()
        ops.adamw_update(params, grads, m, v, master, lr=1e-2, step=3, seed=5, tensor_sizes=SIZES,
                         tensor_decay=DECAY, **clip, **HYPER)
        results.append((params, m, v))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_adamw_rejects_bad_input():
    n = sum(SIZES)
    params, grads = torch.randn(n), torch.randn(n)
    m, v = torch.zeros(n), torch.zeros(n)

    def call(**overrides):
        args = dict(params=params, grads=grads, m=m, v=v, master=None, lr=1e-3, step=1, seed=0,
                    tensor_sizes=SIZES, tensor_decay=DECAY, **HYPER)
        args.update(overrides)
        ops.adamw_update(args.pop("params"), args.pop("grads"), args.pop("m"), args.pop("v"), args.pop("master"),
                         **args)

    with pytest.raises(ValueError, match="elements"):
        call(grads=torch.randn(n + 1))
    with pytest.raises(TypeError, match="float32"):
        call(m=m.bfloat16())
    with pytest.raises(TypeError, match="same dtype"):
        call(grads=grads.bfloat16())
    with pytest.raises(ValueError, match="add up"):
        call(tensor_sizes=SIZES[:-1] + [SIZES[-1] + 1])
    with pytest.raises(ValueError, match="entries"):
        call(tensor_decay=DECAY[:-1])
    with pytest.raises(TypeError, match="bool"):
        call(tensor_decay=DECAY[:-1] + ["yes"])
    with pytest.raises(ValueError, match=r"tensor_sizes\[0\] must be at least 0"):
        call(tensor_sizes=[-1] + SIZES[1:-1] + [SIZES[-1] + SIZES[0] + 1])
    with pytest.raises(ValueError, match="step"):
        call(step=0)
    with pytest.raises(TypeError, match="step"):
        call(step=1.5)
    with pytest.raises(ValueError, match="beta1"):
        call(beta1=1.0)
    with pytest.raises(ValueError, match="lr"):
        call(lr=float("nan"))
    with pytest.raises(ValueError, match="seed"):
        call(seed=-1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        call(v=[0.0] * n)
    with pytest.raises(ValueError, match="both"):
        call(grad_norm_squared=torch.ones(1))
    with pytest.raises(ValueError, match="both"):
        call(max_grad_norm=1.0)
    with pytest.raises(ValueError, match="one value"):
        call(grad_norm_squared=torch.ones(2), max_grad_norm=1.0)
    with pytest.raises(TypeError, match="float32"):
        call(grad_norm_squared=torch.ones(1, dtype=torch.float64), max_grad_norm=1.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        call(grad_norm_squared=torch.ones(1), max_grad_norm=0.0)


@requires_cuda
@pytest.mark.cuda
def test_adamw_cuda_rejects_bad_input():
    n = 4096
    params, grads = torch.randn(n, device="cuda").bfloat16(), torch.randn(n, device="cuda").bfloat16()
    m, v = torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda")
    kw = dict(lr=1e-3, step=1, seed=0, **HYPER)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.adamw_update(params.float(), grads.float(), m, v, None, tensor_sizes=[n], tensor_decay=[True], **kw)
    with pytest.raises(ValueError, match="one device"):
        ops.adamw_update(params, grads, m.cpu(), v, None, tensor_sizes=[n], tensor_decay=[True], **kw)
    with pytest.raises(ValueError, match="aligned"):
        ops.adamw_update(params[1:], grads[1:], m[1:], v[1:], None, tensor_sizes=[n - 1], tensor_decay=[True], **kw)
    flags = [k % 2 == 0 for k in range(65)]
    with pytest.raises(ValueError, match="at most 64"):
        ops.adamw_update(params[:65 * 8], grads[:65 * 8], m[:65 * 8], v[:65 * 8], None, tensor_sizes=[8] * 65,
                         tensor_decay=flags, **kw)
