# fp32 against fp8="blocks" / "rows" (the CPU runs their reference math) on the built-in corpus with a tiny model: the loss effect of the FP8 scalings where no GPU is at hand. Run: python dev/experiments/fp8_cpu_curve.py [--modes blocks,rows] [--seeds 1,2] [--steps 200]
"""The same Trainer run per seed in fp32 and with each fp8 mode of --modes ("blocks": every linear of every block
in FP8 with block scales; "rows": with per-row scales; both emulated by llmc.reference on the CPU, without Hopper's
fast accumulation), from the same init on the same rows:
the validation loss at the end and the mean training loss of the last 50 steps. A small-scale indication only:
the model is tiny (--model) and the corpus ~100k tokens, so it says whether the quantization itself costs loss,
not what happens at d12 or d48.
"""
import argparse
import statistics
import tempfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d4c128h4t128")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--modes", default="blocks,rows")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("-b", "--batch", type=int, default=8)
    p.add_argument("-t", "--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args()
    from llmc import TrainConfig, Trainer

    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for fp8 in (False, *args.modes.split(",")):
            with tempfile.TemporaryDirectory() as out:
                config = TrainConfig(output_dir=out, model=args.model, batch_size=args.batch, seq_len=args.seq_len,
                                     num_iterations=args.steps, learning_rate=args.lr, warmup_iterations=20,
                                     final_lr_fraction=0.1, weight_decay=0.1, val_every=args.steps, val_max_steps=-1,
                                     sample_every=0, checkpoint_every=0, device="cpu", fp8=fp8, seed=seed)
                trainer = Trainer(config=config)
                history = trainer.fit()
            val = trainer.val_history[-1][1]
            tail = statistics.mean(r["loss"] for r in history[-50:])
            results[(seed, fp8)] = (val, tail)
            print(f"seed {seed} fp8={fp8!s:6s} val loss {val:.4f}, mean train loss of the last 50 steps {tail:.4f}",
                  flush=True)
    seeds = sorted({s for s, _ in results})
    for mode in args.modes.split(","):
        for seed in seeds:
            print(f"seed {seed}: {mode} - fp32 val {results[(seed, mode)][0] - results[(seed, False)][0]:+.4f}, "
                  f"train {results[(seed, mode)][1] - results[(seed, False)][1]:+.4f}")
        mean = statistics.mean(results[(s, mode)][0] - results[(s, False)][0] for s in seeds)
        print(f"mean val loss difference ({mode} - fp32) over the seeds: {mean:+.4f}")

if __name__ == "__main__":
    main()
