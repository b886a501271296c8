"""What a run writes besides its checkpoints: main.log (llm.c's lines), metrics.jsonl (every step at full
precision), samples.txt, the console (through a progress bar on a terminal) and the trackers of --log."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from .trackers import Trackers

RUN_FILES = ("main.log", "metrics.jsonl", "samples.txt")  # what a run writes besides its checkpoints


class RunLog:
    """main.log (llm.c lines), metrics.jsonl and samples.txt in the output directory; console lines go through
    the progress bar when there is one (interactive terminals only)."""

    def __init__(self, out_dir: Optional[Path], total_steps: int, start_step: int, quiet: bool = False,
                 trackers: Optional[Trackers] = None):
        from tqdm.auto import tqdm

        self.out_dir = out_dir
        self.quiet = quiet
        self.trackers = trackers or Trackers((), None, {})
        for name in RUN_FILES if out_dir is not None else ():  # a resumed run's lines start on lines of their own
            path = out_dir / name
            if path.is_file() and path.stat().st_size:
                with open(path, "rb+") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True) \
            if sys.stdout.isatty() and not quiet else None

    def print(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def _append(self, name: str, text: str) -> None:
        if self.out_dir is not None:
            with open(self.out_dir / name, "a", encoding="utf-8") as f:
                f.write(text)

    def val(self, step: int, loss: float) -> None:
        self.print(f"val loss {loss:.6f}")
        self._append("main.log", f"s:{step} tel:{loss:.4f}\n")
        self.trackers.log(step, {"val/loss": loss})

    def hellaswag(self, step: int, acc_norm: float, total: int) -> None:
        self.print(f"HellaSwag: acc_norm {acc_norm:.4f} over {total} examples")
        self._append("main.log", f"s:{step} eval:{acc_norm:.4f}\n")
        self.trackers.log(step, {"val/hellaswag": acc_norm})

    def sample(self, step: int, text: str) -> None:
        self.print(f"generating:\n---\n{text}\n---")
        self._append("samples.txt", f"=== step {step}\n{text}\n")
        self.trackers.text(step, "samples", text)

    def train(self, record: dict, line: str) -> None:
        self.print(line)
        self._append("main.log", f"s:{record['step']} trl:{record['loss']:.4f} lr:{record['lr']:.6f} "
                                 f"norm:{record['norm']:.2f}\n")
        self._append("metrics.jsonl", json.dumps(record) + "\n")
        self.trackers.log(record["step"], {f"train/{key}": record[key]
                                           for key in ("loss", "norm", "lr", "tokens_per_s", "ms")})
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.trackers.close()
