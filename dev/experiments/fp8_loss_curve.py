# bf16 against FP8 training from the same init on the same data: per-step loss and final val loss. Run: python dev/experiments/fp8_loss_curve.py --help
"""bf16 against FP8 training on the same data: the per-step training loss of both runs (same init, same batches,
same schedule) and their validation loss at the end, to see what TrainConfig(fp8=True) does to learning.

    python fp8_loss_curve.py -i 'data/train_*.bin' -j 'data/val_*.bin' --model d12 --batch 16 --steps 300 \\
        --csv results/fp8_loss_curve.csv

Session 4's data (results/fp8_loss_curve.csv): 5M tokens of CPython 3.11's standard library sources (its .py
files outside the test folders, 10.9M characters, one document per file, 262,144 validation tokens); the same
kind of shards come from `llmc prepare --input '/usr/lib/python3.11/**/*.py' --format text --text-unit file
--name pystd --val-tokens 262144` (that glob also takes the test folders).

--providers picks the runs: llmc (bf16), llmc-fp8 (TrainConfig(fp8=True) as shipped: fc's forward only since
session 6), and FP8 with the policy of llmc.fp8._Fp8 set: llmc-fp8-fconly (fc's forward only), llmc-fp8-fwd
(fc's and fcproj's forwards), llmc-fp8-all (those and the input gradients of fc and qkv: the shipped policy of
session 5), the last two from C = 1024; llmc-fp8blocks: TrainConfig(fp8="blocks"), all four linears in FP8 with
block scales (llmc.fp8._Fp8Blocks); llmc-fp8rows: TrainConfig(fp8="rows"), the same with per-row scales.

Rows: provider,step,train_loss,ms,gpu,date,commit (provider as above with @seed<N>; step 0-based; after the last step
one row per provider with step = "val" and the validation loss in train_loss). Prints a summary: the mean
training loss over the last 50 steps, the validation loss and the median ms/step of each run.
"""
from __future__ import annotations

import os
import sys
import argparse
import datetime
import statistics
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
from common import append_csv, git_commit, gpu_name

COLUMNS = ["provider", "step", "train_loss", "ms", "gpu", "date", "commit"]


# provider -> (fp8, _Fp8.FCPROJ_FWD_FROM, _Fp8.DINP_FROM); None: never, SHIPPED: llmc's default
SHIPPED = "shipped"
PROVIDERS = {"llmc": (False, SHIPPED, SHIPPED), "llmc-fp8": (True, SHIPPED, SHIPPED),
             "llmc-fp8-fconly": (True, None, None), "llmc-fp8-fwd": (True, 1024, None),
             "llmc-fp8-all": (True, 1024, 1024), "llmc-fp8blocks": ("blocks", SHIPPED, SHIPPED),
             "llmc-fp8rows": ("rows", SHIPPED, SHIPPED)}


def run(args, provider: str):
    from llmc import TrainConfig, Trainer
    from llmc.eval import val_loss
    from llmc.fp8 import _Fp8

    fp8, fcproj_from, dinp_from = PROVIDERS[provider]
    shipped = _Fp8.FCPROJ_FWD_FROM, _Fp8.DINP_FROM
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(input_train=args.train, input_val=args.val, output_dir=out, model=args.model,
                             batch_size=args.batch, seq_len=args.seq_len, num_iterations=args.steps,
                             learning_rate=args.lr, warmup_iterations=args.warmup, final_lr_fraction=0.1,
                             weight_decay=0.1, val_every=0, sample_every=0, checkpoint_every=0, recompute=0,
                             device="cuda", fp8=fp8, seed=args.seed)
        try:
            _Fp8.FCPROJ_FWD_FROM = shipped[0] if fcproj_from == SHIPPED else fcproj_from
            _Fp8.DINP_FROM = shipped[1] if dinp_from == SHIPPED else dinp_from
            trainer = Trainer(config=config)
            history = trainer.fit()
        finally:
            _Fp8.FCPROJ_FWD_FROM, _Fp8.DINP_FROM = shipped
        val = val_loss(trainer.model, args.val, args.batch, args.seq_len, args.val_batches)
    return history, val


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--train", required=True, help="training shard glob")
    p.add_argument("-j", "--val", required=True, help="validation shard glob")
    p.add_argument("--model", default="d12")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--val-batches", type=int, default=16)
    p.add_argument("--providers", default="llmc,llmc-fp8", help=f"comma-separated, of: {', '.join(PROVIDERS)}")
    p.add_argument("--seed", type=int, default=1337, help="model init, data order and rounding (same for every run)")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    providers = args.providers.split(",")
    if any(x not in PROVIDERS for x in providers):
        p.error(f"--providers takes a comma-separated subset of {', '.join(PROVIDERS)}")

    rows, summary = [], []
    for name in providers:
        history, val = run(args, name)
        provider = f"{name}@seed{args.seed}"
        for r in history:
            rows.append(dict(provider=provider, step=r["step"], train_loss=f"{r['loss']:.6f}", ms=f"{r['ms']:.2f}"))
        rows.append(dict(provider=provider, step="val", train_loss=f"{val:.6f}", ms=""))
        tail = [r["loss"] for r in history[-50:]]
        ms = statistics.median(r["ms"] for r in history[5:])
        summary.append(f"{provider:24s} mean train loss (last {len(tail)} steps) {statistics.mean(tail):.4f}, "
                       f"val loss {val:.4f}, {ms:.1f} ms/step")
    print(f"{args.model} B={args.batch} T={args.seq_len} {args.steps} steps on {args.train}:")
    print("\n".join(summary))
    if args.csv:
        meta = dict(gpu=gpu_name(), date=datetime.date.today().isoformat(), commit=git_commit())
        append_csv(args.csv, COLUMNS, [{**r, **meta} for r in rows])


if __name__ == "__main__":
    main()
