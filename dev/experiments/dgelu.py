# cuBLASLt's DGELU epilogue against a plain GEMM + llmc's gelu_backward, at d12/d24/d48 shapes. Run: python dev/experiments/dgelu.py
"""fcproj's input gradient through the GELU: cuBLASLt's DGELU epilogue (what llmc runs) against the plain GEMM
followed by llmc's gelu_backward kernel in place, at the d12 / d24 / d48 shapes of bench_train. Session 8's d24
profile on an H200 showed the DGELU GEMM there as an sm80 CUTLASS kernel (cutlass_80_tensorop_..._dgelu) at about
340 TFLOP/s, the only algorithm cuBLASLt's heuristic offered; this measures what the unfused path would give.
Device time from CUDA graph replays (common.time_cuda); each side autotuned first, as the Trainer's calls are.

    python dev/experiments/dgelu.py
"""
import os
import sys
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import common
from llmc import ops

SHAPES = {"d12": (64 * 1024, 768), "d24": (32 * 1024, 1024), "d48": (8 * 1024, 1600)}


def main():
    common.require_cuda()
    torch.manual_seed(0)
    print(f"{common.gpu_name()}; fcproj: dout (N, C) @ W (C, 4C) -> (N, 4C), then * gelu'(pre)")
    for name, (N, C) in SHAPES.items():
        dout = torch.randn(N, C, device="cuda").bfloat16()
        w = (torch.randn(C, 4 * C, device="cuda") * 0.02).bfloat16()
        act = torch.randn(N, 4 * C, device="cuda").bfloat16()
        pre = torch.randn(N, 4 * C, device="cuda").bfloat16()
        dw = torch.zeros(C, 4 * C, device="cuda").bfloat16()
        fused_out, plain_out = torch.empty_like(pre), torch.empty_like(pre)

        def fused(i):
            ops.matmul_backward(dout, act, w, dw, dinp=fused_out, pre_gelu=pre)

        def plain(i):
            ops.matmul_backward(dout, act, w, dw, dinp=plain_out)
            ops.gelu_backward(plain_out, pre, dinp=plain_out)

        def dweight_only(i):
            ops.matmul_backward(dout, act, w, dw, compute_dinp=False)

        ms = {k: float(common.time_cuda(f, 1)) for k, f in
              (("fused", fused), ("plain", plain), ("dweight", dweight_only))}
        flops = 2.0 * N * C * 4 * C
        f_ms, p_ms = ms["fused"] - ms["dweight"], ms["plain"] - ms["dweight"]
        diff = (fused_out.float() - plain_out.float()).abs().max().item()
        scale = plain_out.float().abs().max().item()
        print(f"{name} N={N} C={C}: dinp with DGELU epilogue {f_ms:.4f} ms ({flops / f_ms / 1e9:.0f} TFLOP/s), "
              f"plain GEMM + gelu_backward {p_ms:.4f} ms; (dweight GEMM {ms['dweight']:.4f} ms subtracted from both); "
              f"max |fused - plain| {diff:.3g} of max |dinp| {scale:.3g}")
    print("tuning log:")
    for line in ops.matmul_tuning_log():
        print("  ", line)


if __name__ == "__main__":
    main()
