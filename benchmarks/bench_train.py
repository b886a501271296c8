"""End-to-end training speed: the llmc Trainer on 1..N GPUs, against a torch.compile GPT-2 (torch_gpt2.py) on one.

Every run trains on the same random-token shard (written with llmc.data.write_shard), T = 1024, recompute 0
unless asked, lr 6e-4, weight decay 0.1, fp32 master weights, for --warmup + --steps optimizer steps.
- llmc: `llmc.Trainer(TrainConfig(...)).fit()` exactly as `llmc train` runs it (no validation, sampling,
  checkpoints or HellaSwag; logs in a temporary directory); ms/step is the median of the Trainer's own per-step
  times (history[i]["ms"], host clock around the whole step with a device sync at its end) after the warm-up.
  With N > 1 GPUs the run is `torchrun --standalone --nproc_per_node=N` of this file; ZeRO-1 by default.
- llmc-fp8: the same with TrainConfig(fp8=True) (fc's forward in FP8, opt-in; llmc.fp8._Fp8).
- llmc-fp8blocks, llmc-fp8rows: the same with TrainConfig(fp8="blocks") / fp8="rows" (all four linears in FP8
  with block / per-row scales, forward and backward, opt-in; llmc.fp8._Fp8Blocks / _Fp8Rows).
- llmc-nondet, llmc-fp8-nondet: the same with TrainConfig(deterministic=False) (cuDNN's attention backward with
  atomic dQ: opt-in, not bit-reproducible; torch's SDPA backward in the torch.compile baseline is not either).
- torch.compile: one GPU only; bf16 autocast, fused AdamW, clipping to 1.0, the same total batch (gradient
  accumulation when it is larger than B*T), timed the same way.
- llm.c: one GPU only, `--llm-c PATH` (train_gpt2cu built by build_llm_c.sh), a preset model (d12/d24/d36/d48)
  from its own random init (`-e dN`), the same B, T, total batch, lr, weight decay and -r, no validation,
  sampling or checkpoints; ms/step is the median of the times it prints per step; peak memory is the device's
  highest use while it runs less what was in use before it started (this process's own context).
A step covers --total-batch tokens over all GPUs (default: one micro-batch of B*T per GPU, no accumulation).
tokens/s is over all GPUs; MFU is llm.c's 6*N + 6*L*C*T FLOPs per token against N x 989.5 TFLOP/s (the H100 SXM
bf16 dense peak). Peak memory is the largest over the ranks of what a daemon thread sees every 20 ms during the
run: total - free from cudaMemGetInfo, so the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers count (on
the CPU: the process's peak RSS). Each (model, GPUs, provider) runs in its own process (group); a run that fails
or outlives --timeout is reported with the tail of its stderr, the other runs go on, and the script then exits
with status 1. Rows append to results/train.csv:
    model,gpus,micro_batch,seq_len,zero,provider,tokens_per_s,ms_per_step,mfu,peak_mem_gb,gpu,date,commit
(the total batch is not a column: it is B*T*gpus unless --total-batch was given). A scaling table closes the run.

Smoke test of the harness without a GPU (gloo, the reference ops; the figures mean nothing):
    python benchmarks/bench_train.py --device cpu --configs d4c128:2 --seq-len 64 --gpus 1,2 --providers llmc \\
        --steps 3 --warmup 1 --csv /tmp/train_smoke.csv
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import torch

from common import RESULTS_DIR, append_csv, git_commit

TRAIN_CSV = os.path.join(RESULTS_DIR, "train.csv")
TRAIN_COLUMNS = ["model", "gpus", "micro_batch", "seq_len", "zero", "provider", "tokens_per_s", "ms_per_step", "mfu",
                 "peak_mem_gb", "gpu", "date", "commit"]
PROVIDERS = ("llmc", "llmc-fp8", "llmc-fp8blocks", "llmc-fp8rows", "llmc-nondet", "llmc-fp8-nondet", "torch.compile",
             "llm.c")
LLM_C_PRESETS = ("d12", "d24", "d36", "d48")  # the models train_gpt2cu makes from "-e dN"
LLM_C_STEP = re.compile(r"^step\s+\d+/\d+ \|.*\| ([\d.]+) ms \|")
H100_BF16_PEAK = 989.5e12
LEARNING_RATE, WEIGHT_DECAY = 6e-4, 0.1
MAX_SHARD_TOKENS = 100_000_000  # 200 MB of uint16: runs that need more tokens wrap around the (random) shard
POLL_S = 0.02  # memory sampling period
DIST_TIMEOUT_S = 300.0  # a collective waiting longer than this fails the run (a rank died or hangs)
EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]: )?[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")  # in a child's stderr


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="d12:64,d24:32,d48:8",
                   help="model:micro_batch, comma-separated; model is a preset (d12) or d<layers>c<channels>")
    p.add_argument("--providers", default="llmc,torch.compile", help="comma-separated: " + ", ".join(PROVIDERS))
    p.add_argument("--gpus", default="1", help="GPU counts, comma-separated (e.g. 1,2,4); llmc only for N > 1")
    p.add_argument("--total-batch", type=int, default=-1,
                   help="tokens per optimizer step over all GPUs, a multiple of B*T*gpus (issue 5's scaling runs: "
                        "524288); -1: B*T*gpus, no gradient accumulation")
    p.add_argument("--zero", type=int, choices=(0, 1), default=None,
                   help="ZeRO stage with several GPUs (default 1); one GPU always runs 0")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=8, help="steps before the timed ones")
    p.add_argument("--recompute", type=int, choices=(0, 1, 2), default=0)
    p.add_argument("--loss-chunk", type=int, default=None,
                   help="llmc: positions per chunk of the output layer and loss (TrainConfig.loss_chunk; 0: all; "
                        "default: the Trainer's, llmc.model.DEFAULT_LOSS_CHUNK)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: smoke-test the harness (gloo, reference ops); its figures mean nothing")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one run (all its processes) may take")
    p.add_argument("--csv", default=TRAIN_CSV)
    p.add_argument("--llm-c", default=None, help="llm.c's train_gpt2cu, for the llm.c provider")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: model:B:provider:shard of one run
    return p.parse_args(argv)


@dataclass(frozen=True)
class Run:
    model: str
    micro_batch: int
    gpus: int
    provider: str
    total_batch: int
    zero: int


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{what} must be comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise SystemExit(f"{what} must be >= 1, got {text!r}")
    return values


def plan_runs(args) -> list[Run]:
    """The runs this invocation asks for, checked before any work (bad options exit with what to fix)."""
    from llmc.trainer import parse_model_spec

    gpu_counts = _int_list(args.gpus, "--gpus")
    providers = args.providers.split(",")
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown:
        raise SystemExit(f"unknown provider(s) {unknown}; choose from {list(PROVIDERS)}")
    if min(args.steps, args.warmup + 1, args.seq_len) < 1:
        raise SystemExit("--steps and --seq-len must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and max(gpu_counts) > torch.cuda.device_count():
        raise SystemExit(f"--gpus asks for {max(gpu_counts)} GPUs but {torch.cuda.device_count()} are visible")
    if "llm.c" in providers and not (args.llm_c and os.access(args.llm_c, os.X_OK)):
        raise SystemExit(f"the llm.c provider needs --llm-c PATH to an executable train_gpt2cu, got {args.llm_c!r}")
    runs = []
    for item in args.configs.split(","):
        model, _, batch = item.partition(":")
        try:
            cfg, B = parse_model_spec(model), int(batch)
        except ValueError as e:
            raise SystemExit(f"--configs entry {item!r}: want model:micro_batch, e.g. d12:64 ({e})") from None
        if B < 1 or args.seq_len > cfg.max_seq_len:
            raise SystemExit(f"--configs entry {item!r}: need micro_batch >= 1 and --seq-len <= {cfg.max_seq_len}")
        for provider in providers:
            for n in gpu_counts:
                if provider in ("torch.compile", "llm.c") and n > 1:
                    print(f"note: {provider} runs on one GPU only here; skipping {model} on {n} GPUs", flush=True)
                    continue
                if provider == "llm.c" and (model not in LLM_C_PRESETS or args.device != "cuda"):
                    raise SystemExit(f"the llm.c provider runs {', '.join(LLM_C_PRESETS)} on a GPU, not {model} "
                                     f"on {args.device}")
                total = B * args.seq_len * n if args.total_batch == -1 else args.total_batch
                if total < 1 or total % (B * args.seq_len * n):
                    raise SystemExit(f"--total-batch {args.total_batch} is not a multiple of B*T*gpus = "
                                     f"{B}*{args.seq_len}*{n} for {item} on {n} GPUs")
                zero = (1 if args.zero is None else args.zero) if n > 1 else 0
                runs.append(Run(model, B, n, provider, total, zero))
    return runs


# ---------------------------------------------------------------------------------------------------------
# one run, in its own process (or in each of the torchrun processes)
# ---------------------------------------------------------------------------------------------------------
class PeakMemory:
    """Highest memory in use while the `with` block runs, sampled every POLL_S by a daemon thread: on a GPU the
    device's total - free (cudaMemGetInfo), on the CPU the process's peak resident set."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def used(self) -> int:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return total - free
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def _poll(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the thread must not touch (and create a context on) GPU 0
        while not self._stop.wait(POLL_S):
            self.peak = max(self.peak, self.used())

    def __enter__(self) -> "PeakMemory":
        self.peak = self.used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


def _fp8_of(provider: str):
    """TrainConfig.fp8 of an llmc provider: "blocks" / "rows" for llmc-fp8blocks / llmc-fp8rows, else whether it
    names fp8."""
    for mode in ("blocks", "rows"):
        if f"fp8{mode}" in provider:
            return mode
    return "fp8" in provider


def train_llmc(model: str, B: int, T: int, total_batch: int, zero: int, shard: str, args, fp8=False,
               deterministic: bool = True):
    """Per-step milliseconds of llmc.Trainer.fit() and the model's FLOPs per token."""
    from llmc import TrainConfig, Trainer

    name = f"llmc-{model}-b{B}-{os.environ.get('WORLD_SIZE', '1')}gpu" + \
        (f"-fp8{fp8}" if isinstance(fp8, str) else "-fp8" if fp8 else "") + \
        ("" if deterministic else "-nondet")
    out_dir = os.path.join(os.path.dirname(shard), name)
    config = TrainConfig(input_train=shard, output_dir=out_dir, model=model, batch_size=B, seq_len=T,
                         total_batch_size=total_batch, num_iterations=args.warmup + args.steps,
                         learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, val_every=0, sample_every=0,
                         checkpoint_every=0, recompute=args.recompute, zero_stage=zero, device=args.device,
                         dist_timeout=DIST_TIMEOUT_S, loss_chunk=args.loss_chunk, fp8=fp8,
                         deterministic=deterministic)
    trainer = Trainer(config=config)
    history = trainer.fit()
    return [record["ms"] for record in history], trainer.model.flops_per_token(T)


def train_torch(model: str, B: int, T: int, total_batch: int, shard: str, device: torch.device, args):
    """Per-step milliseconds of the torch.compile GPT-2 and its FLOPs per token."""
    from torch_gpt2 import TorchGPT2

    from llmc.data import DataLoader
    from llmc.trainer import parse_model_spec

    cfg = parse_model_spec(model)
    loader = DataLoader(shard, B, T, shuffle=True, seed=1)
    if device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as the llmc Trainer does on a GPU: the same host conditions for both
    torch.manual_seed(0)
    net = TorchGPT2(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.padded_vocab_size, cfg.max_seq_len).to(device)
    opt = net.optimizer(lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    compiled = torch.compile(net)
    accum = total_batch // (B * T)
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        for _ in range(accum):
            x, y = loader.next_batch()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = compiled(x.to(device, non_blocking=True).long(), y.to(device, non_blocking=True).long())
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - t0))
    n_params = sum(p.numel() for p in net.parameters())
    return times, 6 * n_params + 6 * cfg.n_layer * cfg.n_embd * T


