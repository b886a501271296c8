"""Hugging Face transformers interop: export an llmc GPT as a GPT-2 directory, import one back.

export_hf writes what transformers.GPT2LMHeadModel.from_pretrained reads: config.json, model.safetensors and,
when the model uses GPT-2's vocabulary, the GPT-2 tokenizer files (vocab.json and merges.txt rebuilt from the
rank table llmc ships, so the export needs no network). The token embedding is tied to the LM head, so only
wte is stored, without llm.c's padding rows. HF's Conv1D keeps weights as (in, out): the transpose of llm.c's
(out, in) matrices. `llmc export --hf DIR MODEL.bin` converts an llm.c model file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from .model import GPT, GPTConfig, LN_EPS, pad_vocab, split_params
from .tokenizer import EOT, VOCAB_SIZE, get_encoding

# llm.c per-layer tensor -> (GPT-2 module path under transformer.h.{l}, stored transposed in HF)
_LAYER_KEYS = {
    "ln1w": ("ln_1.weight", False), "ln1b": ("ln_1.bias", False),
    "qkvw": ("attn.c_attn.weight", True), "qkvb": ("attn.c_attn.bias", False),
    "attprojw": ("attn.c_proj.weight", True), "attprojb": ("attn.c_proj.bias", False),
    "ln2w": ("ln_2.weight", False), "ln2b": ("ln_2.bias", False),
    "fcw": ("mlp.c_fc.weight", True), "fcb": ("mlp.c_fc.bias", False),
    "fcprojw": ("mlp.c_proj.weight", True), "fcprojb": ("mlp.c_proj.bias", False),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hf_state_dict(config: GPTConfig, tensors: dict[str, torch.Tensor],
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel state dict (CPU, contiguous, `dtype`, tied lm_head omitted) from llm.c-named tensors."""
    def put(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device="cpu", dtype=dtype).contiguous()

    state = {
        "transformer.wte.weight": put(tensors["wte"][:config.vocab_size]),
        "transformer.wpe.weight": put(tensors["wpe"]),
        "transformer.ln_f.weight": put(tensors["lnfw"]),
        "transformer.ln_f.bias": put(tensors["lnfb"]),
    }
    for layer in range(config.n_layer):
        for name, (key, transposed) in _LAYER_KEYS.items():
            t = tensors[name][layer]
            state[f"transformer.h.{layer}.{key}"] = put(t.t() if transposed else t)
    return state


def llmc_params_from_hf(config: GPTConfig, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flat fp32 parameters in llm.c's order (padding rows of wte zero) from a GPT2LMHeadModel state dict."""
    flat = torch.zeros(config.num_params, dtype=torch.float32)
    views = split_params(config, flat)

    def get(key: str, shape) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"the Hugging Face state dict has no {key!r}; is this a GPT-2 (GPT2LMHeadModel)?")
        t = state[key].detach().float().cpu()
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{key} has shape {tuple(t.shape)}, expected {tuple(shape)} for {config}")
        return t

    C = config.n_embd
    views["wte"][:config.vocab_size] = get("transformer.wte.weight", (config.vocab_size, C))
    views["wpe"].copy_(get("transformer.wpe.weight", (config.max_seq_len, C)))
    views["lnfw"].copy_(get("transformer.ln_f.weight", (C,)))
    views["lnfb"].copy_(get("transformer.ln_f.bias", (C,)))
    for layer in range(config.n_layer):
        for name, (key, transposed) in _LAYER_KEYS.items():
            target = views[name][layer]
            shape = tuple(reversed(target.shape)) if transposed else target.shape
            t = get(f"transformer.h.{layer}.{key}", shape)
            target.copy_(t.t() if transposed else t)
    return flat


def _hf_config(config: GPTConfig) -> dict:
    eot = EOT if config.vocab_size > EOT else None
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.max_seq_len, "n_ctx": config.max_seq_len,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": LN_EPS, "initializer_range": 0.02,
        # llm.c trains without dropout; set these before fine-tuning with dropout
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "use_cache": True, "bos_token_id": eot, "eos_token_id": eot,
    }


def write_hf(config: GPTConfig, tensors: dict[str, torch.Tensor], out_dir, dtype="float32") -> Path:
    """Write config.json, model.safetensors (and GPT-2 tokenizer files for the GPT-2 vocabulary) into out_dir."""
    from safetensors.torch import save_file

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(_hf_config(config), indent=2) + "\n")
    weights = out / "model.safetensors"
    save_file(hf_state_dict(config, tensors, _DTYPES[dtype]), str(weights), metadata={"format": "pt"})
    # safetensors writes through a private temporary file (mode 0600): give the weights config.json's mode, which
    # follows the user's umask like every other file written here
    os.chmod(weights, (out / "config.json").stat().st_mode & 0o777)
    if config.vocab_size == VOCAB_SIZE:
        write_gpt2_tokenizer(out, config.max_seq_len)
    return out


