"""Evaluation: validation loss over token shards, HellaSwag, and the `llmc eval` / `llmc sample` commands.

HellaSwag is scored completion-style as in llm.c and nanoGPT: each of an example's endings is appended to its
context (" " + ending, GPT-2 tokens), the model's cross-entropy is taken over the ending's tokens only, and the
ending with the lowest loss is the prediction. `acc` compares summed losses, `acc_norm` mean losses (per token);
llm.c logs acc_norm as `s:%d eval:%.4f`. Rows of several examples are packed into one fixed (B, T) batch, so the
model runs at the shape it trains at.

llm.c's HellaSwag .bin (dev/data/data_common.py write_evalfile): a header of 256 int32 with [0] = 20240522,
[1] = 1 (version), [2] = number of examples, [3] = the longest example in bytes; then each example as a stream of
uint16: 65535 (start marker), the example's size in bytes (this whole stream, marker included), the example's
index, its label, the number of completions K, the context length and context tokens, then K times a
completion length and its tokens.
"""
from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .tokenizer import EOT, decode, encode, token_bytes

HELLASWAG_MAGIC = 20240522
HELLASWAG_VERSION = 1
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
START_EXAMPLE = 2**16 - 1
HEADER_INTS = 256


@dataclass(frozen=True)
class HellaSwagExample:
    ctx_tokens: tuple[int, ...]
    ending_tokens: tuple[tuple[int, ...], ...]
    label: int


@dataclass(frozen=True)
class HellaSwagResult:
    """Counts, so ranks can sum them before dividing."""
    correct: int
    correct_norm: int
    total: int

    @property
    def acc(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.total if self.total else float("nan")


# ---------------------------------------------------------------------------------------------------------
# HellaSwag files
# ---------------------------------------------------------------------------------------------------------
def _example(ctx_tokens, ending_tokens, label, where: str) -> HellaSwagExample:
    if not ending_tokens:
        raise ValueError(f"{where}: no endings")
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(ending_tokens):
        raise ValueError(f"{where}: label {label!r} is not an index into its {len(ending_tokens)} endings")
    if len(ctx_tokens) == 0 or not all(len(e) for e in ending_tokens):
        raise ValueError(f"{where}: the context and every ending need at least one token")
    return HellaSwagExample(tuple(int(t) for t in ctx_tokens), tuple(tuple(int(t) for t in e) for e in ending_tokens),
                            int(label))


def read_hellaswag_jsonl(path: str | os.PathLike, limit: Optional[int] = None) -> list[HellaSwagExample]:
    """Examples of the official jsonl (fields ctx, endings, label), tokenized as llm.c does."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
                ctx, endings, label = row["ctx"], row["endings"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{where}: not a HellaSwag example with ctx, endings and label ({e!r}); "
                                 f"the test split has no labels, use val") from None
            if not (isinstance(ctx, str) and isinstance(endings, list) and all(isinstance(e, str) for e in endings)):
                raise ValueError(f"{where}: ctx must be a string and endings a list of strings")
            examples.append(_example(encode(ctx), [encode(" " + e) for e in endings], label, where))
    return examples


def read_hellaswag_bin(path: str | os.PathLike, limit: Optional[int] = None) -> list[HellaSwagExample]:
    """Examples of llm.c's eval .bin (layout in this module's docstring)."""
    data = Path(path).read_bytes()
    if len(data) < 4 * HEADER_INTS or (len(data) - 4 * HEADER_INTS) % 2:
        raise ValueError(f"{path}: {len(data)} bytes is not a header of {4 * HEADER_INTS} bytes plus uint16 data")
    header = np.frombuffer(data, dtype=np.int32, count=HEADER_INTS)
    if header[0] != HELLASWAG_MAGIC:
        raise ValueError(f"{path}: magic {header[0]} is not {HELLASWAG_MAGIC}; not an llm.c eval file")
    if header[1] != HELLASWAG_VERSION:
        raise ValueError(f"{path}: eval file version {header[1]} is not supported ({HELLASWAG_VERSION})")
    stream = np.frombuffer(data, dtype=np.uint16, offset=4 * HEADER_INTS)
    n = int(header[2]) if limit is None else min(int(header[2]), limit)
    examples, pos = [], 0
    for i in range(n):
        where = f"{path}: example {i}"
        if pos + 6 > len(stream) or stream[pos] != START_EXAMPLE or stream[pos + 2] != i:
            raise ValueError(f"{where}: no start marker / index at uint16 offset {pos}; the file is truncated or "
                             f"corrupt")
        end = pos + int(stream[pos + 1]) // 2
        if end > len(stream):
            raise ValueError(f"{where}: ends past the end of the file; the file is truncated")
        label, k, cur = int(stream[pos + 3]), int(stream[pos + 4]), pos + 5
        pieces = []
        for _ in range(k + 1):
            length = int(stream[cur]) if cur < end else 0
            pieces.append(stream[cur + 1: cur + 1 + length])
            cur += 1 + length
        if cur != end:
            raise ValueError(f"{where}: its lengths do not add up to its stated size; the file is corrupt")
        examples.append(_example(pieces[0], pieces[1:], label, where))
        pos = end
    if limit is None and pos != len(stream):
        raise ValueError(f"{path}: {len(stream) - pos} uint16 values after the {n} examples the header announces")
    return examples


def write_hellaswag_bin(path: str | os.PathLike, examples: Sequence[HellaSwagExample]) -> None:
    """Write examples as llm.c's eval .bin (what its C trainer's -h 1 reads)."""
    if not 0 < len(examples) < 2**16:
        raise ValueError(f"llm.c's eval format holds 1 to 65535 examples, got {len(examples)}")
    stream, longest = [], 0
    for i, ex in enumerate(examples):
        rec = [START_EXAMPLE, 0, i, ex.label, len(ex.ending_tokens), len(ex.ctx_tokens), *ex.ctx_tokens]
        for ending in ex.ending_tokens:
            rec += [len(ending), *ending]
        rec[1] = 2 * len(rec)
        if rec[1] >= 2**16:
            raise ValueError(f"example {i} takes {rec[1]} bytes; llm.c's eval format allows fewer than 65536")
        longest = max(longest, rec[1])
        stream += rec
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:4] = (HELLASWAG_MAGIC, HELLASWAG_VERSION, len(examples), longest)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(stream, dtype=np.uint16).tobytes())
    os.replace(tmp, path)


def load_hellaswag(path: str | os.PathLike, limit: Optional[int] = None) -> list[HellaSwagExample]:
    """HellaSwag examples from the official .jsonl or llm.c's .bin (told apart by the suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"HellaSwag file {path} does not exist; fetch_hellaswag() downloads it, or save "
                         f"{HELLASWAG_URL.format(split='val')} there by hand")
    if path.suffix == ".bin":
        return read_hellaswag_bin(path, limit)
    return read_hellaswag_jsonl(path, limit)


