"""Squared global norm of all of GPT-2 124M's / 1.5B's gradients (flat bf16): llmc vs torch.linalg.vector_norm
(fp32 accumulation) and torch.compile of sum(x.float()**2). Bytes: the gradients read once."""
import torch

import llmc.ops as ops
from bench_adamw import gpt2_tensors
from common import Recorder, compiled, copies_for, parse_args, require_cuda, time_cuda


def bench_shape(rec, name, no_compile):
    n = sum(size for size, _ in gpt2_tensors(name)[0])
    label = f"{name} ({n} params)"
    k = copies_for(2 * n)
    xs = [torch.randn(n, device="cuda", dtype=torch.bfloat16) for _ in range(k)]
    out = torch.empty(1, device="cuda", dtype=torch.float32)
    torch_norm2 = lambda x: torch.linalg.vector_norm(x, dtype=torch.float32) ** 2
    providers = [("llmc", lambda x: ops.global_norm_squared(x, out=out)), ("torch", torch_norm2)]
    if not no_compile:
        providers.append(("torch.compile", compiled(lambda x: x.float().square().sum())))
    for provider, fn in providers:
        rec.add("global_norm_squared", label, provider, time_cuda(lambda i: fn(xs[i]), k), 2 * n)


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)
    for name in args.shapes.split(","):
        bench_shape(rec, name, args.no_compile)
    rec.save()


if __name__ == "__main__":
    main()
