"""`llmc plot`: training curves from llm.c main.log files, like llm.c's vislog notebook.

A main.log holds lines `s:<step> trl:<train loss>`, `s:<step> tel:<val loss>` and `s:<step> eval:<HellaSwag
acc_norm>`; llmc's (and llm.c's) train lines also carry `lr:` and `norm:` (other `key:value` fields are ignored).
Throughput comes from the run's metrics.jsonl beside main.log (one JSON record per step, with `tokens_per_s`),
when there is one. One figure, one colour per run: losses against step (train thin, optionally smoothed; val
bold), then HellaSwag, learning rate and throughput, each panel where any run has its data, with optional
horizontal reference lines (e.g. OpenAI GPT-2 124M's HellaSwag 0.294). Needs matplotlib
(`pip install 'llmc[plot]'`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

STREAMS = {"trl": "train loss", "tel": "val loss", "eval": "HellaSwag", "lr": "learning rate", "norm": "grad norm"}
PANELS = ("loss", "hellaswag", "lr", "throughput")
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
    if not any(points[key] for key in ("trl", "tel", "eval")):
        raise ValueError(f"{path} has no 's:<step> trl:|tel:|eval:<value>' lines; is it an llm.c main.log?")
    return {key: (sorted(p), [p[s] for s in sorted(p)]) for key, p in points.items()}


def parse_throughput(path: str | os.PathLike) -> tuple[list[int], list[float]]:
    """(steps, tokens per second) from the metrics.jsonl beside a main.log (or in a run directory); empty lists
    when there is none. A step recorded twice (a resumed run) keeps its last value."""
    path = Path(path)
    metrics = (path if path.is_dir() else path.parent) / "metrics.jsonl"
    if not metrics.is_file():
        return [], []
    points = {}
    with open(metrics, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                points[int(record["step"])] = float(record["tokens_per_s"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{metrics}:{n}: not a metrics record with step and tokens_per_s") from None
    return sorted(points), [points[s] for s in sorted(points)]


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """An exponential moving average with weight `weight` on the past (0: the values themselves), debiased at
    the start as TensorBoard's smoothing is, so the first points are not pulled towards zero."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing must lie in [0, 1), got {weight}")
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i) if weight else v)
    return out


def _label(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    return path.name if path.is_dir() else (path.parent.name if path.name == "main.log" else path.stem)


def plot_runs(logs: Sequence[str | os.PathLike], out: str | os.PathLike, labels: Optional[Sequence[str]] = None,
              loss_refs: Optional[dict[str, float]] = None, hellaswag_refs: Optional[dict[str, float]] = None,
              title: Optional[str] = None, smoothing: float = 0.0, panels: Sequence[str] = PANELS) -> Path:
    """Draw the runs of `logs` into the PNG `out`; returns its path. `smoothing` in [0, 1) smooths the train loss
    (the raw curve stays, faint); `panels` chooses among PANELS (each drawn only where a run has its data; the
    loss panel always)."""
    if not logs:
        raise ValueError("give at least one log")
    labels = [_label(p) for p in logs] if labels is None else list(labels)
    if len(labels) != len(logs):
        raise ValueError(f"{len(labels)} labels for {len(logs)} logs; give one label per log")
    unknown = set(panels) - set(PANELS)
    if unknown:
        raise ValueError(f"unknown panel(s) {sorted(unknown)}; choose from {', '.join(PANELS)}")
    smooth([], smoothing)  # checks the weight before any work
    runs = [parse_log(p) for p in logs]
    for run, path in zip(runs, logs):
        run["tok/s"] = parse_throughput(path)
    try:
        import matplotlib
    except ImportError:
        raise ImportError("llmc plot needs matplotlib: pip install 'llmc[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_refs, hellaswag_refs = loss_refs or {}, hellaswag_refs or {}
    has = {"loss": True, "hellaswag": bool(hellaswag_refs) or any(run["eval"][0] for run in runs),
           "lr": any(run["lr"][0] for run in runs), "throughput": any(run["tok/s"][0] for run in runs)}
    shown = [name for name in PANELS if (name in panels or name == "loss") and has[name]]
    cols = min(2, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8 * cols, 6 * rows), squeeze=False)
    ax = dict(zip(shown, axes.flat))
    for extra in list(axes.flat)[len(shown):]:
        extra.set_visible(False)
    for i, (run, label) in enumerate(zip(runs, labels)):
        color = f"C{i % 10}"
        steps, losses = run["trl"]
        if steps and smoothing:
            ax["loss"].plot(steps, losses, color=color, alpha=0.15, linewidth=0.8)
            ax["loss"].plot(steps, smooth(losses, smoothing), color=color, linewidth=1.2,
                            label=f"{label} train (smoothed {smoothing:g})")
        elif steps:
            ax["loss"].plot(steps, losses, color=color, alpha=0.4, linewidth=0.8, label=f"{label} train")
        if run["tel"][0]:
            ax["loss"].plot(*run["tel"], color=color, linewidth=2, marker="o", markersize=3, label=f"{label} val")
        for name, key in (("hellaswag", "eval"), ("lr", "lr"), ("throughput", "tok/s")):
            if name in ax and run[key][0]:
                style = dict(marker="o", markersize=3, linewidth=2) if key == "eval" else dict(linewidth=1)
                ax[name].plot(*run[key], color=color, label=label, **style)
    _reference_lines(ax["loss"], loss_refs)
    ax["loss"].set(xlabel="step", ylabel="loss", title="loss")
    if "hellaswag" in ax:
        _reference_lines(ax["hellaswag"], hellaswag_refs)
        ax["hellaswag"].set(xlabel="step", ylabel="acc_norm", title="HellaSwag")
    if "lr" in ax:
        ax["lr"].set(xlabel="step", ylabel="learning rate", title="learning rate")
    if "throughput" in ax:
        ax["throughput"].set(xlabel="step", ylabel="tokens/s", title="throughput")
    for a in ax.values():
        a.grid(alpha=0.3)
        a.legend()
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
    p.add_argument("--smooth", type=float, default=0.0, metavar="W",
                   help="smooth the train loss with an exponential moving average of weight W in [0, 1), e.g. 0.9 "
                        "(default 0: raw)")
    p.add_argument("--panels", default=",".join(PANELS),
                   help=f"comma-separated panels among {','.join(PANELS)} (default: all that have data; "
                        f"throughput comes from metrics.jsonl)")
    args = p.parse_args(argv)
    hellaswag_refs = {}
    for size in args.gpt2:
        hellaswag_refs[f"GPT-2 {size}"] = GPT2_HELLASWAG[size]
        hellaswag_refs[f"GPT-3 {size}"] = GPT3_HELLASWAG[size]
    hellaswag_refs.update(args.hellaswag_ref)
    try:
        out = plot_runs(args.logs, args.out, args.label, dict(args.loss_ref), hellaswag_refs, args.title,
                        smoothing=args.smooth, panels=[name.strip() for name in args.panels.split(",") if name])
    except (ValueError, ImportError, OSError) as e:
        print(f"llmc plot: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
