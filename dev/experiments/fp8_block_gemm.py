# Block-scaled FP8 GEMMs (forward, input and weight gradients) against bf16 for every linear of d12 and d48, with the quantizers' cost. Run: python dev/experiments/fp8_block_gemm.py [--csv OUT]
"""Per linear layer of a GPT-2 block (qkv, attproj, fc, fcproj) at d12 (N = 64 x 1024 tokens, C = 768) and d48
(N = 8 x 1024, C = 1600), on one GPU:

  bf16: matmul_forward (with bias) and matmul_backward (input gradient, weight gradient +=, bias gradient);
  fp8 block: x in 1x128 runs, w in 128x128 tiles (forward), dout in 1x128 runs and w's transposed copy (input
      gradient), dout's and x's transposed copies in 1x128 runs along the tokens (weight gradient, +=), and the
      quantizers that make them (x and dout: both copies in one pass; w: both copies, once per optimizer step);
  fp8 rows: one scale per row of each operand (cuBLASLt's outer-vector scaling; forward x by w, dinp dout by w's
      transpose, dweight dout's transpose by x's), precise and fast accumulation, and ops.fp8_quantize_rows;
  fp8 tensor: the per-tensor scaled forward with fast accumulation, for comparison.

Prints milliseconds and TFLOP/s per piece and a per-layer total for each mode, and the relative error of each FP8
product against bf16's; --csv appends the rows.
"""
from __future__ import annotations

import argparse
import csv
import os

import torch

