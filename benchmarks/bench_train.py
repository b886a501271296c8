"""End-to-end training speed on one GPU: llmc vs a torch.compile GPT-2 (benchmarks/torch_gpt2.py).

Both train on the same random-token shard (written with llmc.data.write_shard, read with llmc.data.DataLoader),
T = 1024, no gradient accumulation, recompute 0 unless asked. A step is forward + backward + gradient norm and
clipping + AdamW. Reported after warm-up as medians over the timed steps: tokens/s, ms/step, MFU (llm.c's
6*N + 6*L*C*T FLOPs per token against 989.5 TFLOP/s, the H100 SXM bf16 dense peak) and peak GPU memory of the
process (total - free from cudaMemGetInfo, so cuBLAS/cuDNN workspaces count; the CUDA context too). Each
(model, provider) runs in its own process. Rows append to results/train.csv:
    model,gpus,micro_batch,seq_len,zero,provider,tokens_per_s,ms_per_step,mfu,peak_mem_gb,gpu,date,commit
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from common import RESULTS_DIR, append_csv, git_commit, gpu_name

TRAIN_CSV = os.path.join(RESULTS_DIR, "train.csv")
TRAIN_COLUMNS = ["model", "gpus", "micro_batch", "seq_len", "zero", "provider", "tokens_per_s", "ms_per_step", "mfu",
                 "peak_mem_gb", "gpu", "date", "commit"]
H100_BF16_PEAK = 989.5e12


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="d12:64,d24:32,d48:8", help="preset:micro_batch, comma-separated")
    p.add_argument("--providers", default="llmc,torch.compile")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--recompute", type=int, default=0)
    p.add_argument("--csv", default=TRAIN_CSV)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: preset:B:provider:shard
    return p.parse_args(argv)


def peak_tracker():
    free0, total = torch.cuda.mem_get_info()
    peak = [total - free0]

    def sample():
        free, _ = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        return peak[0]

    return sample


def run_llmc(cfg, B, T, loader, args):
    from llmc.model import GPT
    from llmc.optim import AdamW, grad_norm

    model = GPT(cfg, device="cuda", recompute=args.recompute, seed=0)
    opt = AdamW(model, lr=6e-4, weight_decay=0.1)

    def step():
        x, y = loader.next_batch()
        model.zero_grad()
        model.forward(x.cuda(non_blocking=True), y.cuda(non_blocking=True))
        model.backward()
        norm = grad_norm(model)
        opt.step(lr=6e-4, grad_scale=min(1.0, 1.0 / max(norm, 1e-6)))

    return step, model.flops_per_token(T)


def run_torch(cfg, B, T, loader, args):
    from torch_gpt2 import TorchGPT2

    torch.manual_seed(0)
    model = TorchGPT2(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.padded_vocab_size, cfg.max_seq_len).cuda()
    opt = model.optimizer(lr=6e-4, weight_decay=0.1)
    compiled = torch.compile(model)
    n_params = sum(p.numel() for p in model.parameters())

    def step():
        x, y = loader.next_batch()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(x.cuda(non_blocking=True).long(), y.cuda(non_blocking=True).long())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, 6 * n_params + 6 * cfg.n_layer * cfg.n_embd * T


def one(spec: str, args) -> dict:
    from llmc.data import DataLoader
    from llmc.model import GPTConfig

    preset, B, provider, shard = spec.split(":", 3)
    B, T = int(B), args.seq_len
    cfg = GPTConfig.from_preset(preset)
    loader = DataLoader(shard, B, T, shuffle=True, seed=1)
    sample = peak_tracker()
    step, flops_per_token = (run_llmc if provider == "llmc" else run_torch)(cfg, B, T, loader, args)
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        sample()
    ms = statistics.median(times) * 1e3
    tok_s = B * T / (ms / 1e3)
    return dict(model=preset, gpus=1, micro_batch=B, seq_len=T, zero=0, provider=provider,
                tokens_per_s=f"{tok_s:.0f}", ms_per_step=f"{ms:.2f}",
                mfu=f"{flops_per_token * tok_s / H100_BF16_PEAK:.4f}", peak_mem_gb=f"{sample() / 1e9:.2f}")


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args)), flush=True)
        return
    import numpy as np
    from llmc.data import write_shard

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "random_train_000000.bin")
        rng = np.random.default_rng(1234)
        write_shard(shard, rng.integers(0, 50257, size=64 * 1024 * 40 + 1, dtype=np.uint16))
        for item in args.configs.split(","):
            preset, B = item.split(":")
            for provider in args.providers.split(","):
                cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{preset}:{B}:{provider}:{shard}",
                       "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--recompute", str(args.recompute)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(__file__))
                result = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode != 0 or not result:
                    print(f"{preset} B={B} {provider}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}",
                          flush=True)
                    continue
                row = json.loads(result[-1][len("RESULT "):])
                row.update(gpu=gpu_name(), date=datetime.date.today().isoformat(), commit=git_commit())
                print(", ".join(f"{k}={row[k]}" for k in TRAIN_COLUMNS), flush=True)
                rows.append(row)
    append_csv(args.csv, TRAIN_COLUMNS, rows)


if __name__ == "__main__":
    main()