def train_llm_c(model: str, B: int, T: int, total_batch: int, shard: str, memory: PeakMemory, args):
    """Per-step milliseconds llm.c's train_gpt2cu prints, its FLOPs per token (llm.c's formula for the same
    model) and its peak memory above what was in use before it started."""
    from llmc.trainer import parse_model_spec

    cmd = [args.llm_c, "-i", shard, "-j", shard, "-e", model, "-b", str(B), "-t", str(T), "-d", str(total_batch),
           "-x", str(args.warmup + args.steps), "-l", str(LEARNING_RATE), "-c", str(WEIGHT_DECAY),
           "-r", str(args.recompute), "-v", "1000000", "-s", "0", "-n", "0"]
    before = memory.used()
    memory.peak = before
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps = [float(m.group(1)) for m in map(LLM_C_STEP.match, proc.stdout.splitlines()) if m]
    if proc.returncode != 0:
        raise RuntimeError(f"llm.c exited with {proc.returncode}:\n{proc.stdout[-3000:]}")
    cfg = parse_model_spec(model)
    return steps, 6 * cfg.num_params + 6 * cfg.n_layer * cfg.n_embd * T, memory.peak - before


def max_over_ranks(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    from llmc.distributed import is_distributed

    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def one(args):
    """Run the --one spec in this process (one rank of it under torchrun); rank 0 returns the row, others None."""
    from llmc.distributed import cleanup, init_distributed

    model, B, provider, shard = args.one.split(":", 3)
    B, T = int(B), args.seq_len
    # The group is made here, so it outlives Trainer.fit (which reuses it) for the peak-memory reduction.
    info = init_distributed(args.device, DIST_TIMEOUT_S)
    device = torch.device("cuda", info.local_rank) if args.device == "cuda" else torch.device("cpu")
    try:
        with PeakMemory(device) as memory:
            if provider.startswith("llmc"):
                times, flops_per_token = train_llmc(model, B, T, args.total_batch, args.zero, shard, args,
                                                    fp8=_fp8_of(provider),
                                                    deterministic=not provider.endswith("nondet"))
            elif provider == "llm.c":
                times, flops_per_token, own_peak = train_llm_c(model, B, T, args.total_batch, shard, memory, args)
            else:
                times, flops_per_token = train_torch(model, B, T, args.total_batch, shard, device, args)
        peak = own_peak if provider == "llm.c" else max_over_ranks(memory.peak, device)
    finally:
        cleanup()
    if info.rank != 0:
        return None
    timed = times[args.warmup:]
    if len(timed) != args.steps:
        raise RuntimeError(f"expected {args.warmup + args.steps} step times, got {len(times)}")
    ms = statistics.median(timed)
    tok_s = args.total_batch / (ms / 1e3)
    return dict(model=model, gpus=info.world_size, micro_batch=B, seq_len=T, zero=args.zero, provider=provider,
                tokens_per_s=f"{tok_s:.0f}", ms_per_step=f"{ms:.2f}",
                mfu=f"{flops_per_token * tok_s / (info.world_size * H100_BF16_PEAK):.4f}",
                peak_mem_gb=f"{peak / 1e9:.2f}",
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                step_ms=[round(t, 1) for t in times])  # printed with the row, not a CSV column


# ---------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------
class RunFailed(Exception):
    pass



def launch(run: Run, shard: str, args) -> dict:
    """Start one run in a new process group (torchrun for several GPUs) and return rank 0's RESULT row."""
    script = os.path.abspath(__file__)
    launcher = [sys.executable] if run.gpus == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run.gpus}"]
    cmd = launcher + [script, "--one", f"{run.model}:{run.micro_batch}:{run.provider}:{shard}",
                      "--total-batch", str(run.total_batch), "--zero", str(run.zero), "--seq-len", str(args.seq_len),
                      "--steps", str(args.steps), "--warmup", str(args.warmup), "--recompute", str(args.recompute),
                      "--device", args.device] + \
        ([] if args.loss_chunk is None else ["--loss-chunk", str(args.loss_chunk)]) + \
        ([] if args.llm_c is None else ["--llm-c", os.path.abspath(args.llm_c)])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(script), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except BaseException as e:  # timeout or Ctrl-C: end torchrun and every rank with it
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if not isinstance(e, subprocess.TimeoutExpired):
            raise
        raise RunFailed(f"killed after --timeout {args.timeout:g} s; {_stderr_report(err)}") from None
    result = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not result:
        raise RunFailed(f"exit status {proc.returncode}; {_stderr_report(err)}")
    return json.loads(result[-1][len("RESULT "):])


