"""The output directory of one run (`-o`): created and checked before any work, locked for the run by rank 0, and
what to do with what it already holds decided by rank 0 for every rank: resume the latest complete checkpoint
(-y 1), start where there is no earlier run, move an earlier run aside (--restart 1), or stop with an error that
lists what the directory holds. Nothing a user had is deleted: only temporary files of checkpoint writes that
died before their rename, and, after a run that fails before writing anything, the folders this run created."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from .checkpoint import CheckpointManager, RunDirectoryLock
from .distributed import barrier, gather_objects, print0
from .runlog import RUN_FILES


class RunDirectory:
    def __init__(self, output_dir, *, resume: bool, restart: bool, keep_last: int, rank: int, world_size: int):
        self.path = None if output_dir is None else Path(output_dir)
        self.resume, self.restart, self.keep_last = resume, restart, keep_last
        self.rank, self.world_size = rank, world_size
        self._made: list[Path] = []  # folders prepare() created, deepest first
        self._lock: Optional[RunDirectoryLock] = None

    def prepare(self) -> Optional[Path]:
        """The directory, created and checked writable (None without -o). The folders this creates are
        remembered: release(failed=True) removes them again while they hold nothing but the run's lock."""
        out = self.path
        if out is None:
            return None
        if out.exists() and not out.is_dir():
            raise ValueError(f"-o {out} is a file, not a directory; give a directory for the run's logs and "
                             f"checkpoints")
        missing = [d for d in (out, *out.parents) if not d.exists()]
        if missing and self.resume and self.rank == 0:
            print(f"WARNING: -y 1 but the output directory {out} does not exist, so there is nothing to resume: "
                  f"starting a NEW run there.{_similar_folders(out)}", file=sys.stderr, flush=True)
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"output directory {out} is not writable ({e.strerror or e}); choose another -o") from None
        self._made = missing if self.rank == 0 else []
        return out

    def claim(self):
        """(CheckpointManager, step to resume from or None) of the directory, locked for this run by rank 0, which
        decides for every rank; (None, None) without -o."""
        out = self.path
        if out is None:
            return None, None
        ckpt = CheckpointManager(out, keep_last=self.keep_last or None, rank=self.rank, world_size=self.world_size,
                                 barrier=barrier, gather=gather_objects)
        decision = None
        if self.rank == 0:
            try:
                self._lock = RunDirectoryLock(out).acquire()
                decision = self._decide(ckpt)
            except ValueError as e:
                decision = ("error", str(e))
        kind, value = gather_objects(decision)[0]
        if kind == "error":
            raise ValueError(value if self.rank == 0 else f"rank 0 stopped: {value}")
        if kind == "restart":
            print0(f"an earlier run in {out} moved to {value}; starting a new run")
        barrier()
        if kind == "resume":
            ckpt.adopt(s for s in ckpt.steps() if s <= value)
            return ckpt, value
        return ckpt, None

    def _decide(self, ckpt) -> tuple:
        """Rank 0's ("resume", step) / ("new", None) / ("restart", folder) / ("error", message)."""
        out = self.path
        stale = ckpt.stale_temp_files()  # the lock is ours: whoever wrote these is gone
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            print(f"removed {len(stale)} temporary file(s) of checkpoint writes that did not finish: "
                  f"{', '.join(p.name for p in stale[:4])}")
        complete, partial = ckpt.steps(), ckpt.incomplete()
        logs = [n for n in RUN_FILES if (out / n).is_file() and (out / n).stat().st_size]
        found = ([f"complete checkpoints at steps {complete}"] if complete else []) + \
            [f"an incomplete checkpoint at step {s} ({', '.join(names)})" for s, names in sorted(partial.items())] + \
            ([", ".join(logs)] if logs else [])
        if self.resume:
            if complete:
                return "resume", complete[-1]
            if not found:
                print(f"-y 1: no checkpoint in {out} to resume: starting a new run there")
                return "new", None
            return "error", (f"-y 1 found no complete checkpoint to resume in {out}, which holds "
                             f"{'; '.join(found)} (a complete checkpoint has its model file, state file(s) and DONE "
                             f"marker). Nothing was changed: restore the missing files to resume, start over with "
                             f"--restart 1 (the earlier files move to {out}/earlier-<time>/), or use another -o")
        if not found:
            return "new", None
        if not self.restart:
            return "error", (f"{out} holds an earlier run ({'; '.join(found)}); resume it with -y 1, start over "
                             f"with --restart 1 (its files move to {out}/earlier-<time>/), or use another -o")
        dest = out / time.strftime("earlier-%Y%m%d-%H%M%S")
        dest.mkdir()
        for name in ckpt.checkpoint_files() + logs:
            os.replace(out / name, dest / name)
        return "restart", str(dest)

    def release(self, failed: bool) -> None:
        """Unlock; after a failed run also remove the folders prepare() created while they hold only the lock."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if failed:
            for d in self._made:
                try:
                    if d == self._made[0]:
                        names = [p.name for p in d.iterdir()]
                        if names and names != [RunDirectoryLock.NAME]:
                            break
                        (d / RunDirectoryLock.NAME).unlink(missing_ok=True)
                    d.rmdir()
                except OSError:
                    break
        self._made = []


def _similar_folders(out: Path) -> str:
    """' Did you mean ...?' naming existing folders next to `out` (or its nearest existing parent) whose names are
    close to the missing part of the path, or ''."""
    import difflib

    parent, name = out.parent, out.name
    while not parent.exists() and parent != parent.parent:
        parent, name = parent.parent, parent.name
    try:
        folders = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(name, folders, n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(str(parent / c) for c in close)}?" if close else ""
