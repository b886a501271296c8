"""Loss curves of llmc and llm.c side by side: one init file, one data set, one set of flags, several seeds.

Each run is a subprocess (`python -m llmc train ...`, or llm.c's `train_gpt2cu` built by build_llm_c.sh) writing
main.log into its own folder; the harness appends every step's train loss (and val loss where one was taken) to
a CSV with the columns
    run,corpus,trainer,variant,order,seed,step,train_loss,val_loss,commit,gpu,date
and prints a summary: val loss at each evaluation, mean over seeds, per (trainer, variant).

    # shuffled, 3 data-order seeds, llmc as it is and with GELU unfused, against llm.c
    python benchmarks/curves.py --train 'data/py_train_*.bin' --val 'data/py_val_*.bin' --init init_d12.bin \\
        --llm-c build/train_gpt2cu --seeds 1 2 3 --variant base= --variant ge0='-ge 0' --corpus cpython
    # the training data in order in both (llm.c reads with its shuffling off): step-by-step agreement
    python benchmarks/curves.py ... --order sequential --seeds 1 2
    # the plot of a CSV (val loss and smoothed train loss against step, one colour per trainer/variant)
    python benchmarks/curves.py --plot benchmarks/results/curves.png --csv benchmarks/results/curves.csv

With --order sequential, llmc runs with --shuffle 0 and llm.c with LLMC_C_SEQUENTIAL=1; both read the same
windows, and the seed then changes only llmc's stochastic rounding (AdamW's), so two llmc seeds give the noise
band that a kernel-level difference must stand out of. With --order shuffled, llm.c's data order comes from
LLMC_C_SHUFFLE_SEED (its own block shuffling) and llmc's from --seed (its row sampler), so the comparison is
statistical: compare means over seeds.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import shlex
import subprocess
import sys
from collections import defaultdict

from common import git_commit

HERE = os.path.dirname(os.path.abspath(__file__))
CURVES_CSV = os.path.join(HERE, "results", "curves.csv")
COLUMNS = ["run", "corpus", "trainer", "variant", "order", "seed", "step", "train_loss", "val_loss", "commit", "gpu",
           "date"]
# The same-init comparison's flags (llm.c's spelling; both trainers take them).
DEFAULT_FLAGS = "-b 32 -t 1024 -d 65536 -l 6e-4 -u 30 -c 0.1 -v 100 -m 20"


def parse_main_log(path: str) -> dict[int, dict[str, float]]:
    """{step: {"trl": train loss, "tel": val loss}} from an llm.c/llmc main.log."""
    steps: dict[int, dict[str, float]] = defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = dict(part.split(":", 1) for part in line.split() if ":" in part)
            if "s" in fields:
                for key in ("trl", "tel"):
                    if key in fields:
                        steps[int(fields["s"])][key] = float(fields[key])
    return steps


def gpu_name() -> str:
    try:
        out = subprocess.check_output(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], text=True)
        return out.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "cpu"


def run_one(args, trainer: str, variant: str, extra: str, seed: int, out_dir: str) -> dict[int, dict[str, float]]:
    """Train one run to completion in out_dir; its main.log's losses."""
    os.makedirs(out_dir, exist_ok=True)
    log = os.path.join(out_dir, "main.log")
    if os.path.exists(log):
        os.remove(log)
    common = ["-i", args.train, "-j", args.val, "-e", args.init, "-x", str(args.steps), "-o", out_dir, "-s", "0",
              "-n", "0"] + shlex.split(args.flags)
    env = dict(os.environ)
    if trainer == "llm.c":
        cmd = [args.llm_c] + common + shlex.split(extra)
        env["LLMC_C_SHUFFLE_SEED"] = str(seed)
        if args.order == "sequential":
            env["LLMC_C_SEQUENTIAL"] = "1"
    else:
        cmd = [sys.executable, "-m", "llmc", "train"] + common + ["--seed", str(seed)] + shlex.split(extra)
        if args.order == "sequential":
            cmd += ["--shuffle", "0"]
    print(f"== {trainer} {variant} seed {seed}: {shlex.join(cmd)}", flush=True)
    with open(os.path.join(out_dir, "stdout.txt"), "w") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        with open(os.path.join(out_dir, "stdout.txt")) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{trainer} {variant} seed {seed} failed with exit code {done.returncode}:\n{tail}")
    return parse_main_log(log)


