# Per-step train loss and norm (full float repr) of a fixed llmc.Trainer run, to compare two trees bit for bit. Run: PYTHONPATH=python python dev/experiments/fixed_run.py [--device cuda --model d12 -b 8 -t 1024]
"""A fixed training run whose output is comparable across trees: same model spec, seed and data give the same lines.

The training data is one shard (written to a temporary folder) that repeats a random sequence of --period token ids
drawn from --data-seed, so the loss falls within the run. The run has no validation, samples or checkpoints, and
the Trainer's own log (with its timings) goes to stderr, so stdout holds only `step loss norm` lines with Python's
full float repr. Compare two trees with

    PYTHONPATH=/tmp/base/python python dev/experiments/fixed_run.py > base.txt
    PYTHONPATH=python python dev/experiments/fixed_run.py > this.txt && diff base.txt this.txt

The default is a tiny CPU model (2 layers, 64 channels, GPT-2's vocabulary) for 20 steps of 2 micro-batches of
4 x 64 tokens; --device cuda --model d12 -b 8 -t 1024 runs GPT-2 124M's shape on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="d2c64h4t64",
                   help="preset (d12) or d<layers>c<channels>[h<heads>][t<context>] (default: d2c64h4t64)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("-b", "--batch-size", type=int, default=4)
    p.add_argument("-t", "--seq-len", type=int, default=64)
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1337, help="model init, data order, stochastic rounding")
    p.add_argument("--data-seed", type=int, default=0, help="the random shard's token ids")
    p.add_argument("--period", type=int, default=61, help="length of the random sequence the shard repeats")
    args = p.parse_args(argv)

    import numpy as np

    from llmc import TrainConfig, Trainer
    from llmc.data import write_shard
    from llmc.trainer import parse_model_spec

    model = parse_model_spec(args.model)
    total_batch = args.grad_accum * args.batch_size * args.seq_len
    cycle = np.random.default_rng(args.data_seed).integers(0, model.vocab_size, size=args.period)
    tokens = np.resize(cycle, (args.steps + 1) * total_batch + 1)
    with tempfile.TemporaryDirectory() as data:
        shard = os.path.join(data, "train_000000.bin")
        write_shard(shard, tokens.astype(np.uint16))
        config = TrainConfig(input_train=shard, output_dir=None, batch_size=args.batch_size, seq_len=args.seq_len,
                             total_batch_size=total_batch, num_iterations=args.steps, learning_rate=args.lr,
                             warmup_iterations=2, final_lr_fraction=0.1, weight_decay=0.1, val_every=0,
                             sample_every=0, checkpoint_every=0, device=args.device, seed=args.seed)
        with contextlib.redirect_stdout(sys.stderr):
            history = Trainer(model, config).fit()
    for record in history:
        print(record["step"], repr(record["loss"]), repr(record["norm"]))


if __name__ == "__main__":
    main()
