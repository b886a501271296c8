"""Minimal cuDNN attention call for debugging the build on a GPU machine: python debug_attention.py [pre]
pre: none | matmul | sdpa  (what to run first in the process)."""
import sys

import torch
import torch.nn.functional as F

import llmc.ops as ops

pre = sys.argv[1] if len(sys.argv) > 1 else "none"
if pre == "matmul":
    a = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    ops.matmul_forward(a, a)
elif pre == "sdpa":
    q = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.CUDNN_ATTENTION]):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
torch.cuda.synchronize()
print("pre done:", pre, flush=True)
for B, T, NH, HS in [(2, 129, 3, 64), (1, 1, 1, 64), (4, 1024, 12, 64)]:
    qkv = torch.randn(B, T, 3, NH, HS, device="cuda", dtype=torch.bfloat16)
    out, stats = ops.attention_forward(qkv, backend="cudnn")
    torch.cuda.synchronize()
    print("forward ok", (B, T, NH, HS), flush=True)
    dq = ops.attention_backward(torch.randn_like(out), qkv, out, stats, backend="cudnn")
    torch.cuda.synchronize()
    print("backward ok", (B, T, NH, HS), flush=True)