def append_rows(path: str, rows: list[dict]) -> None:
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_rows(path: str, corpus: str | None = None, commit: str | None = None) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if (corpus is None or r["corpus"] == corpus) and (commit is None or r["commit"] in
                                                                               (commit, "llm.c"))]


def group_key(row: dict) -> tuple:
    return row["corpus"], row["order"], row["trainer"], row["variant"]


def summarize(rows: list[dict]) -> str:
    """Val loss at each evaluation (mean over seeds, and each seed) and mean train loss over the last 100 steps,
    per (corpus, order, trainer, variant)."""
    groups: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        groups[group_key(r)][r["seed"]][int(r["step"])] = r
    lines = []
    for key in sorted(groups):
        seeds = groups[key]
        val_steps = sorted({s for runs in seeds.values() for s, r in runs.items() if r["val_loss"]})
        parts = []
        for step in val_steps:
            vals = [float(runs[step]["val_loss"]) for runs in seeds.values() if step in runs and runs[step]["val_loss"]]
            parts.append(f"s{step} {sum(vals) / len(vals):.4f}")
        last = max(s for runs in seeds.values() for s in runs)
        train = [float(r["train_loss"]) for runs in seeds.values() for s, r in runs.items()
                 if r["train_loss"] and s >= last - 100]
        finals = " ".join(f"{float(runs[last]['val_loss']):.4f}" for runs in seeds.values()
                          if last in runs and runs[last]["val_loss"])
        lines.append(f"{'/'.join(key):<40} {len(seeds)} seeds | val " + " ".join(parts) +
                     f" | seeds' final val {finals} | train mean, last 100 steps {sum(train) / max(1, len(train)):.4f}")
    return "\n".join(lines)


def step_differences(rows: list[dict], a: tuple, b: tuple, seed_a: str, seed_b: str,
                     ranges=((0, 10), (10, 50), (50, 100), (100, 200), (200, 300), (300, 1000))) -> str:
    """Mean per-step train-loss difference b - a over step ranges (for runs that read the same data)."""
    def losses(key, seed):
        return {int(r["step"]): float(r["train_loss"]) for r in rows
                if group_key(r) == key and r["seed"] == seed and r["train_loss"]}
    la, lb = losses(a, seed_a), losses(b, seed_b)
    out = []
    for lo, hi in ranges:
        d = [lb[s] - la[s] for s in range(lo, hi) if s in la and s in lb]
        if d:
            out.append(f"{lo}-{hi - 1}: {sum(d) / len(d):+.4f} (max |d| {max(map(abs, d)):.4f})")
    return ", ".join(out)