def fetch_hellaswag(split: str = "val", cache_dir: str | os.PathLike | None = None) -> Path:
    """The official HellaSwag jsonl of `split`, from the cache ($LLMC_CACHE or ~/.cache/llmc, /hellaswag)
    or downloaded into it; RuntimeError saying what to download when offline."""
    from .prepare import cache_root, fetch_text

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val' (the test split has no labels), got {split!r}")
    path = cache_root(cache_dir) / "hellaswag" / f"hellaswag_{split}.jsonl"
    if not path.is_file():
        url = HELLASWAG_URL.format(split=split)
        try:
            text = fetch_text(url)
        except OSError as e:
            raise RuntimeError(f"could not download {url} ({e}); download it by hand and save it as {path}") from e
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------
def _check_shape(B, T, rank, world_size) -> None:
    for name, value in (("B", B), ("T", T), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank!r} is not in [0, world_size={world_size})")


def _batches(examples: Sequence[HellaSwagExample], B: int, T: int):
    """Groups of whole examples whose rows (one per ending) fit B rows of T tokens."""
    group, rows = [], 0
    for ex in examples:
        k, length = len(ex.ending_tokens), len(ex.ctx_tokens) + max(map(len, ex.ending_tokens))
        if k > B:
            raise ValueError(f"an example has {k} endings but a batch has B={B} rows; use B >= {k}")
        if length > T:
            raise ValueError(f"an example needs {length} tokens but T={T}; use T >= {length}")
        if rows + k > B:
            yield group
            group, rows = [], 0
        group.append(ex)
        rows += k
    if group:
        yield group


@dataclass
class _Batch:
    tokens: object  # torch.Tensor (B, T) int32
    mask: object    # torch.Tensor (B, T) bool: True on ending tokens


def _render(group: Sequence[HellaSwagExample], B: int, T: int) -> _Batch:
    import torch

    tokens = torch.full((B, T), EOT, dtype=torch.int32)
    mask = torch.zeros((B, T), dtype=torch.bool)
    row = 0
    for ex in group:
        n = len(ex.ctx_tokens)
        for ending in ex.ending_tokens:
            tokens[row, :n] = torch.tensor(ex.ctx_tokens, dtype=torch.int32)
            tokens[row, n:n + len(ending)] = torch.tensor(ending, dtype=torch.int32)
            mask[row, n:n + len(ending)] = True
            row += 1
    return _Batch(tokens, mask)


