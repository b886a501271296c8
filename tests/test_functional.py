"""llmc.functional and llmc.nn against torch.nn.functional / torch.nn: every output and every input and parameter
gradient, per op and through a small transformer trained for a step. The torch side always runs in fp32 on the
CPU; the llmc side runs the CPU reference (fp32) and, on a GPU, the bf16 kernels."""
import pytest
import torch
import torch.nn.functional as F

import llmc.functional as LF
import llmc.nn as lnn
from conftest import assert_close, devices_and_dtypes, randn, requires_cuda


def _leaf(t, device=None, dtype=None):
    """A fresh leaf copy of t (float tensors require grad; None stays None)."""
    if t is None:
        return None
    if not t.is_floating_point():
        return t.to(device or t.device)
    return t.detach().to(device or t.device, dtype or t.dtype, copy=True).requires_grad_(True)


def check_against_torch(ours_fn, torch_fn, inputs, dtype, name, scale=1.0):
    """Run ours_fn on `inputs` and torch_fn on fp32 CPU copies, backpropagate the same random upstream gradient
    through both, and compare the outputs and the gradient of every float input (in that input's dtype)."""
    ours = [_leaf(t) for t in inputs]
    theirs = [_leaf(t, "cpu", torch.float32) for t in inputs]
    out, expected = ours_fn(*ours), torch_fn(*theirs)
    assert out.device == inputs[0].device
    assert_close(out, expected, dtype, f"{name} output", scale)
    dout = randn(expected.shape, out.dtype, out.device)
    out.backward(dout)
    expected.backward(dout.float().cpu())
    for i, (a, e) in enumerate(zip(ours, theirs)):
        if a is not None and a.is_floating_point():
            assert a.grad is not None and a.grad.dtype == a.dtype, f"{name}: input {i} got no gradient of its dtype"
            assert_close(a.grad, e.grad, dtype, f"{name} gradient of input {i}", scale)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", [(7, 64), (2, 5, 768), (40,), (3, 1, 1, 24)])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_norm_matches_torch(device, dtype, shape, affine):
    C = shape[-1]
    x = randn(shape, dtype, device, std=3.0) + 0.5
    w = randn((C,), dtype, device) + 1.0 if affine else None
    b = randn((C,), dtype, device) if affine else None
    check_against_torch(LF.layer_norm, lambda x, w, b: F.layer_norm(x, (C,), w, b), [x, w, b], dtype, "layer_norm")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", [(7, 64), (2, 3, 5, 8), (1024,)])
