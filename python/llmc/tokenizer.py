"""GPT-2's byte-pair encoding through tiktoken, offline, and llm.c's tokenizer file.

The rank table ships with llmc (assets/gpt2.tiktoken, see assets/LICENSE-gpt2-tiktoken.txt), so building the
encoding never touches the network. Text is encoded as ordinary text: a literal "<|endoftext|>" in a document
is spelled out in ordinary tokens, and the EOT token (50256) only appears where code puts it (data preparation
puts one before each document).

llm.c's tokenizer file (what its C samplers read to print text): a header of 256 int32 with [0] = 20240328,
[1] = 2 (version), [2] = vocab size, [3] = EOT id; then, for every token id in order, a uint8 length followed by
that many bytes of the token's UTF-8 fragment.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable

import numpy as np

EOT = 50256
VOCAB_SIZE = 50257
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSION = 2
HEADER_INTS = 256

# GPT-2's pre-tokenisation regex (contractions, letters, digits, other symbols, whitespace).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
RANKS_PATH = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def _load_ranks(path: Path) -> dict[bytes, int]:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise RuntimeError(f"{path} has SHA-256 {digest}, expected {RANKS_SHA256}: the GPT-2 rank table shipped "
                           f"with llmc is damaged; reinstall llmc")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def get_encoding():
    """The GPT-2 tiktoken.Encoding (50257 tokens, <|endoftext|> = 50256), built from the shipped rank table."""
    import tiktoken

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=_load_ranks(RANKS_PATH),
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=VOCAB_SIZE,
    )


def encode(text: str) -> list[int]:
    """GPT-2 token ids of `text`, treated as ordinary text (no special tokens)."""
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str, got {type(text).__name__}")
    return get_encoding().encode_ordinary(text)


def decode(ids: Iterable[int]) -> str:
    """The text of GPT-2 token ids; bytes that do not form valid UTF-8 on their own become U+FFFD."""
    ids = _check_ids(ids)
    return get_encoding().decode(ids)


def token_bytes(token: int) -> bytes:
    """The bytes of one GPT-2 token (a character can span tokens: decode a stream with an incremental decoder)."""
    return get_encoding().decode_single_token_bytes(_check_ids([token])[0])


def _check_ids(ids) -> list[int]:
    if isinstance(ids, (str, bytes)):
        raise TypeError("decode takes a sequence of token ids, not a string")
    try:
        ids = [int(i) for i in ids]
    except (TypeError, ValueError) as e:
        raise TypeError(f"decode takes a sequence of integer token ids: {e}") from None
    bad = [i for i in ids if not 0 <= i < VOCAB_SIZE]
    if bad:
        raise ValueError(f"token ids must lie in [0, {VOCAB_SIZE}); got {bad[:5]}"
                         f"{' ...' if len(bad) > 5 else ''} (are these ids from another vocabulary?)")
    return ids


def write_tokenizer_file(path: str | os.PathLike) -> None:
    """Write llm.c's tokenizer file (version 2) for the GPT-2 encoding, atomically."""
    enc = get_encoding()
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:4] = (TOKENIZER_MAGIC, TOKENIZER_VERSION, VOCAB_SIZE, EOT)
    body = bytearray()
    for i in range(VOCAB_SIZE):
        piece = enc.decode_single_token_bytes(i)
        body.append(len(piece))
        body += piece
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(body)
    os.replace(tmp, path)


def read_tokenizer_file(path: str | os.PathLike) -> tuple[list[bytes], int]:
    """Read an llm.c tokenizer file (version 1 or 2) -> (token byte strings indexed by id, EOT id)."""
    data = Path(path).read_bytes()
    if len(data) < 4 * HEADER_INTS:
        raise ValueError(f"{path}: {len(data)} bytes is shorter than the {4 * HEADER_INTS}-byte header of an llm.c "
                         f"tokenizer file")
    header = np.frombuffer(data, dtype=np.int32, count=HEADER_INTS)
    if header[0] != TOKENIZER_MAGIC:
        raise ValueError(f"{path}: magic {header[0]} is not {TOKENIZER_MAGIC}; not an llm.c tokenizer file")
    version, vocab_size = int(header[1]), int(header[2])
    if version == 1:
        eot = EOT  # version 1 predates the EOT field and was only written for GPT-2
    elif version == 2:
        eot = int(header[3])
    else:
        raise ValueError(f"{path}: tokenizer file version {version} is not supported (1 or 2)")
    if vocab_size <= 0 or not 0 <= eot < vocab_size:
        raise ValueError(f"{path}: bad header (vocab size {vocab_size}, EOT {eot})")
    tokens, pos = [], 4 * HEADER_INTS
    for i in range(vocab_size):
        if pos >= len(data) or data[pos] == 0 or pos + 1 + data[pos] > len(data):
            raise ValueError(f"{path}: truncated or corrupt at token {i} of {vocab_size} (byte offset {pos})")
        tokens.append(data[pos + 1: pos + 1 + data[pos]])
        pos += 1 + data[pos]
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} unexpected bytes after the {vocab_size} tokens")
    return tokens, eot
