# What torch.compile emits for the elementwise ops, against llmc's kernels (launch shapes, traffic). Run: python dev/experiments/inductor.py OUTDIR [--loop]
"""Probe: what does torch.compile (Inductor) emit for the elementwise ops where it still beats llmc (issue 2), and
how do its kernels differ from llmc's in launch shape and DRAM traffic?

1. Writes Inductor's generated code (Triton source with its launch heuristics) for the same math as
   bench_encoder.py / bench_layernorm.py to OUTDIR/inductor_<op>_<shape>.py.
2. With --loop, then calls llmc's kernel and the compiled one 3 times each, alternating, so that Nsight Compute can
   compare them (kernel names tell them apart: llmc's are C++ names, Inductor's start with triton_), e.g.

       ncu --clock-control none --profile-from-start off \
           --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,... \
           python3 dev/experiments/inductor.py OUTDIR --loop

    python3 dev/experiments/inductor.py OUTDIR [--loop] [--shapes 124M,1.5B]
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import llmc.ops as ops

EPS = 1e-5
SHAPES = {"124M": (64, 1024, 768), "1.5B": (8, 1024, 1600)}
VOCAB, PADDED_VOCAB = 50257, 50304


def encoder(ids, wte, wpe):
    return F.embedding(ids, wte) + wpe


def ln_stats(x, w, b):
    return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, b, EPS)


def fused_stats(x1, x2, w, b):
    r = x1 + x2
    return (r, *torch.ops.aten.native_layer_norm(r, [r.shape[-1]], w, b, EPS))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir")
    p.add_argument("--loop", action="store_true", help="after writing the code, run each kernel 3 times (for ncu)")
    p.add_argument("--shapes", default="124M,1.5B")
    args = p.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    for name in args.shapes.split(","):
        B, T, C = SHAPES[name]
        N = B * T
        ids = torch.randint(0, VOCAB, (B, T), dtype=torch.int32, device="cuda")
        wte, wpe = torch.randn(PADDED_VOCAB, C, **bf16), torch.randn(T, C, **bf16)
        x1, x2 = torch.randn(N, C, **bf16), torch.randn(N, C, **bf16)
        w, b = torch.randn(C, **bf16), torch.randn(C, **bf16)
        cases = {
            "encoder_forward": (encoder, (ids.long(), wte, wpe),
                                lambda: ops.encoder_forward(ids, wte, wpe, validate=False)),
            "layernorm_forward": (ln_stats, (x1, w, b), lambda: ops.layernorm_forward(x1, w, b)),
            "fused_residual_layernorm_forward": (fused_stats, (x1, x2, w, b),
                                                 lambda: ops.fused_residual_layernorm_forward(x1, x2, w, b)),
        }
        for op, (fn, inputs, ours) in cases.items():
            comp = torch.compile(fn, dynamic=False)
            _, codes = run_and_get_code(comp, *inputs)
            path = os.path.join(args.outdir, f"inductor_{op}_{name}.py")
            with open(path, "w") as f:
                f.write("\n\n# ---- next module ----\n\n".join(codes))
            print(f"{op} {name}: {len(codes)} module(s) -> {path}", flush=True)
            if args.loop:
                torch.cuda.synchronize()
                torch.cuda.profiler.start()  # ncu --profile-from-start off: only these calls, not the compilation
                for _ in range(3):
                    ours()
                    comp(*inputs)
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
