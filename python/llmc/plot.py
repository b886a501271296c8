"""`llmc plot`: training curves from llm.c main.log files, like llm.c's vislog notebook.

A main.log holds lines `s:<step> trl:<train loss>`, `s:<step> tel:<val loss>` and `s:<step> eval:<HellaSwag
acc_norm>` (more `key:value` fields on a line are ignored). One figure: losses against step on the left (train
thin, val bold, one colour per run), HellaSwag on the right when any run has it, with optional horizontal
reference lines (e.g. OpenAI GPT-2 124M's HellaSwag 0.294). Needs matplotlib (`pip install 'llmc[plot]'`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

STREAMS = {"trl": "train loss", "tel": "val loss", "eval": "HellaSwag"}
# HellaSwag acc_norm of OpenAI's checkpoints, scored completion-style as llmc/llm.c do.
GPT2_HELLASWAG = {"124M": 0.294463, "350M": 0.375224, "774M": 0.431986, "1558M": 0.488946}
GPT3_HELLASWAG = {"124M": 0.337, "350M": 0.436, "774M": 0.510, "1558M": 0.547}


def parse_log(path: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """{stream: (steps, values)} for the trl/tel/eval streams of a main.log (or a run directory holding one).
    A step logged twice (a resumed run) keeps its last value."""
    path = Path(path)
    if path.is_dir():
        path = path / "main.log"
    if not path.is_file():
        raise ValueError(f"log {path} does not exist")
    points: dict[str, dict[int, float]] = {key: {} for key in STREAMS}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = dict(part.split(":", 1) for part in line.split() if ":" in part)
            if "s" not in fields:
                continue
            try:
                step = int(fields["s"])
                for key in STREAMS.keys() & fields.keys():
                    points[key][step] = float(fields[key])
            except ValueError:
                raise ValueError(f"{path}: cannot read the numbers in line {line.strip()!r}") from None
    if not any(points.values()):
        raise ValueError(f"{path} has no 's:<step> trl:|tel:|eval:<value>' lines; is it an llm.c main.log?")
    return {key: (sorted(p), [p[s] for s in sorted(p)]) for key, p in points.items()}


def _label(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    return path.name if path.is_dir() else (path.parent.name if path.name == "main.log" else path.stem)


def plot_runs(logs: Sequence[str | os.PathLike], out: str | os.PathLike, labels: Optional[Sequence[str]] = None,
              loss_refs: Optional[dict[str, float]] = None, hellaswag_refs: Optional[dict[str, float]] = None,
              title: Optional[str] = None) -> Path:
    """Draw the runs of `logs` into the PNG `out`; returns its path."""
    if not logs:
        raise ValueError("give at least one log")
    labels = [_label(p) for p in logs] if labels is None else list(labels)
    if len(labels) != len(logs):
        raise ValueError(f"{len(labels)} labels for {len(logs)} logs; give one label per log")
    runs = [parse_log(p) for p in logs]
    try:
        import matplotlib
    except ImportError:
        raise ImportError("llmc plot needs matplotlib: pip install 'llmc[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_refs, hellaswag_refs = loss_refs or {}, hellaswag_refs or {}
    with_hellaswag = bool(hellaswag_refs) or any(run["eval"][0] for run in runs)
    fig, axes = plt.subplots(1, 2 if with_hellaswag else 1, figsize=(16 if with_hellaswag else 8, 6), squeeze=False)
    loss_ax = axes[0, 0]
    for i, (run, label) in enumerate(zip(runs, labels)):
        color = f"C{i % 10}"
        if run["trl"][0]:
            loss_ax.plot(*run["trl"], color=color, alpha=0.4, linewidth=0.8, label=f"{label} train")
        if run["tel"][0]:
            loss_ax.plot(*run["tel"], color=color, linewidth=2, marker="o", markersize=3, label=f"{label} val")
        if with_hellaswag and run["eval"][0]:
            axes[0, 1].plot(*run["eval"], color=color, linewidth=2, marker="o", markersize=3, label=label)
    _reference_lines(loss_ax, loss_refs)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    if with_hellaswag:
        _reference_lines(axes[0, 1], hellaswag_refs)
        axes[0, 1].set(xlabel="step", ylabel="acc_norm", title="HellaSwag")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _reference_lines(ax, refs: dict[str, float]) -> None:
    for j, (name, value) in enumerate(refs.items()):
        ax.axhline(value, color="black", linestyle=("--", ":", "-.")[j % 3], linewidth=1, label=f"{name} ({value:g})")


def _reference(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE (e.g. 'GPT-2 124M=0.294'), got {text!r}") from None


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="llmc plot", description="Plot train/val loss and HellaSwag against step "
                                "from llm.c main.log files (or run directories holding one).")
    p.add_argument("logs", nargs="+", metavar="LOG")
    p.add_argument("--out", default="plot.png", help="PNG to write (default plot.png)")
    p.add_argument("--label", action="append", help="a run's name, once per LOG in order (default: its directory)")
    p.add_argument("--gpt2", action="append", choices=sorted(GPT2_HELLASWAG), default=[],
                   help="add OpenAI GPT-2's (and GPT-3's) HellaSwag of this size as reference lines")
    p.add_argument("--hellaswag-ref", action="append", type=_reference, default=[], metavar="LABEL=VALUE")
    p.add_argument("--loss-ref", action="append", type=_reference, default=[], metavar="LABEL=VALUE",
                   help="a horizontal line on the loss plot, e.g. a baseline's val loss on the same data")
    p.add_argument("--title")
    args = p.parse_args(argv)
    hellaswag_refs = {}
    for size in args.gpt2:
        hellaswag_refs[f"GPT-2 {size}"] = GPT2_HELLASWAG[size]
        hellaswag_refs[f"GPT-3 {size}"] = GPT3_HELLASWAG[size]
    hellaswag_refs.update(args.hellaswag_ref)
    try:
        out = plot_runs(args.logs, args.out, args.label, dict(args.loss_ref), hellaswag_refs, args.title)
    except (ValueError, ImportError, OSError) as e:
        print(f"llmc plot: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
