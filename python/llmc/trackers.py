"""Experiment trackers beside main.log and metrics.jsonl: TensorBoard and Weights & Biases (`--log`).

Both are optional extras (`pip install 'llmc[tensorboard]'`, `'llmc[wandb]'`) imported only when asked for.
The Trainer hands every tracker the same scalars, named as TensorBoard groups them: train/loss, train/norm,
train/lr, train/tokens_per_s, train/ms per step; val/loss and val/hellaswag at each evaluation; samples as text.
TensorBoard writes event files into `<run directory>/tensorboard/`. W&B starts a run in project $WANDB_PROJECT
(default "llmc") named after the run directory, with the TrainConfig as its config; `WANDB_MODE=offline` keeps it
on disk (`wandb sync` uploads it later), which is how it runs without a network.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

TRACKERS = ("tensorboard", "wandb")


def parse_trackers(names: Optional[str | Sequence[str]]) -> tuple[str, ...]:
    """('tensorboard', 'wandb') style tuple from "tensorboard,wandb" or a sequence; ValueError naming the choices."""
    if not names:
        return ()
    items = names.split(",") if isinstance(names, str) else list(names)
    if not all(isinstance(n, str) for n in items):
        raise TypeError(f"log must be a comma-separated str or a sequence of str, got {names!r}")
    chosen = tuple(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    unknown = [n for n in chosen if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown} for log (--log); choose from {', '.join(TRACKERS)}")
    return chosen


def tracker_installed(name: str) -> bool:
    """Whether the package behind tracker `name` can be imported (checked before a run starts)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None  # each tracker's package has its name
    except ValueError:  # a module set to None in sys.modules (tests hide packages that way)
        return False


class TensorBoardTracker:
    def __init__(self, run_dir: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--log tensorboard needs the tensorboard package: pip install 'llmc[tensorboard]'") \
                from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def text(self, step: int, name: str, text: str) -> None:
        self.writer.add_text(name, text, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Optional[Path], config: dict):
        try:
            import wandb
        except ImportError:
            raise ImportError("--log wandb needs the wandb package: pip install 'llmc[wandb]'") from None
        name = Path(run_dir).resolve().name if run_dir is not None else None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "llmc"), name=name, config=config,
                              dir=str(run_dir) if run_dir is not None else None)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def text(self, step: int, name: str, text: str) -> None:
        self.run.log({name: text}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of one run (rank 0's), called together; a no-op without any."""

    def __init__(self, names: Sequence[str], run_dir: Optional[Path], config: dict):
        self.active = []
        try:
            for name in names:
                if name == "tensorboard":
                    if run_dir is None:
                        raise ValueError("--log tensorboard writes into the run directory: give -o")
                    self.active.append(TensorBoardTracker(run_dir, config))
                else:
                    self.active.append(WandbTracker(run_dir, config))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, values: dict[str, float]) -> None:
        for tracker in self.active:
            tracker.log(step, values)

    def text(self, step: int, name: str, text: str) -> None:
        for tracker in self.active:
            tracker.text(step, name, text)

    def close(self) -> None:
        for tracker in self.active:
            tracker.close()
        self.active = []
