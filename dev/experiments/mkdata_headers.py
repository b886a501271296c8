"""A second loss-parity corpus: the C/C++/CUDA headers installed with torch and the nvidia-* wheels.

Unlike the stdlib corpus (4.7M tokens, seen twice in 300 steps of 32K tokens), this one is larger than a 300-step
run, so no row repeats and the curves compare the samplers without the overfitting of a second epoch.
GPT-2 tokens, one EOT before each file, every 20th file (by crc32 of its path below site-packages) to val, at most
--max-tokens of train; llm.c's shard format (header magic 20240520, version 1, token count; uint16 tokens).
Usage: python dev/experiments/mkdata_headers.py OUTDIR  ->  OUTDIR/hdr_train_000001.bin, OUTDIR/hdr_val_000000.bin
"""
import argparse
import glob
import os
import sysconfig
import zlib

import numpy as np

from llmc.tokenizer import get_encoding

EOT = 50256


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--max-tokens", type=int, default=60_000_000)
    args = p.parse_args()
    root = sysconfig.get_paths()["purelib"]
    files = sorted(f for ext in ("h", "hpp", "cuh") for f in glob.glob(f"{root}/**/*.{ext}", recursive=True))
    texts = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                texts.append((os.path.relpath(f, root), fh.read()))
        except (UnicodeDecodeError, OSError):
            pass
    ids = get_encoding().encode_ordinary_batch([t for _, t in texts], num_threads=os.cpu_count() or 4)
    train, val, n_train = [], [], 0
    for (name, _), toks in zip(texts, ids):
        if zlib.crc32(name.encode()) % 20 == 0:
            val.append([EOT] + toks)
        elif n_train < args.max_tokens:
            train.append([EOT] + toks)
            n_train += len(toks) + 1
    os.makedirs(args.out, exist_ok=True)
    for path, docs in ((f"{args.out}/hdr_train_000001.bin", train), (f"{args.out}/hdr_val_000000.bin", val)):
        toks = np.concatenate([np.asarray(d, dtype=np.uint16) for d in docs])
        header = np.zeros(256, np.int32)
        header[:3] = (20240520, 1, len(toks))
        with open(path, "wb") as fh:
            fh.write(header.tobytes())
            fh.write(toks.tobytes())
        print(path, len(toks), "tokens from", len(docs), "files")


if __name__ == "__main__":
    main()
