"""Data-parallel training over torch.distributed: one process per GPU, started by torchrun (NCCL), or CPU
processes (gloo) in tests.

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and creates
the process group once, with a collective timeout so that a rank that died or hangs ends the job with an error
instead of a hang. On GPUs the host's waits for the device (`wait_for_device`: the step's loss read, the
all-reduced floats) poll with that timeout too: torch's NCCL watchdog was seen not to end a rank stuck in an
all-reduce within 45 s of a 5 s timeout (torch 2.11, two H200s), so llmc ends such a process itself. Without
WORLD_SIZE (or with WORLD_SIZE=1) it is a no-op and everything below degrades to the single-process behaviour,
so the Trainer runs one code path.

`GradientSync` reduces the model's flat gradient buffer in the last micro-step of an accumulation. The ranks'
gradients are SUMMED: the Trainer scales the loss gradient by 1/(grad_accum * world_size) in forward, so the sum
is the mean over the total batch.
- ZeRO-0: every rank gets the summed gradients (all-reduce) and runs the same AdamW update on all parameters.
- ZeRO-1: the flat range is cut into world_size shards (llmc.sharding: a multiple of 8 elements each, so every
  shard starts 16-byte aligned for the AdamW kernel; the last rank also owns the tail). Each rank receives the
  sums of its own shard only; its AdamW (llmc.optim.AdamW with shard=...) keeps m, v and master weights for that
  shard and updates that slice of model.params; the parameters are then all-gathered in place and the tail is
  broadcast from the last rank. Outside its shard a rank's model.grads holds partial sums until zero_grad().
Overlap (`start_overlap()` before the last micro-step's backward): the model calls back as gradients become final
(lnf, then layers from the last to the first, then the embeddings) and the gradients go out in buckets of about
BUCKET_ELEMENTS while backward goes on: NCCL runs on its own stream, ordered after the kernels that produced the
bucket, and `reduce_gradients()` only makes the compute stream wait for it (no host sync). llm.c's layout keeps
each kind of tensor contiguous across layers, so a bucket of layers [lo, hi] is 12 ranges (one per kind), each a
collective: all-reduce for ZeRO-0; for ZeRO-1 a reduce to the rank owning the range (a range that crosses a shard
boundary is split), which moves the same bytes as a reduce-scatter. Without start_overlap(), reduce_gradients()
reduces the whole buffer at once (one all-reduce, or an in-place reduce-scatter plus the tail's all-reduce).
"""
from __future__ import annotations

import datetime
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from .sharding import LAYER_PARAMS, PARAM_NAMES, shard_range, shard_size, tensor_ranges

DEFAULT_TIMEOUT_S = 600.0
ZERO_STAGES = (0, 1)  # what GradientSync runs: 0 all-reduce, 1 sharded optimizer state (ZeRO-1)
BUCKET_ELEMENTS = 2**24  # gradients per overlapped bucket (32 MiB of bf16), whole layers, at least one
TIMEOUT_EXIT_CODE = 3  # a process ended by wait_for_device's timeout
_wait_timeout_s: Optional[float] = None  # set by init_distributed for NCCL process groups


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank of world_size, its GPU (local_rank) and the device it trains on."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it)") from None


def dist_info_from_env() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (rank 0 of 1 when WORLD_SIZE is not set)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, "
                         f"LOCAL_RANK={local_rank}; need 0 <= RANK < WORLD_SIZE")
    return DistInfo(rank, world_size, local_rank)


