"""`llmc prepare`: text corpora -> llm.c token shards (GPT-2 tokens, uint16, header magic 20240520).

Documents come from local text, jsonl or parquet files, from a named recipe (fineweb-edu, fineweb,
tinystories through Hugging Face `datasets`; tinyshakespeare from its URL), or from the Python reference docs
that ship with every CPython (`builtin_corpus`, the offline corpus for tests and smoke runs). Every document is
tokenized with an EOT token in front, in a pool of worker processes. The token stream is cut into shards as
llm.c does: the first `val_tokens` tokens form the validation shard `<name>_val_000000.bin`, the rest go to
`<name>_train_000001.bin`, `..._000002.bin`, ... of `shard_size` tokens each (documents may straddle shards).
For local files the validation size defaults to a tenth of the corpus, at most 10M tokens.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from .data import MAX_SHARD_TOKENS, shard_num_tokens, write_shard
from .tokenizer import EOT, encode

DEFAULT_SHARD_SIZE = 10**8
AUTO_VAL_FRACTION = 10  # without --val-tokens, the validation shard is 1/AUTO_VAL_FRACTION of the corpus ...
AUTO_VAL_MAX = 10**7    # ... and at most this many tokens
TEXT_UNITS = {"file": None, "paragraph": "\n\n", "line": "\n"}
FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet"}


# ---------------------------------------------------------------------------------------------------------
# documents from local files
# ---------------------------------------------------------------------------------------------------------
def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths and glob patterns -> the sorted list of files they name; ValueError when one names nothing."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = []
    for item in inputs:
        item = str(item)
        matched = sorted(glob.glob(item)) if glob.has_magic(item) else ([item] if os.path.exists(item) else [])
        matched = [m for m in matched if os.path.isfile(m)]
        if not matched:
            raise ValueError(f"input {item!r} matches no file")
        files.extend(Path(m) for m in matched)
    if not files:
        raise ValueError("no input files given")
    return files


def file_format(path: Path, fmt: Optional[str] = None) -> str:
    """'text', 'jsonl' or 'parquet': `fmt` when given, else from the file name's suffix."""
    if fmt is not None:
        if fmt not in ("text", "jsonl", "parquet"):
            raise ValueError(f"format must be 'text', 'jsonl' or 'parquet', got {fmt!r}")
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ValueError(f"cannot tell the format of {path} from its suffix; pass --format text|jsonl|parquet")
    return found


def split_text(text: str, text_unit: str) -> Iterator[str]:
    """Cut a text into documents after each separator of `text_unit` (kept with the document before it, so the
    documents concatenate back to the text); whitespace-only pieces are dropped."""
    if text_unit not in TEXT_UNITS:
        raise ValueError(f"text_unit must be one of {sorted(TEXT_UNITS)}, got {text_unit!r}")
    sep = TEXT_UNITS[text_unit]
    pieces = [text] if sep is None else [p + sep for p in text.split(sep)[:-1]] + [text.split(sep)[-1]]
    return (p for p in pieces if p.strip())


