"""encoder_forward / encoder_backward against torch's embedding lookups (and their autograd) in fp32."""
import pytest
import torch
import torch.nn.functional as F

import llmc.ops as ops
from conftest import assert_close, devices_and_dtypes, poisoned, randn, requires_cuda

BT = [(1, 1), (1, 7), (3, 341), (4, 256)]  # B*T = 1, 7, 1023, 1024 (a whole number of 32-position segments)
CHANNELS = [768, 1024, 1600, 2048]
# How token ids are drawn: many distinct ids; a few ids in long runs (each spans many segments of the sorted
# order); one very frequent id among rare ones (a run far longer than any other).
ID_DISTRIBUTIONS = ["uniform", "few", "skewed"]


def make_ids(B, T, distribution, device):
    if distribution == "uniform":
        V = 1000
        ids = torch.randint(0, V, (B, T), dtype=torch.int32)
    elif distribution == "few":
        V = 3
        ids = torch.randint(0, V, (B, T), dtype=torch.int32)
    else:
        V = 512
        ids = torch.randint(0, V, (B, T), dtype=torch.int32)
        ids[torch.rand(B, T) < 0.6] = 7
    return ids.to(device), V


def torch_embedding_grads(dout, ids, V, max_T):
    wte = torch.zeros(V, dout.shape[-1], requires_grad=True)
    wpe = torch.zeros(max_T, dout.shape[-1], requires_grad=True)
    T = ids.shape[1]
    (F.embedding(ids.long().cpu(), wte) + wpe[:T]).backward(dout.float().cpu())
    return wte.grad, wpe.grad


def backward_against_torch(ids, V, max_T, C, dtype, device):
    """encoder_backward into random dwte (V, C), dwpe (max_T, C), checked against torch's autograd; returns the
    gradients before and after."""
    B, T = ids.shape
    dout = randn((B, T, C), dtype, device)
    dwte0, dwpe0 = randn((V, C), dtype, device), randn((max_T, C), dtype, device)
    dwte, dwpe = dwte0.clone(), dwpe0.clone()
    ops.encoder_backward(dout, ids, dwte, dwpe)
    grad_wte, grad_wpe = torch_embedding_grads(dout, ids, V, max_T)
    assert_close(dwte, dwte0.float().cpu() + grad_wte, dtype, "dwte")
    assert_close(dwpe, dwpe0.float().cpu() + grad_wpe, dtype, "dwpe")
    return dwte0, dwpe0, dwte, dwpe


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("C", CHANNELS + [2056])  # 2056: more packs than one batch of the forward's warp (8 per lane)
@pytest.mark.parametrize("B,T", BT)
def test_encoder_forward_matches_torch(device, dtype, B, T, C):
    ids, V = make_ids(B, T, "uniform", device)
    wte = randn((V, C), dtype, device)
    wpe = randn((T + 5, C), dtype, device)
    out = poisoned((B, T, C), dtype, device)
    ops.encoder_forward(ids, wte, wpe, out=out)
    expected = F.embedding(ids.long().cpu(), wte.float().cpu()) + wpe.float().cpu()[:T]
    assert_close(out, expected, dtype, "encoder_forward")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("distribution", ID_DISTRIBUTIONS)
