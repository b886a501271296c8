"""llm.c model files and full training checkpoints, written atomically.

Model file (what llm.c's train_gpt2cu reads and writes): a header of 256 int32 with [0] = 20240326 magic,
[1] = version (3: fp32 parameters, 5: bf16), [2] = max_seq_len, [3] = vocab_size, [4] = n_layer, [5] = n_head,
[6] = n_embd, [7] = padded_vocab_size; then every parameter in llm.c's order (wte wpe ln1w ln1b qkvw qkvb attprojw
attprojb ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb), little-endian.

A full checkpoint of step S in a run directory is, as in llm.c: `model_SSSSSSSS.bin` (the model file, in the
parameters' own dtype so nothing is rounded), `state_SSSSSSSS.pt` (torch.save of optimizer, RNG, data-loader and
trainer state) and, written last, the empty marker `DONE_SSSSSSSS`. Every file is written to a temporary name,
fsynced, then renamed, so a crash leaves either the old file or the new one; a checkpoint without its DONE
marker is incomplete and never loaded.

Data-parallel runs (CheckpointManager(..., rank, world_size, barrier)): rank 0 writes the model file and
`state_SSSSSSSS.pt`, rank r > 0 writes `state_SSSSSSSS_rank<r>.pt` (its optimizer shard and data position), and
rank 0 writes the DONE marker after a barrier, holding the world size as text; loading refuses a checkpoint of
another world size. An empty marker (single-process runs, older runs) means world size 1.

Test hook (for the crash tests only): when the environment variable LLMC_TEST_KILL_BEFORE_RENAME is set and
is a substring of a file name being written atomically, the process kills itself with SIGKILL after the
temporary file is complete and before the rename, i.e. at the worst moment for atomicity.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Callable, Optional

import numpy as np

MODEL_MAGIC = 20240326
MODEL_VERSIONS = {"fp32": 3, "bf16": 5}
HEADER_INTS = 256
KILL_HOOK_ENV = "LLMC_TEST_KILL_BEFORE_RENAME"
_DONE = re.compile(r"DONE_(\d{8})")


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Call write(binary_file) on a temporary file next to `path`, fsync it, rename it onto `path`, fsync the dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        hook = os.environ.get(KILL_HOOK_ENV)
        if hook and hook in path.name:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# llm.c model files
# ---------------------------------------------------------------------------------------------------------
def _header(config, version: int) -> np.ndarray:
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:8] = (MODEL_MAGIC, version, config.max_seq_len, config.vocab_size, config.n_layer, config.n_head,
                  config.n_embd, config.padded_vocab_size)
    return header


def write_model_file(path: str | os.PathLike, model, dtype: str = "bf16") -> None:
    """Write `model` (an llmc.GPT) as an llm.c model file: version 5 (bf16) or 3 (fp32), atomically.
    bf16 parameters written as fp32 and fp32 written as fp32 are exact; fp32 -> bf16 rounds to nearest."""
    import torch

    if dtype not in MODEL_VERSIONS:
        raise ValueError(f"dtype must be 'bf16' or 'fp32', got {dtype!r}")
    params = model.params.detach()
    expected = model.config.num_params
    if params.numel() != expected:
        raise ValueError(f"the model has {params.numel()} parameters but its config implies {expected}")
    if dtype == "bf16":
        payload = params.to(device="cpu", dtype=torch.bfloat16).view(torch.int16).numpy()
    else:
        payload = params.to(device="cpu", dtype=torch.float32).numpy()
    header = _header(model.config, MODEL_VERSIONS[dtype])

    def write(f):
        f.write(header.tobytes())
        f.write(payload.tobytes())

    atomic_write(path, write)


def read_model_file(path: str | os.PathLike):
    """(GPTConfig, flat fp32 CPU tensor of the parameters in llm.c's order) from an llm.c model file (v3 or v5)."""
    import torch

    from .model import GPTConfig

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    data = path.read_bytes()
    if len(data) < 4 * HEADER_INTS:
        raise ValueError(f"model file {path} is {len(data)} bytes, shorter than its {4 * HEADER_INTS}-byte header")
    header = np.frombuffer(data, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MODEL_MAGIC:
        raise ValueError(f"{path} has magic {header[0]}, expected {MODEL_MAGIC}: not an llm.c model file")
    versions = {v: k for k, v in MODEL_VERSIONS.items()}
    if header[1] not in versions:
        raise ValueError(f"{path} has version {header[1]}; llm.c model files are version 3 (fp32) or 5 (bf16)")
    max_seq_len, vocab_size, n_layer, n_head, n_embd, padded_vocab_size = (int(x) for x in header[2:8])
    try:
        config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
                           padded_vocab_size=padded_vocab_size, max_seq_len=max_seq_len)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the header describes no valid model ({e}); the file is corrupt") from None
    n = config.num_params
    itemsize = 2 if versions[int(header[1])] == "bf16" else 4
    if len(data) != 4 * HEADER_INTS + n * itemsize:
        raise ValueError(f"{path} is {len(data)} bytes but its header describes {n} {versions[int(header[1])]} "
                         f"parameters ({4 * HEADER_INTS + n * itemsize} bytes): truncated or corrupt")
    if itemsize == 2:
        raw = np.frombuffer(data, dtype=np.int16, offset=4 * HEADER_INTS).copy()
        params = torch.from_numpy(raw).view(torch.bfloat16).float()
    else:
        params = torch.from_numpy(np.frombuffer(data, dtype=np.float32, offset=4 * HEADER_INTS).copy())
    return config, params


# ---------------------------------------------------------------------------------------------------------
# full checkpoints
# ---------------------------------------------------------------------------------------------------------
class CheckpointManager:
    """Full checkpoints of one run directory (module doc): save, find the latest complete one, load, keep-last-K."""

    def __init__(self, out_dir: str | os.PathLike, keep_last: Optional[int] = None, rank: int = 0,
                 world_size: int = 1, barrier: Optional[Callable[[], None]] = None):
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1 or \
                isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if world_size > 1 and barrier is None:
            raise ValueError("several ranks need a barrier (e.g. llmc.distributed.barrier) so the DONE marker "
                             "follows every rank's files")
        self.rank, self.world_size, self.barrier = rank, world_size, barrier
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None (keep all), got {keep_last!r}")
        self.out_dir = Path(out_dir)
        self.keep_last = keep_last

    def model_path(self, step: int) -> Path:
        return self.out_dir / f"model_{step:08d}.bin"

    def state_path(self, step: int, rank: Optional[int] = None) -> Path:
        """This manager's rank's state file of `step` (or `rank`'s)."""
        rank = self.rank if rank is None else rank
        return self.out_dir / (f"state_{step:08d}.pt" if rank == 0 else f"state_{step:08d}_rank{rank}.pt")

    def done_path(self, step: int) -> Path:
        return self.out_dir / f"DONE_{step:08d}"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints (DONE marker, model and state files present), ascending."""
        if not self.out_dir.is_dir():
            return []
        found = (int(m.group(1)) for m in map(_DONE.fullmatch, os.listdir(self.out_dir)) if m)
        return sorted(s for s in found if self.model_path(s).is_file() and self.state_path(s, 0).is_file())

    def latest(self) -> Optional[int]:
        """Step of the newest complete checkpoint, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, model, state: dict, dtype: Optional[str] = None) -> None:
        """Write checkpoint `step`: the model file (in the parameters' dtype unless `dtype` says otherwise), the
        state dict (torch tensors and plain Python values), then the DONE marker; then prune to keep_last.
        With several ranks every rank calls this with its own state (module doc)."""
        import torch

        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if dtype is None:
                dtype = "bf16" if model.params.dtype == torch.bfloat16 else "fp32"
            self.done_path(step).unlink(missing_ok=True)
            write_model_file(self.model_path(step), model, dtype)
        if self.world_size > 1:
            self.barrier()  # the directory exists and no stale DONE marker of this step is left
        atomic_write(self.state_path(step), lambda f: torch.save(state, f))
        if self.world_size > 1:
            self.barrier()
        if self.rank == 0:
            marker = str(self.world_size).encode() if self.world_size > 1 else b""
            atomic_write(self.done_path(step), lambda f: f.write(marker))
            self._prune()

    def load(self, step: Optional[int] = None):
        """(GPTConfig, fp32 params, state dict) of checkpoint `step` (default: the latest complete one)."""
        import torch

        if step is None:
            step = self.latest()
            if step is None:
                raise ValueError(f"no complete checkpoint (DONE_* marker) in {self.out_dir}")
        elif step not in self.steps():
            raise ValueError(f"checkpoint {step} in {self.out_dir} is missing or incomplete; complete ones: "
                             f"{self.steps()}")
        saved_world = self.world_size_of(step)
        if saved_world != self.world_size:
            raise ValueError(f"the checkpoint at step {step} in {self.out_dir} was written by {saved_world} "
                             f"process(es) but this run has {self.world_size}; resume with the same number "
                             f"(torchrun --nproc_per_node={saved_world} ...), or start a new run in another -o")
        config, params = read_model_file(self.model_path(step))
        state = torch.load(self.state_path(step), map_location="cpu", weights_only=True)
        return config, params, state

    def world_size_of(self, step: int) -> int:
        """The number of processes that wrote checkpoint `step` (from its DONE marker)."""
        text = self.done_path(step).read_text().strip()
        if not text:
            return 1
        if not text.isdigit():
            raise ValueError(f"{self.done_path(step)} holds {text[:40]!r}, not a world size: the checkpoint is corrupt")
        return int(text)

    def _remove(self, step: int) -> None:
        # The marker goes first: a crash halfway leaves an incomplete checkpoint, never a wrong complete one.
        for p in (self.done_path(step), self.model_path(step), self.state_path(step, 0)):
            p.unlink(missing_ok=True)
        for p in self.out_dir.glob(f"state_{step:08d}_rank*.pt"):
            p.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every checkpoint (complete or not) of this directory."""
        for s in self.steps():
            self._remove(s)
        self._prune()

    def _prune(self) -> None:
        """Drop complete checkpoints beyond keep_last, leftovers of interrupted saves, and stale temporary files."""
        complete = self.steps()
        if self.keep_last is not None:
            for s in complete[:-self.keep_last]:
                self._remove(s)
        pattern = re.compile(r"(?:model_(\d{8})\.bin|state_(\d{8})(?:_rank\d+)?\.pt)")
        for name in os.listdir(self.out_dir):
            m = pattern.fullmatch(name)
            if m and int(m.group(1) or m.group(2)) not in complete:
                (self.out_dir / name).unlink(missing_ok=True)
            elif re.fullmatch(r"\.(?:model|state|DONE)_\d{8}.*\.tmp-\d+", name):
                (self.out_dir / name).unlink(missing_ok=True)
