"""Timing and reporting shared by the benchmark scripts.

Timing: CUDA events around each call, after warm-up, median of >= 50 runs; inputs rotate through enough
copies to exceed the L2 cache, so every call reads from HBM. Results append to a CSV with the columns
    op,shape,provider,ms,gbps,tflops,gpu,date,commit
(empty where a figure does not apply).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import subprocess
from typing import Callable, Optional, Sequence

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
KERNEL_CSV = os.path.join(RESULTS_DIR, "kernels.csv")
KERNEL_COLUMNS = ["op", "shape", "provider", "ms", "gbps", "tflops", "gpu", "date", "commit"]
COPY_CEILING_GBPS = 3000.0  # measured device-to-device copy on the H100 (bytes read + written)
L2_FLUSH_BYTES = 120 * 2**20  # rotate inputs past the H100's 50 MB L2 with margin


def git_commit() -> str:
    """LLMC_COMMIT when set (the GPU machine's copy of the tree has no git history), else git's HEAD."""
    if os.environ.get("LLMC_COMMIT"):
        return os.environ["LLMC_COMMIT"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.check_output(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def copies_for(bytes_per_call: int) -> int:
    """How many independent input sets to rotate through so their total exceeds L2."""
    return max(1, min(64, -(-L2_FLUSH_BYTES // max(1, bytes_per_call))))


def time_cuda(fn: Callable[[int], None], n_inputs: int, warmup: int = 10, iters: int = 50) -> float:
    """Median milliseconds of fn(i), where i cycles through n_inputs input sets."""
    for i in range(warmup):
        fn(i % n_inputs)
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % n_inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class Recorder:
    """Collects rows, prints them as they come, appends them to the CSV at the end."""

    def __init__(self, csv_path: str = KERNEL_CSV):
        self.csv_path = csv_path
        self.rows = []
        self.gpu, self.commit = gpu_name(), git_commit()
        self.date = datetime.date.today().isoformat()

    def add(self, op: str, shape: str, provider: str, ms: float, bytes_moved: Optional[int] = None,
            flops: Optional[float] = None) -> None:
        gbps = f"{bytes_moved / ms / 1e6:.1f}" if bytes_moved else ""
        tflops = f"{flops / ms / 1e9:.1f}" if flops else ""
        row = dict(op=op, shape=shape, provider=provider, ms=f"{ms:.4f}", gbps=gbps, tflops=tflops,
                   gpu=self.gpu, date=self.date, commit=self.commit)
        self.rows.append(row)
        frac = f" ({float(gbps) / COPY_CEILING_GBPS:.0%} of copy ceiling)" if gbps else ""
        print(f"{op:36s} {shape:28s} {provider:16s} {ms:9.4f} ms {gbps:>8s} GB/s{frac} {tflops:>7s} TFLOP/s",
              flush=True)

    def save(self) -> None:
        append_csv(self.csv_path, KERNEL_COLUMNS, self.rows)


def append_csv(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Append rows to a results CSV, writing the header when the file is new or empty."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"appended {len(rows)} rows to {path}")


def compiled(fn: Callable) -> Callable:
    """torch.compile of the same math, as a baseline."""
    return torch.compile(fn, dynamic=False)


GPT2_SHAPES = {"124M": dict(B=64, T=1024, C=768, NH=12), "1.5B": dict(B=8, T=1024, C=1600, NH=25)}


def parse_args(description: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--csv", default=KERNEL_CSV, help="CSV to append rows to")
    p.add_argument("--shapes", default="124M,1.5B", help="comma-separated: 124M, 1.5B")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    return p.parse_args(argv)


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks need a CUDA GPU")
