"""Token shards in llm.c's format and the training/validation DataLoader.

A shard is a header of 256 int32 ([0] = 20240520 magic, [1] = 1 version, [2] = number of tokens) followed by
that many uint16 GPT-2 tokens. `write_shard` writes one atomically, `read_shard` validates and memory-maps one.

`DataLoader` serves (inputs, targets) batches of B rows of T tokens from the shards a glob pattern matches,
laid out as in llm.c's dataloader: a shard is cut into samples of accum*world_size*B*T tokens (one optimizer
step's worth with `accum` micro-steps of gradient accumulation; plus the one token that follows, for the
targets), and micro-step k of rank r reads the (k*world_size + r)-th B*T slice of each sample, so the ranks'
data never overlap, and a step covers the same tokens whatever the split between GPUs and accumulation (one GPU
accumulating 4 micro-steps sees what 4 GPUs see in one). When some shard holds less than one step, samples are
one micro-step of all ranks (world_size*B*T tokens, llm.c's layout): small data still trains, but a step's
tokens then depend on the split. With shuffle=True the order of the shards and the order
of the samples inside each shard are random permutations drawn from (seed, epoch[, shard]), the same on every
rank; the position is then fully described by (epoch, shard position, sample position, micro-step), which is
what `state_dict` saves, so a resumed loader continues exactly. After the last sample of the last shard the
loader starts the next epoch (new permutations).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ._validate import check_int as _check_int

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_TOKENS = 2**31 - 1  # the header stores the count as int32

Pattern = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def write_shard(path: str | os.PathLike, tokens) -> None:
    """Write `tokens` (1-D integers in [0, 65535]: a numpy array, list or CPU tensor) as an llm.c shard, atomically
    (a temporary file in the same directory, fsync, rename)."""
    from .checkpoint import atomic_write

    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.uint16:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
            raise ValueError(f"token ids must lie in [0, 65535] to fit the uint16 shard format, got "
                             f"[{arr.min()}, {arr.max()}]")
    if not 1 <= arr.size <= MAX_SHARD_TOKENS:
        raise ValueError(f"a shard holds 1 to {MAX_SHARD_TOKENS} tokens, got {arr.size}")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, arr.size)

    def write(f):
        f.write(header.tobytes())
        f.write(arr.astype(np.uint16, copy=False).tobytes())

    atomic_write(path, write)


def shard_num_tokens(path: str | os.PathLike) -> int:
    """The token count of a shard, after checking its header and that its size matches; ValueError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype=np.int32)
    except OSError as e:
        raise ValueError(f"cannot read shard {path}: {e}") from None
    if header.size < HEADER_INTS:
        raise ValueError(f"shard {path} is {size} bytes, shorter than the {HEADER_BYTES}-byte header; it is truncated "
                         f"or not an llm.c shard")
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"shard {path} has magic {header[0]}, expected {SHARD_MAGIC}: not an llm.c token shard "
                         f"(re-create it with `llmc prepare`)")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"shard {path} has version {header[1]}, only version {SHARD_VERSION} is supported")
    ntok = int(header[2])
    if ntok < 1:
        raise ValueError(f"shard {path} announces {ntok} tokens; a shard needs at least one")
    expected = HEADER_BYTES + 2 * ntok
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(f"shard {path} is {size} bytes but its header announces {ntok} tokens ({expected} bytes): "
                         f"the file is {state}; re-create it")
    return ntok


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a validated shard as a read-only, memory-mapped uint16 array."""
    ntok = shard_num_tokens(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(ntok,))


def expand_pattern(pattern: Pattern) -> list[Path]:
    """The sorted, de-duplicated files that a glob pattern (or a list of them) matches; ValueError if none."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else pattern
    if not isinstance(patterns, Sequence) or not patterns:
        raise TypeError(f"pattern must be a glob string or a non-empty list of them, got {pattern!r}")
    files = set()
    for p in patterns:
        if not isinstance(p, (str, os.PathLike)) or not str(p):
            raise ValueError(f"shard pattern {p!r} is empty or not a string; pass a glob like 'data/x_train_*.bin'")
        matched = [m for m in glob.glob(str(p)) if os.path.isfile(m)]
        if not matched:
            raise ValueError(f"shard pattern {str(p)!r} matches no file; check the path (or run `llmc prepare`)")
        files.update(os.path.abspath(m) for m in matched)
    return [Path(f) for f in sorted(files)]


