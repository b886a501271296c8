# Output-buffer conventions (fresh, reused, in place) for encoder and LayerNorm against torch.compile. Run: python dev/experiments/out_buffers.py
"""Probe: does the output-buffer convention explain the last few percent between llmc and torch.compile in
bench_encoder / bench_layernorm at the 124M shape?

Those benches call llmc with out= buffers allocated once, outside the CUDA graph, and written by every call, while
torch.compile's function allocates its outputs inside the graph (the graph's private pool). Here both providers run
both ways, timed the same way (benchmarks/common.time_cuda, graph replays, inputs rotated past L2):
  llmc out=        the bench's way: one set of output buffers, written by every call
  llmc fresh       no out=: llmc.ops allocates, as torch.compile's function does
  compile fresh    the bench's torch.compile provider
  compile out=     torch.compile of the same math written into the same fixed buffers (out.copy_(...))
The four are timed in two rounds, in opposite orders, to see the noise.

Second part, --breakdown: torch.profiler's per-kernel device times of llmc's encoder_backward (validate=False)
and layernorm_backward, to see where their time goes (sort, kernels, reductions).

    python probe_out_buffers.py [--shapes 124M,1.5B] [--breakdown]
"""
from __future__ import annotations

import os
import sys
import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F

import llmc.ops as ops
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
from common import GPT2_SHAPES, compiled, copies_for, require_cuda, time_cuda

EPS = 1e-5
VOCAB, PADDED_VOCAB = 50257, 50304


def cases(B, T, C):
    """name -> (k input sets, {variant: fn(i)}) for the three ops."""
    N = B * T
    dev = dict(device="cuda")
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    out = {}

    k = copies_for(3 * 2 * N * C)
    ids = [torch.randint(0, VOCAB, (B, T), dtype=torch.int32, **dev) for _ in range(k)]
    ids64 = [i.long() for i in ids]
    wte, wpe = torch.randn(PADDED_VOCAB, C, **bf16), torch.randn(T, C, **bf16)
    eo = torch.empty(B, T, C, **bf16)
    enc = compiled(lambda i, te, pe: F.embedding(i, te) + pe)

    def enc_into(i, te, pe, o):
        o.copy_(F.embedding(i, te) + pe)

    enc_out = compiled(enc_into)
    out["encoder_forward"] = (k, {
        "llmc out=": lambda i: ops.encoder_forward(ids[i], wte, wpe, out=eo, validate=False),
        "llmc fresh": lambda i: ops.encoder_forward(ids[i], wte, wpe, validate=False),
        "compile fresh": lambda i: enc(ids64[i], wte, wpe),
        "compile out=": lambda i: enc_out(ids64[i], wte, wpe, eo),
    })

    k = copies_for(4 * 2 * N * C)
    xs = [torch.randn(N, C, **bf16) for _ in range(k)]
    ys = [torch.randn(N, C, **bf16) for _ in range(k)]
    w, b = torch.randn(C, **bf16), torch.randn(C, **bf16)
    lo, res = torch.empty(N, C, **bf16), torch.empty(N, C, **bf16)
    mean, rstd = torch.empty(N, **dev), torch.empty(N, **dev)
    ln = compiled(lambda x, w, b: torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, b, EPS))

    def ln_into(x, w, b, o, m, r):
        y, mu, rs = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, b, EPS)
        o.copy_(y)
        m.copy_(mu.view(-1))
        r.copy_(rs.view(-1))

    ln_out = compiled(ln_into)
    out["layernorm_forward"] = (k, {
        "llmc out=": lambda i: ops.layernorm_forward(xs[i], w, b, out=lo, mean=mean, rstd=rstd),
        "llmc fresh": lambda i: ops.layernorm_forward(xs[i], w, b),
        "compile fresh": lambda i: ln(xs[i], w, b),
        "compile out=": lambda i: ln_out(xs[i], w, b, lo, mean, rstd),
    })

    def fused(x1, x2, w, b):
        r = x1 + x2
        return (r, *torch.ops.aten.native_layer_norm(r, [r.shape[-1]], w, b, EPS))

    def fused_into(x1, x2, w, b, rr, o, m, r):
        s = x1 + x2
        y, mu, rs = torch.ops.aten.native_layer_norm(s, [s.shape[-1]], w, b, EPS)
        rr.copy_(s)
        o.copy_(y)
        m.copy_(mu.view(-1))
        r.copy_(rs.view(-1))

    fc, fc_out = compiled(fused), compiled(fused_into)
    out["fused_residual_layernorm_forward"] = (k, {
        "llmc out=": lambda i: ops.fused_residual_layernorm_forward(xs[i], ys[i], w, b, residual=res, out=lo,
                                                                    mean=mean, rstd=rstd),
        "llmc fresh": lambda i: ops.fused_residual_layernorm_forward(xs[i], ys[i], w, b),
        "compile fresh": lambda i: fc(xs[i], ys[i], w, b),
        "compile out=": lambda i: fc_out(xs[i], ys[i], w, b, res, lo, mean, rstd),
    })
    return out


