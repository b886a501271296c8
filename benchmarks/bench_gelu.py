"""GELU forward/backward: llmc vs torch eager vs torch.compile at GPT-2 124M and 1.5B MLP shapes."""
import torch
import torch.nn.functional as F

import llmc.ops as ops
from common import GPT2_SHAPES, Recorder, compiled, copies_for, parse_args, require_cuda, time_cuda


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)
    fwd_eager = lambda x: F.gelu(x, approximate="tanh")

    def bwd_eager(dout, x):
        # the backward math torch runs for GELU-tanh, as one expression
        return torch.ops.aten.gelu_backward(dout, x, approximate="tanh")

    fwd_comp, bwd_comp = compiled(fwd_eager), compiled(bwd_eager)
    for name in args.shapes.split(","):
        s = GPT2_SHAPES[name]
        shape = (s["B"] * s["T"], 4 * s["C"])
        label = f"{name} ({shape[0]}x{shape[1]})"
        n = shape[0] * shape[1]
        k = copies_for(3 * 2 * n)
        xs = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(k)]
        ds = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(k)]
        out = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
        fwd_bytes, bwd_bytes = 2 * 2 * n, 3 * 2 * n
        rec.add("gelu_forward", label, "llmc", time_cuda(lambda i: ops.gelu_forward(xs[i], out=out), k), fwd_bytes)
        rec.add("gelu_forward", label, "torch", time_cuda(lambda i: fwd_eager(xs[i]), k), fwd_bytes)
        if not args.no_compile:
            rec.add("gelu_forward", label, "torch.compile", time_cuda(lambda i: fwd_comp(xs[i]), k), fwd_bytes)
        rec.add("gelu_backward", label, "llmc",
                time_cuda(lambda i: ops.gelu_backward(ds[i], xs[i], dinp=out), k), bwd_bytes)
        rec.add("gelu_backward", label, "torch", time_cuda(lambda i: bwd_eager(ds[i], xs[i]), k), bwd_bytes)
        if not args.no_compile:
            rec.add("gelu_backward", label, "torch.compile", time_cuda(lambda i: bwd_comp(ds[i], xs[i]), k),
                    bwd_bytes)
        del xs, ds
    rec.save()


if __name__ == "__main__":
    main()
