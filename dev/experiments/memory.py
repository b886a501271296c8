# Where the GPU memory of a training step goes, phase by phase. Run: python dev/experiments/memory.py
"""Probe: where the GPU memory of an llmc training step goes, phase by phase.

Runs the Trainer's step (forward, backward, global norm, AdamW, zero_grad; random tokens) and, after each phase,
prints the device's total - free (what bench_train's peak column samples), torch's reserved and allocated bytes,
and the peak of total - free seen by a 5 ms polling thread during the phase. What is in use but not reserved by
torch is the CUDA context plus the extension's own cudaMalloc's (cuBLASLt's workspace and tuning scratch, cuDNN's
workspace). Also prints GPT.memory_plan for the shape.

    python probe_memory.py --model d48 --batch 8 [--loss-chunk 8192] [--nondet]
"""
from __future__ import annotations

import argparse
import threading

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d48")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--loss-chunk", type=int, default=None, help="default: the Trainer's")
    p.add_argument("--nondet", action="store_true", help="GPT(deterministic=False)")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)

    from llmc.model import DEFAULT_LOSS_CHUNK, GPT, GPTConfig
    from llmc.optim import AdamW, grad_norm_squared

    torch.set_num_threads(1)
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    torch.zeros(1, device=dev)
    gb = 1e9
    peak = {"v": 0}
    stop = threading.Event()

    def used():
        free, total = torch.cuda.mem_get_info(dev)
        return total - free

    def poll():
        torch.cuda.set_device(dev)
        while not stop.wait(0.005):
            peak["v"] = max(peak["v"], used())

    threading.Thread(target=poll, daemon=True).start()
    chunk = DEFAULT_LOSS_CHUNK if args.loss_chunk is None else args.loss_chunk
    tag = f"{args.model} B={args.batch} loss_chunk={chunk}" + (" deterministic=False" if args.nondet else "")
    print(f"# {torch.cuda.get_device_name(dev)} {tag}")
    print(f"{'phase':28s} {'used GB':>9s} {'peak GB':>9s} {'torch reserved':>15s} {'torch alloc':>12s} "
          f"{'not torch':>10s}")

    def report(phase):
        torch.cuda.synchronize(dev)
        u = used()
        peak["v"] = max(peak["v"], u)
        res, alloc = torch.cuda.memory_reserved(dev), torch.cuda.memory_allocated(dev)
        print(f"{phase:28s} {u / gb:9.3f} {peak['v'] / gb:9.3f} {res / gb:15.3f} {alloc / gb:12.3f} "
              f"{(u - res) / gb:10.3f}", flush=True)

    report("cuda context")
    cfg = GPTConfig.from_preset(args.model)
    B, T = args.batch, args.seq_len
    model = GPT(cfg, device="cuda", loss_chunk=chunk, deterministic=not args.nondet)
    report("GPT (params)")
    opt = AdamW(model, lr=6e-4, weight_decay=0.1)
    report("AdamW (m, v, master)")
    g = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        tok = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g, dtype=torch.int32)
        x, y = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
        loss = model.forward(x, y, sync=False)
        report(f"step {step} forward")
        model.backward()
        report(f"step {step} backward")
        opt.step(6e-4, grad_norm_squared=grad_norm_squared(model), max_grad_norm=1.0)
        model.zero_grad()
        loss.item()
        report(f"step {step} update")
    stop.set()
    print(model.memory_plan(B, T))


if __name__ == "__main__":
    main()