def print_kernels(prof, iters, title):
    per = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    print(f"{title}: {sum(per.values()) / iters:.1f} us of kernels per call")
    for kname, us in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {us / iters:8.2f} us  {kname[:110]}")


def breakdown(B, T, C, label):
    """Per-kernel device microseconds per call of llmc's encoder_backward and layernorm_backward."""
    from torch.profiler import ProfilerActivity, profile
    N = B * T
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    k = copies_for(3 * 2 * N * C)
    ids = [torch.randint(0, VOCAB, (B, T), dtype=torch.int32, device="cuda") for _ in range(k)]
    douts = [torch.randn(B, T, C, **bf16) for _ in range(k)]
    dwte, dwpe = torch.zeros(PADDED_VOCAB, C, **bf16), torch.zeros(T, C, **bf16)
    xs = [torch.randn(N, C, **bf16) for _ in range(k)]
    w = torch.randn(C, **bf16)
    stats = [torch.ops.aten.native_layer_norm(x, [C], w, None, EPS)[1:] for x in xs]
    dw, db, dinp = torch.zeros_like(w), torch.zeros_like(w), torch.empty(N, C, **bf16)
    runs = {
        "encoder_backward": lambda i: ops.encoder_backward(douts[i], ids[i], dwte, dwpe, validate=False),
        "layernorm_backward": lambda i: ops.layernorm_backward(douts[i].view(N, C), xs[i], w, stats[i][0].view(N),
                                                               stats[i][1].view(N), dw, db, dinp=dinp),
    }
    iters = 40
    for name, fn in runs.items():
        for i in range(10):
            fn(i % k)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(iters):
                fn(i % k)
            torch.cuda.synchronize()
        print_kernels(prof, iters, f"\n{name} {label}")

    # encoder_backward with everything on one stream, or with dwpe on a side stream beside the sort and the dwte
    # kernels (llmc.ops's way, timed through llmc.ops too)
    ext = ops._ext()
    V = PADDED_VOCAB
    scratch = torch.empty(ext.encoder_backward_scratch_bytes(N, C, V), dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()

    def launch(i, s, wpe_s):
        ext.encoder_backward_sort(scratch.data_ptr(), scratch.numel(), ids[i].data_ptr(), N, C, V, s)
        ext.encoder_backward(dwte.data_ptr(), dwpe.data_ptr(), scratch.data_ptr(), scratch.numel(),
                             douts[i].data_ptr(), B, T, C, V, s, wpe_s)

    def serial(i):
        s = torch.cuda.current_stream().cuda_stream
        launch(i, s, s)

    def beside(i):
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        launch(i, main.cuda_stream, side.cuda_stream)
        main.wait_stream(side)

    variants = {"one stream": serial, "dwpe beside": beside, "llmc.ops": runs["encoder_backward"]}
    res = defaultdict(list)
    for order in (list(variants), list(variants)[::-1]):
        for v in order:
            res[v].append(time_cuda(variants[v], k) * 1e3)
    print(f"encoder_backward {label} graph replay: " + ", ".join(f"{v} {a:.1f}/{b:.1f} us"
                                                                for v, (a, b) in res.items()))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(iters):
            serial(i % k)
        torch.cuda.synchronize()
    print_kernels(prof, iters, f"encoder_backward {label}, one stream")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="124M,1.5B")
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--no-buffers", action="store_true", help="skip the first part (output-buffer conventions)")
    args = p.parse_args(argv)
    require_cuda()
    print(f"GPU: {torch.cuda.get_device_name()}")
    for name in args.shapes.split(","):
        s = GPT2_SHAPES[name]
        B, T, C = s["B"], s["T"], s["C"]
        for op, (k, variants) in ({} if args.no_buffers else cases(B, T, C)).items():
            order = list(variants)
            res = defaultdict(list)
            for rnd in (order, order[::-1]):
                for v in rnd:
                    res[v].append(time_cuda(variants[v], k) * 1e3)
            print(f"{op:34s} {name:5s} " + "  ".join(f"{v}: {a:.1f}/{b:.1f} us" for v, (a, b) in res.items()),
                  flush=True)
        if args.breakdown:
            breakdown(B, T, C, name)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
