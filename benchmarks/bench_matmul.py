"""Linear layers through cuBLASLt: llmc vs torch at GPT-2 124M and 1.5B layer shapes, forward and backward, TFLOP/s.

torch runs the same bf16 tensors: F.linear forward; backward dinp = dout @ W, dweight.addmm_(dout.T, inp) and
dbias += dout.sum(0). For the GELU layers torch runs separate ops (F.linear then F.gelu; dout @ W then
gelu_backward) where llmc fuses the GELU into the cuBLASLt epilogue; torch.compile is a further baseline there.
"""
import torch
import torch.nn.functional as F

import llmc.ops as ops
from common import GPT2_SHAPES, Recorder, compiled, copies_for, parse_args, require_cuda, time_cuda

PADDED_VOCAB = 50304
# name, K, M, bias, GELU variant: "fwd" fuses the GELU after this layer (MLP up), "bwd" fuses gelu' into this
# layer's dinp (MLP down, whose input was GELU'd)
LAYERS = [
    ("qkv", lambda C: C, lambda C: 3 * C, True, None),
    ("attproj", lambda C: C, lambda C: C, True, None),
    ("fc", lambda C: C, lambda C: 4 * C, True, "fwd"),
    ("fcproj", lambda C: 4 * C, lambda C: C, True, "bwd"),
    ("lm_head", lambda C: C, lambda C: PADDED_VOCAB, False, None),
]


def bf16(*shape, std=1.0):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * std


def torch_backward(dout, x, w, dweight, dbias, pre_gelu=None):
    dinp = dout @ w
    if pre_gelu is not None:
        dinp = torch.ops.aten.gelu_backward(dinp, pre_gelu, approximate="tanh")
    dweight.addmm_(dout.t(), x)
    if dbias is not None:
        dbias.add_(dout.sum(0))
    return dinp


def compare(rec, op, label, flops, providers):
    """Time each provider, record it, and print how llmc compares with the first baseline."""
    times = {}
    for provider, (fn, n_inputs) in providers.items():
        times[provider] = time_cuda(fn, n_inputs)
        rec.add(op, label, provider, times[provider], flops=flops)
    print(f"{'':36s} llmc speedup over torch: {times['torch'] / times['llmc']:.3f}x", flush=True)


def bench_layer(rec, args, size, name, K, M, with_bias, gelu):
    N = GPT2_SHAPES[size]["B"] * GPT2_SHAPES[size]["T"]
    label = f"{size} {name} N={N} K={K} M={M}"
    k = copies_for(2 * (N * K + N * M))
    xs = [bf16(N, K) for _ in range(k)]
    w = bf16(M, K, std=K ** -0.5)
    b = bf16(M, std=0.1) if with_bias else None
    out = torch.empty(N, M, device="cuda", dtype=torch.bfloat16)
    fwd_flops, bwd_flops = 2 * N * K * M, 4 * N * K * M

    compare(rec, "matmul_forward", label, fwd_flops, {
        "llmc": (lambda i: ops.matmul_forward(xs[i], w, b, out=out), k),
        "torch": (lambda i: F.linear(xs[i], w, b), k),
    })
    if gelu == "fwd":
        pre = torch.empty_like(out)
        providers = {
            "llmc": (lambda i: ops.matmul_forward(xs[i], w, b, out=out, gelu=True, pre_gelu=pre), k),
            "torch": (lambda i: F.gelu(F.linear(xs[i], w, b), approximate="tanh"), k),
        }
        if not args.no_compile:
            fused = compiled(lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh"))
            providers["torch.compile"] = (lambda i: fused(xs[i], w, b), k)
        compare(rec, "matmul_forward+gelu", label, fwd_flops, providers)
        del pre
    del out

    douts = [bf16(N, M) for _ in range(k)]
    dweight = torch.zeros(M, K, device="cuda", dtype=torch.bfloat16)
    dbias = torch.zeros(M, device="cuda", dtype=torch.bfloat16) if with_bias else None
    dinp = torch.empty(N, K, device="cuda", dtype=torch.bfloat16)
    compare(rec, "matmul_backward", label, bwd_flops, {
        "llmc": (lambda i: ops.matmul_backward(douts[i], xs[i], w, dweight, dbias, dinp=dinp), k),
        "torch": (lambda i: torch_backward(douts[i], xs[i], w, dweight, dbias), k),
    })
    if gelu == "bwd":
        # xs stand in for gelu(pre): the timing does not depend on the values
        pres = [bf16(N, K) for _ in range(k)]
        compare(rec, "matmul_backward+dgelu", label, bwd_flops, {
            "llmc": (lambda i: ops.matmul_backward(douts[i], xs[i], w, dweight, dbias, dinp=dinp,
                                                   pre_gelu=pres[i]), k),
            "torch": (lambda i: torch_backward(douts[i], xs[i], w, dweight, dbias, pres[i]), k),
        })


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)
    for size in args.shapes.split(","):
        C = GPT2_SHAPES[size]["C"]
        for name, K, M, with_bias, gelu in LAYERS:
            bench_layer(rec, args, size, name, K(C), M(C), with_bias, gelu)
            torch.cuda.empty_cache()
    rec.save()


if __name__ == "__main__":
    main()
