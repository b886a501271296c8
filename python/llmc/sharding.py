"""The arithmetic of llm.c's flat parameter buffer: the order of its tensors, where each one lies, and the ZeRO-1
shards that llmc.distributed cuts it into, llmc.optim.AdamW updates and GPT.memory_plan counts. Plain Python.

ZeRO-1 cuts the num_params elements into world_size shards of shard_size() elements, a multiple of SHARD_ALIGN
so that every shard starts 16-byte aligned for the AdamW kernel; the last rank also owns the tail of fewer than
SHARD_ALIGN * world_size elements.
"""
from __future__ import annotations

# llm.c's order of the tensors in the flat buffer (and in a model file); each per-layer tensor is stacked over
# the layers
PARAM_NAMES = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")
LAYER_PARAMS = PARAM_NAMES[2:-2]  # the per-layer tensors, between the embeddings and the final layernorm
SHARD_ALIGN = 8  # elements: 16 bytes of bf16


def tensor_ranges(sizes) -> list[tuple[int, int]]:
    """[start, end) of each tensor of a flat buffer made of tensors of `sizes`, in order."""
    ranges, offset = [], 0
    for size in sizes:
        ranges.append((offset, offset + size))
        offset += size
    return ranges


def shard_size(num_params: int, world_size: int) -> int:
    """Elements of every rank's shard but the tail the last rank also owns (0 when the buffer is too small)."""
    return num_params // (world_size * SHARD_ALIGN) * SHARD_ALIGN


def shard_range(num_params: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the flat parameter range that `rank` owns under ZeRO-1 (module doc)."""
    per_rank = shard_size(num_params, world_size)
    start = rank * per_rank
    return start, (num_params if rank == world_size - 1 else start + per_rank)


def shard_partition(sizes, decay, start: int, end: int) -> tuple[list[int], list[bool]]:
    """The (tensor_sizes, tensor_decay) of the range [start, end) of a flat buffer made of tensors of `sizes`:
    the non-empty intersections of [start, end) with each tensor, in order."""
    out_sizes, out_decay = [], []
    for (lo, hi), flag in zip(tensor_ranges(sizes), decay):
        lo, hi = max(start, lo), min(end, hi)
        if hi > lo:
            out_sizes.append(hi - lo)
            out_decay.append(bool(flag))
    return out_sizes, out_decay


def check_shard(shard, num_params: int) -> tuple[int, int]:
    """`shard` as (start, end) ints, or ValueError when it is no aligned, non-empty range of the buffer."""
    if not isinstance(shard, (tuple, list)) or len(shard) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in shard) or not 0 <= shard[0] < shard[1] <= num_params:
        raise ValueError(f"shard must be (start, end) with 0 <= start < end <= {num_params} (the model's parameter "
                         f"count), got {shard!r}")
    if shard[0] % SHARD_ALIGN:
        raise ValueError(f"shard start {shard[0]} is not a multiple of {SHARD_ALIGN} elements: the AdamW kernel needs "
                         f"16-byte aligned ranges (use llmc.sharding.shard_range)")
    return int(shard[0]), int(shard[1])
