"""Helpers shared by test_model.py, test_optim.py and test_hf.py: tiny configs, random weights, and a
transformers GPT2LMHeadModel twin of an llmc GPT (same weights, through llmc.hf's export)."""
from __future__ import annotations

import pytest
import torch

from llmc.model import GPT, GPTConfig, split_params


def tiny_config(**overrides) -> GPTConfig:
    """Two layers, head size 16, an odd vocabulary padded to 128: small enough for CPU tests in CI."""
    fields = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=97, padded_vocab_size=128, max_seq_len=32)
    fields.update(overrides)
    return GPTConfig(**fields)


def randomize_params(model: GPT, seed: int) -> torch.Tensor:
    """Load weights where every tensor is random (biases and layernorm parameters too, so a mix-up between
    them shows), padding rows of wte zero. Returns the fp32 values loaded."""
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randn(model.num_params, generator=gen) * 0.05
    views = split_params(model.config, flat)
    for name in ("ln1w", "ln2w", "lnfw"):
        views[name].mul_(2.0).add_(1.0)
    views["wte"][model.config.vocab_size:] = 0
    model.load_params_(flat)
    return flat


def random_batch(config: GPTConfig, B: int, T: int, seed: int, ignore_every: int = 0):
    """(idx, targets) int32 CPU tensors; with ignore_every=k every k-th target is -1 (ignored)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (B, T), generator=gen, dtype=torch.int32)
    targets = torch.randint(0, config.vocab_size, (B, T), generator=gen, dtype=torch.int32)
    if ignore_every:
        targets.view(-1)[::ignore_every] = -1
    return idx, targets


def hf_twin(model: GPT, directory):
    """transformers.GPT2LMHeadModel (fp32, CPU, eval mode: no dropout) with `model`'s weights, via export_hf."""
    transformers = pytest.importorskip("transformers")
    from llmc.hf import export_hf

    export_hf(model, directory)
    return transformers.GPT2LMHeadModel.from_pretrained(str(directory)).float().eval()


def hf_loss_and_grads(hf, config: GPTConfig, idx: torch.Tensor, targets: torch.Tensor):
    """(mean loss over non-ignored targets, logits (B, T, V), gradients as llm.c-named tensors) of the twin."""
    import torch.nn.functional as F

    from llmc.hf import llmc_params_from_hf

    hf.zero_grad(set_to_none=True)
    logits = hf(idx.long()).logits
    loss = F.cross_entropy(logits.flatten(0, 1), targets.long().flatten(), ignore_index=-1)
    loss.backward()
    grads = llmc_params_from_hf(config, {name: p.grad for name, p in hf.named_parameters()})
    return loss.item(), logits.detach(), split_params(config, grads)


def hf_adamw(hf, lr: float, betas, eps: float, weight_decay: float):
    """torch.optim.AdamW over the twin with llmc's decay split: 2-D weights (wte, wpe and the four matrices of
    each block) decay, biases and layernorm parameters do not."""
    decay = [p for p in hf.parameters() if p.dim() == 2]
    no_decay = [p for p in hf.parameters() if p.dim() != 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