class DataLoader:
    """Batches of (inputs, targets), each an int32 CPU tensor of shape (B, T), from llm.c shards (module doc)."""

    def __init__(self, pattern: Pattern, B: int, T: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 1337, accum: int = 1):
        self.B = _check_int(B, "B", 1)
        self.T = _check_int(T, "T", 1)
        self.accum = _check_int(accum, "accum", 1)
        self.world_size = _check_int(world_size, "world_size", 1)
        self.rank = _check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.seed = _check_int(seed, "seed", 0)
        self.shuffle = bool(shuffle)
        self.files = expand_pattern(pattern)
        self.shard_tokens = [shard_num_tokens(f) for f in self.files]
        # A sample is one step when every shard holds one; else one micro-step of all ranks (llm.c's layout).
        step = self.accum * self.world_size * self.B * self.T
        self.sample_accum = self.accum if min(self.shard_tokens) >= step + 1 else 1
        self.sample_tokens = self.sample_accum * self.world_size * self.B * self.T
        for f, ntok in zip(self.files, self.shard_tokens):
            if ntok < self.sample_tokens + 1:
                raise ValueError(f"shard {f} has {ntok} tokens, fewer than one batch needs (world_size*B*T + 1 = "
                                 f"{self.sample_tokens + 1}); use a smaller -b/-t, or larger shards")
        self.num_tokens = sum(self.shard_tokens)
        self._tokens = None
        self._tokens_file = None
        self.reset()

    # -- position ---------------------------------------------------------------------------------------
    def _shard_order(self) -> np.ndarray:
        n = len(self.files)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def _enter_shard(self) -> None:
        """Point at shard position self.shard_pos of this epoch: map its tokens and order its samples."""
        self._shard = int(self._order[self.shard_pos])
        n = (self.shard_tokens[self._shard] - 1) // self.sample_tokens
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self._shard])
            self._samples = rng.permutation(n)
        else:
            self._samples = np.arange(n)
        if self._tokens_file != self._shard:
            self._tokens = read_shard(self.files[self._shard])
            self._tokens_file = self._shard

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = self._shard_order()
        self.shard_pos = 0
        self.sample_pos = 0
        self.micro_pos = 0
        self._enter_shard()

    def reset(self) -> None:
        """Back to the first batch of epoch 0."""
        self._start_epoch(0)

    def next_batch(self):
        """(inputs, targets): int32 CPU tensors of shape (B, T); targets are the inputs shifted by one token."""
        import torch

        if self.sample_pos == len(self._samples):
            if self.shard_pos + 1 == len(self.files):
                self._start_epoch(self.epoch + 1)
            else:
                self.shard_pos += 1
                self.sample_pos = 0
                self._enter_shard()
        piece = self.micro_pos * self.world_size + self.rank
        start = int(self._samples[self.sample_pos]) * self.sample_tokens + piece * self.B * self.T
        self.micro_pos += 1
        if self.micro_pos == self.sample_accum:
            self.micro_pos = 0
            self.sample_pos += 1
        chunk = self._tokens[start:start + self.B * self.T + 1]
        inputs = torch.from_numpy(chunk[:-1].astype(np.int32)).view(self.B, self.T)
        targets = torch.from_numpy(chunk[1:].astype(np.int32)).view(self.B, self.T)
        return inputs, targets

    # -- checkpointing ----------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"files": [f.name for f in self.files], "shard_tokens": list(self.shard_tokens), "B": self.B,
                "accum": self.accum, "T": self.T, "rank": self.rank, "world_size": self.world_size,
                "shuffle": self.shuffle, "seed": self.seed}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this loader is (plain Python values)."""
        return {**self._identity(), "epoch": self.epoch, "shard_pos": self.shard_pos, "sample_pos": self.sample_pos,
                "micro_pos": self.micro_pos}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` of a loader over the same shards with the same B, T, accum, rank, world
        size, shuffle and seed (ValueError naming what differs)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from DataLoader.state_dict(), got {type(state).__name__}")
        mine = self._identity()
        diff = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in mine.items() if state.get(k) != v]
        if diff:
            raise ValueError("the data loader state was saved for other data or settings, so the run cannot continue "
                             "exactly; differences: " + "; ".join(diff))
        self.epoch = int(state["epoch"])
        self._order = self._shard_order()
        shard_pos, sample_pos, micro_pos = int(state["shard_pos"]), int(state["sample_pos"]), int(state["micro_pos"])
        if not 0 <= micro_pos < self.sample_accum:
            raise ValueError(f"data loader state names micro-step {micro_pos}, but a sample has {self.sample_accum}")
        if not 0 <= shard_pos < len(self.files):
            raise ValueError(f"data loader state names shard position {shard_pos}, but there are {len(self.files)}")
        self.shard_pos = shard_pos
        self._enter_shard()
        if not 0 <= sample_pos <= len(self._samples):
            raise ValueError(f"data loader state names sample {sample_pos}, but the shard has {len(self._samples)}")
        self.sample_pos = sample_pos
        self.micro_pos = micro_pos

    def __repr__(self) -> str:
        return (f"DataLoader({len(self.files)} shards, {self.num_tokens:,} tokens, B={self.B}, T={self.T}, "
                f"accum={self.accum}, rank={self.rank}/{self.world_size}, shuffle={self.shuffle}, seed={self.seed})")