def completion_losses(logits, tokens, mask, vocab_size: int):
    """(sum, count) per row of the cross-entropy of the masked tokens, predicted from the position before.

    logits (B, T, Vp) of any float dtype (the first vocab_size columns are real), tokens (B, T) int, mask (B, T)
    bool. Computed in fp32 over the masked positions only; deterministic (no atomics).
    """
    import torch
    import torch.nn.functional as F

    target_mask = mask[:, 1:].to(logits.device)
    rows, cols = target_mask.nonzero(as_tuple=True)
    picked = logits[rows, cols, :vocab_size].float()
    targets = tokens.to(logits.device)[rows, cols + 1].long()
    dense = torch.zeros(target_mask.shape, dtype=torch.float32, device=logits.device)
    dense[rows, cols] = F.cross_entropy(picked, targets, reduction="none")
    return dense.sum(dim=1), target_mask.sum(dim=1)


def _completion_losses_of(model, batch: _Batch):
    """completion_losses from an llmc.GPT's per-position losses: the target of position t is token t+1 where
    the mask covers it, else -1 (ignored)."""
    import torch

    target_mask = batch.mask[:, 1:]
    targets = torch.full_like(batch.tokens, -1)
    targets[:, :-1] = torch.where(target_mask, batch.tokens[:, 1:], -1)
    losses = model.position_losses(batch.tokens, targets)
    return losses.sum(dim=1), target_mask.to(losses.device).sum(dim=1)


def hellaswag_eval(model, examples: Sequence[HellaSwagExample], B: int, T: int, rank: int = 0,
                   world_size: int = 1, progress: bool = False) -> HellaSwagResult:
    """Score examples rank::world_size with `model` (llmc.GPT or anything with .device, .config.vocab_size and
    forward(idx, return_logits=True) -> (loss, logits)) in (B, T) batches. Sum the results over ranks."""
    import torch

    _check_shape(B, T, rank, world_size)
    mine = list(examples)[rank::world_size]
    correct = correct_norm = 0
    with torch.no_grad():
        for group in _progress(list(_batches(mine, B, T)), "HellaSwag batches", progress):
            batch = _render(group, B, T)
            if hasattr(model, "position_losses"):  # llmc.GPT: the fused classifier's losses, no full logits
                sums, counts = _completion_losses_of(model, batch)
            else:
                _, logits = model.forward(batch.tokens.to(model.device), return_logits=True)
                sums, counts = completion_losses(logits.reshape(B, T, -1), batch.tokens, batch.mask,
                                                 model.config.vocab_size)
            sums, means = sums.cpu(), (sums / counts.clamp(min=1)).cpu()
            row = 0
            for ex in group:
                k = len(ex.ending_tokens)
                correct += int(sums[row:row + k].argmin()) == ex.label
                correct_norm += int(means[row:row + k].argmin()) == ex.label
                row += k
    return HellaSwagResult(correct, correct_norm, len(mine))


def _progress(items, what: str, show: bool):
    """items, with a progress bar (stderr, interactive terminals) when `show` and the evaluation is long."""
    if not show or not sys.stderr.isatty() or len(items) < 20:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=what, unit="batch", leave=False, mininterval=1.0)


def val_loss(model, data, B: int, T: int, max_batches: Optional[int] = None, rank: int = 0,
             world_size: int = 1, progress: bool = False) -> float:
    """Mean loss of `model` over a validation set: `data` is a shard glob (or list of paths) or an
    llmc.data.DataLoader (reset first). Covers the whole set (llm.c: num_tokens // (B*T*world_size) batches)
    unless max_batches is smaller. The mean is this rank's; average it over ranks."""
    import torch

    from .data import DataLoader
    from .model import GPT

    _check_shape(B, T, rank, world_size)
    if hasattr(data, "next_batch"):
        loader = data
    else:
        loader = DataLoader(data, B, T, rank=rank, world_size=world_size, shuffle=False)
    loader.reset()
    n = loader.num_tokens // (B * T * world_size)
    if max_batches is not None:
        n = min(n, max_batches)
    if n < 1:
        raise ValueError(f"the validation set has {loader.num_tokens} tokens, fewer than one batch of "
                         f"B*T*world_size = {B * T * world_size}; use a smaller B or T")
    losses = []
    with torch.no_grad():
        for _ in _progress(range(n), "val batches", progress):
            x, y = loader.next_batch()
            if isinstance(model, GPT):  # CPU tokens checked on the host, the loss left on the device: no wait
                losses.append(model.forward(x, y, sync=False))
            else:
                losses.append(model.forward(x.to(model.device), y.to(model.device)))
    if isinstance(model, GPT):
        losses = torch.stack(losses).tolist()  # the one wait for the GPU
    return sum(losses) / n


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------
def _device(name: str) -> str:
    if name != "auto":
        return name
    from .ops import cuda_available

    return "cuda" if cuda_available() else "cpu"


CPU_EVAL_POSITIONS = 4096  # positions per forward of `llmc eval` on the CPU by default (B = this // T)


