"""Causal attention forward/backward: llmc through cuDNN ("llmc") and its plain CUDA kernels ("llmc.cuda") vs
torch SDPA's flash ("torch.sdpa.flash") and cuDNN ("torch.sdpa.cudnn") backends, at the GPT-2 124M
(B=64, T=1024, NH=12, HS=64) and 1.5B (B=8, T=1024, NH=25, HS=64) shapes.

FLOP convention (FlashAttention's for causal attention): the forward's two matmuls, Q K^T and P V, are
4*B*NH*T*T*HS flops unmasked, of which half is counted; the backward counts 2.5x the forward (five matmuls).
llmc reads Q, K, V from the (B, T, 3, NH, HS) QKV buffer and writes dqkv in that layout; torch gets the same
buffer as (B, NH, T, HS) views (nanoGPT's split + transpose) and returns dq, dk, dv as separate tensors.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import llmc.ops as ops
from common import GPT2_SHAPES, Recorder, copies_for, parse_args, require_cuda, time_cuda


def heads(qkv):
    """q, k, v as (B, NH, T, HS) views of qkv (B, T, 3, NH, HS)."""
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def bench_llmc(rec, label, provider, backend, qkvs, douts, flops):
    k = len(qkvs)
    saved = [ops.attention_forward(qkv, backend=backend) for qkv in qkvs]
    out, stats = torch.empty_like(saved[0][0]), torch.empty_like(saved[0][1])
    dqkv = torch.empty_like(qkvs[0])
    rec.add("attention_forward", label, provider,
            time_cuda(lambda i: ops.attention_forward(qkvs[i], out=out, stats=stats, backend=backend), k),
            flops=flops)
    rec.add("attention_backward", label, provider,
            time_cuda(lambda i: ops.attention_backward(douts[i], qkvs[i], *saved[i], dqkv=dqkv, backend=backend), k,
                      graph=False), flops=2.5 * flops)


def bench_torch(rec, label, provider, sdp_backend, qkvs, douts, flops):
    k = len(qkvs)
    with sdpa_kernel([sdp_backend]):
        views = [heads(qkv) for qkv in qkvs]
        rec.add("attention_forward", label, provider,
                time_cuda(lambda i: F.scaled_dot_product_attention(*views[i], is_causal=True), k), flops=flops)
        # One recorded forward per input; autograd.grad then runs just the attention backward each time. That call
        # (on a forward recorded outside the capture) failed to capture on torch 2.11, so every backward row
        # (llmc's too) is timed per call: at ~1 ms a call the host's share is small, and it stays like for like.
        graphs = []
        for qkv in qkvs:
            qkv_views = heads(qkv.detach().requires_grad_())
            graphs.append((F.scaled_dot_product_attention(*qkv_views, is_causal=True), qkv_views))
        grads = [dout.transpose(1, 2) for dout in douts]
        rec.add("attention_backward", label, provider,
                time_cuda(lambda i: torch.autograd.grad(graphs[i][0], graphs[i][1], grads[i], retain_graph=True), k,
                          graph=False), flops=2.5 * flops)


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)
    for name in args.shapes.split(","):
        s = GPT2_SHAPES[name]
        B, T, NH = s["B"], s["T"], s["NH"]
        HS = s["C"] // NH
        label = f"{name} (B={B},T={T},NH={NH},HS={HS})"
        flops = 0.5 * 4 * B * NH * T * T * HS
        k = copies_for(2 * B * T * 4 * NH * HS)  # qkv + dout, bf16
        qkvs = [torch.randn(B, T, 3, NH, HS, device="cuda", dtype=torch.bfloat16) for _ in range(k)]
        douts = [torch.randn(B, T, NH, HS, device="cuda", dtype=torch.bfloat16) for _ in range(k)]
        print(f"{label}: llmc backend='auto' picks {ops.attention_backend(B, T, NH, HS)!r}")
        if ops._ext().has_cudnn():
            bench_llmc(rec, label, "llmc", "cudnn", qkvs, douts, flops)
        else:
            print("llmc was built without cuDNN attention: no 'llmc' (cuDNN) rows")
        bench_llmc(rec, label, "llmc.cuda", "cuda", qkvs, douts, flops)
        for provider, sdp_backend in (("torch.sdpa.flash", SDPBackend.FLASH_ATTENTION),
                                      ("torch.sdpa.cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                bench_torch(rec, label, provider, sdp_backend, qkvs, douts, flops)
            except RuntimeError as e:  # a torch build or GPU without that SDPA backend
                print(f"{provider} unavailable: {e}")
        del qkvs, douts
        torch.cuda.empty_cache()
    rec.save()


if __name__ == "__main__":
    main()
