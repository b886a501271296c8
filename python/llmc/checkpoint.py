"""llm.c model files and full training checkpoints, written atomically and checksummed; the run-directory lock.

Model file (what llm.c's train_gpt2cu reads and writes): a header of 256 int32 with [0] = 20240326 magic,
[1] = version (3: fp32 parameters, 5: bf16), [2] = max_seq_len, [3] = vocab_size, [4] = n_layer, [5] = n_head,
[6] = n_embd, [7] = padded_vocab_size; then every parameter in llm.c's order (wte wpe ln1w ln1b qkvw qkvb attprojw
attprojb ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb), little-endian.

A full checkpoint of step S in a run directory is, as in llm.c: `model_SSSSSSSS.bin` (the model file, in the
parameters' own dtype so nothing is rounded), `state_SSSSSSSS.pt` (torch.save of optimizer, RNG, data-loader and
trainer state) and, written last, the marker `DONE_SSSSSSSS`: a JSON manifest with the world size and the size and
SHA-256 of every file of the checkpoint (hashed as the files are written). Every file is written to a temporary
name of its writer's own (pid and a random tag; created exclusively, never through a link), fsynced, then renamed,
so a crash leaves either the old file or the new one; a checkpoint without its DONE marker is incomplete and never
loaded, and loading checks every file against the manifest. A model file read on its own is checked against the
manifest beside it when there is one, and refused when a parameter is not finite. Markers without a manifest
(empty, or the world size as text) come from llmc before the manifests and are loaded without checksums.

Data-parallel runs (CheckpointManager(..., rank, world_size, barrier, gather)): rank 0 writes the model file and
`state_SSSSSSSS.pt`, rank r > 0 writes `state_SSSSSSSS_rank<r>.pt` (its optimizer shard and data position), and
rank 0 writes the DONE marker after every rank's file is complete (their checksums come through `gather`); loading
refuses a checkpoint of another world size.

`RunDirectoryLock`: an exclusive OS lock (flock) on `llmc.lock` in the run directory, held for the life of a run by
its rank 0, so a second run on the same directory stops at once; the lock dies with its process.

Test hook (for the crash tests only): when the environment variable LLMC_TEST_KILL_BEFORE_RENAME is set and
is a substring of a file name being written atomically, the process kills itself with SIGKILL after the
temporary file is complete and before the rename, i.e. at the worst moment for atomicity.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import signal
import socket
from pathlib import Path
from typing import Callable, Optional

import numpy as np

MODEL_MAGIC = 20240326
MODEL_VERSIONS = {"fp32": 3, "bf16": 5}
HEADER_INTS = 256
KILL_HOOK_ENV = "LLMC_TEST_KILL_BEFORE_RENAME"
_DONE = re.compile(r"DONE_(\d{8})")


class _HashingWriter:
    """A binary file's write() that also counts the bytes and hashes them (SHA-256)."""

    def __init__(self, f):
        self.f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += memoryview(data).nbytes
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _temp_name(path: Path) -> Path:
    """A temporary name beside `path` that only this writer uses: its pid and a random tag."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _out_of_space(e: BaseException) -> bool:
    text = str(e)
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left" in text or "unexpected pos" in text  # torch.save's zip writer on a full disk


def atomic_write(path: str | os.PathLike, write: Callable) -> dict:
    """Call write(binary_file) on a new temporary file next to `path` (created exclusively: a file or link already
    at that name is never followed), fsync it, rename it onto `path`, fsync the directory. Returns {"bytes": size,
    "sha256": hex digest} of what was written. A full disk raises OSError(ENOSPC) naming the directory, the bytes
    written so far and the bytes free; the temporary file is removed and `path` keeps its old content."""
    path = Path(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    writer = None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _HashingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        hook = os.environ.get(KILL_HOOK_ENV)
        if hook and hook in path.name:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _out_of_space(e):
            free = _free_bytes(path.parent)
            raise OSError(errno.ENOSPC, f"no space left in {path.parent} while writing {path.name} "
                                        f"({writer.bytes if writer else 0:,} bytes written, {free:,} free); free "
                                        f"space there or write elsewhere (-o); nothing older was removed") from None
        raise
    _fsync_dir(path.parent)
    return {"bytes": writer.bytes, "sha256": writer.sha256.hexdigest()}


def _free_bytes(directory: Path) -> int:
    try:
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize
    except OSError:
        return 0


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 8 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def write_model_file(path: str | os.PathLike, model, dtype: str = "bf16") -> dict:
    """Write `model` (an llmc.GPT) as an llm.c model file: version 5 (bf16) or 3 (fp32), atomically; returns its
    size and SHA-256 (atomic_write). bf16 parameters written as fp32 and fp32 written as fp32 are exact;
    fp32 -> bf16 rounds to nearest."""
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

    return atomic_write(path, write)


def model_file_of(path: str | os.PathLike) -> Path:
    """`path` when it is a file; for a run directory, the model file of its newest complete checkpoint (what
    `llmc sample/eval/export runs/NAME` read). ValueError when there is none, saying what the directory holds."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise ValueError(f"model file {path} does not exist")
        return path
    manager = CheckpointManager(path)
    latest = manager.latest()
    if latest is None:
        partial = sorted(manager.incomplete())
        raise ValueError(f"run directory {path} holds no complete checkpoint to read a model from"
                         + (f" (incomplete ones at steps {partial})" if partial else "")
                         + "; pass a model file (model_NNNNNNNN.bin) or train with -o into this directory")
    return manager.model_path(latest)