@pytest.mark.parametrize("C", CHANNELS)
@pytest.mark.parametrize("B,T", BT)
def test_encoder_backward_matches_torch(device, dtype, B, T, C, distribution):
    ids, V = make_ids(B, T, distribution, device)
    dwte0, dwpe0, dwte, dwpe = backward_against_torch(ids, V, T + 5, C, dtype, device)
    # rows of tokens and positions that never occur are left exactly as they were
    unused = torch.ones(V, dtype=torch.bool)
    unused[ids.long().flatten().cpu()] = False
    assert torch.equal(dwte.cpu()[unused], dwte0.cpu()[unused])
    assert torch.equal(dwpe.cpu()[T:], dwpe0.cpu()[T:])


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("V", [1, 2, 255, 256, 257, 50304, 65536, 65537, 70000])
def test_encoder_backward_any_table_size(device, dtype, V):
    # The CUDA sort looks only at the ceil(log2 V) low bits of an id: table sizes around the radix passes' byte
    # boundaries, with the extreme ids present (in runs that cross 32-position segments).
    B, T, C = 2, 300, 16
    ids = torch.randint(0, V, (B, T), dtype=torch.int32)
    ids[0, :40] = V - 1
    ids[1, 100:140] = 0
    ids[1, -3:] = V - 1
    backward_against_torch(ids.to(device), V, T, C, dtype, device)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_encoder_backward_deterministic_and_accumulates(device, dtype):
    B, T, C = 8, 512, 768
    ids, V = make_ids(B, T, "few", device)
    dout = randn((B, T, C), dtype, device)
    results = []
    for _ in range(2):
        dwte, dwpe = torch.zeros(V, C, dtype=dtype, device=device), torch.zeros(T, C, dtype=dtype, device=device)
        ops.encoder_backward(dout, ids, dwte, dwpe)
        results.append((dwte.clone(), dwpe.clone()))
        ops.encoder_backward(dout, ids, dwte, dwpe)
        assert_close(dwte, 2 * results[-1][0].float(), dtype, "dwte after two calls")
        assert_close(dwpe, 2 * results[-1][1].float(), dtype, "dwpe after two calls")
    assert torch.equal(results[0][0], results[1][0]), "dwte differs between identical calls"
    assert torch.equal(results[0][1], results[1][1]), "dwpe differs between identical calls"


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_encoder_unvalidated_path_matches_checked(device, dtype):
    # validate=False only drops the id range check (and its sync): the results must be bit-identical
    B, T, C = 4, 256, 1600
    ids, V = make_ids(B, T, "skewed", device)
    wte, wpe = randn((V, C), dtype, device), randn((T, C), dtype, device)
    checked = ops.encoder_forward(ids, wte, wpe)
    fast = ops.encoder_forward(ids, wte, wpe, out=poisoned((B, T, C), dtype, device), validate=False)
    assert torch.equal(fast, checked)
    dout = randn((B, T, C), dtype, device)
    grads = {}
    for validate in (True, False):
        dwte, dwpe = wte.clone(), wpe.clone()
        ops.encoder_backward(dout, ids, dwte, dwpe, validate=validate)
        grads[validate] = dwte, dwpe
    assert torch.equal(grads[True][0], grads[False][0]) and torch.equal(grads[True][1], grads[False][1])
    assert not torch.equal(grads[True][0], wte), "the backward left dwte unchanged"