def init_distributed(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the process group torchrun describes (no-op for one process, or when it already exists).
    device_type "cuda": NCCL, and this process uses GPU LOCAL_RANK; "cpu": gloo. A collective that waits longer
    than timeout_s seconds (a rank died or hangs) raises instead of hanging."""
    import torch
    import torch.distributed as dist

    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device_type must be 'cuda' or 'cpu', got {device_type!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    info = dist_info_from_env()
    if not info.is_distributed:
        return info
    if device_type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                               f"start at most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(info.local_rank)
    if dist.is_initialized():
        return info
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={info.world_size} but {name} is not set; launch with torchrun "
                               f"(e.g. torchrun --nproc_per_node={info.world_size} -m llmc train ...)")
    kwargs = dict(backend="nccl" if device_type == "cuda" else "gloo", rank=info.rank, world_size=info.world_size,
                  timeout=datetime.timedelta(seconds=timeout_s))
    if device_type == "cuda":
        kwargs["device_id"] = torch.device("cuda", info.local_rank)  # NCCL communicator created eagerly, once
    dist.init_process_group(**kwargs)
    if device_type == "cuda":
        global _wait_timeout_s
        _wait_timeout_s = float(timeout_s)
        # One collective now, while every rank is here. device_id already makes NCCL create its communicator in
        # init_process_group, but NCCL may still connect peers lazily at a collective's first use
        # (NCCL_RUNTIME_CONNECT), and that blocks the host with no timeout: a guess at why a rank that never
        # joined the first all-reduce was not ended in 45 s (module docstring). This connects the all-reduce
        # path while everybody is present; not yet run on GPUs, and other collectives may still connect later.
        first = torch.zeros(1, device=torch.device("cuda", info.local_rank))
        dist.all_reduce(first)
        wait_for_device(first.device, "the first collective (NCCL setup)")
    return info


def wait_for_device(device, what: str) -> None:
    """Wait for the GPU (nothing on the CPU). Outside an NCCL job: torch.cuda.synchronize(device). In an NCCL job
    the host polls an event recorded on `device`'s current stream, and when the work queued before it (all of
    it since the host last waited: up to a step, or an evaluation) is not done within the process group's
    timeout, it prints why and ends this process with TIMEOUT_EXIT_CODE (a collective another rank never joins
    cannot be cancelled from Python, and exiting normally would wait for it); torchrun then ends the other
    ranks. So --dist-timeout must exceed a step's time, as its 600 s default does."""
    import torch

    if device.type != "cuda":
        return
    if _wait_timeout_s is None:
        torch.cuda.synchronize(device)
        return
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))
    start = time.monotonic()
    while not done.query():
        if time.monotonic() - start > _wait_timeout_s:
            sys.stdout.flush()
            sys.stderr.write(f"llmc: rank {dist_info_from_env().rank}: timed out: {what} did not finish within "
                             f"{_wait_timeout_s:g} s (the collective timeout, --dist-timeout); another rank is stuck "
                             f"or gone. Ending this process (exit code {TIMEOUT_EXIT_CODE}) so that torchrun ends "
                             f"the job.\n")
            sys.stderr.flush()
            os._exit(TIMEOUT_EXIT_CODE)
        time.sleep(0.0002)  # the wait ends at most ~0.2 ms late: negligible against a step


def cleanup() -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    global _wait_timeout_s
    _wait_timeout_s = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()


def gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (picklable values; [obj] for one process)."""
    import torch.distributed as dist

    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float, device) -> float:
    """Mean of a Python float over the ranks (the float itself for one process); device: where NCCL can see it."""
    import torch
    import torch.distributed as dist

    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    wait_for_device(t.device, "an all-reduce")
    return t.item() / dist.get_world_size()


def all_reduce_sum(values: list[int], device) -> list[int]:
    """Element-wise sum of integer counts over the ranks (exact below 2**53)."""
    import torch
    import torch.distributed as dist

    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    wait_for_device(t.device, "an all-reduce")
    return [int(round(x)) for x in t.tolist()]


class GradientSync:
    """Gradient reduction, global grad norm and parameter gathering of one GPT across the ranks (module doc).
    With one process every method is local: no collectives."""

    def __init__(self, model, zero_stage: int = 0):
        import torch.distributed as dist

        if isinstance(zero_stage, bool) or not isinstance(zero_stage, int) or zero_stage not in ZERO_STAGES:
            raise ValueError(f"zero_stage {zero_stage!r} is not implemented: use 0 (all-reduce) or 1 (ZeRO-1, sharded "
                             f"optimizer state)")
        self.model = model
        self.zero_stage = zero_stage
        self.world_size = dist.get_world_size() if is_distributed() else 1
        self.rank = dist.get_rank() if is_distributed() else 0
        n = model.num_params
        self.shard = shard_range(n, self.rank, self.world_size) if zero_stage == 1 else (0, n)
        self.per_rank = shard_size(n, self.world_size)
        self.prefix = self.per_rank * self.world_size  # reduce-scattered / all-gathered; [prefix, n) is the tail
        model.grad_ready_hook = None  # a hook left by an earlier GradientSync of this model does not apply
        self._kinds = dict(zip(PARAM_NAMES, tensor_ranges(model.param_sizes)))  # [start, end) of each tensor kind
        self._per_layer = sum(self._kinds[k][1] - self._kinds[k][0] for k in LAYER_PARAMS) // model.config.n_layer
        self._works: Optional[list] = None  # collectives in flight since start_overlap()
        self._bucket: list[tuple[int, int]] = []  # ranges of final gradients not sent yet
        self._bucket_layers = 0
        if self.world_size > 1:
            with model._device_scope():
                dist.broadcast(model.params, src=0)  # every rank starts from rank 0's weights
            model.params_updated()

    # -- overlapped reduction ---------------------------------------------------------------------------
    def start_overlap(self) -> None:
        """Reduce the gradients of the next backward() bucket by bucket while it runs (call before the last
        micro-step's backward; reduce_gradients() completes it)."""
        if self.world_size == 1:
            return
        if self._works is not None:
            raise RuntimeError("start_overlap() again before reduce_gradients() finished the previous reduction")
        self._works, self._bucket, self._bucket_layers = [], [], 0
        self.model.grad_ready_hook = self._grads_ready

    def abort_overlap(self) -> None:
        """Forget an overlapped reduction that will not complete (backward raised): the model's hook is removed
        and the collectives already sent are not waited for."""
        if self.model.grad_ready_hook == self._grads_ready:
            self.model.grad_ready_hook = None
        self._works, self._bucket, self._bucket_layers = None, [], 0

    def _grads_ready(self, layer: int) -> None:
        """model.grad_ready_hook: collect final ranges into a bucket, send it when it is big enough."""
        kinds, L = self._kinds, self.model.config.n_layer
        if layer == L:  # lnf: rides with the first bucket of layers
            self._bucket.append(kinds["lnfw"])
            self._bucket.append(kinds["lnfb"])
            return
        if layer >= 0:
            self._bucket_layers += 1
            if self._bucket_layers * self._per_layer < BUCKET_ELEMENTS and layer > 0:
                return
            lo, hi = layer, layer + self._bucket_layers  # layers [lo, hi)
            for name in LAYER_PARAMS:
                start, end = kinds[name]
                per = (end - start) // L
                self._bucket.append((start + lo * per, start + hi * per))
            self._bucket_layers = 0
        else:  # wte and wpe, adjacent at the front of the buffer; the last bucket
            self._bucket.append((kinds["wte"][0], kinds["wpe"][1]))
            self.model.grad_ready_hook = None
        self._send_bucket()

    def _send_bucket(self) -> None:
        import torch.distributed as dist

        grads = self.model.grads
        with self.model._device_scope():
            for start, end in self._bucket:
                if self.zero_stage == 0:
                    self._works.append(dist.all_reduce(grads[start:end], async_op=True))
                    continue
                for owner in range(self.world_size):
                    lo, hi = shard_range(grads.numel(), owner, self.world_size)
                    lo, hi = max(lo, start), min(hi, end)
                    if hi > lo:
                        self._works.append(dist.reduce(grads[lo:hi], dst=owner, async_op=True))
        self._bucket = []

    def reduce_gradients(self) -> None:
        """Sum model.grads over the ranks: all of it (ZeRO-0), or each rank's shard (ZeRO-1). After
        start_overlap(): wait (on the GPU stream) for the buckets sent during backward."""
        import torch.distributed as dist

        if self.world_size == 1:
            return
        if self._works is not None:
            if self.model.grad_ready_hook is not None:
                self.model.grad_ready_hook = None
                self._works = None
                raise RuntimeError("reduce_gradients() after start_overlap() but before a full backward()")
            with self.model._device_scope():
                for work in self._works:
                    work.wait()
            self._works = None
            return
        grads = self.model.grads
        with self.model._device_scope():
            if self.zero_stage == 0:
                dist.all_reduce(grads)
                return
            if self.per_rank:
                start = self.rank * self.per_rank
                _reduce_scatter(grads[start:start + self.per_rank], grads[:self.prefix])
            if self.prefix < grads.numel():
                dist.all_reduce(grads[self.prefix:])

    def grad_norm_squared(self):
        """Squared global L2 norm of the reduced gradients (call after reduce_gradients) as a one-element fp32
        tensor on the model's device, without a host sync: ZeRO-0 the local buffer's, ZeRO-1 the shards' squared
        norms summed over the ranks."""
        import torch.distributed as dist

        from . import ops

        model = self.model
        start, end = self.shard
        with model._device_scope():
            sq = ops.global_norm_squared(model.grads[start:end])
            if self.zero_stage == 1 and self.world_size > 1:
                dist.all_reduce(sq)
        return sq

    def grad_norm(self) -> float:
        """Global L2 norm of the reduced gradients (one host sync)."""
        norm_squared = self.grad_norm_squared()
        wait_for_device(norm_squared.device, "the gradient norm")
        return math.sqrt(norm_squared.item())

    def mean_over_ranks(self, value):
        """Mean of a one-element device tensor over the ranks, as a new tensor, without a host sync."""
        import torch.distributed as dist

        if self.world_size == 1:
            return value
        total = value.clone()
        with self.model._device_scope():
            dist.all_reduce(total)
        return total / self.world_size

    def gather_params(self) -> None:
        """After each rank updated its shard (ZeRO-1): give every rank all the parameters."""
        import torch.distributed as dist

        if self.zero_stage == 0 or self.world_size == 1:
            return
        params = self.model.params
        with self.model._device_scope():
            if self.per_rank:
                start = self.rank * self.per_rank
                _all_gather(params[:self.prefix], params[start:start + self.per_rank])
            if self.prefix < params.numel():
                dist.broadcast(params[self.prefix:], src=self.world_size - 1)


def _reduce_scatter(output, input) -> None:
    import torch.distributed as dist

    # newer torch renamed these (the old names warn); the H100 image's torch 2.11 has only the old ones
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(output, input)


def _all_gather(output, input) -> None:
    import torch.distributed as dist

    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(output, input)
