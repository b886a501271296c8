"""llmc.tokenizer: GPT-2 BPE from the shipped rank table (known encodings, Unicode round trips) and llm.c's
tokenizer file."""
import random
import struct

import numpy as np
import pytest

import llmc.tokenizer as tk

# Well-known GPT-2 encodings (the same ids tiktoken's "gpt2" and Hugging Face's GPT2Tokenizer give).
KNOWN = {
    "Hello world": [15496, 995],
    "hello world": [31373, 995],
    " Hello world!": [18435, 995, 0],
    "<|endoftext|>": [27, 91, 437, 1659, 5239, 91, 29],  # ordinary text, not the special token
}


@pytest.mark.parametrize("text,ids", list(KNOWN.items()))
def test_known_encodings(text, ids):
    assert tk.encode(text) == ids
    assert tk.decode(ids) == text


def test_encoding_shape():
    enc = tk.get_encoding()
    assert enc.n_vocab == tk.VOCAB_SIZE == 50257
    assert enc.eot_token == tk.EOT == 50256
    assert tk.decode([tk.EOT]) == "<|endoftext|>"
    assert tk.get_encoding() is enc  # built once


@pytest.mark.parametrize("text", [
    "", " ", "\n\n\n", "  leading and trailing  ", "tabs\tand\r\nnewlines\n",
    "café naïve Zürich façade", "東京タワーと富士山", "Ελληνικά και русский", "emoji 🤖🚀👩‍👩‍👧 flags 🇫🇷",
    "combining e\u0301 and zero\u200bwidth", "it's we'll they've I'm you'd ALL'S", "x = [1, 2.5e-3]; y += f(x) ** 2",
])
def test_unicode_round_trip(text):
    assert tk.decode(tk.encode(text)) == text


def test_random_unicode_round_trip():
    rng = random.Random(1234)
    # random code points from several planes, no surrogates (not encodable as UTF-8)
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x52F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]
    for _ in range(50):
        chars = [chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 200))]
        text = "".join(chars)
        ids = tk.encode(text)
        assert all(0 <= i < tk.EOT for i in ids)
        assert tk.decode(ids) == text


def test_decode_partial_utf8_is_replaced():
    ids = tk.encode("東")
    assert len(ids) > 1  # a CJK char spans several byte-level tokens
    assert tk.decode(ids[:1]) == "\ufffd"


def test_bad_input():
    with pytest.raises(TypeError, match="str"):
        tk.encode(b"bytes")
    with pytest.raises(TypeError, match="token ids"):
        tk.decode("abc")
    with pytest.raises(TypeError, match="integer"):
        tk.decode([1, None])
    with pytest.raises(ValueError, match=r"\[0, 50257\)"):
        tk.decode([1, 50257])
    with pytest.raises(ValueError, match="50257"):
        tk.decode([-1])


def test_damaged_rank_table_is_refused(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    data = tk.RANKS_PATH.read_bytes()
    bad.write_bytes(data[:100] + b"X" + data[101:])
    with pytest.raises(RuntimeError, match="damaged"):
        tk._load_ranks(bad)


def _independent_read(path):
    """llm.c's tokenizer.h reading logic, written out separately with struct."""
    with open(path, "rb") as f:
        header = struct.unpack("<256i", f.read(1024))
        tokens = []
        for _ in range(header[2]):
            (n,) = struct.unpack("<B", f.read(1))
            tokens.append(f.read(n))
        rest = f.read()
    return header, tokens, rest


def test_tokenizer_file_round_trip(tmp_path):
    path = tmp_path / "gpt2_tokenizer.bin"
    tk.write_tokenizer_file(path)
    header, tokens, rest = _independent_read(path)
    assert header[:4] == (20240328, 2, 50257, 50256) and not any(header[4:])
    assert rest == b""
    enc = tk.get_encoding()
    assert tokens[15496] == b"Hello" and tokens[995] == b" world" and tokens[50256] == b"<|endoftext|>"
    assert all(tokens[i] == enc.decode_single_token_bytes(i) for i in range(0, 50257, 97))
    read, eot = tk.read_tokenizer_file(path)
    assert read == tokens and eot == 50256
    assert b"".join(read[i] for i in tk.encode("Hello world, café")).decode() == "Hello world, café"


def _write_file(path, header_values, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:len(header_values)] = header_values
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for t in tokens:
            f.write(bytes([len(t)]) + t)


def test_tokenizer_file_versions_and_errors(tmp_path):
    toks = [b"a", b"bc", b"<|endoftext|>"]
    p = tmp_path / "v2.bin"
    _write_file(p, [20240328, 2, 3, 2], toks)
    assert tk.read_tokenizer_file(p) == (toks, 2)
    # version 1 had no EOT field: GPT-2's 50256 is implied, so it needs GPT-2's vocabulary size
    gpt2_tokens = [tk.get_encoding().decode_single_token_bytes(i) for i in range(50257)]
    _write_file(tmp_path / "v1.bin", [20240328, 1, 50257], gpt2_tokens)
    assert tk.read_tokenizer_file(tmp_path / "v1.bin") == (gpt2_tokens, 50256)
    _write_file(tmp_path / "v1_small.bin", [20240328, 1, 3], toks)
    with pytest.raises(ValueError, match="bad header"):
        tk.read_tokenizer_file(tmp_path / "v1_small.bin")
    cases = {
        "magic": ([20240520, 2, 3, 2], toks),
        "version 3": ([20240328, 3, 3, 2], toks),
        "truncated": ([20240328, 2, 4, 2], toks),
        "unexpected bytes": ([20240328, 2, 2, 1], toks),
        "bad header": ([20240328, 2, 3, 7], toks),
    }
    for message, (header, tokens) in cases.items():
        p = tmp_path / "bad.bin"
        _write_file(p, header, tokens)
        with pytest.raises(ValueError, match=message):
            tk.read_tokenizer_file(p)
    (tmp_path / "short.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="shorter"):
        tk.read_tokenizer_file(tmp_path / "short.bin")