def sequential_report(rows: list[dict]) -> str:
    """In-order runs read the same windows: per-step train-loss differences of every llmc run against llm.c, and
    between llmc seeds of one variant (which differ only in stochastic rounding: the noise band)."""
    runs = sorted({(group_key(r), r["seed"]) for r in rows})
    reference = [run for run in runs if run[0][2] == "llm.c"]
    lines = []
    for key, seed in runs:
        if key[2] != "llmc":
            continue
        if reference:
            lines.append(f"{key[3] or 'base'} seed {seed} - llm.c: " + step_differences(rows, *reference[0][:1], key,
                                                                                         reference[0][1], seed))
        others = [s for k, s in runs if k == key and s > seed]
        for other in others:
            lines.append(f"{key[3] or 'base'} seed {other} - seed {seed} (noise): " +
                         step_differences(rows, key, key, seed, other))
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        groups[group_key(r)][r["seed"]][int(r["step"])] = r
    orders = sorted({k[1] for k in groups})
    fig, axes = plt.subplots(len(orders), 2, figsize=(13, 4.5 * len(orders)), squeeze=False)
    for row_axes, order in zip(axes, orders):
        for i, key in enumerate(k for k in sorted(groups) if k[1] == order):
            color = f"C{i}"
            label = f"{key[0]} {key[2]} {key[3]}".strip()
            seeds = groups[key]
            for n, runs in enumerate(seeds.values()):
                steps = sorted(s for s in runs if runs[s]["val_loss"])
                row_axes[0].plot(steps, [float(runs[s]["val_loss"]) for s in steps], color=color, marker="o",
                                 lw=1.5, alpha=0.8, label=f"{label} ({len(seeds)} seeds)" if n == 0 else None)
                steps = sorted(s for s in runs if runs[s]["train_loss"])
                values = [float(runs[s]["train_loss"]) for s in steps]
                window = 10
                smooth = [sum(values[max(0, j - window + 1):j + 1]) / (j + 1 - max(0, j - window + 1))
                          for j in range(len(values))]
                row_axes[1].plot(steps, smooth, color=color, lw=0.8, alpha=0.7)
        row_axes[0].set_title(f"val loss ({order} data)")
        row_axes[1].set_title(f"train loss, mean of 10 steps ({order} data)")
        for ax in row_axes:
            ax.set_xlabel("step")
            ax.set_ylim(top=min(ax.get_ylim()[1], 6.0))
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", help="train shard glob")
    p.add_argument("--val", help="val shard glob")
    p.add_argument("--init", help="llm.c model file both trainers start from")
    p.add_argument("--llm-c", help="llm.c's train_gpt2cu built by build_llm_c.sh (omit: llmc only)")
    p.add_argument("--no-llmc", action="store_true", help="run llm.c only")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337], help="data-order seeds (default 1337)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--flags", default=DEFAULT_FLAGS, help=f"flags for both trainers (default {DEFAULT_FLAGS!r})")
    p.add_argument("--variant", action="append", default=None, metavar="NAME=FLAGS",
                   help="an llmc run with extra flags, e.g. ge0='-ge 0'; repeatable (default: base=)")
    p.add_argument("--order", choices=["shuffled", "sequential"], default="shuffled")
    p.add_argument("--corpus", default="data", help="corpus name for the CSV")
    p.add_argument("--work-dir", default="runs/curves", help="where the runs write (default runs/curves)")
    p.add_argument("--csv", default=CURVES_CSV)
    p.add_argument("--plot", help="write a PNG of the CSV's curves (alone: only plot)")
    p.add_argument("--commit", help="only this llmc commit's rows in the summary and plot")
    args = p.parse_args(argv)

    if args.train:
        if not (args.val and args.init):
            p.error("--train needs --val and --init")
        variants = [v.split("=", 1) if "=" in v else (v, "") for v in (args.variant or ["base="])]
        commit, gpu, date = git_commit(), gpu_name(), datetime.date.today().isoformat()
        jobs = [] if args.no_llmc else [("llmc", name, extra) for name, extra in variants]
        if args.llm_c:
            jobs.append(("llm.c", "", ""))
        for n, seed in enumerate(args.seeds):
            for trainer, name, extra in jobs:
                if trainer == "llm.c" and args.order == "sequential" and n:
                    continue  # in order, llm.c's seed changes nothing
                out_dir = os.path.join(args.work_dir, args.corpus, args.order, f"{trainer}{'-' + name if name else ''}",
                                       f"seed{seed}")
                losses = run_one(args, trainer, name, extra, seed, out_dir)
                append_rows(args.csv, [
                    {"run": f"{args.corpus}/{args.order}/{trainer}{'-' + name if name else ''}/seed{seed}",
                     "corpus": args.corpus, "trainer": trainer, "variant": name, "order": args.order, "seed": seed,
                     "step": step, "train_loss": v.get("trl", ""), "val_loss": v.get("tel", ""),
                     "commit": commit if trainer == "llmc" else "llm.c", "gpu": gpu, "date": date}
                    for step, v in sorted(losses.items())])
                tel = {s: v["tel"] for s, v in losses.items() if "tel" in v}
                print(f"   val: " + " ".join(f"s{s} {v:.4f}" for s, v in sorted(tel.items())), flush=True)
    if not os.path.exists(args.csv):
        return 0
    rows = read_rows(args.csv, None, args.commit)
    print(summarize(rows))
    for corpus in sorted({r["corpus"] for r in rows if r["order"] == "sequential"}):
        print(sequential_report([r for r in rows if r["corpus"] == corpus and r["order"] == "sequential"]))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
