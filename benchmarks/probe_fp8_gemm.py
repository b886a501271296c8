"""FP8 (torch._scaled_mm, cuBLASLt underneath) against bf16 for the MLP's forward GEMMs of d12 and d48, with the
cost of casting the input (torch's .to(float8)) and of its amax: whether FP8 can pay for its casts.

    python probe_fp8_gemm.py

Session 4 on an H100: FP8 ran these GEMMs 1.5-2.1x faster than bf16 (d12 fc 0.427 -> 0.265 ms, fcproj 0.408 ->
0.227; d48 fc 0.232 -> 0.139, fcproj 0.255 -> 0.122 with fast accumulation); casting fcproj's (N, 4C) input
costs 0.221 ms at d12 (as much as FP8 saves there), 0.058 ms at d48.
"""
import torch, statistics
def t(fn, n=30):
    for _ in range(5): fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for a, b in ev:
        a.record(); fn(); b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)
one = torch.ones((), device="cuda")
for name, N, C in (("d12", 65536, 768), ("d48", 8192, 1600)):
    for (M, K, what) in ((4 * C, C, "fc fwd"), (C, 4 * C, "fcproj fwd")):
        x = torch.randn(N, K, device="cuda").bfloat16(); w = torch.randn(M, K, device="cuda").bfloat16() / K ** 0.5
        fl = 2 * N * M * K
        tb = t(lambda: x @ w.t())
        x8 = x.to(torch.float8_e4m3fn); w8 = w.to(torch.float8_e4m3fn)
        try:
            tf = t(lambda: torch._scaled_mm(x8, w8.t(), one, one, out_dtype=torch.bfloat16))
            tff = t(lambda: torch._scaled_mm(x8, w8.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=True))
        except Exception as e:
            print("scaled_mm failed", repr(e)[:300]); tf = tff = float("nan")
        tc = t(lambda: x.to(torch.float8_e4m3fn))
        tam = t(lambda: x.abs().amax())
        print(f"{name} {what} N={N} M={M} K={K}: bf16 {tb:.3f} ms ({fl/tb/1e9:.0f} TF/s) fp8 {tf:.3f} ms ({fl/tf/1e9:.0f}) "
              f"fp8 fast-accum {tff:.3f} ms ({fl/tff/1e9:.0f}); cast of the input {tc:.3f} ms, amax {tam:.3f} ms", flush=True)
