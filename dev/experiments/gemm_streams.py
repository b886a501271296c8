# A linear layer's two backward GEMMs on two streams against one after the other. Run: python dev/experiments/gemm_streams.py
"""Probe: do a linear layer's two backward GEMMs (dinp = dout @ W and dweight += dout^T @ inp) finish sooner side by
side on two streams than one after the other? They are independent (both only read dout), and at GPT-2's
shapes, d48's 8192-token micro-batch above all, a GEMM's last wave of tiles leaves SMs idle that the other GEMM's
tiles could use. llmc's matmul.cu shares one cuBLASLt workspace per device, so this is timed with torch's own
cuBLAS GEMMs (a workspace per stream) on the same shapes, bf16 in, fp32 accumulate, dweight accumulated as llmc
does (addmm_, beta = 1). Each pair: CUDA events around 50 iterations after warm-up, median of 5 such runs, one
stream vs. a fork/join over two streams (dweight on the second).

    python probe_gemm_streams.py [--models d12:64,d24:32,d48:8]
"""
from __future__ import annotations

import argparse
import statistics

import torch


def timed(fn, iters: int = 50, runs: int = 5) -> float:
    """Milliseconds per call of fn (which may use several streams, joined back to the current one)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / iters)
    return statistics.median(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="d12:64,d24:32,d48:8")
    args = p.parse_args(argv)
    widths = {"d12": 768, "d24": 1024, "d36": 1280, "d48": 1600}
    kw = dict(device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    print(f"{'model':6s} {'linear':8s} {'N':>6s} {'in':>5s} {'out':>5s} {'dinp ms':>8s} {'dW ms':>8s} "
          f"{'serial':>8s} {'2 streams':>9s} {'saved':>6s}")
    for spec in args.models.split(","):
        name, B = spec.split(":")
        C, N = widths[name], int(B) * 1024
        total_serial = total_pair = 0.0
        for linear, (fan_in, fan_out) in (("qkv", (C, 3 * C)), ("attproj", (C, C)), ("fc", (C, 4 * C)),
                                          ("fcproj", (4 * C, C))):
            dout = torch.randn(N, fan_out, **kw)
            inp = torch.randn(N, fan_in, **kw)
            w = torch.randn(fan_out, fan_in, **kw) * 0.02
            dinp = torch.empty(N, fan_in, **kw)
            dw = torch.zeros(fan_out, fan_in, **kw)

            def dinp_gemm():
                torch.mm(dout, w, out=dinp)

            def dw_gemm():
                dw.addmm_(dout.t(), inp)

            def serial():
                dinp_gemm()
                dw_gemm()

            def pair():
                main_stream = torch.cuda.current_stream()
                side.wait_stream(main_stream)
                with torch.cuda.stream(side):
                    dw_gemm()
                dinp_gemm()
                main_stream.wait_stream(side)

            t_dinp, t_dw, t_serial, t_pair = timed(dinp_gemm), timed(dw_gemm), timed(serial), timed(pair)
            total_serial += t_serial
            total_pair += t_pair
            print(f"{name:6s} {linear:8s} {N:6d} {fan_in:5d} {fan_out:5d} {t_dinp:8.4f} {t_dw:8.4f} {t_serial:8.4f} "
                  f"{t_pair:9.4f} {100 * (1 - t_pair / t_serial):5.1f}%", flush=True)
            del dout, inp, w, dinp, dw
        L = {"d12": 12, "d24": 24, "d36": 36, "d48": 48}[name]
        print(f"{name:6s} per step: {L * total_serial:.2f} ms serial, {L * total_pair:.2f} ms on two streams "
              f"(saved {L * (total_serial - total_pair):.2f} ms; < 0: slower)")


if __name__ == "__main__":
    main()