def _stderr_report(err: str) -> str:
    """The exception lines of every rank (torchrun's own summary and the follow-on errors of the other ranks
    can push the first failure out of a plain tail), then the stderr tail."""
    errors = dict.fromkeys(line for line in err.splitlines() if EXCEPTION_LINE.match(line))
    return "exceptions:\n" + "\n".join(list(errors)[:10]) + f"\nstderr tail:\n{err[-3000:]}"


def write_random_shard(path: str, runs: list[Run], args) -> None:
    """Random tokens for the largest run's warmup + steps (capped at MAX_SHARD_TOKENS; the loader wraps)."""
    import numpy as np

    from llmc.data import write_shard

    need = max(run.total_batch for run in runs) * (args.warmup + args.steps) + 1
    rng = np.random.default_rng(1234)
    write_shard(path, rng.integers(0, 50257, size=min(need, MAX_SHARD_TOKENS), dtype=np.uint16))


def scaling_table(results: list[tuple[Run, dict]]) -> str:
    """tokens/s per GPU of every run, and its efficiency against the 1-GPU run of the same model and provider."""
    per_gpu = {run: float(row["tokens_per_s"]) / run.gpus for run, row in results}
    single = {(run.model, run.provider): per_gpu[run] for run, _ in results if run.gpus == 1}
    lines = ["scaling: tokens/s per GPU, efficiency = per-GPU tokens/s over the 1-GPU run's of the same model and "
             "provider (this invocation)",
             f"{'model':10s} {'provider':15s} {'gpus':>4s} {'zero':>4s} {'total batch':>11s} {'tokens/s':>10s} "
             f"{'per GPU':>10s} {'efficiency':>10s}"]
    for run, row in results:
        base = single.get((run.model, run.provider))
        efficiency = f"{per_gpu[run] / base:.1%}" if base else "-"
        lines.append(f"{run.model:10s} {run.provider:15s} {run.gpus:4d} {run.zero:4d} {run.total_batch:11d} "
                     f"{row['tokens_per_s']:>10s} {per_gpu[run]:10.0f} {efficiency:>10s}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        row = one(args)
        if row is not None:
            print("RESULT " + json.dumps(row), flush=True)
        return
    runs = plan_runs(args)
    commit, date = git_commit(), datetime.date.today().isoformat()
    results, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "random_train_000000.bin")
        write_random_shard(shard, runs, args)
        for run in runs:
            name = f"{run.model} B={run.micro_batch} gpus={run.gpus} zero={run.zero} total_batch={run.total_batch} " \
                   f"{run.provider}"
            try:
                row = launch(run, shard, args)
            except RunFailed as e:
                print(f"{name}: FAILED ({e})", flush=True)
                failures.append(name)
                continue
            row.update(date=date, commit=commit)
            print(f"{name}: " + ", ".join(f"{k}={row[k]}" for k in TRAIN_COLUMNS), flush=True)
            print(f"  ms of each step (warm-up first): {row['step_ms']}", flush=True)
            results.append((run, row))
    append_csv(args.csv, TRAIN_COLUMNS, [{k: row[k] for k in TRAIN_COLUMNS} for _, row in results])
    if results:
        print(scaling_table(results), flush=True)
    if failures:
        sys.exit(f"{len(failures)} of {len(runs)} runs failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