def _jsonl_documents(path: Path, column: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            yield _text_field(row, column, f"{path}:{lineno}")


def _parquet_documents(path: Path, column: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet files needs pyarrow: pip install 'llmc[data]' (or pyarrow)") from None
    pf = pq.ParquetFile(path)
    if column not in pf.schema_arrow.names:
        raise ValueError(f"{path} has no column {column!r}; its columns are {pf.schema_arrow.names} "
                         f"(choose one with --column)")
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise ValueError(f"{path}: column {column!r} holds {type(text).__name__}, expected text")
            yield text


def _text_field(row, column: str, where: str) -> str:
    if not isinstance(row, dict) or column not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"{where}: no field {column!r} (found {keys}); choose the text field with --column")
    if not isinstance(row[column], str):
        raise ValueError(f"{where}: field {column!r} is {type(row[column]).__name__}, expected a string")
    return row[column]


def file_documents(files: Iterable[Path], fmt: Optional[str] = None, column: str = "text",
                   text_unit: str = "file") -> Iterator[str]:
    """The documents of local files: text files cut by `text_unit`, one per jsonl line / parquet row."""
    for path in files:
        kind = file_format(path, fmt)
        if kind == "text":
            yield from split_text(path.read_text(encoding="utf-8"), text_unit)
        elif kind == "jsonl":
            yield from _jsonl_documents(path, column)
        else:
            yield from _parquet_documents(path, column)


# ---------------------------------------------------------------------------------------------------------
# tokenizing and sharding
# ---------------------------------------------------------------------------------------------------------
def tokenize_document(text: str) -> np.ndarray:
    """EOT followed by the document's GPT-2 tokens, as uint16 (checked to fit)."""
    ids = np.array([EOT] + encode(text), dtype=np.int64)
    if ids.max() >= 2**16:
        raise ValueError(f"token id {int(ids.max())} does not fit the uint16 shard format")
    return ids.astype(np.uint16)


def shard_path(out_dir: Path, name: str, split: str, index: int) -> Path:
    return out_dir / f"{name}_{split}_{index:06d}.bin"


def _existing_shards(out_dir: Path, name: str) -> list[Path]:
    pattern = re.compile(re.escape(name) + r"_(val|train)_\d{6}\.bin")
    return sorted(p for p in out_dir.glob(f"{glob.escape(name)}_*.bin") if pattern.fullmatch(p.name))


def _check_count(value, what: str, maximum: int = MAX_SHARD_TOKENS) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not 1 <= value <= maximum:
        raise ValueError(f"{what} must lie in [1, {maximum}], got {value}")
    return value


def write_shards(documents: Iterable[str], out_dir: str | os.PathLike, name: str, *,
                 shard_size: int = DEFAULT_SHARD_SIZE, val_tokens: Optional[int] = None,
                 workers: Optional[int] = None, progress: bool = True, overwrite: bool = False) -> list[Path]:
    """Tokenize `documents` (EOT before each) into `out_dir`: the validation shard first, then training shards
    of `shard_size` tokens. Returns the shard paths, validation first.

    `val_tokens` None chooses the validation size from the corpus: a tenth of it, at most
    min(shard_size, AUTO_VAL_MAX) tokens (the first tokens are held in memory until the corpus is known to be
    ten times that, or ends). `workers` processes tokenize (default: all CPUs; 1 tokenizes in this process).
    Shards of an earlier run with the same name make this fail unless `overwrite`, which deletes them first. On
    any error the shards written so far are removed.
    """
    from tqdm.auto import tqdm

    shard_size = _check_count(shard_size, "shard_size")
    if val_tokens is not None:
        val_tokens = _check_count(val_tokens, "val_tokens")
    workers = _check_count((os.cpu_count() or 1) if workers is None else workers, "workers", 1024)
    if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]+", name):
        raise ValueError(f"name must be a non-empty file-name prefix of letters, digits, '_', '-', '.', got {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = _existing_shards(out_dir, name)
    if old and not overwrite:
        raise ValueError(f"{out_dir} already holds {len(old)} shards named {name}_*.bin; choose another name or "
                         f"directory, or pass overwrite=True (--overwrite) to replace them")
    for p in old:
        p.unlink()

    auto_cap = min(shard_size, AUTO_VAL_MAX)
    written: list[Path] = []
    held: list[np.ndarray] = []  # tokens read before the validation size is known
    held_count, total = 0, 0
    buf, fill, capacity, val_size = None, 0, 0, 0  # buf stays None until the validation size is known

    def start(val: int) -> None:
        nonlocal buf, capacity, val_size
        buf, capacity, val_size = np.empty(max(shard_size, val), dtype=np.uint16), val, val
        for tokens in held:
            add(tokens)
        held.clear()

    def flush() -> None:
        path = shard_path(out_dir, name, "val" if not written else "train", len(written))
        write_shard(path, buf[:fill])
        written.append(path)

    def add(tokens: np.ndarray) -> None:
        nonlocal fill, capacity
        pos = 0
        while pos < len(tokens):
            take = min(capacity - fill, len(tokens) - pos)
            buf[fill:fill + take] = tokens[pos:pos + take]
            fill, pos = fill + take, pos + take
            if fill == capacity:
                flush()
                fill, capacity = 0, shard_size

    try:
        with contextlib.ExitStack() as stack:
            if workers > 1:
                pool = stack.enter_context(multiprocessing.Pool(workers))
                token_arrays = pool.imap(tokenize_document, documents, chunksize=16)
            else:
                token_arrays = map(tokenize_document, documents)
            bar = stack.enter_context(tqdm(unit="tok", unit_scale=True, desc=f"tokenizing {name}",
                                           disable=not progress))
            if val_tokens is not None:
                start(val_tokens)
            for tokens in token_arrays:
                if buf is None:
                    held.append(tokens)
                    held_count += len(tokens)
                    if held_count >= AUTO_VAL_FRACTION * auto_cap:
                        start(auto_cap)
                else:
                    add(tokens)
                bar.update(len(tokens))
                total += len(tokens)
        if buf is None:
            start(max(1, total // AUTO_VAL_FRACTION))
        if fill:
            flush()
        if len(written) < 2:
            raise ValueError(f"the corpus has only {total} tokens, not enough for a validation shard of {val_size} "
                             f"tokens and a training shard; " +
                             ("lower val_tokens (--val-tokens)" if val_tokens else "add text"))
    except BaseException:  # all shards or none: a failed run leaves nothing half-written behind
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


def shard_patterns(out_dir: str | os.PathLike, name: str) -> tuple[str, str]:
    """(train_pattern, val_pattern): the globs of the shards `write_shards` writes."""
    out_dir = Path(out_dir)
    return str(out_dir / f"{glob.escape(name)}_train_*.bin"), str(out_dir / f"{glob.escape(name)}_val_*.bin")


# ---------------------------------------------------------------------------------------------------------
# named recipes
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A public corpus: where it lives, which field is the text, how llm.c shards it."""
    source: str                       # "hf" (a Hugging Face dataset id) or "url" (one text file)
    location: str
    manual: str                       # what to download by hand when offline
    subsets: dict = field(default_factory=lambda: {"default": None})  # subset -> HF config; first is the default
    column: str = "text"
    text_unit: str = "file"
    shard_size: int = DEFAULT_SHARD_SIZE
    val_tokens: int = DEFAULT_SHARD_SIZE


RECIPES = {
    "fineweb-edu": Recipe(
        "hf", "HuggingFaceFW/fineweb-edu",
        "the parquet files under sample/10BT/ (or sample/100BT/) of "
        "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu",
        subsets={"sample-10BT": "sample-10BT", "sample-100BT": "sample-100BT"}),
    "fineweb": Recipe(
        "hf", "HuggingFaceFW/fineweb",
        "the parquet files under sample/10BT/ (or sample/100BT/) of "
        "https://huggingface.co/datasets/HuggingFaceFW/fineweb",
        subsets={"sample-10BT": "sample-10BT", "sample-100BT": "sample-100BT"}),
    "tinystories": Recipe(
        "hf", "roneneldan/TinyStories",
        "the train parquet files under data/ of https://huggingface.co/datasets/roneneldan/TinyStories",
        val_tokens=2**22),
    "tinyshakespeare": Recipe(
        "url", "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        text_unit="paragraph", val_tokens=32768),
}


def _load_hf_dataset(path: str, config: Optional[str]):
    """The dataset's train split through `datasets` (downloaded to its cache, as llm.c does)."""
    import datasets

    return datasets.load_dataset(path, name=config, split="train")


def fetch_text(url: str) -> str:
    """The UTF-8 text at `url` (OSError when it cannot be reached)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode("utf-8")


def _prefix(recipe_name: str) -> str:
    return recipe_name.replace("-", "_")


def _offline_help(recipe: Recipe, name: str) -> str:
    fmt = "parquet" if recipe.source == "hf" else "text"
    unit = f" --text-unit {recipe.text_unit}" if recipe.text_unit != "file" else ""
    return (f"download {recipe.manual} by hand, then run `llmc prepare --input FILES --format {fmt} "
            f"--column {recipe.column}{unit} --name {_prefix(name)} --val-tokens {recipe.val_tokens}`")


def recipe_documents(name: str, subset: Optional[str] = None) -> Iterator[str]:
    """The documents of a named recipe, fetched over the network; RuntimeError saying what to download when
    that fails."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    subset = next(iter(recipe.subsets)) if subset is None else subset
    if subset not in recipe.subsets:
        raise ValueError(f"recipe {name!r} has subsets {sorted(recipe.subsets)}, not {subset!r}")
    if recipe.source == "url":
        try:
            text = fetch_text(recipe.location)
        except OSError as e:
            raise RuntimeError(f"could not fetch {recipe.location} ({e}); {_offline_help(recipe, name)}") from e
        return split_text(text, recipe.text_unit)
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise RuntimeError(f"recipe {name!r} needs the Hugging Face `datasets` package (pip install 'llmc[data]') "
                           f"and the network; or {_offline_help(recipe, name)}") from None
    try:
        rows = _load_hf_dataset(recipe.location, recipe.subsets[subset])
    except Exception as e:  # datasets raises many kinds (connection, hub, offline mode): all mean "not here"
        raise RuntimeError(f"could not load {recipe.location} ({type(e).__name__}: {e}); "
                           f"{_offline_help(recipe, name)}") from e
    return (_text_field(row, recipe.column, f"{recipe.location} row {i}") for i, row in enumerate(rows))


def prepare_recipe(name: str, out_dir: str | os.PathLike | None = None, *, subset: Optional[str] = None,
                   shard_size: Optional[int] = None, val_tokens: Optional[int] = None,
                   workers: Optional[int] = None, progress: bool = True, overwrite: bool = False) -> list[Path]:
    """Fetch and shard a named recipe into `out_dir` (default data/<name>[-<subset>]); shards are named
    <name>_{val,train}_NNNNNN.bin. Shard and validation sizes default to the recipe's (llm.c's)."""
    documents = recipe_documents(name, subset)
    recipe = RECIPES[name]
    if out_dir is None:
        out_dir = Path("data") / (name if subset is None else f"{name}-{subset}")
    return write_shards(documents, out_dir, _prefix(name),
                        shard_size=recipe.shard_size if shard_size is None else shard_size,
                        val_tokens=recipe.val_tokens if val_tokens is None else val_tokens,
                        workers=workers, progress=progress, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------------------
# the built-in offline corpus
# ---------------------------------------------------------------------------------------------------------
BUILTIN_VAL_TOKENS = 2**15


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where llmc caches data: `cache_dir` if given, else $LLMC_CACHE, else ~/.cache/llmc."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("LLMC_CACHE") or Path.home() / ".cache" / "llmc")


def builtin_corpus(cache_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(train_pattern, val_pattern): shard globs of CPython's reference docs (pydoc_data.topics), tokenized once
    and cached under `cache_dir` (default $LLMC_CACHE or ~/.cache/llmc). Works offline; safe to call from
    several processes at once."""
    from pydoc_data.topics import topics

    documents = [topics[key] for key in sorted(topics)]
    digest = hashlib.sha256(json.dumps(documents).encode()).hexdigest()[:16]
    final = cache_root(cache_dir) / f"pydoc-{digest}"
    patterns = shard_patterns(final, "pydoc")
    if not all(glob.glob(p) for p in patterns):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_shards(documents, tmp, "pydoc", val_tokens=BUILTIN_VAL_TOKENS, workers=1, progress=False)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: its shards are identical
            shutil.rmtree(tmp, ignore_errors=True)
            if not all(glob.glob(p) for p in patterns):
                raise
    return patterns


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmc prepare",
        description="Tokenize a corpus (GPT-2 BPE, EOT before each document) into llm.c shards: "
                    "<name>_val_000000.bin first, then <name>_train_NNNNNN.bin.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("recipe", nargs="?", choices=sorted(RECIPES), help="a named public corpus (needs the network)")
    src.add_argument("--input", nargs="+", metavar="PATH", help="local files or glob patterns (.txt, .jsonl, .parquet)")
    src.add_argument("--builtin", action="store_true",
                     help="the offline Python-docs corpus; prints its train and val patterns")
    p.add_argument("--subset", help="recipe subset, e.g. sample-10BT or sample-100BT for fineweb(-edu)")
    p.add_argument("--out-dir", help="output directory (default data/<name>; for --builtin the cache directory)")
    p.add_argument("--name", default="data", help="shard file-name prefix for --input (default: data)")
    p.add_argument("--format", choices=["text", "jsonl", "parquet"], help="input format (default: from the suffix)")
    p.add_argument("--column", default="text", help="jsonl field / parquet column holding the text (default: text)")
    p.add_argument("--text-unit", choices=sorted(TEXT_UNITS), default="file",
                   help="what one document of a text file is (default: the whole file)")
    p.add_argument("--shard-size", type=int, help=f"tokens per training shard (default {DEFAULT_SHARD_SIZE:,})")
    p.add_argument("--val-tokens", type=int,
                   help=f"tokens in the validation shard (default for --input: a tenth of the corpus, at most "
                        f"{AUTO_VAL_MAX:,}; for a recipe: the recipe's)")
    p.add_argument("--workers", type=int, help="tokenizer processes (default: all CPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace shards of the same name in the output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.subset and not args.recipe:
        parser.error("--subset goes with a recipe")
    try:
        if args.builtin:
            train, val = builtin_corpus(args.out_dir)
            print(f"train: {train}\nval: {val}")
            return 0
        common = dict(workers=args.workers, progress=not args.quiet, overwrite=args.overwrite)
        if args.recipe:
            shards = prepare_recipe(args.recipe, args.out_dir, subset=args.subset, shard_size=args.shard_size,
                                    val_tokens=args.val_tokens, **common)
            name = _prefix(args.recipe)
        else:
            documents = file_documents(expand_inputs(args.input), args.format, args.column, args.text_unit)
            shards = write_shards(documents, args.out_dir or Path("data") / args.name, args.name,
                                  shard_size=args.shard_size or DEFAULT_SHARD_SIZE, val_tokens=args.val_tokens,
                                  **common)
            name = args.name
    except (ValueError, TypeError, RuntimeError, ImportError, OSError) as e:
        print(f"llmc prepare: error: {e}", file=sys.stderr)
        return 1
    sizes = [shard_num_tokens(p) for p in shards]
    train, val = shard_patterns(shards[0].parent, name)
    print(f"wrote {len(shards)} shards, {sum(sizes):,} tokens ({sizes[0]:,} validation) to {shards[0].parent}")
    if args.input and args.val_tokens is None:
        print(f"validation: the first {sizes[0]:,} tokens, a tenth of the corpus at most "
              f"{min(args.shard_size or DEFAULT_SHARD_SIZE, AUTO_VAL_MAX):,} (--val-tokens sets it)")
    print(f"train: {train}\nval: {val}")
    return 0