def test_gelu_matches_torch(device, dtype, shape):
    check_against_torch(LF.gelu, lambda x: F.gelu(x, approximate="tanh"), [randn(shape, dtype, device, std=2.0)],
                        dtype, "gelu")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("lead,K,M", [((7,), 64, 24), ((2, 9), 40, 200), ((), 768, 64), ((3, 1, 2), 16, 8)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("gelu", [False, True], ids=["plain", "gelu"])
def test_linear_matches_torch(device, dtype, lead, K, M, with_bias, gelu):
    x = randn((*lead, K), dtype, device)
    w = randn((M, K), dtype, device, std=K ** -0.5)
    b = randn((M,), dtype, device, std=0.5) if with_bias else None

    def torch_linear(x, w, b):
        y = F.linear(x, w, b)
        return F.gelu(y, approximate="tanh") if gelu else y

    check_against_torch(lambda x, w, b: LF.linear(x, w, b, gelu=gelu), torch_linear, [x, w, b], dtype, "linear")


def torch_causal_attention(qkv):
    """qkv (B, T, 3, NH, HS) -> (B, T, NH, HS) through SDPA."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("B,T,NH,HS", [(2, 7, 3, 16), (1, 65, 2, 64), (1, 1, 1, 32)])
def test_causal_attention_matches_sdpa(device, dtype, B, T, NH, HS):
    qkv = randn((B, T, 3, NH, HS), dtype, device)
    check_against_torch(LF.causal_attention, torch_causal_attention, [qkv], dtype, "causal_attention")


def torch_cross_entropy(logits, targets, V, ignore_index=-1, reduction="mean"):
    """F.cross_entropy over the first V columns of logits (..., Vp); per-position losses shaped like targets."""
    loss = F.cross_entropy(logits[..., :V].reshape(-1, V), targets.long().reshape(-1), ignore_index=ignore_index,
                           reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


def ce_inputs(lead, V, Vp, dtype, device, ignore_index=-1):
    """Logits with large values in the padding columns (which must stay out of the softmax) and int64 targets
    (torch's usual dtype) with every third position ignored."""
    logits = randn((*lead, Vp), dtype, device, std=2.0)
    logits[..., V:] = 20.0
    targets = torch.randint(0, V, lead)
    targets.view(-1)[1::3] = ignore_index
    return logits, targets.to(device)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("lead,V,Vp", [((7,), 100, 104), ((2, 5), 1000, 1024), ((3, 4), 64, 64)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(device, dtype, lead, V, Vp, reduction):
    logits, targets = ce_inputs(lead, V, Vp, dtype, device)
    vocab = None if V == Vp else V
    check_against_torch(lambda x, t: LF.cross_entropy(x, t, vocab, reduction=reduction),
                        lambda x, t: torch_cross_entropy(x, t, V, reduction=reduction),
                        [logits, targets], dtype, f"cross_entropy({reduction})")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_cross_entropy_torch_ignore_index(device, dtype):
    logits, targets = ce_inputs((4, 6), 50, 56, dtype, device, ignore_index=-100)
    check_against_torch(lambda x, t: LF.cross_entropy(x, t, 50, ignore_index=-100),
                        lambda x, t: torch_cross_entropy(x, t, 50, ignore_index=-100),
                        [logits, targets], dtype, "cross_entropy(ignore_index=-100)")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_cross_entropy_leaves_logits_unchanged(device, dtype):
    """The fused kernel writes dlogits into its input: the user's logits must survive forward and backward,
    with and without requires_grad, and a retained graph must give the same gradient twice."""
    logits, targets = ce_inputs((5, 7), 100, 104, dtype, device)
    original = logits.clone()
    loss = LF.cross_entropy(logits, targets, 100)
    assert torch.equal(logits, original)
    leaf = logits.clone().requires_grad_(True)
    loss = lnn.FusedCrossEntropyLoss(vocab_size=100)(leaf, targets)
    assert loss.dtype == torch.float32
    loss.backward(retain_graph=True)
    first = leaf.grad.clone()
    assert torch.equal(leaf.detach(), original)
    loss.backward()
    assert torch.equal(leaf.grad, 2 * first)
    assert torch.equal(leaf.detach(), original)


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_non_dense_inputs(device, dtype):
    """Transposed and (on CUDA) not 16-byte aligned inputs are copied for the kernels, with correct gradients."""
    x = randn((64, 6), dtype, device).t()
    w = randn((24, 64), dtype, device, std=0.125)
    check_against_torch(LF.linear, F.linear, [x, w, None], dtype, "linear of a transposed x")
    check_against_torch(lambda x: LF.layer_norm(x, None, None), lambda x: F.layer_norm(x, (64,)), [x], dtype,
                        "layer_norm of a transposed x")
    buffer = randn((1 + 2 * 9 * 3 * 2 * 16,), dtype, device)
    check_against_torch(lambda buf: LF.causal_attention(buf[1:].view(2, 9, 3, 2, 16)),
                        lambda buf: torch_causal_attention(buf[1:].view(2, 9, 3, 2, 16)), [buffer], dtype,
                        "attention of a view one element into its buffer")


# ---------------------------------------------------------------------------------------------------------
# a small transformer from llmc.nn against the same one from torch.nn
# ---------------------------------------------------------------------------------------------------------
VOCAB, PADDED_VOCAB, EMBD, HEADS, SEQ, BATCH, LAYERS = 100, 104, 64, 4, 16, 2, 2


class TorchCausalSelfAttention(torch.nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = torch.nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = torch.nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        y = torch_causal_attention(self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head))
        return self.c_proj(y.reshape(B, T, C))


class Block(torch.nn.Module):
    """Pre-LayerNorm GPT-2 block; the llmc and torch versions have the same parameter names."""

    def __init__(self, use_llmc, fuse_gelu):
        super().__init__()
        LayerNorm = lnn.LayerNorm if use_llmc else torch.nn.LayerNorm
        self.ln_1, self.ln_2 = LayerNorm(EMBD), LayerNorm(EMBD)
        self.attn = lnn.CausalSelfAttention(EMBD, HEADS) if use_llmc else TorchCausalSelfAttention(EMBD, HEADS)
        if use_llmc:
            self.c_fc = lnn.Linear(EMBD, 4 * EMBD, fuse_gelu=fuse_gelu)
            self.act = torch.nn.Identity() if fuse_gelu else lnn.GELU()
            self.c_proj = lnn.Linear(4 * EMBD, EMBD)
        else:
            self.c_fc, self.act = torch.nn.Linear(EMBD, 4 * EMBD), torch.nn.GELU(approximate="tanh")
            self.c_proj = torch.nn.Linear(4 * EMBD, EMBD)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(self.act(self.c_fc(self.ln_2(x))))


class TinyGPT(torch.nn.Module):
    def __init__(self, use_llmc, fuse_gelu=True):
        super().__init__()
        self.use_llmc = use_llmc
        self.wte, self.wpe = torch.nn.Embedding(VOCAB, EMBD), torch.nn.Embedding(SEQ, EMBD)
        self.blocks = torch.nn.ModuleList(Block(use_llmc, fuse_gelu) for _ in range(LAYERS))
        self.ln_f = lnn.LayerNorm(EMBD) if use_llmc else torch.nn.LayerNorm(EMBD)
        self.lm_head = (lnn.Linear if use_llmc else torch.nn.Linear)(EMBD, PADDED_VOCAB, bias=False)
        self.loss = lnn.FusedCrossEntropyLoss(vocab_size=VOCAB) if use_llmc else None

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return self.loss(logits, targets) if self.use_llmc else torch_cross_entropy(logits, targets, VOCAB)


def reference_model(storage_dtype):
    """The torch fp32 CPU model with random weights everywhere (LayerNorm and biases too, so mix-ups show),
    rounded to storage_dtype so that the llmc model loading them starts from the very same values."""
    reference = TinyGPT(use_llmc=False)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            is_ln_weight = ".ln_" in f".{name}" and name.endswith("weight")
            p.copy_((torch.randn(p.shape) * 0.1 + (1.0 if is_ln_weight else 0.0)).to(storage_dtype))
    return reference


def model_cases():
    """(device, compute dtype, parameter dtype, autocast): devices_and_dtypes(); bf16 on the CPU (the reference
    path storing bf16 like the kernels, so CI runs the bf16 comparison too); fp32 parameters under CPU autocast
    (llmc's ops take fp32 there, so fp32 tolerances apply) and under CUDA autocast (the kernels get bf16 copies,
    the gradients come back fp32)."""
    cases = [pytest.param(device, dtype, dtype, False, id=p.id, marks=p.marks)
             for p in devices_and_dtypes() for device, dtype in [p.values]]
    cases.append(pytest.param("cpu", torch.bfloat16, torch.bfloat16, False, id="cpu-bf16"))
    cases.append(pytest.param("cpu", torch.float32, torch.float32, True, id="cpu-autocast"))
    cases.append(pytest.param("cuda", torch.bfloat16, torch.float32, True, id="cuda-autocast",
                              marks=[requires_cuda, pytest.mark.cuda]))
    return cases


# bf16 through two blocks: every op rounds its output to bf16 and those errors compound along the forward and
# backward chains (some 30 roundings deep). The cpu-bf16 case reaches about 1x the table (single ops: 0.3x); the
# kernels round in a few more places (e.g. attention probabilities), so 4x, still far below a bug's O(1) error.
BF16_MODEL_SCALE = 4.0


@pytest.mark.parametrize("device,dtype,param_dtype,autocast", model_cases())
@pytest.mark.parametrize("fuse_gelu", [True, False], ids=["fused-gelu", "gelu-module"])
def test_tiny_transformer_step_matches_torch(device, dtype, param_dtype, autocast, fuse_gelu):
    """2 blocks, C=64, NH=4, T=16, vocabulary 100 (padded to 104): the loss and every parameter gradient match
    torch.nn's, and after one SGD step on both the losses still match, and went down."""
    reference = reference_model(dtype)
    model = TinyGPT(use_llmc=True, fuse_gelu=fuse_gelu)
    model.load_state_dict(reference.state_dict())
    model.to(device, param_dtype)
    idx = torch.randint(0, VOCAB, (BATCH, SEQ))
    targets = torch.randint(0, VOCAB, (BATCH, SEQ))
    targets[0, ::5] = -1
    scale = 1.0 if dtype == torch.float32 else BF16_MODEL_SCALE

    def losses(step):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(idx.to(device), targets.to(device))
        ref_loss = reference(idx, targets)
        assert loss.dtype == torch.float32
        assert_close(loss, ref_loss, dtype, f"loss at step {step}", scale)
        return loss, ref_loss

    loss, ref_loss = losses(0)
    loss.backward()
    ref_loss.backward()
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad.dtype == param_dtype, f"{name}: gradient dtype {p.grad.dtype}, expected {param_dtype}"
        assert_close(p.grad, ref_params[name].grad, dtype, f"gradient of {name}", scale)
    for m in (model, reference):
        torch.optim.SGD(m.parameters(), lr=0.5).step()
    next_loss, next_ref_loss = losses(1)
    assert next_loss.item() < loss.item() and next_ref_loss.item() < ref_loss.item()


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
def test_functional_rejects_bad_input():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="shape"):
        LF.layer_norm(x, torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="2-D"):
        LF.linear(x, torch.randn(16))
    with pytest.raises(ValueError, match="K = 8"):
        LF.linear(x, torch.randn(4, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        LF.gelu([1.0, 2.0])
    with pytest.raises(ValueError, match="do not match"):
        LF.cross_entropy(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        LF.cross_entropy(x, torch.zeros(4, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="outside"):
        LF.cross_entropy(x, torch.full((4,), 16))
    with pytest.raises(TypeError, match="ignore_index"):
        LF.cross_entropy(x, torch.zeros(4, dtype=torch.long), ignore_index=1.5)
    with pytest.raises(ValueError, match="qkv"):
        LF.causal_attention(torch.randn(2, 4, 2, 1, 8))


def test_modules_reject_bad_configuration():
    with pytest.raises(ValueError, match="last dimension"):
        lnn.LayerNorm((4, 8))
    with pytest.raises(ValueError, match="normalized_shape"):
        lnn.LayerNorm(8)(torch.randn(3, 16))
    with pytest.raises(ValueError, match="multiple of n_head"):
        lnn.CausalSelfAttention(64, 5)
    with pytest.raises(ValueError, match="backend"):
        lnn.CausalSelfAttention(64, 4, backend="flash")
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        lnn.CausalSelfAttention(64, 4)(torch.randn(2, 64))
    with pytest.raises(TypeError, match="fuse_gelu"):
        lnn.Linear(8, 8, fuse_gelu="yes")
    with pytest.raises(ValueError, match="reduction"):
        lnn.FusedCrossEntropyLoss(reduction="avg")


@requires_cuda
@pytest.mark.cuda
def test_cuda_fp32_outside_autocast_is_rejected():
    layer = lnn.Linear(64, 64, device="cuda")
    with pytest.raises(TypeError, match="autocast"):
        layer(torch.randn(4, 64, device="cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert layer(torch.randn(4, 64, device="cuda")).dtype == torch.bfloat16
