"""fused_classifier against F.cross_entropy(ignore_index=-1) per row and its autograd gradient, in fp32."""
import pytest
import torch
import torch.nn.functional as F

import llmc.ops as ops
from conftest import assert_close, devices_and_dtypes, poisoned, randn, requires_cuda

# (N, V, Vp): GPT-2's padded vocabulary and a small one, at odd and even row counts; on CUDA both rows fit in
# shared memory (the staged kernel), so a 128256-column vocabulary (Llama 3's; 250 KB a row) covers the two-pass
# kernel that takes rows too wide for it.
CASES = [(N, V, Vp) for N in (1, 7, 1023, 4096) for V, Vp in ((50257, 50304), (1000, 1024))]
CASES += [(7, 128000, 128256), (1023, 128000, 128256)]
CPU_MAX_ELEMENTS = 2**25  # the CPU reference at 4096 x 50304 takes GBs and minutes; CUDA runs every case


def make_inputs(N, V, Vp, dtype, device, std=2.0):
    """Random logits whose padded columns hold large values (which must not leak into the softmax), and
    targets covering 0, V-1 and ignored (-1) positions; row 0 is never ignored."""
    logits = randn((N, Vp), dtype, device, std=std)
    logits[:, V:] = 30.0
    targets = torch.randint(0, V, (N,), dtype=torch.int32)
    targets[1::4] = -1
    if N > 2:
        targets[2], targets[-1] = 0, V - 1
    return logits, targets.to(device)


def reference(logits, targets, V, dloss):
    """Per-row losses and the gradient of dloss * sum(losses) by autograd, fp32, on the logits' device."""
    x = logits.detach().float().requires_grad_(True)
    losses = F.cross_entropy(x[:, :V], targets.long(), ignore_index=-1, reduction="none")
    (losses.sum() * dloss).backward()
    return losses.detach(), x.grad


def check_gradient(dlogits, expected, targets, V, dtype):
    got, exp, t = dlogits.float().cpu(), expected.float().cpu(), targets.long().cpu()
    rows = t >= 0
    assert torch.all(got[~rows] == 0), "ignored rows must get an all-zero gradient"
    assert torch.all(got[:, V:] == 0), "padded columns must get a zero gradient"
    got, exp, t = got[rows, :V], exp[rows, :V], t[rows]
    at_target = torch.zeros_like(got, dtype=torch.bool).scatter_(1, t[:, None], True)
    assert_close(got[at_target], exp[at_target], dtype, "dlogits at the targets")
    # Off the targets the gradient is dloss * softmax, spread over many decades: the table's atol (relative to the
    # largest entry) would not see errors in the small ones, so compare every entry by its ratio to the reference.
    ratio = got[~at_target] / exp[~at_target]
    assert_close(ratio, torch.ones_like(ratio), dtype, "dlogits / reference off the targets")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("N,V,Vp", CASES)
