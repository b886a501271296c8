"""The llmc ops in plain torch, computed in fp32.

This is the CPU backend of `llmc.ops` and the oracle the CUDA kernels are tested against. Every function
takes tensors of any float dtype, upcasts them to fp32, and returns fp32 results; accumulation into
existing buffers (+=) is done by `llmc.ops`, not here.
"""
from __future__ import annotations

import math

import torch

_GELU_SCALE = math.sqrt(2.0 / math.pi)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float()


# ---- gelu ----
def gelu_forward(inp: torch.Tensor) -> torch.Tensor:
    x = _f32(inp)
    return 0.5 * x * (1.0 + torch.tanh(_GELU_SCALE * (x + 0.044715 * x.pow(3))))


def gelu_backward(dout: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    x = _f32(inp)
    th = torch.tanh(_GELU_SCALE * (x + 0.044715 * x.pow(3)))
    dgelu = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * _GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
    return _f32(dout) * dgelu


# ---- encoder ----
def encoder_forward(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor) -> torch.Tensor:
    """out (B, T, C) = wte[idx] + wpe[:T]."""
    T = idx.shape[1]
    return _f32(wte)[idx.long()] + _f32(wpe)[:T]


def encoder_backward(dout: torch.Tensor, idx: torch.Tensor, vocab_size: int,
                     max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dwte (V, C), dwpe (maxT, C)): the gradients of encoder_forward, rows a token/position never used are 0."""
    B, T, C = dout.shape
    g = _f32(dout)
    dwte = torch.zeros(vocab_size, C, dtype=torch.float32, device=dout.device)
    dwte.index_add_(0, idx.reshape(-1).long(), g.reshape(B * T, C))
    dwpe = torch.zeros(max_seq_len, C, dtype=torch.float32, device=dout.device)
    dwpe[:T] = g.sum(0)
    return dwte, dwpe


# ---- layernorm ----
def layernorm_forward(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, mean, rstd) over the last dimension; biased variance, rstd = 1/sqrt(var + eps)."""
    x = _f32(inp)
    mean = x.mean(-1)
    xc = x - mean.unsqueeze(-1)
    rstd = torch.rsqrt((xc * xc).mean(-1) + eps)
    return xc * rstd.unsqueeze(-1) * _f32(weight) + _f32(bias), mean, rstd


def residual_forward(inp1: torch.Tensor, inp2: torch.Tensor) -> torch.Tensor:
    return _f32(inp1) + _f32(inp2)


def layernorm_backward(dout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dinp, dweight, dbias) from the saved mean and rstd."""
    g = _f32(dout)
    r = _f32(rstd).unsqueeze(-1)
    xhat = (_f32(inp) - _f32(mean).unsqueeze(-1)) * r
    dn = g * _f32(weight)
    dinp = r * (dn - dn.mean(-1, keepdim=True) - xhat * (dn * xhat).mean(-1, keepdim=True))
    C = g.shape[-1]
    g_rows, xhat_rows = g.reshape(-1, C), xhat.reshape(-1, C)
    return dinp, (g_rows * xhat_rows).sum(0), g_rows.sum(0)

# ---- matmul ----
def matmul_forward(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """inp (..., K) @ weight (M, K)^T + bias (M): the linear layer's output, before any GELU."""
    out = _f32(inp) @ _f32(weight).t()
    return out if bias is None else out + _f32(bias)


def matmul_backward(dout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor,
                    pre_gelu: torch.Tensor | None = None):
    """(dinp, dweight, dbias) of out = inp @ weight^T + bias. With pre_gelu (shaped like inp), inp was
    gelu(pre_gelu) and dinp is the gradient with respect to pre_gelu."""
    dinp = _f32(dout) @ _f32(weight)
    if pre_gelu is not None:
        dinp = gelu_backward(dinp, pre_gelu)
    rows = _f32(dout).reshape(-1, dout.shape[-1])
    return dinp, rows.t() @ _f32(inp).reshape(-1, inp.shape[-1]), rows.sum(0)


# ---- fp8 ----
def fp8_amax(x: torch.Tensor) -> torch.Tensor:
    return _f32(x).abs().max() if x.numel() else torch.zeros((), dtype=torch.float32, device=x.device)


def fp8_cast(x: torch.Tensor, amax_ref: torch.Tensor, dtype: torch.dtype, fp8_max: float):
    """(q, scale_inv): q = saturate(x * s) in dtype, s = fp8_max / amax_ref (1 when amax_ref is 0 or not finite),
    all in fp32 (as the kernel rounds)."""
    a = amax_ref.float().reshape(())
    ok = (a > 0) & torch.isfinite(a)
    s = torch.where(ok, torch.tensor(fp8_max, dtype=torch.float32, device=a.device) / torch.where(ok, a, 1.0),
                    torch.ones_like(a))
    q = (_f32(x) * s).clamp(-fp8_max, fp8_max).to(dtype)
    return q, 1.0 / s


def matmul_fp8(x: torch.Tensor, w: torch.Tensor, x_scale_inv: torch.Tensor, w_scale_inv: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """(x @ w^T) * x_scale_inv * w_scale_inv [+ bias] in fp32 from FP8 x, w."""
    out = (x.float() @ w.float().t()) * (x_scale_inv.float() * w_scale_inv.float())
    return out if bias is None else out + _f32(bias)


FP8_BLOCK = 128  # the side of a block-scaled FP8 operand's scaling blocks (1x128 runs or 128x128 tiles)


def _pad_to_blocks(xf: torch.Tensor, rows: bool) -> torch.Tensor:
    """xf (..., R, K) zero-padded to whole blocks of FP8_BLOCK along K (and along R when rows)."""
    R, K = xf.shape[-2], xf.shape[-1]
    pad_r = -R % FP8_BLOCK if rows else 0
    return torch.nn.functional.pad(xf, (0, -K % FP8_BLOCK, 0, pad_r))


def _abs_ignoring_nan(x: torch.Tensor) -> torch.Tensor:
    """|x| in fp32 with NaN as 0, so an amax ignores NaNs as the kernels' fmaxf does."""
    return _f32(x).abs().nan_to_num(nan=0.0, posinf=float("inf"))


def fp8_block_amax(x: torch.Tensor, tile: bool) -> torch.Tensor:
    """max |x| per block of x (..., R, K): (..., R, ceil(K/128)) for 1x128 runs of each row, (..., ceil(R/128),
    ceil(K/128)) for 128x128 tiles."""
    xp = _pad_to_blocks(_abs_ignoring_nan(x), tile)
    *lead, Rp, Kp = xp.shape
    kb = Kp // FP8_BLOCK
    if tile:
        return xp.reshape(*lead, Rp // FP8_BLOCK, FP8_BLOCK, kb, FP8_BLOCK).amax(dim=(-3, -1))
    return xp.reshape(*lead, Rp, kb, FP8_BLOCK).amax(dim=-1)


def fp8_block_scale(amax: torch.Tensor) -> torch.Tensor:
    """The power-of-two scale of a block with this amax: the largest 2^e <= 448 / amax, at most 2^64; 1 when amax
    is 0 or not finite."""
    a = amax.float()
    ok = (a > 0) & torch.isfinite(a)
    v = torch.minimum(torch.tensor(448.0) / torch.where(ok, a, torch.ones_like(a)), torch.tensor(2.0 ** 64))
    _, e = torch.frexp(v)
    return torch.where(ok, torch.ldexp(torch.ones_like(v), e - 1), torch.ones_like(v))


def _expand_blocks(s: torch.Tensor, R: int, K: int, tile: bool) -> torch.Tensor:
    """Per-block values s (fp8_block_amax's shape) repeated over their blocks' elements: (..., R, K)."""
    e = s.repeat_interleave(FP8_BLOCK, dim=-1)[..., :K]
    return e.repeat_interleave(FP8_BLOCK, dim=-2)[..., :R, :] if tile else e


def fp8_quantize_blocks(x: torch.Tensor, tile: bool):
    """(q, scale_inv): x (..., R, K) in e4m3 with one power-of-two scale per block (fp8_block_amax's blocks), q =
    e4m3(x * scale), and scale_inv = 1 / scale per block (fp8_block_amax's shape)."""
    R, K = x.shape[-2], x.shape[-1]
    scale = fp8_block_scale(fp8_block_amax(x, tile))
    q = (_f32(x) * _expand_blocks(scale, R, K, tile)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, 1.0 / scale


def fp8_quantize_rows(x: torch.Tensor):
    """(q, scale_inv): x (..., R, K) in e4m3 with one power-of-two scale per row (fp8_block_scale of the row's
    amax), and scale_inv (..., R) = 1 / scale, the per-row (outer vector) scaling matmul_fp8 takes."""
    scale = fp8_block_scale(_abs_ignoring_nan(x).amax(dim=-1))
    q = (_f32(x) * scale[..., None]).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, 1.0 / scale


def fp8_dequantize_blocks(q: torch.Tensor, scale_inv: torch.Tensor, tile: bool) -> torch.Tensor:
    """fp32 values of a block-scaled q (..., R, K): q * scale_inv of its block."""
    return q.float() * _expand_blocks(scale_inv.float(), q.shape[-2], q.shape[-1], tile)


# ---- attention ----
def _attention_scores(qkv: torch.Tensor):
    """q, k, v (B, NH, T, HS) in fp32 from qkv (B, T, 3, NH, HS), and the scaled causal scores (B, NH, T, T)
    with the future masked to -inf."""
    q, k, v = _f32(qkv).permute(2, 0, 3, 1, 4).unbind(0)
    T, HS = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HS))
    future = torch.ones(T, T, dtype=torch.bool, device=qkv.device).triu(1)
    return q, k, v, scores.masked_fill(future, float("-inf"))


def attention_forward(qkv: torch.Tensor):
    """Causal softmax(QK^T/sqrt(HS))V: out (B, T, NH, HS) and stats (B, NH, T), the log-sum-exp of each row's
    scaled, masked scores."""
    _, _, v, scores = _attention_scores(qkv)
    stats = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - stats.unsqueeze(-1)) @ v
    return out.transpose(1, 2), stats


def attention_backward(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor):
    """dqkv (B, T, 3, NH, HS) from the forward's out and stats, by the formulas the kernels use:
    dS = P * (dout V^T - rowsum(dout * out)), dQ = dS K / sqrt(HS), dK = dS^T Q / sqrt(HS), dV = P^T dout."""
    q, k, v, scores = _attention_scores(qkv)
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = torch.exp(scores - _f32(stats).unsqueeze(-1))
    g = _f32(dout).transpose(1, 2)
    delta = (g * _f32(out).transpose(1, 2)).sum(dim=-1, keepdim=True)
    ds = p * (g @ v.transpose(-2, -1) - delta)
    dq = (ds @ k) * scale
    dk = (ds.transpose(-2, -1) @ q) * scale
    dv = p.transpose(-2, -1) @ g
    return torch.stack((dq, dk, dv)).permute(1, 3, 0, 2, 4)


# ---- fused_classifier ----
def fused_classifier(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                     dloss: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, dlogits): cross-entropy of each row over the first vocab_size columns and its gradient
    (softmax - onehot) * dloss. Rows whose target is -1 get loss 0 and zero gradient; padded columns zero."""
    valid = targets >= 0
    picked = torch.where(valid, targets, 0).long().unsqueeze(-1)
    logp = torch.log_softmax(_f32(logits)[..., :vocab_size], dim=-1)
    losses = torch.where(valid, -logp.gather(-1, picked).squeeze(-1), 0.0)
    grad = logp.exp().scatter_add_(-1, picked, torch.full_like(picked, -1.0, dtype=torch.float32))
    dlogits = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    dlogits[..., :vocab_size] = grad * (dloss * valid.unsqueeze(-1))
    return losses, dlogits


# ---- adamw ----
def adamw_update(w: torch.Tensor, grads: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, lr: float,
                 beta1: float, beta2: float, eps: float, weight_decay: float, step: int, grad_scale: float,
                 tensor_sizes, tensor_decay) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW step (torch.optim.AdamW's math) on a flat range made of tensors of tensor_sizes; weight decay
    only where tensor_decay is set. Returns the new (w, m, v) in fp32."""
    g = _f32(grads) * grad_scale
    m = beta1 * _f32(m) + (1.0 - beta1) * g
    v = beta2 * _f32(v) + (1.0 - beta2) * g * g
    mhat = m / (1.0 - beta1 ** step)
    vhat = v / (1.0 - beta2 ** step)
    decay = torch.repeat_interleave(torch.tensor([weight_decay if d else 0.0 for d in tensor_decay]),
                                    torch.tensor(list(tensor_sizes), dtype=torch.long)).to(w.device).reshape(w.shape)
    w = _f32(w)
    return w - lr * (mhat / (vhat.sqrt() + eps) + decay * w), m, v


# ---- global_norm ----
# Elements that one thread sums. torch's .sum() of a whole big tensor keeps one partial sum per thread, so its last
# bits depend on the thread count, and this norm sets the clipping factor of every training step. A sum with
# several outputs is split over the outputs only, and a single block is below torch's parallel grain (32768
# elements), so each block sum is the same on any thread count.
_NORM_BLOCK = 4096


def global_norm_squared(x: torch.Tensor) -> torch.Tensor:
    """sum(x^2) over all elements, shape (1,), with the same bits whatever torch's thread count: per block of
    _NORM_BLOCK elements (the last one zero-padded), then the block sums added exactly (math.fsum)."""
    flat = _f32(x).reshape(-1)
    blocks = torch.zeros(-(-flat.numel() // _NORM_BLOCK), _NORM_BLOCK, dtype=torch.float32, device=x.device)
    blocks.view(-1)[:flat.numel()] = flat
    total = math.fsum(blocks.square_().sum(1).tolist())
    return torch.tensor([total], dtype=torch.float32, device=x.device)
