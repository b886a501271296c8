"""AdamW step over all of GPT-2 124M's / 1.5B's parameters: llmc vs torch's fused AdamW.

llmc: one launch over the flat range, bf16 params and grads, fp32 master weights, m and v, params written with
stochastic rounding: 28 bytes per parameter (grad 2, m/v/master 4 read + 4 written each, params 2 written);
without master weights 22 (params 2 read + 2 written). torch.optim.AdamW(fused=True) cannot keep fp32 master
weights for bf16 params, so it runs as torch users run it: fp32 params and grads, the model's tensor list in
decay and no-decay groups: 28 bytes per parameter (param, m, v read and written, grad read)."""
import itertools

import torch

import llmc.ops as ops
from common import GPT2_SHAPES, Recorder, parse_args, require_cuda, time_cuda

LAYERS = {"124M": 12, "1.5B": 48}
VOCAB_PADDED, MAX_T = 50304, 1024
HYPER = dict(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
LR = 3e-4


def gpt2_tensors(name):
    """GPT-2 `name`'s parameter tensors as (size, decay) pairs, twice: in llm.c's order (one entry per kind of
    tensor, all layers together, as llmc lays out its flat buffer) and in a torch module's order (per layer)."""
    L, C = LAYERS[name], GPT2_SHAPES[name]["C"]
    layer = [(C, False), (C, False), (3 * C * C, True), (3 * C, False), (C * C, True), (C, False), (C, False),
             (C, False), (4 * C * C, True), (4 * C, False), (4 * C * C, True), (C, False)]
    head = [(VOCAB_PADDED * C, True), (MAX_T * C, True)]
    tail = [(C, False), (C, False)]
    llmc_order = head + [(L * size, decay) for size, decay in layer] + tail
    torch_order = head + layer * L + tail
    return llmc_order, torch_order


def bench_llmc(rec, label, tensors, master_weights):
    n = sum(size for size, _ in tensors)
    sizes, decay = [s for s, _ in tensors], [d for _, d in tensors]
    params = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    grads = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    m = torch.randn(n, device="cuda") * 1e-2
    v = torch.rand(n, device="cuda") * 1e-4
    master = params.float() if master_weights else None

    steps = itertools.count(1)

    def step(_):
        t = next(steps)
        ops.adamw_update(params, grads, m, v, master, lr=LR, step=t, seed=t, tensor_sizes=sizes,
                         tensor_decay=decay, **HYPER)

    provider = "llmc" if master_weights else "llmc(no master)"
    rec.add("adamw", label, provider, time_cuda(step, 1), (28 if master_weights else 22) * n)


def bench_torch_fused(rec, label, tensors):
    params = [torch.randn(size, device="cuda", requires_grad=True) for size, _ in tensors]
    for p in params:
        p.grad = torch.randn_like(p)
    groups = [dict(params=[p for p, (_, d) in zip(params, tensors) if d], weight_decay=HYPER["weight_decay"]),
              dict(params=[p for p, (_, d) in zip(params, tensors) if not d], weight_decay=0.0)]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"], fused=True)
    n = sum(p.numel() for p in params)
    rec.add("adamw", label, "torch.fused_adamw", time_cuda(lambda i: opt.step(), 1), 28 * n)


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)
    for name in args.shapes.split(","):
        llmc_order, torch_order = gpt2_tensors(name)
        label = f"{name} ({sum(s for s, _ in llmc_order)} params)"
        bench_llmc(rec, label, llmc_order, master_weights=True)
        bench_llmc(rec, label, llmc_order, master_weights=False)
        bench_torch_fused(rec, label, torch_order)
        torch.cuda.empty_cache()
    rec.save()


if __name__ == "__main__":
    main()