def export_hf(model: GPT, out_dir, dtype: str = "float32") -> Path:
    """Write `model` as a transformers GPT-2 directory (loadable by GPT2LMHeadModel.from_pretrained)."""
    if not isinstance(model, GPT):
        raise TypeError(f"export_hf takes an llmc.GPT, got {type(model).__name__}")
    return write_hf(model.config, model.param_tensors, out_dir, dtype)


def _check_hf_config(cfg) -> None:
    problems = []
    if getattr(cfg, "model_type", None) != "gpt2":
        problems.append(f"model_type is {getattr(cfg, 'model_type', None)!r}, not 'gpt2'")
    if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation {cfg.activation_function!r} is not GELU's tanh approximation")
    if abs(cfg.layer_norm_epsilon - LN_EPS) > 1e-12:
        problems.append(f"layer_norm_epsilon is {cfg.layer_norm_epsilon}, llmc uses {LN_EPS}")
    if cfg.n_inner not in (None, 4 * cfg.n_embd):
        problems.append(f"n_inner is {cfg.n_inner}, llmc's MLP is 4 * n_embd = {4 * cfg.n_embd}")
    if not getattr(cfg, "scale_attn_weights", True) or getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        problems.append("attention scaling differs from 1/sqrt(head size)")
    if not getattr(cfg, "tie_word_embeddings", True):
        problems.append("the LM head is not tied to the token embedding")
    if problems:
        raise ValueError("this Hugging Face model is not a GPT-2 llmc can run: " + "; ".join(problems))


def import_hf(source, device="cuda", recompute: int = 0) -> GPT:
    """An llmc GPT with the weights of a Hugging Face GPT-2: a directory or hub-cache name (loaded with
    GPT2LMHeadModel.from_pretrained) or a GPT2LMHeadModel instance. The vocabulary is padded llm.c style
    (to a multiple of 128) with zero rows."""
    if isinstance(source, (str, os.PathLike)):
        from transformers import GPT2LMHeadModel

        source = GPT2LMHeadModel.from_pretrained(str(source))
    if not isinstance(source, torch.nn.Module) or not hasattr(source, "config"):
        raise TypeError(f"import_hf takes a directory name or a transformers GPT2LMHeadModel, got "
                        f"{type(source).__name__}")
    cfg = source.config
    _check_hf_config(cfg)
    config = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
                       padded_vocab_size=pad_vocab(cfg.vocab_size), max_seq_len=cfg.n_positions)
    model = GPT(config, device=device, recompute=recompute)
    return model.load_params_(llmc_params_from_hf(config, source.state_dict()))


# ---------------------------------------------------------------------------------------------------------
# GPT-2 tokenizer files (vocab.json, merges.txt) from the tiktoken rank table
# ---------------------------------------------------------------------------------------------------------
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes map to themselves, the other bytes to
    chr(256 + n) in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _merge_pair(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens BPE joins to make `token`: run BPE on its bytes with only the merges ranked before it."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise RuntimeError(f"token {token!r} (rank {rank}) is not the merge of two earlier tokens; the rank table "
                           f"is not a BPE table")
    return parts[0], parts[1]


def write_gpt2_tokenizer(out_dir, max_seq_len: int = 1024) -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json of GPT-2 into out_dir."""
    enc = get_encoding()
    ranks = {enc.decode_single_token_bytes(i): i for i in range(EOT)}
    to_char = _byte_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab["<|endoftext|>"] = EOT
    merges = ["#version: 0.2"]
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _merge_pair(token, rank, ranks)
            merges.append(f"{spell(left)} {spell(right)}")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    out = Path(out_dir)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_seq_len, "add_prefix_space": False, **special},
        indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------
# llmc export
# ---------------------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="llmc export", description="Convert an llm.c model file into a Hugging Face "
                                "transformers GPT-2 directory (config.json, model.safetensors, tokenizer files).")
    p.add_argument("--hf", required=True, metavar="DIR", help="output directory")
    p.add_argument("model", metavar="MODEL.bin", help="llm.c model file (version 3 fp32 or 5 bf16), or a run "
                                                      "directory (its newest checkpoint's model)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="weights' dtype (default float32)")
    args = p.parse_args(argv)
    try:
        from .checkpoint import model_file_of, read_model_file

        config, flat = read_model_file(model_file_of(args.model))
        out = write_hf(config, split_params(config, flat), args.hf, args.dtype)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"llmc export: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({config.num_params:,} parameters, {args.dtype})")
    return 0
