"""Timing and reporting shared by the benchmark scripts.

Timing (time_cuda): after warm-up, the calls over all rotated input sets (at least MIN_CALLS_PER_REPLAY of them)
are captured into one CUDA graph; CUDA events around each replay, median over >= 50 replays, divided by the calls
per replay. That is the device time of the op's kernels, back to back, for every provider alike (llmc, torch
eager, torch.compile): the Python wrapper's host work (validation, allocation, launch) is not in it. A provider
whose calls cannot be captured (a host sync, a non-capturable optimizer step) is timed per call instead, with a
printed note, and its rows say so ("<provider> (per call)"). The per-call loop puts events around ONE Python call
each time, so for kernels of tens of microseconds it also measures the host: `--per-call` adds that figure as a
second row per provider, to keep the host overhead visible.
Inputs rotate through enough copies to exceed the L2 cache, so every call reads from HBM. Results append to a CSV
with the columns
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
L2_FLUSH_BYTES = 120 * 2**20  # rotate inputs past the L2 (50 MB on the H100, 60 MB on the H200) with margin
COPY_BYTES = 2 * 2**30  # the copy ceiling's buffers: 1 GiB read + 1 GiB written
_ceiling = {}


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


MIN_CALLS_PER_REPLAY = 20  # a replay long enough that the graph launch itself is noise
_options = {"per_call": False}  # set by parse_args (--per-call)


def copy_ceiling_gbps() -> float:
    """This GPU's device-to-device copy rate in GB/s (bytes read + written), measured once per process: a kernel
    reading 1 GiB and writing 1 GiB (torch.neg into another buffer), timed like every op here (graph replays,
    median). Not copy_: in a CUDA graph that becomes a memcpy node run by a copy engine, 2.7 TB/s on an H200
    against 4.2 TB/s for a kernel (session 8). GB/s figures are reported against this, so the fraction means the
    same on an H100 (about 3.0 TB/s) and an H200 (about 4.2 TB/s)."""
    dev = torch.cuda.current_device()
    if dev not in _ceiling:
        src = torch.randn(COPY_BYTES // 8, device="cuda")
        dst = torch.empty_like(src)
        ms = time_graph(lambda i: torch.neg(src, out=dst), 1, warmup=3, iters=50)
        _ceiling[dev] = COPY_BYTES / ms / 1e6
        print(f"copy ceiling on {gpu_name()}: {_ceiling[dev]:.0f} GB/s (a 1 GiB elementwise kernel, bytes read + "
              f"written)", flush=True)
        del src, dst
        torch.cuda.empty_cache()
    return _ceiling[dev]


class Timing(float):
    """Milliseconds per call, with how they were measured: method "graph" or "per call"; per_call_ms is the
    per-call loop's figure as well, when --per-call asked for it (Recorder.add writes it as a second row)."""

    def __new__(cls, ms: float, method: str, per_call_ms: Optional[float] = None):
        t = super().__new__(cls, ms)
        t.method, t.per_call_ms = method, per_call_ms
        return t


def _median_event_ms(run: Callable[[int], None], iters: int) -> float:
    times = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_per_call(fn: Callable[[int], None], n_inputs: int, warmup: int = 10, iters: int = 50) -> float:
    """Median milliseconds of one Python call fn(i), i cycling through n_inputs input sets (host time included
    whenever the host takes longer than the kernels)."""
    for i in range(warmup):
        fn(i % n_inputs)
    torch.cuda.synchronize()
    return _median_event_ms(lambda i: fn(i % n_inputs), iters)


