# FP8 GEMMs (torch._scaled_mm) against bf16 for the MLP's forward, with the casts' cost. Run: python dev/experiments/fp8_gemm.py
"""FP8 (torch._scaled_mm, cuBLASLt underneath) against bf16 for the MLP's forward GEMMs of d12 and d48, with the
cost of casting the input (torch's .to(float8)) and of its amax: whether FP8 can pay for its casts.

    python probe_fp8_gemm.py

Session 4 on an H100: FP8 ran these GEMMs 1.5-2.1x faster than bf16 (d12 fc 0.427 -> 0.265 ms, fcproj 0.408 ->
0.227; d48 fc 0.232 -> 0.139, fcproj 0.255 -> 0.122 with fast accumulation); casting fcproj's (N, 4C) input
costs 0.221 ms at d12 (as much as FP8 saves there), 0.058 ms at d48.
"""
import statistics

import torch


def median_ms(fn, n: int = 30) -> float:
    for _ in range(5):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, stop in events:
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(stop) for start, stop in events)


def main():
    one = torch.ones((), device="cuda")
    for name, N, C in (("d12", 65536, 768), ("d48", 8192, 1600)):
        for M, K, what in ((4 * C, C, "fc fwd"), (C, 4 * C, "fcproj fwd")):
            x = torch.randn(N, K, device="cuda").bfloat16()
            w = (torch.randn(M, K, device="cuda") / K ** 0.5).bfloat16()
            x8, w8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            flops = 2 * N * M * K
            bf16 = median_ms(lambda: x @ w.t())
            fp8 = median_ms(lambda: torch._scaled_mm(x8, w8.t(), one, one, out_dtype=torch.bfloat16))
            fast = median_ms(lambda: torch._scaled_mm(x8, w8.t(), one, one, out_dtype=torch.bfloat16,
                                                      use_fast_accum=True))
            cast = median_ms(lambda: x.to(torch.float8_e4m3fn))
            amax = median_ms(lambda: x.abs().amax())
            print(f"{name} {what} N={N} M={M} K={K}: bf16 {bf16:.3f} ms ({flops / bf16 / 1e9:.0f} TFLOP/s), fp8 "
                  f"{fp8:.3f} ms ({flops / fp8 / 1e9:.0f}), fp8 fast accumulation {fast:.3f} ms "
                  f"({flops / fast / 1e9:.0f}); cast of the input {cast:.3f} ms, its amax {amax:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
