"""Fault campaign on run directories (CPU, tiny model): SIGKILLs during training and checkpoint writes, single-byte
flips and truncations of a run's files, concurrent starts; prints a table of outcomes per scenario.

    python dev/experiments/run_dir_campaign.py --trials 200 [--seed 0] [--work /tmp/campaign]

Every trial is judged against an uninterrupted reference run: `ok` (finished, losses bit-identical to the
reference), `clear error` (exit 1 with one `llmc train: error:` line and no traceback), `traceback`, or
`silent difference` (finished, but some step's loss differs from the reference); `not killed` counts SIGKILL
trials whose run ended before the signal (nothing tested).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

STEPS, EVERY, MORE = 12, 3, 15
LONG = 150  # steps of the concurrent runs, long enough that the second starts while the first trains
KILLED = 400  # steps of the runs killed while training (they take longer than the latest kill)


def setup(work: str) -> tuple[list[str], dict]:
    """Data, a tiny init file, and the common arguments; the reference losses of a clean run to MORE steps."""
    import numpy as np

    from llmc.checkpoint import write_model_file
    from llmc.data import write_shard
    from llmc.model import GPT, GPTConfig

    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(0)
    cycle = rng.choice(500, size=64, replace=False)
    for name, n in (("train_000001.bin", 6000), ("val_000000.bin", 1200)):
        tokens = cycle[np.arange(n) % 64]
        noise = rng.random(n) < 0.1
        tokens[noise] = rng.integers(0, 500, size=int(noise.sum()))
        write_shard(os.path.join(work, name), tokens)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=500, padded_vocab_size=512, max_seq_len=64)
    write_model_file(os.path.join(work, "init.bin"), GPT(config, device="cpu", seed=3), dtype="fp32")
    common = ["-i", os.path.join(work, "train_*.bin"), "-j", os.path.join(work, "val_*.bin"), "-e",
              os.path.join(work, "init.bin"), "-b", "4", "-t", "16", "-l", "1e-2", "-v", "0", "-s", "0", "-n",
              str(EVERY), "--device", "cpu", "--seed", "7"]
    ref = os.path.join(work, "reference")
    shutil.rmtree(ref, ignore_errors=True)
    assert train(common, ref, KILLED).returncode == 0  # constant lr (-q 1): the first steps of any -x are these
    return common, losses(ref)


def train(common, out_dir, steps, extra=(), env=None, wait=True):
    cmd = [sys.executable, "-m", "llmc", "train", *common, "-o", out_dir, "-x", str(steps), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def losses(out_dir) -> dict:
    out = {}
    path = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            try:
                record = json.loads(line)
                out[record["step"]] = record["loss"]
            except (ValueError, KeyError, TypeError):
                pass  # a line damaged on purpose
    return out


def judge(returncode: int, stderr: str, got: dict, reference: dict, upto: int, start: int = 0) -> str:
    if "Traceback" in stderr or returncode not in (0, 1):
        return "traceback"
    if returncode == 1:
        lines = stderr.strip().splitlines()
        if len(lines) == 1 and lines[0].startswith("llmc train: error:"):
            print(f"   {lines[0][:150]}", flush=True)
            return "clear error"
        return "traceback"
    same = all(got.get(s) == reference[s] for s in range(start, upto))
    return "ok" if same else "silent difference"


def sigkill_trial(common, reference, work, rng, in_checkpoint: bool):
    out = os.path.join(work, "trial")
    shutil.rmtree(out, ignore_errors=True)
    env = {}
    if in_checkpoint:
        step = rng.choice([3, 6, 9])
        env["LLMC_TEST_KILL_BEFORE_RENAME"] = rng.choice(["model", "state", "DONE"]) + f"_{step:08d}"
        first = train(common, out, STEPS, env=env)
    else:  # a longer run, killed while it trains (after its start-up, before its end)
        proc = train(common, out, KILLED, wait=False)
        time.sleep(rng.uniform(2.0, 8.0))
        if proc.poll() is not None:
            return "not killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = train(common, out, KILLED, extra=["-y", "1"])
        return judge(again.returncode, again.stderr, losses(out), reference, KILLED)
    if first.returncode == 0:  # the hook's file was not written in this run
        return judge(0, first.stderr, losses(out), reference, STEPS)
    again = train(common, out, STEPS, extra=["-y", "1"])
    return judge(again.returncode, again.stderr, losses(out), reference, STEPS)


def damage_trial(common, reference, work, rng, base: str, truncate: bool):
    out = os.path.join(work, "trial")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    names = [n for n in os.listdir(out) if n.endswith(f"{STEPS:08d}") or f"_{STEPS:08d}." in n or
             n in ("main.log", "metrics.jsonl")]
    path = os.path.join(out, rng.choice(sorted(names)))
    data = bytearray(open(path, "rb").read())
    if truncate:
        data = data[:rng.randrange(len(data))] if data else data
    elif data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    open(path, "wb").write(bytes(data))
    again = train(common, out, MORE, extra=["-y", "1"])
    return judge(again.returncode, again.stderr, losses(out), reference, MORE, start=STEPS)  # the resumed steps


def concurrent_trial(common, reference, work, rng):
    out = os.path.join(work, "trial")
    shutil.rmtree(out, ignore_errors=True)
    first = train(common, out, LONG, wait=False)
    time.sleep(rng.uniform(0.0, 3.0))
    second = train(common, out, LONG, wait=False)
    results = [(p.wait(), p.stderr.read()) for p in (first, second)]
    outcomes = []
    for code, err in results:
        if code == 0:
            outcomes.append(judge(code, err, losses(out), reference, LONG))
        else:
            outcomes.append(judge(code, err, {}, reference, STEPS))
    ok = sum(o == "ok" for o in outcomes)
    if "traceback" in outcomes:
        return "traceback"
    if "silent difference" in outcomes or ok != 1:
        return "silent difference"  # exactly one run may finish, and with the reference's losses
    return "clear error"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/llmc-campaign")
    args = p.parse_args()
    rng = random.Random(args.seed)
    common, reference = setup(args.work)
    base = os.path.join(args.work, "base")
    shutil.rmtree(base, ignore_errors=True)
    assert train(common, base, STEPS).returncode == 0
    scenarios = [("SIGKILL during training", lambda: sigkill_trial(common, reference, args.work, rng, False)),
                 ("SIGKILL inside a checkpoint write", lambda: sigkill_trial(common, reference, args.work, rng, True)),
                 ("one flipped bit in a file", lambda: damage_trial(common, reference, args.work, rng, base, False)),
                 ("file truncated", lambda: damage_trial(common, reference, args.work, rng, base, True)),
                 ("two runs started on one directory", lambda: concurrent_trial(common, reference, args.work, rng))]
    counts = collections.defaultdict(collections.Counter)
    for i in range(args.trials):
        name, trial = scenarios[i % len(scenarios)]
        outcome = trial()
        counts[name][outcome] += 1
        print(f"trial {i + 1}/{args.trials}: {name}: {outcome}", flush=True)
    print(f"\n| scenario | trials | ok (bit-identical) | clear errors | tracebacks | silent differences | not killed |")
    print("|---|---|---|---|---|---|---|")
    for name, _ in scenarios:
        c = counts[name]
        print(f"| {name} | {sum(c.values())} | {c['ok']} | {c['clear error']} | {c['traceback']} | "
              f"{c['silent difference']} | {c['not killed']} |")
    total = collections.Counter()
    for c in counts.values():
        total.update(c)
    print(f"| all | {sum(total.values())} | {total['ok']} | {total['clear error']} | {total['traceback']} | "
          f"{total['silent difference']} | {total['not killed']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
