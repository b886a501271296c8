"""Where the milliseconds of one llmc training step go: torch.profiler over a few steps of GPT-2 (random tokens),
GPU time summed per kernel and divided by the number of steps, against the step's wall time. The gap between
wall time and the sum of kernel times is GPU idle time (host syncs, Python and launch overhead). The step is
the Trainer's: no host sync inside it (tokens checked on the host, loss kept on the device, clipping read by the
AdamW kernel). Also timed without the profiler: the wall time per step and the host time to enqueue it (when the
host needs about as long as the step, the GPU waits for Python: the step is launch bound).

    python profile_step.py --model d12 --batch 64 [--steps 3] [--markdown out.md]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--loss-chunk", type=int, default=None,
                   help="GPT loss_chunk (default: the Trainer's, llmc.model.DEFAULT_LOSS_CHUNK; 0: the whole "
                        "batch at once)")
    p.add_argument("--fp8", action="store_true", help="GPT(fp8=True): the MLP's matmuls in FP8")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)

    from llmc import ops
    from llmc.model import DEFAULT_LOSS_CHUNK, GPT, GPTConfig
    from llmc.optim import AdamW, grad_norm_squared

    torch.set_num_threads(1)  # as the Trainer does on a GPU (see llmc.trainer)
    cfg = GPTConfig.from_preset(args.model)
    B, T = args.batch, args.seq_len
    chunk = DEFAULT_LOSS_CHUNK if args.loss_chunk is None else args.loss_chunk
    model = GPT(cfg, device="cuda", loss_chunk=chunk, fp8=args.fp8)
    opt = AdamW(model, lr=6e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)

    def step():
        tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g, dtype=torch.int32)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        model.zero_grad()
        model.forward(x, y, sync=False)
        model.backward()
        opt.step(lr=6e-4, grad_norm_squared=grad_norm_squared(model), max_grad_norm=1.0)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    host, wall = [], []
    for _ in range(10):
        t0 = time.perf_counter()
        step()
        host.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
    host_ms, plain_ms = sorted(host)[5] * 1e3, sorted(wall)[5] * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    gpu_ms = sum(e.device_time_total for e in kernels) / 1e3 / args.steps
    lines = [f"llmc {args.model} B={B} T={T} loss_chunk={chunk}{' fp8' if args.fp8 else ''} "
             f"({torch.cuda.get_device_name()}): without the "
             f"profiler {plain_ms:.1f} "
             f"ms/step, of which the host needs {host_ms:.1f} ms to enqueue it (medians of 10). Profiled: wall "
             f"{wall_ms:.1f} ms/step, GPU kernels {gpu_ms:.1f} ms/step, GPU idle {wall_ms - gpu_ms:.1f} ms/step", "",
             "| kernel | calls/step | ms/step | % of wall |", "|---|---:|---:|---:|"]
    for e in kernels[:args.top]:
        ms = e.device_time_total / 1e3 / args.steps
        lines.append(f"| {e.key[:90]} | {e.count / args.steps:.0f} | {ms:.2f} | {100 * ms / wall_ms:.1f} |")
    lines += ["", "cuBLASLt plans (ops.matmul_tuning_log(): cuBLASLt's column-major m, n, k; epilogue; the algorithm "
              "autotuning kept):", ""] + [f"- {line}" for line in ops.matmul_tuning_log()]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
