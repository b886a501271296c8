# Where block-scaled matmul_fp8 leaves fp64 math with accumulate, bias or GELU: error statistics per variant. Run: python dev/experiments/fp8_epilogue_probe.py
"""The operands of tests/test_fp8_block.py's GEMM cases (every row of x and 128x128 tile of w on its own power of
two). For each variant prints the largest error, the largest excess over the test's bound, the value there, and
the least-squares fit err = a * bias (or a * start) to show whether the epilogue's input is scaled or dropped."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
import llmc.ops as ops  # noqa: E402
from llmc import reference  # noqa: E402
from test_fp8_block import _gemm_case  # noqa: E402


def report(name, out, exact, K, extra=None):
    o = out.double().cpu()
    err = o - exact
    bound = 2.0 ** -8 * exact.abs() + K * 2.0 ** -22 * exact.abs().max()
    excess = err.abs() - bound
    i = int(excess.argmax())
    r, c = divmod(i, exact.shape[1])
    line = (f"{name:28s} max|err| {err.abs().max().item():.4g}  max excess {excess.max().item():.4g} at ({r},{c}): "
            f"out {o[r, c].item():.6g} exact {exact[r, c].item():.6g}; rows with excess > 0: "
            f"{int((excess > 0).any(1).sum())}, cols: {int((excess > 0).any(0).sum())}")
    if extra is not None:
        e = extra.double().cpu().expand_as(err)
        a = (err * e).sum() / (e * e).sum()
        line += f"; err = {a.item():.4f} * input fits {1 - ((err - a * e).norm() / err.norm()).item():.3f}"
    print(line, flush=True)


def main():
    print(torch.cuda.get_device_name(), ops.build_info())
    for (N, K, M, seed) in ((128, 1600, 4800, 3), (132, 768, 3072, 4), (64, 768, 2304, 0)):
        x, w, xq, xs, wq, ws, exact = _gemm_case(N, K, M, True, "cuda", seed=seed)
        print(f"N={N} K={K} M={M}: |exact| max {exact.abs().max().item():.4g}")
        report("plain", ops.matmul_fp8(xq, wq, xs, ws), exact, K)
        start = (torch.randn(N, M) * 0.1).to(torch.bfloat16)
        out = start.clone().cuda()
        ops.matmul_fp8(xq, wq, xs, ws, out=out, accumulate=True)
        report("accumulate", out, exact + start.double(), K, start)
        report("accumulate minus start", out.double().cpu() - start.double(), exact, K)
        bias = (torch.randn(M) * 0.1).to(torch.bfloat16).cuda()
        out = ops.matmul_fp8(xq, wq, xs, ws, bias)
        report("bias", out, exact + bias.double().cpu(), K, bias)
        report("bias, out minus bias", out.double().cpu() - bias.double().cpu(), exact, K)
        pre = torch.empty(N, M, dtype=torch.bfloat16, device="cuda")
        g = ops.matmul_fp8(xq, wq, xs, ws, bias, gelu=True, pre_gelu=pre)
        report("gelu: pre", pre, exact + bias.double().cpu(), K, bias)
        ref = reference.gelu_forward(pre.float().cpu())
        print(f"{'gelu: out vs gelu(pre)':28s} max|diff| {(g.float().cpu() - ref).abs().max().item():.4g}")
        pre2 = torch.empty(N, M, dtype=torch.bfloat16, device="cuda")
        ops.matmul_fp8(xq, wq, xs, ws, gelu=True, pre_gelu=pre2)
        report("gelu, no bias: pre", pre2, exact, K)
    print("tuning log:")
    for line in ops.matmul_tuning_log()[-20:]:
        print("  " + line)


if __name__ == "__main__":
    main()