def load_model(path: str | os.PathLike, device: str = "auto"):
    """An llmc.GPT with the weights of an llm.c model file, its loss computed in chunks so evaluation runs in
    bounded memory: the logits buffer is chunk x padded_vocab whatever B and T are. The chunk is
    DEFAULT_LOSS_CHUNK on a GPU and an eighth of it on the CPU, whose logits are fp32 in host memory (1024 x 50304
    x 4 B = 206 MB instead of 6.6 GB at B=32, T=1024)."""
    from .checkpoint import model_file_of, read_model_file
    from .model import DEFAULT_LOSS_CHUNK, GPT

    file = model_file_of(path)
    if file != Path(path):
        print(f"model: {file} (the newest complete checkpoint in {path})", file=sys.stderr)
    config, params = read_model_file(file)
    device = _device(device)
    model = GPT(config, device=device, loss_chunk=DEFAULT_LOSS_CHUNK // 8 if device == "cpu" else DEFAULT_LOSS_CHUNK)
    model.load_params_(params)
    return model


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmc eval", description="Validation loss and HellaSwag accuracy of an llm.c "
                                "model file; or convert HellaSwag jsonl to llm.c's .bin (--write-bin, no model).")
    p.add_argument("model", nargs="?", help="llm.c model file (.bin, as `llmc train` writes), or a run directory "
                                            "(its newest checkpoint's model)")
    p.add_argument("--val", metavar="PATTERN", help="validation shard glob, e.g. 'data/x/x_val_*.bin'")
    p.add_argument("--hellaswag", metavar="PATH", help="HellaSwag .jsonl or llm.c .bin; 'val' = download/cache")
    p.add_argument("--write-bin", metavar="OUT", help="write the --hellaswag examples as llm.c's eval .bin and stop")
    p.add_argument("-B", "--batch-size", type=int, help=f"rows per batch (default 32 on a GPU; on the CPU "
                   f"{CPU_EVAL_POSITIONS} // T, at least 4, so activations stay small)")
    p.add_argument("-T", "--seq-len", type=int, help="tokens per row (default: the model's max_seq_len)")
    p.add_argument("--max-batches", type=int, help="cap on validation batches (default: the whole set)")
    p.add_argument("--limit", type=int, help="only the first N HellaSwag examples")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = _eval_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.write_bin and not args.hellaswag:
        parser.error("--write-bin needs --hellaswag")
    if not args.write_bin and (args.model is None or not (args.val or args.hellaswag)):
        parser.error("give a model file and at least one of --val and --hellaswag")
    try:
        examples = None
        if args.hellaswag:
            path = fetch_hellaswag("val") if args.hellaswag == "val" else args.hellaswag
            examples = load_hellaswag(path, args.limit)
        if args.write_bin:
            write_hellaswag_bin(args.write_bin, examples)
            print(f"wrote {len(examples)} examples to {args.write_bin}")
            return 0
        model = load_model(args.model, args.device)
        T = args.seq_len or model.config.max_seq_len
        if args.batch_size is None:
            args.batch_size = 32 if model.device.type == "cuda" else max(4, CPU_EVAL_POSITIONS // T)
        if args.val:
            print(f"val_loss {val_loss(model, args.val, args.batch_size, T, args.max_batches, progress=True):.4f}")
        if examples is not None:
            res = hellaswag_eval(model, examples, args.batch_size, T, progress=True)
            print(f"hellaswag acc {res.acc:.4f} acc_norm {res.acc_norm:.4f} ({res.total} examples)")
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        print(f"llmc eval: error: {e}", file=sys.stderr)
        return 1
    return 0


def sample_main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="llmc sample", description="Print continuations of a prompt from an llm.c "
                                "model file.")
    p.add_argument("model", help="llm.c model file (.bin), or a run directory (its newest checkpoint's model)")
    p.add_argument("--prompt", default="", help="text to continue (default: none, i.e. start after <|endoftext|>)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default: all)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    args = p.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        p.error("--num-samples and --max-new-tokens must be at least 1")
    try:
        model = load_model(args.model, args.device)
        prompt = encode(args.prompt) if args.prompt else [EOT]
        generated, seconds = 0, 0.0
        for i in range(args.num_samples):
            print(f"--- sample {i}\n{args.prompt}", end="", flush=True)
            text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
            started = time.perf_counter()
            for token in model.stream(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                      seed=args.seed + i):
                generated += 1
                if token == EOT:
                    break
                print(text.decode(token_bytes(token)), end="", flush=True)
            seconds += time.perf_counter() - started
            print(text.decode(b"", final=True), flush=True)
        print(f"{generated} tokens in {seconds:.1f} s ({generated / max(seconds, 1e-9):.1f} tokens/s, "
              f"{model.device.type})", file=sys.stderr)
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        print(f"llmc sample: error: {e}", file=sys.stderr)
        return 1
    return 0
