"""LayerNorm forward, fused residual + LayerNorm forward, LayerNorm backward: llmc vs torch eager vs
torch.compile at GPT-2 124M and 1.5B shapes (N = B*T rows of C).

Bytes counted (each tensor once; the C-sized parameters are negligible and left out):
  forward:        inp (2 N C) + out (2 N C) + mean, rstd (8 N).
  fused residual: inp1, inp2 (4 N C) + residual, out (4 N C) + mean, rstd (8 N).
  backward:       dout, inp (4 N C) + dinp (2 N C) + mean, rstd (8 N). llmc accumulates dweight/dbias (+=),
                  torch (aten.native_layer_norm_backward, what autograd runs) writes fresh ones.
torch.compile of F.layer_norm returns the normalized output only; "torch.compile +stats" is the same math with
mean and rstd as outputs too (aten.native_layer_norm), as llmc's forward writes them for the backward.
"""
import torch
import torch.nn.functional as F

import llmc.ops as ops
from common import GPT2_SHAPES, Recorder, compiled, copies_for, parse_args, require_cuda, time_cuda

EPS = 1e-5


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)

    def fwd_eager(x, w, b):
        return F.layer_norm(x, (x.shape[-1],), w, b, EPS)

    def fused_eager(x1, x2, w, b):
        r = x1 + x2
        return r, F.layer_norm(r, (r.shape[-1],), w, b, EPS)

    # The same math with the saved statistics as outputs too, as llmc's forward writes them (what a training
    # step's forward has to keep for the backward): provider "torch.compile +stats".
    def fwd_stats(x, w, b):
        return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, b, EPS)

    def fused_stats(x1, x2, w, b):
        r = x1 + x2
        return (r, *torch.ops.aten.native_layer_norm(r, [r.shape[-1]], w, b, EPS))

    def bwd_eager(dout, x, mean, rstd, w, b):
        return torch.ops.aten.native_layer_norm_backward(dout, x, [x.shape[-1]], mean, rstd, w, b,
                                                         [True, True, True])

    fwd_comp, fused_comp, bwd_comp = compiled(fwd_eager), compiled(fused_eager), compiled(bwd_eager)
    fwd_stats_comp, fused_stats_comp = compiled(fwd_stats), compiled(fused_stats)
    for name in args.shapes.split(","):
        s = GPT2_SHAPES[name]
        N, C = s["B"] * s["T"], s["C"]
        label = f"{name} ({N}x{C})"
        bf16 = dict(device="cuda", dtype=torch.bfloat16)
        k = copies_for(4 * 2 * N * C)
        xs = [torch.randn(N, C, **bf16) for _ in range(k)]
        ys = [torch.randn(N, C, **bf16) for _ in range(k)]
        w, b = torch.randn(C, **bf16), torch.randn(C, **bf16)
        out, residual = torch.empty(N, C, **bf16), torch.empty(N, C, **bf16)
        mean = torch.empty(N, device="cuda", dtype=torch.float32)
        rstd = torch.empty_like(mean)

        fwd_bytes = 4 * N * C + 8 * N
        rec.add("layernorm_forward", label, "llmc",
                time_cuda(lambda i: ops.layernorm_forward(xs[i], w, b, out=out, mean=mean, rstd=rstd), k), fwd_bytes)
        rec.add("layernorm_forward", label, "torch", time_cuda(lambda i: fwd_eager(xs[i], w, b), k), fwd_bytes)
        if not args.no_compile:
            rec.add("layernorm_forward", label, "torch.compile", time_cuda(lambda i: fwd_comp(xs[i], w, b), k),
                    fwd_bytes)
            rec.add("layernorm_forward", label, "torch.compile +stats",
                    time_cuda(lambda i: fwd_stats_comp(xs[i], w, b), k), fwd_bytes)

        fused_bytes = 8 * N * C + 8 * N
        rec.add("fused_residual_layernorm_forward", label, "llmc",
                time_cuda(lambda i: ops.fused_residual_layernorm_forward(xs[i], ys[i], w, b, residual=residual,
                                                                         out=out, mean=mean, rstd=rstd), k),
                fused_bytes)
        rec.add("fused_residual_layernorm_forward", label, "torch",
                time_cuda(lambda i: fused_eager(xs[i], ys[i], w, b), k), fused_bytes)
        if not args.no_compile:
            rec.add("fused_residual_layernorm_forward", label, "torch.compile",
                    time_cuda(lambda i: fused_comp(xs[i], ys[i], w, b), k), fused_bytes)
            rec.add("fused_residual_layernorm_forward", label, "torch.compile +stats",
                    time_cuda(lambda i: fused_stats_comp(xs[i], ys[i], w, b), k), fused_bytes)

        # ys[i] plays dout; the saved statistics come from each input's own forward
        stats = [torch.ops.aten.native_layer_norm(x, [C], w, b, EPS)[1:] for x in xs]
        ours = [(m.view(N), r.view(N)) for m, r in stats]
        dweight, dbias, dinp = torch.zeros_like(w), torch.zeros_like(b), torch.empty(N, C, **bf16)
        bwd_bytes = 6 * N * C + 8 * N
        rec.add("layernorm_backward", label, "llmc",
                time_cuda(lambda i: ops.layernorm_backward(ys[i], xs[i], w, *ours[i], dweight, dbias, dinp=dinp), k),
                bwd_bytes)
        rec.add("layernorm_backward", label, "torch",
                time_cuda(lambda i: bwd_eager(ys[i], xs[i], *stats[i], w, b), k), bwd_bytes)
        if not args.no_compile:
            rec.add("layernorm_backward", label, "torch.compile",
                    time_cuda(lambda i: bwd_comp(ys[i], xs[i], *stats[i], w, b), k), bwd_bytes)
        del xs, ys, stats, ours
    rec.save()


if __name__ == "__main__":
    main()
