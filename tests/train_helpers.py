"""Helpers shared by the checkpoint/trainer/CLI tests: a tiny GPT config and tiny, learnable token shards."""
import json

import numpy as np

from llmc.data import write_shard

TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=500, padded_vocab_size=512, max_seq_len=64)


def tiny_config(**overrides):
    from llmc.model import GPTConfig

    return GPTConfig(**{**TINY, **overrides})


def write_tiny_shards(directory, n_train=2, train_tokens=3000, val_tokens=1200, vocab=500, seed=0):
    """Train and val shards of a cycle through 64 random token ids with 10% random substitutions: a tiny model
    learns it within a few dozen steps. Returns (train_pattern, val_pattern)."""
    rng = np.random.default_rng(seed)
    cycle = rng.choice(vocab, size=64, replace=False)

    def text(n):
        tokens = cycle[(np.arange(n) + rng.integers(64)) % 64]
        noise = rng.random(n) < 0.1
        tokens[noise] = rng.integers(0, vocab, size=int(noise.sum()))
        return tokens

    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        write_shard(directory / f"tiny_train_{i + 1:06d}.bin", text(train_tokens))
    write_shard(directory / "tiny_val_000000.bin", text(val_tokens))
    return str(directory / "tiny_train_*.bin"), str(directory / "tiny_val_*.bin")


def read_metrics(out_dir) -> dict:
    """{step: loss} from a run's metrics.jsonl; a step logged again by a resumed run keeps its last value."""
    losses = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


# Python source that loads torch and llmc (with its CUDA libraries, in a CUDA build), then caps the process's
# address space at what is mapped by then + 4 GB: what a command allocates beyond loading has to fit in 4 GB.
CAP_4GB_BEYOND_LOADED = (
    "import resource, runpy, sys, llmc.eval, llmc.ops, llmc.trainer; llmc.ops.cuda_available(); "
    "mapped = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize:')).split()[1]) << 10; "
    "resource.setrlimit(resource.RLIMIT_AS, (mapped + (4 << 30), mapped + (4 << 30))); ")
