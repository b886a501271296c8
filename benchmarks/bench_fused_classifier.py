"""Fused classifier (per-row loss + dlogits in one kernel): llmc vs torch eager and torch.compile of
F.cross_entropy forward+backward, at GPT-2 124M's B*T = 65536 rows, V = 50257 padded to Vp = 50304.

llmc overwrites its logits with the gradient, so from the second call on it runs on gradient values: the work
is the same. Bytes counted for every provider: read the logits once, write the gradient once (bf16)."""
import torch
import torch.nn.functional as F

import llmc.ops as ops
from common import Recorder, compiled, parse_args, require_cuda, time_cuda

N, V, VP = 65536, 50257, 50304
LABEL, NBYTES = f"{N}x{VP} (V {V})", 2 * 2 * N * VP


def bench_llmc(rec, targets):
    logits = torch.randn(N, VP, device="cuda", dtype=torch.bfloat16) * 2
    losses = torch.empty(N, device="cuda", dtype=torch.float32)
    ms = time_cuda(lambda i: ops.fused_classifier(logits, targets, V, losses=losses), 1)
    rec.add("fused_classifier", LABEL, "llmc", ms, NBYTES)
    return ms


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)
    targets = torch.randint(0, V, (N,), dtype=torch.int32, device="cuda")
    ms_llmc = bench_llmc(rec, targets)

    # What a torch training step does: the mean cross-entropy over the real vocabulary, fp32 math, then backward.
    def loss_fn(x, t):
        return F.cross_entropy(x[:, :V].float(), t, ignore_index=-1)

    leaf = (torch.randn(N, VP, device="cuda", dtype=torch.bfloat16) * 2).requires_grad_(True)
    targets_long = targets.long()

    def fwd_bwd(fn):
        def run(_):
            leaf.grad = None
            fn(leaf, targets_long).backward()
        return run

    providers = [("torch", loss_fn)] + ([] if args.no_compile else [("torch.compile", compiled(loss_fn))])
    for name, fn in providers:
        ms = time_cuda(fwd_bwd(fn), 1)
        rec.add("fused_classifier", LABEL, name, ms, NBYTES)
        print(f"  llmc speedup over {name}: {ms / ms_llmc:.2f}x")
    rec.save()


if __name__ == "__main__":
    main()