import llmc.ops as ops
from fp8_gemm import median_ms  # this folder's per-tensor FP8 probe: CUDA-event median of 30 calls


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def linear_rows(model: str, N: int, C: int, name: str, K: int, M: int) -> list:
    g = torch.Generator(device="cuda").manual_seed(0)
    bf = dict(dtype=torch.bfloat16, device="cuda")
    x = torch.randn(N, K, generator=g, **bf)
    w = torch.randn(M, K, generator=g, **bf) * 0.02
    b = torch.randn(M, generator=g, **bf) * 0.02
    dy = torch.randn(N, M, generator=g, **bf) * 1e-3
    out = torch.empty(N, M, **bf)
    dx = torch.empty(N, K, **bf)
    dw = torch.zeros(M, K, **bf)
    db = torch.zeros(M, **bf)
    rows = []

    def row(piece, ms, flops=None, err=None):
        rows.append(dict(model=model, linear=name, N=N, K=K, M=M, piece=piece, ms=round(ms, 4),
                         tflops=round(flops / ms / 1e9, 1) if flops else "", rel_err=f"{err:.4f}" if err else ""))

    def attempt(piece, fn):  # a piece cuBLASLt cannot run is reported, not fatal
        try:
            fn()
        except (RuntimeError, ValueError) as e:
            print(f"{model} {name} {piece}: {str(e).splitlines()[0]}")

    gemm = 2.0 * N * K * M
    row("bf16 forward", median_ms(lambda: ops.matmul_forward(x, w, b, out=out)), gemm)
    ref_out = ops.matmul_forward(x, w, b).clone()
    row("bf16 backward (dinp, dweight, dbias)",
        median_ms(lambda: ops.matmul_backward(dy, x, w, dw, db, dinp=dx)), 2 * gemm)
    ref_dx = dy @ w
    ref_dw = dy.t() @ x

    xq, xs, xtq, xts = ops.fp8_quantize_blocks(x, transpose=True)
    wq, ws, wtq, wts = ops.fp8_quantize_blocks(w, tile=True, transpose=True)
    dq, ds, dtq, dts = ops.fp8_quantize_blocks(dy, transpose=True)
    row("fp8 quantize x (both copies)", median_ms(lambda: ops.fp8_quantize_blocks(x, transpose=True)))
    row("fp8 quantize dout (both copies)", median_ms(lambda: ops.fp8_quantize_blocks(dy, transpose=True)))
    row("fp8 quantize w (both copies, per step)", median_ms(lambda: ops.fp8_quantize_blocks(w, tile=True,
                                                                                             transpose=True)))
    def forward():
        o = ops.matmul_fp8(xq, wq, xs, ws, b, out=out)
        row("fp8 forward", median_ms(lambda: ops.matmul_fp8(xq, wq, xs, ws, b, out=out)), gemm, rel_err(o, ref_out))

    def forward_no_bias():
        o = ops.matmul_fp8(xq, wq, xs, ws, out=out)
        row("fp8 forward, no bias", median_ms(lambda: ops.matmul_fp8(xq, wq, xs, ws, out=out)), gemm,
            rel_err(o, ref_out - b))

    def dinp():
        o = ops.matmul_fp8(dq, wtq, ds, wts, out=dx)
        row("fp8 dinp", median_ms(lambda: ops.matmul_fp8(dq, wtq, ds, wts, out=dx)), gemm, rel_err(o, ref_dx))

    def dweight():
        dw.zero_()
        ops.matmul_fp8(dtq, xtq, dts, xts, out=dw, accumulate=True)
        err_dw = rel_err(dw, ref_dw)
        row("fp8 dweight +=", median_ms(lambda: ops.matmul_fp8(dtq, xtq, dts, xts, out=dw, accumulate=True)), gemm,
            err_dw)

    for piece, fn in (("forward", forward), ("forward, no bias", forward_no_bias), ("dinp", dinp),
                      ("dweight", dweight)):
        attempt(piece, fn)
    # Per-row (outer-vector) scales: forward x rows by w rows; dinp dout rows by the rows of w's transpose; dweight
    # the rows of dout's and x's transposes (along the tokens).
    xr, xrs, xtr, xtrs = ops.fp8_quantize_rows(x, transpose=True)
    wr, wrs, wtr, wtrs = ops.fp8_quantize_rows(w, transpose=True)
    dr, drs, dtr, dtrs = ops.fp8_quantize_rows(dy, transpose=True)
    row("fp8 rows quantize x (both copies)", median_ms(lambda: ops.fp8_quantize_rows(x, transpose=True)))
    row("fp8 rows quantize dout (both copies)", median_ms(lambda: ops.fp8_quantize_rows(dy, transpose=True)))
    row("fp8 rows quantize w (both copies, per step)", median_ms(lambda: ops.fp8_quantize_rows(w, transpose=True)))
    for fast in (False, True):
        tag = " (fast accum)" if fast else ""

        def rows_forward():
            o = ops.matmul_fp8(xr, wr, xrs, wrs, b, out=out, fast_accum=fast)
            row("fp8 rows forward" + tag, median_ms(lambda: ops.matmul_fp8(xr, wr, xrs, wrs, b, out=out,
                                                                          fast_accum=fast)), gemm, rel_err(o, ref_out))

        def rows_dinp():
            o = ops.matmul_fp8(dr, wtr, drs, wtrs, out=dx, fast_accum=fast)
            row("fp8 rows dinp" + tag, median_ms(lambda: ops.matmul_fp8(dr, wtr, drs, wtrs, out=dx, fast_accum=fast)),
                gemm, rel_err(o, ref_dx))

        def rows_dweight():
            dw.zero_()
            ops.matmul_fp8(dtr, xtr, dtrs, xtrs, out=dw, accumulate=True, fast_accum=fast)
            err_dw = rel_err(dw, ref_dw)
            row("fp8 rows dweight +=" + tag, median_ms(lambda: ops.matmul_fp8(dtr, xtr, dtrs, xtrs, out=dw,
                                                                              accumulate=True, fast_accum=fast)),
                gemm, err_dw)

        for piece, fn in (("rows forward" + tag, rows_forward), ("rows dinp" + tag, rows_dinp),
                          ("rows dweight" + tag, rows_dweight)):
            attempt(piece, fn)
    amax = ops.fp8_amax(x)
    x8, x_inv = ops.fp8_cast(x, amax)
    w8, w_inv = ops.fp8_cast(w, ops.fp8_amax(w))
    o = ops.matmul_fp8(x8, w8, x_inv, w_inv, b, out=out, fast_accum=True)
    row("fp8 tensor forward (fast accum)",
        median_ms(lambda: ops.matmul_fp8(x8, w8, x_inv, w_inv, b, out=out, fast_accum=True)), gemm,
        rel_err(o, ref_out))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", help="append the rows to this CSV")
    p.add_argument("--models", default="d12,d48")
    args = p.parse_args()
    shapes = {"d12": (64 * 1024, 768), "d48": (8 * 1024, 1600)}
    print(torch.cuda.get_device_name(), "cuBLASLt via llmc", ops.build_info())
    all_rows = []
    for model in args.models.split(","):
        N, C = shapes[model]
        totals = {"bf16": 0.0, "fp8 gemms": 0.0, "fp8 quantize x, dout": 0.0, "fp8 quantize w": 0.0,
                  "rows": 0.0, "rows fast": 0.0, "rows policy": 0.0, "rows quantize": 0.0}
        for name, K, M in (("qkv", C, 3 * C), ("attproj", C, C), ("fc", C, 4 * C), ("fcproj", 4 * C, C)):
            rows = linear_rows(model, N, C, name, K, M)
            all_rows += rows
            for r in rows:
                print(f"{model:4s} {name:8s} {r['piece']:40s} {r['ms']:8.4f} ms {str(r['tflops']):>7s} TFLOP/s "
                      f"{r['rel_err']}")
                piece = r["piece"]
                if piece.startswith("bf16"):
                    totals["bf16"] += r["ms"]
                elif piece in ("fp8 forward", "fp8 dinp", "fp8 dweight +="):  # (not the no-bias variant)
                    totals["fp8 gemms"] += r["ms"]
                elif piece.startswith("fp8 rows quantize"):
                    totals["rows quantize"] += r["ms"]
                elif piece.startswith("fp8 rows"):
                    fast = piece.endswith("(fast accum)")
                    totals["rows fast" if fast else "rows"] += r["ms"]
                    if fast != ("dweight" in piece):  # GPT(fp8="rows"): fast forward and dinp, precise dweight
                        totals["rows policy"] += r["ms"]
                elif piece.startswith("fp8 quantize w"):
                    totals["fp8 quantize w"] += r["ms"]
                elif piece.startswith("fp8 quantize"):
                    totals["fp8 quantize x, dout"] += r["ms"]
        fp8 = totals["fp8 gemms"] + totals["fp8 quantize x, dout"] + totals["fp8 quantize w"]
        print(f"{model}: per layer, bf16 {totals['bf16']:.3f} ms; fp8 {fp8:.3f} ms = gemms {totals['fp8 gemms']:.3f} "
              f"+ quantize x/dout {totals['fp8 quantize x, dout']:.3f} + quantize w {totals['fp8 quantize w']:.3f}; "
              f"ratio bf16/fp8 {totals['bf16'] / fp8:.3f} (gemms only {totals['bf16'] / max(totals['fp8 gemms'], 1e-9):.3f}); "
              f"bf16's backward includes the bias gradient, fp8's pieces do not")
        rows = totals["rows policy"] + totals["rows quantize"]
        print(f"{model}: per-row scales, gemms only: precise {totals['rows']:.3f} ms (bf16/rows "
              f"{totals['bf16'] / max(totals['rows'], 1e-9):.3f}), fast accum {totals['rows fast']:.3f} ms "
              f"({totals['bf16'] / max(totals['rows fast'], 1e-9):.3f}), GPT's policy {totals['rows policy']:.3f} ms "
              f"({totals['bf16'] / max(totals['rows policy'], 1e-9):.3f}); with the quantizers (all copies) "
              f"{rows:.3f} ms, ratio bf16/rows {totals['bf16'] / max(rows, 1e-9):.3f}")
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
            if new:
                w.writeheader()
            w.writerows(all_rows)


if __name__ == "__main__":
    main()