def read_model_file(path: str | os.PathLike):
    """(GPTConfig, flat fp32 CPU tensor of the parameters in llm.c's order) from an llm.c model file (v3 or v5).
    A checkpoint's model file is checked against its DONE manifest when that lies beside it, and a file with a
    parameter that is not finite is refused (ValueError naming the file)."""
    import torch

    from .model import GPTConfig

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    data = path.read_bytes()
    expected = _manifest_entry(path)
    if expected is not None:
        _check_entry(path, len(data), hashlib.sha256(data).hexdigest(), expected)
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
    bad = int((~torch.isfinite(params)).sum())
    if bad:
        raise ValueError(f"{path} holds {bad} parameters that are not finite (nan or inf): the file is corrupt or "
                         f"comes from a diverged run; use an earlier checkpoint")
    return config, params


def _manifest_entry(path: Path) -> Optional[dict]:
    """The DONE manifest's entry for a checkpoint file `path` (model_S.bin or state_S*.pt), if there is one."""
    m = re.fullmatch(r"(?:model_(\d{8})\.bin|state_(\d{8})(?:_rank\d+)?\.pt)", path.name)
    if m is None:
        return None
    marker = path.with_name(f"DONE_{m.group(1) or m.group(2)}")
    if not marker.is_file():
        return None
    manifest = read_marker(marker)
    return None if manifest["files"] is None else manifest["files"].get(path.name)


def _check_entry(path: Path, size: int, sha256: str, expected: dict) -> None:
    if size != expected.get("bytes") or sha256 != expected.get("sha256"):
        raise ValueError(f"{path} does not match the checksum in its DONE marker ({size:,} bytes, sha256 "
                         f"{sha256[:16]}..., expected {expected.get('bytes')} bytes, {str(expected.get('sha256'))[:16]}"
                         f"...): the file was changed or damaged after it was written; use another checkpoint")


def read_marker(path: Path) -> dict:
    """{"world_size": int, "files": {name: {"bytes", "sha256"}} or None (a marker without checksums)} of a DONE
    marker; ValueError naming the file when it is neither a manifest nor an older marker."""
    try:
        text = path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a checkpoint marker (not text): the checkpoint is corrupt; move the marker "
                         f"away to resume from an earlier checkpoint") from None
    except OSError as e:
        raise ValueError(f"cannot read checkpoint marker {path}: {e.strerror or e}") from None
    if not text or text.isdigit():  # older markers: empty (one process) or the world size
        return {"world_size": int(text) if text else 1, "files": None}
    try:
        manifest = json.loads(text)
        world_size, files = manifest["world_size"], manifest["files"]
        ok = isinstance(world_size, int) and world_size >= 1 and isinstance(files, dict) and all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
            for v in files.values())
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{path} holds {text[:40]!r}, not a checkpoint manifest: the checkpoint is corrupt; move the "
                         f"marker away to resume from an earlier checkpoint")
    return {"world_size": world_size, "files": files}


