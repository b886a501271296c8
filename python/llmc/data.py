"""Token shards in llm.c's format and the training/validation DataLoader.

A shard is a header of 256 int32 ([0] = 20240520 magic, [1] = 1 version, [2] = number of tokens) followed by
that many uint16 GPT-2 tokens. `write_shard` writes one atomically, `read_shard` validates and memory-maps one.

`DataLoader` serves (inputs, targets) batches of B rows of T tokens from the shards a glob pattern matches.
A row is a window of T+1 tokens (inputs and the targets shifted by one) starting at a multiple of T in its shard,
so consecutive windows share one token, as in llm.c's batches. An epoch is a list of windows; one optimizer step
takes the next R = accum*world_size*B of them (accum micro-steps of gradient accumulation), and micro-step k of
rank r reads rows (k*world_size + r)*B ... + B of the step, so the ranks' data never overlap and a step covers the
same windows whatever the split between GPUs and accumulation (one GPU accumulating 4 micro-steps sees what 4 GPUs
see in one). Each shard gives its windows in whole steps (R windows; or one micro-step of all ranks, world_size*B
windows, when some shard holds less than a step: small data still trains, but a step's windows then depend on the
split), and the remainder at its end, less than a step, is left out, as llm.c leaves out its shards' tails.

shuffle=False: the epoch lists the windows in order, shard after shard, which is exactly what llm.c reads with its
shuffling off. shuffle=True: the epoch lists the same windows in a random order drawn from (seed, epoch), the same
on every rank, so every row of a step comes from its own place in the corpus (as nanoGPT samples rows). llm.c
instead shuffles whole B*T blocks of contiguous text, so its rows within a micro-step are neighbours; rows drawn
independently give less correlated gradients. After the last window the loader starts the next epoch (a new
order). The position is (epoch, row of the epoch), which is what `state_dict` saves, so a resumed loader continues
exactly.
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

    OPEN_SHARDS = 64  # memory maps kept open at a time (shuffled rows come from anywhere in the corpus)

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
        # Shards give their windows in whole steps when every shard holds one; else in whole micro-steps of all
        # ranks (llm.c's layout).
        micro_rows = self.world_size * self.B
        step_rows = self.accum * micro_rows
        self.block_rows = step_rows if min(self.shard_tokens) >= step_rows * self.T + 1 else micro_rows
        for f, ntok in zip(self.files, self.shard_tokens):
            if ntok < micro_rows * self.T + 1:
                raise ValueError(f"shard {f} has {ntok} tokens, fewer than one batch needs (world_size*B*T + 1 = "
                                 f"{micro_rows * self.T + 1}); use a smaller batch size or sequence length (llmc train "
                                 f"-b/-t, llmc eval -B/-T), or larger shards")
        windows = [(ntok - 1) // (self.block_rows * self.T) * self.block_rows for ntok in self.shard_tokens]
        self._first_window = np.cumsum([0] + windows)  # global index of each shard's first window
        self.epoch_rows = int(self._first_window[-1])
        self.num_tokens = sum(self.shard_tokens)
        self._maps: dict[int, np.ndarray] = {}  # open memory maps, least recently used first
        self.last_files: list[str] = []  # the shards the last batch came from
        self.reset()

    # -- position ---------------------------------------------------------------------------------------
    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.row = 0
        self._order = None
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.epoch_rows)
            self._order = order.astype(np.int32) if self.epoch_rows < 2**31 else order

    def reset(self) -> None:
        """Back to the first batch of epoch 0."""
        self._start_epoch(0)

    def _shard(self, index: int) -> np.ndarray:
        tokens = self._maps.pop(index, None)
        if tokens is None:
            tokens = read_shard(self.files[index])
            if len(self._maps) >= self.OPEN_SHARDS:
                del self._maps[next(iter(self._maps))]
        self._maps[index] = tokens
        return tokens

    def _rows(self, windows: np.ndarray) -> np.ndarray:
        """The (len(windows), T+1) tokens of the given global window indices."""
        T = self.T
        shards = np.searchsorted(self._first_window, windows, side="right") - 1
        starts = (windows - self._first_window[shards]) * T
        out = np.empty((len(windows), T + 1), dtype=np.uint16)
        span = np.arange(T + 1)
        used = np.unique(shards)
        self.last_files = [self.files[i].name for i in used]
        for index in used:
            mine = shards == index
            out[mine] = self._shard(int(index))[starts[mine][:, None] + span]
        return out

    def next_batch(self):
        """(inputs, targets): int32 CPU tensors of shape (B, T); targets are the inputs shifted by one token."""
        import torch

        if self.row == self.epoch_rows:
            self._start_epoch(self.epoch + 1)
        first = self.row + self.rank * self.B
        positions = np.arange(first, first + self.B)
        self.row += self.world_size * self.B
        windows = positions if self._order is None else self._order[positions].astype(np.int64)
        rows = self._rows(windows)
        return torch.from_numpy(rows[:, :-1].astype(np.int32)), torch.from_numpy(rows[:, 1:].astype(np.int32))

    # -- checkpointing ----------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"files": [f.name for f in self.files], "shard_tokens": list(self.shard_tokens), "B": self.B,
                "accum": self.accum, "T": self.T, "rank": self.rank, "world_size": self.world_size,
                "shuffle": self.shuffle, "seed": self.seed, "rows": "windows"}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this loader is (plain Python values)."""
        return {**self._identity(), "epoch": self.epoch, "row": self.row}

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
        epoch, row = state.get("epoch"), state.get("row")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"data loader state names epoch {epoch!r}; expected an int >= 0")
        micro_rows = self.world_size * self.B
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= self.epoch_rows or row % micro_rows:
            raise ValueError(f"data loader state names row {row!r}; expected a multiple of world_size*B = "
                             f"{micro_rows} in [0, {self.epoch_rows}]")
        self._start_epoch(epoch)
        self.row = row

    def __repr__(self) -> str:
        return (f"DataLoader({len(self.files)} shards, {self.num_tokens:,} tokens, {self.epoch_rows:,} rows an epoch, "
                f"B={self.B}, T={self.T}, accum={self.accum}, rank={self.rank}/{self.world_size}, "
                f"shuffle={self.shuffle}, seed={self.seed})")