def time_graph(fn: Callable[[int], None], n_inputs: int, warmup: int = 10, iters: int = 50) -> float:
    """Median milliseconds per call of fn, from replays of one CUDA graph holding calls over all n_inputs sets.

    Warm-up runs on a side stream, as torch's CUDA graph docs require (lazy initialisation, compilation,
    cuBLAS workspaces, autograd state). Raises whatever the capture raises when fn cannot be captured."""
    calls = n_inputs * -(-MIN_CALLS_PER_REPLAY // n_inputs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(max(warmup, 1)):
            fn(i % n_inputs)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    # capture_begin/end by hand rather than torch.cuda.graph: when a call fails inside the capture, the stream
    # context is still left and later work runs on the usual stream
    with torch.cuda.stream(side):
        graph.capture_begin()
        try:
            for i in range(calls):
                fn(i % n_inputs)
        except Exception:
            try:
                graph.capture_end()  # ends the broken capture; its own error only restates the one raised below
            except RuntimeError:
                pass
            raise
        graph.capture_end()
    try:
        graph.replay()  # the first replay uploads the graph
        torch.cuda.synchronize()
        return _median_event_ms(lambda i: graph.replay(), iters) / calls
    finally:
        graph.reset()  # frees the graph and the memory its captured calls allocated


def time_cuda(fn: Callable[[int], None], n_inputs: int, warmup: int = 10, iters: int = 50,
              graph: bool = True) -> Timing:
    """Milliseconds per call of fn(i), where i cycles through n_inputs input sets: device time from CUDA graph
    replays (time_graph); per call (time_per_call) with graph=False, or, with a printed note, when the capture
    fails. See the module docstring."""
    if graph:
        try:
            ms = time_graph(fn, n_inputs, warmup, iters)
        except Exception as e:  # any capture failure: the provider is timed per call instead
            first_line = (str(e).strip().splitlines() or [""])[0][:160]
            print(f"note: CUDA graph capture failed ({type(e).__name__}: {first_line}); timing per call",
                  flush=True)
            torch.cuda.synchronize()
        else:
            per_call = time_per_call(fn, n_inputs, 0, iters) if _options["per_call"] else None
            return Timing(ms, "graph", per_call)
    return Timing(time_per_call(fn, n_inputs, warmup, iters), "per call")


class Recorder:
    """Collects rows, prints them as they come, appends them to the CSV at the end."""

    def __init__(self, csv_path: str = KERNEL_CSV):
        self.csv_path = csv_path
        self.rows = []
        self.gpu, self.commit = gpu_name(), git_commit()
        self.date = datetime.date.today().isoformat()

    def add(self, op: str, shape: str, provider: str, ms: float, bytes_moved: Optional[int] = None,
            flops: Optional[float] = None) -> None:
        """One row; a Timing measured per call gets " (per call)" after the provider, and one that carries a
        per-call figure as well (--per-call) adds that as a second row."""
        if isinstance(ms, Timing) and ms.per_call_ms is not None:
            self.add(op, shape, provider, float(ms), bytes_moved, flops)
            self.add(op, shape, provider, Timing(ms.per_call_ms, "per call"), bytes_moved, flops)
            return
        if isinstance(ms, Timing) and ms.method == "per call":
            provider += " (per call)"
        gbps = f"{bytes_moved / ms / 1e6:.1f}" if bytes_moved else ""
        tflops = f"{flops / ms / 1e9:.1f}" if flops else ""
        row = dict(op=op, shape=shape, provider=provider, ms=f"{ms:.4f}", gbps=gbps, tflops=tflops,
                   gpu=self.gpu, date=self.date, commit=self.commit)
        self.rows.append(row)
        frac = f" ({float(gbps) / copy_ceiling_gbps():.0%} of copy ceiling)" if gbps else ""
        print(f"{op:36s} {shape:28s} {provider:16s} {ms:9.4f} ms {gbps:>8s} GB/s{frac} {tflops:>7s} TFLOP/s",
              flush=True)

    def save(self) -> None:
        append_csv(self.csv_path, KERNEL_COLUMNS, self.rows)


def append_csv(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Append rows to a results CSV, writing the header when the file is new or empty."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")  # as the committed CSVs (not csv's \r\n)
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
    p.add_argument("--per-call", action="store_true",
                   help="also time every provider per Python call (host overhead included): "
                        "'<provider> (per call)' rows")
    args = p.parse_args(argv)
    _options["per_call"] = args.per_call
    return args


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks need a CUDA GPU")