def test_encoder_rejects_bad_input():
    ids = torch.randint(0, 10, (2, 4), dtype=torch.int32)
    wte, wpe = torch.randn(10, 8), torch.randn(6, 8)
    dout = torch.randn(2, 4, 8)
    with pytest.raises(TypeError, match="int32"):
        ops.encoder_forward(ids.float(), wte, wpe)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.encoder_forward([[1, 2]], wte, wpe)
    with pytest.raises(ValueError, match="contiguous"):
        ops.encoder_forward(torch.randint(0, 10, (4, 2), dtype=torch.int32).t(), wte, wpe)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        ops.encoder_forward(ids.flatten(), wte, wpe)
    with pytest.raises(ValueError, match="same number of channels"):
        ops.encoder_forward(ids, wte, torch.randn(6, 16))
    with pytest.raises(ValueError, match="max_seq_len"):
        ops.encoder_forward(ids, wte, torch.randn(3, 8))
    with pytest.raises(TypeError, match="one dtype"):
        ops.encoder_forward(ids, wte, wpe.bfloat16())
    with pytest.raises(ValueError, match="shape"):
        ops.encoder_forward(ids, wte, wpe, out=torch.empty(2, 4, 16))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ops.encoder_forward(torch.tensor([[3, 10]], dtype=torch.int32), wte, wpe)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ops.encoder_forward(torch.tensor([[-1, 3]], dtype=torch.int32), wte, wpe)
    with pytest.raises(ValueError, match="dout has shape"):
        ops.encoder_backward(torch.randn(2, 4, 16), ids, torch.zeros(10, 8), torch.zeros(6, 8))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ops.encoder_backward(dout[:1], torch.tensor([[1, 2, 3, 12]], dtype=torch.int32), torch.zeros(10, 8),
                             torch.zeros(6, 8))
    grads = torch.zeros(16, 8)
    with pytest.raises(ValueError, match="shares memory"):
        ops.encoder_backward(dout, ids, grads[:10], grads[4:10])


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("B,T", [(4, 1000), (4, 5000)])
def test_encoder_backward_launchers_on_one_stream(B, T):
    # The two launchers with dwpe on the same stream as the rest give what llmc.ops gives with dwpe on its side
    # stream (bit for bit), right against torch; the scratch starts poisoned (0xFF bytes).
    ext = ops._ext()
    C, V = 64, 50304
    ids, _ = make_ids(B, T, "skewed", "cuda")
    ids[0, :3] = V - 1
    dout = randn((B, T, C), torch.bfloat16, "cuda")
    dwte0, dwpe0 = randn((V, C), torch.bfloat16, "cuda"), randn((T, C), torch.bfloat16, "cuda")
    stream = torch.cuda.current_stream().cuda_stream
    dwte, dwpe = dwte0.clone(), dwpe0.clone()
    scratch = torch.full((ext.encoder_backward_scratch_bytes(B * T, C, V),), 0xFF, dtype=torch.uint8, device="cuda")
    ext.encoder_backward_sort(scratch.data_ptr(), scratch.numel(), ids.data_ptr(), B * T, C, V, stream)
    ext.encoder_backward(dwte.data_ptr(), dwpe.data_ptr(), scratch.data_ptr(), scratch.numel(), dout.data_ptr(),
                         B, T, C, V, stream, stream)
    grad_wte, grad_wpe = torch_embedding_grads(dout, ids, V, T)
    assert_close(dwte, dwte0.float().cpu() + grad_wte, torch.bfloat16, "dwte")
    assert_close(dwpe, dwpe0.float().cpu() + grad_wpe, torch.bfloat16, "dwpe")
    ops_dwte, ops_dwpe = dwte0.clone(), dwpe0.clone()
    ops.encoder_backward(dout, ids, ops_dwte, ops_dwpe)
    assert torch.equal(ops_dwte, dwte) and torch.equal(ops_dwpe, dwpe)


@requires_cuda
@pytest.mark.cuda
def test_encoder_cuda_rejects_bad_input():
    kw = dict(device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, 10, (2, 4), dtype=torch.int32, device="cuda")
    wte, wpe = torch.randn(10, 8, **kw), torch.randn(6, 8, **kw)
    with pytest.raises(TypeError, match="int32"):
        ops.encoder_forward(ids.long(), wte, wpe)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.encoder_forward(ids, wte.float(), wpe.float())
    with pytest.raises(ValueError, match="one device"):
        ops.encoder_forward(ids.cpu(), wte, wpe)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.encoder_forward(ids, torch.randn(10, 12, **kw), torch.randn(6, 12, **kw))
    bad = torch.tensor([[0, 1, 10, 2]], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ops.encoder_forward(bad, wte, wpe)
    dwte, dwpe = torch.randn(10, 8, **kw), torch.randn(6, 8, **kw)
    before = dwte.clone(), dwpe.clone()
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ops.encoder_backward(torch.randn(1, 4, 8, **kw), bad, dwte, dwpe)
    assert torch.equal(dwte, before[0]) and torch.equal(dwpe, before[1]), "a rejected call changed the grads"
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ops.encoder_backward(torch.randn(1, 4, 8, **kw), bad - 10, dwte, dwpe)  # ids -10 .. 0
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.encoder_backward(torch.randn(2, 4, 12, **kw), ids, torch.zeros(10, 12, **kw), torch.zeros(6, 12, **kw))