# ---------------------------------------------------------------------------------------------------------
# full checkpoints
# ---------------------------------------------------------------------------------------------------------
_CHECKPOINT_FILE = re.compile(r"(?:model_(\d{8})\.bin|state_(\d{8})(?:_rank\d+)?\.pt|DONE_(\d{8}))")
_TEMP_FILE = re.compile(r"\.(?:model|state|DONE)_\d{8}.*\.tmp-\d+-[0-9a-f]+")


class CheckpointManager:
    """Full checkpoints of one run directory (module doc): save, find the latest complete one, verify and load,
    keep-last-K. Pruning removes only checkpoints of this run: the ones it wrote, and the ones of the run it
    resumed (`adopt`); files it did not write are never deleted."""

    def __init__(self, out_dir: str | os.PathLike, keep_last: Optional[int] = None, rank: int = 0,
                 world_size: int = 1, barrier: Optional[Callable[[], None]] = None,
                 gather: Optional[Callable[[object], list]] = None):
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1 or \
                isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if world_size > 1 and (barrier is None or gather is None):
            raise ValueError("several ranks need a barrier and a gather (llmc.distributed.barrier, gather_objects) so "
                             "the DONE marker follows, and lists, every rank's files")
        self.rank, self.world_size, self.barrier, self.gather = rank, world_size, barrier, gather
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None (keep all), got {keep_last!r}")
        self.out_dir = Path(out_dir)
        self.keep_last = keep_last
        self.ours: set[int] = set()  # steps of this run (written, or adopted when resuming): the only ones pruned

    def model_path(self, step: int) -> Path:
        return self.out_dir / f"model_{step:08d}.bin"

    def state_path(self, step: int, rank: Optional[int] = None) -> Path:
        """This manager's rank's state file of `step` (or `rank`'s)."""
        rank = self.rank if rank is None else rank
        return self.out_dir / (f"state_{step:08d}.pt" if rank == 0 else f"state_{step:08d}_rank{rank}.pt")

    def done_path(self, step: int) -> Path:
        return self.out_dir / f"DONE_{step:08d}"

    def checkpoint_files(self) -> list[str]:
        """Names of every checkpoint file in the directory (complete checkpoints or not); ValueError when one is a
        symbolic link (a run directory's checkpoint files are regular files, and llmc never writes through links)."""
        if not self.out_dir.is_dir():
            return []
        names = sorted(n for n in os.listdir(self.out_dir) if _CHECKPOINT_FILE.fullmatch(n))
        links = [n for n in names if (self.out_dir / n).is_symlink()]
        if links:
            raise ValueError(f"{self.out_dir} holds checkpoint files that are symbolic links ({', '.join(links[:4])}); "
                             f"llmc reads and writes only regular files there: replace the links by the files, or "
                             f"use another -o")
        return names

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints (DONE marker, model and state files present), ascending."""
        names = set(self.checkpoint_files())
        found = (int(m.group(3)) for m in map(_CHECKPOINT_FILE.fullmatch, names) if m and m.group(3))
        return sorted(s for s in found if self.model_path(s).name in names and self.state_path(s, 0).name in names)

    def latest(self) -> Optional[int]:
        """Step of the newest complete checkpoint, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def incomplete(self) -> dict[int, list[str]]:
        """{step: [files present]} of checkpoints that are not complete (no marker, or a file missing)."""
        complete = set(self.steps())
        out: dict[int, list[str]] = {}
        for name in self.checkpoint_files():
            m = _CHECKPOINT_FILE.fullmatch(name)
            step = int(m.group(1) or m.group(2) or m.group(3))
            if step not in complete:
                out.setdefault(step, []).append(name)
        return out

    def adopt(self, steps) -> None:
        """Count these existing checkpoints as this run's (a resumed run continues the run that wrote them)."""
        self.ours.update(steps)

    def save(self, step: int, model, state: dict, dtype: Optional[str] = None) -> None:
        """Write checkpoint `step`: the model file (in the parameters' dtype unless `dtype` says otherwise), the
        state dict (torch tensors and plain Python values), then the DONE manifest; then prune to keep_last.
        With several ranks every rank calls this with its own state (module doc)."""
        import torch

        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self.ours.add(step)
        files = {}
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoint_files()  # no links
            if dtype is None:
                dtype = "bf16" if model.params.dtype == torch.bfloat16 else "fp32"
            self.done_path(step).unlink(missing_ok=True)
            files[self.model_path(step).name] = write_model_file(self.model_path(step), model, dtype)
        if self.world_size > 1:
            self.barrier()  # the directory exists and no stale DONE marker of this step is left
        files[self.state_path(step).name] = atomic_write(self.state_path(step), lambda f: torch.save(state, f))
        if self.world_size > 1:
            files = {name: entry for part in self.gather(files) for name, entry in part.items()}
        if self.rank == 0:
            manifest = json.dumps({"format": "llmc-checkpoint/1", "step": step, "world_size": self.world_size,
                                   "files": files}, indent=1, sort_keys=True).encode()
            atomic_write(self.done_path(step), lambda f: f.write(manifest))
            self._prune()

    def verify(self, step: int) -> None:
        """Check this rank's files of checkpoint `step` (the model file and its own state file) against the DONE
        manifest: ValueError naming the first file whose size or SHA-256 differs."""
        files = read_marker(self.done_path(step))["files"]
        if files is None:
            return
        for path in (self.model_path(step), self.state_path(step)):
            if path.name not in files:
                raise ValueError(f"{path} is not listed in {self.done_path(step)}: the checkpoint is corrupt")
            _check_entry(path, path.stat().st_size, file_sha256(path), files[path.name])

    def load(self, step: Optional[int] = None):
        """(GPTConfig, fp32 params, state dict) of checkpoint `step` (default: the latest complete one), after
        checking its files against the manifest."""
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
        self.verify(step)
        config, params = read_model_file(self.model_path(step))
        path = self.state_path(step)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"{path} is missing: the checkpoint at step {step} is incomplete") from None
        except Exception as e:  # a damaged file fails in pickle, zip or torch's own checks, under many types
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise ValueError(f"{path} cannot be read ({type(e).__name__}: {first}): the state file is damaged; use an "
                             f"earlier checkpoint") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint state: the file is damaged")
        return config, params, state

    def world_size_of(self, step: int) -> int:
        """The number of processes that wrote checkpoint `step` (from its DONE marker)."""
        return read_marker(self.done_path(step))["world_size"]

    def _remove(self, step: int) -> None:
        # The marker goes first: a crash halfway leaves an incomplete checkpoint, never a wrong complete one.
        for p in (self.done_path(step), self.model_path(step), self.state_path(step, 0)):
            p.unlink(missing_ok=True)
        for p in self.out_dir.glob(f"state_{step:08d}_rank*.pt"):
            p.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every checkpoint (complete or not) of this directory."""
        for name in self.checkpoint_files():
            (self.out_dir / name).unlink(missing_ok=True)

    def stale_temp_files(self) -> list[Path]:
        """Temporary files of checkpoint writes that did not finish (their writer died before the rename)."""
        if not self.out_dir.is_dir():
            return []
        return sorted(self.out_dir / n for n in os.listdir(self.out_dir) if _TEMP_FILE.fullmatch(n))

    def _prune(self) -> None:
        """Drop this run's complete checkpoints beyond keep_last and the leftovers of its interrupted saves."""
        complete = self.steps()
        if self.keep_last is not None:
            for s in [s for s in complete if s in self.ours][:-self.keep_last]:
                self._remove(s)
        for s in self.incomplete():
            if s in self.ours:
                self._remove(s)


class RunDirectoryLock:
    """An exclusive lock on a run directory for the life of a run (flock on `llmc.lock`, released when the process
    ends, however it ends). acquire() raises ValueError naming the directory and the process that holds it."""

    NAME = "llmc.lock"

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / self.NAME
        self.fd: Optional[int] = None

    def acquire(self) -> "RunDirectoryLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise ValueError(f"cannot open the run directory's lock {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"run directory {self.path.parent} is in use by another llmc run ({holder}); wait for it "
                             f"to end or stop it, or write this run elsewhere with another -o") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
