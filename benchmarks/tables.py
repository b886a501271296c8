"""The current tables of results/train.csv and results/kernels.csv (the newest row of each GPU, model or op, shape
and provider), as markdown, and optionally a plot of the training throughput.

    python benchmarks/tables.py                      # both tables, every GPU
    python benchmarks/tables.py --gpu H100 --plot results/train.png
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_CSV = os.path.join(HERE, "results", "train.csv")
KERNEL_CSV = os.path.join(HERE, "results", "kernels.csv")


def latest(path: str, key: tuple[str, ...], gpu: str | None) -> list[dict]:
    """The last row of each key (rows are appended in time order), keeping first-seen order."""
    newest: OrderedDict = OrderedDict()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if gpu is None or gpu in row["gpu"]:
                newest[tuple(row[k] for k in key)] = row
    return list(newest.values())


def train_table(gpu: str | None) -> str:
    rows = latest(TRAIN_CSV, ("gpu", "model", "gpus", "micro_batch", "provider"), gpu)
    out = ["| GPU | model | GPUs | B | provider | tokens/s | ms/step | MFU | peak GB | date | commit |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["gpu"], int(r["gpus"]), r["model"], r["provider"])):
        out.append(f"| {r['gpu']} | {r['model']} | {r['gpus']} | {r['micro_batch']} | {r['provider']} | "
                   f"{int(float(r['tokens_per_s'])):,} | {float(r['ms_per_step']):.1f} | "
                   f"{100 * float(r['mfu']):.1f}% | {float(r['peak_mem_gb']):.1f} | {r['date']} | {r['commit'][:7]} |")
    return "\n".join(out)


def kernel_table(gpu: str | None) -> str:
    rows = latest(KERNEL_CSV, ("gpu", "op", "shape", "provider"), gpu)
    out = ["| GPU | op | shape | provider | ms | GB/s | TFLOP/s | date | commit |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["gpu"], r["op"], r["shape"], r["provider"])):
        out.append(f"| {r['gpu']} | {r['op']} | {r['shape']} | {r['provider']} | {float(r['ms']):.4f} | "
                   f"{r['gbps'] or ''} | {r['tflops'] or ''} | {r['date']} | {r['commit'][:7]} |")
    return "\n".join(out)


def kernel_summary(gpu: str | None) -> str:
    """One row per GPU, op and shape: llmc's time (its graph-timed launch without per-call validation where the
    benchmark has one) against torch.compile's."""
    rows = latest(KERNEL_CSV, ("gpu", "op", "shape", "provider"), gpu)
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault((r["gpu"], r["op"], r["shape"]), {})[r["provider"]] = r
    out = ["| GPU | op | shape | llmc ms | torch.compile ms | llmc / torch.compile | commit |",
           "|---|---|---|---|---|---|---|"]
    for (g, op, shape), by in sorted(groups.items()):
        mine = by.get("llmc validate=False") or by.get("llmc") or by.get("llmc (per call)")
        theirs = by.get("torch.compile") or by.get("torch.compile (per call)")
        if mine is None or theirs is None:
            continue
        ratio = float(theirs["ms"]) / float(mine["ms"])
        verdict = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
        out.append(f"| {g.replace('NVIDIA ', '')} | {op} | {shape} | {float(mine['ms']):.4f} | "
                   f"{float(theirs['ms']):.4f} | {verdict} | {mine['commit'][:7]} |")
    return "\n".join(out)


def plot_train(gpu: str | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in latest(TRAIN_CSV, ("gpu", "model", "gpus", "micro_batch", "provider"), gpu) if r["gpus"] == "1"]
    labels = sorted({(r["gpu"], r["model"]) for r in rows})
    providers = sorted({r["provider"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    width = 0.8 / len(providers)
    for i, provider in enumerate(providers):
        values = [next((float(r["mfu"]) * 100 for r in rows if (r["gpu"], r["model"]) == label and
                        r["provider"] == provider), 0) for label in labels]
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=provider)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))])
    ax.set_xticklabels([f"{m}\n{g.replace('NVIDIA ', '')}" for g, m in labels], fontsize=8)
    ax.set_ylabel("MFU (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", help="only rows whose GPU name contains this (e.g. H100)")
    p.add_argument("--only", choices=["train", "kernels", "summary"], help="one table (summary: llmc against "
                                                                           "torch.compile per kernel)")
    p.add_argument("--plot", help="write a bar chart of single-GPU MFU per model and provider to this PNG")
    args = p.parse_args(argv)
    if args.only in (None, "train"):
        print(train_table(args.gpu) + "\n")
    if args.only in (None, "summary"):
        print(kernel_summary(args.gpu) + "\n")
    if args.only in (None, "kernels"):
        print(kernel_table(args.gpu))
    if args.plot:
        plot_train(args.gpu, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