def test_fused_classifier_matches_cross_entropy(device, dtype, N, V, Vp):
    if device == "cpu" and N * Vp > CPU_MAX_ELEMENTS:
        pytest.skip("large case runs on CUDA only; the CPU path is the same code at the smaller sizes")
    logits, targets = make_inputs(N, V, Vp, dtype, device)
    inp = logits.clone()
    losses = poisoned((N,), torch.float32, device)
    assert ops.fused_classifier(logits, targets, V, losses=losses) is losses
    dloss = 1.0 / int((targets >= 0).sum())
    ref_losses, ref_grad = reference(inp, targets, V, dloss)
    # Losses are fp32 on both paths, computed from the same input values: held to the fp32 table.
    assert_close(losses, ref_losses, torch.float32, "losses")
    check_gradient(logits, ref_grad, targets, V, dtype)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_fused_classifier_explicit_dloss_3d_and_deterministic(device, dtype):
    B, T, V, Vp = 3, 5, 1000, 1024
    logits, targets = make_inputs(B * T, V, Vp, dtype, device)
    logits, targets = logits.view(B, T, Vp), targets.view(B, T)
    inp = logits.clone()
    losses = ops.fused_classifier(logits, targets, V, dloss=0.37)
    assert losses.shape == (B, T) and losses.dtype == torch.float32
    ref_losses, ref_grad = reference(inp.view(B * T, Vp), targets.view(-1), V, 0.37)
    assert_close(losses.view(-1), ref_losses, torch.float32, "losses")
    check_gradient(logits.view(B * T, Vp), ref_grad, targets.view(-1), V, dtype)
    again = inp.clone()
    assert torch.equal(ops.fused_classifier(again, targets, V, dloss=0.37), losses)
    assert torch.equal(again, logits)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_fused_classifier_all_ignored(device, dtype):
    logits, _ = make_inputs(4, 1000, 1024, dtype, device)
    targets = torch.full((4,), -1, dtype=torch.int32, device=device)
    losses = ops.fused_classifier(logits, targets, 1000, losses=poisoned((4,), torch.float32, device))
    assert torch.all(losses == 0) and torch.all(logits == 0)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_fused_classifier_unvalidated_path_matches(device, dtype):
    """validate=False (the model checks its targets once itself) gives bit-identical losses and gradients."""
    logits, targets = make_inputs(64, 1000, 1024, dtype, device)
    dloss = 1.0 / int((targets >= 0).sum())
    fast_logits = logits.clone()
    expected = ops.fused_classifier(logits, targets, 1000, dloss=dloss)
    got = ops.fused_classifier(fast_logits, targets, 1000, dloss=dloss, validate=False)
    assert torch.equal(got, expected) and torch.equal(fast_logits, logits)
    with pytest.raises(ValueError, match="explicit dloss"):
        ops.fused_classifier(fast_logits, targets, 1000, validate=False)


def test_fused_classifier_rejects_bad_input():
    logits, targets = make_inputs(4, 10, 16, torch.float32, "cpu")
    with pytest.raises(TypeError, match="float"):
        ops.fused_classifier(logits.long(), targets, 10)
    with pytest.raises(TypeError, match="int32"):
        ops.fused_classifier(logits, targets.float(), 10)
    with pytest.raises(ValueError, match="do not match"):
        ops.fused_classifier(logits, targets[:3], 10)
    with pytest.raises(ValueError, match="larger than"):
        ops.fused_classifier(logits, targets, 17)
    with pytest.raises(ValueError, match="vocab_size must be at least 1"):
        ops.fused_classifier(logits, targets, 0)
    with pytest.raises(TypeError, match="int"):
        ops.fused_classifier(logits, targets, 10.0)
    for bad in (10, -2):
        t = targets.clone()
        t[0] = bad
        with pytest.raises(ValueError, match="token id below vocab_size"):
            ops.fused_classifier(logits, t, 10)
    with pytest.raises(TypeError, match="float32"):
        ops.fused_classifier(logits, targets, 10, losses=torch.empty(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="shape"):
        ops.fused_classifier(logits, targets, 10, losses=torch.empty(5))
    with pytest.raises(TypeError, match="real number"):
        ops.fused_classifier(logits, targets, 10, dloss="0.5")
    with pytest.raises(ValueError, match="finite"):
        ops.fused_classifier(logits, targets, 10, dloss=float("nan"))


@requires_cuda
@pytest.mark.cuda
def test_fused_classifier_cuda_rejects_bad_input():
    logits, targets = make_inputs(4, 1000, 1024, torch.bfloat16, "cuda")
    with pytest.raises(TypeError, match="bfloat16"):
        ops.fused_classifier(logits.float(), targets, 1000)
    with pytest.raises(TypeError, match="int32"):
        ops.fused_classifier(logits, targets.long(), 1000)
    with pytest.raises(ValueError, match="one device"):
        ops.fused_classifier(logits, targets.cpu(), 1000)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.fused_classifier(logits[:, :1020].contiguous(), targets, 1000)
    misaligned = torch.empty(4 * 1024 + 1, dtype=torch.bfloat16, device="cuda")[1:].view(4, 1024)
    with pytest.raises(ValueError, match="aligned"):
        ops.fused_classifier(misaligned, targets, 1000)
    t = targets.clone()
    t[3] = 1000
    with pytest.raises(ValueError, match="token id below vocab_size"):
        ops.fused_classifier(logits, t, 1000)
