"""llmc.optim: 10 steps of training with llmc's AdamW against the same GPT-2 in transformers trained by
torch.optim.AdamW (same weights, batches, decay split and gradient clipping); grad_norm; bit-identical reruns;
exact resume from state_dict(); bad input.

Tolerances: on the CPU both sides are fp32 and the losses agree to ~1e-6 relative over the 10 steps (measured),
so they are held to 1e-5 relative, the final weights to 10x the conftest fp32 row (reason at the check). On CUDA the model computes in
bf16 (see test_model.py) and writes bf16 weights by stochastic rounding from fp32 masters, so the losses are
held to 1% relative: the per-step bf16 noise of the loss is ~0.1% and ten AdamW steps of lr 1e-3 move the
loss by more than 10%, so a wrong update (sign, bias correction, decay, clipping) breaks the bound.
"""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES, assert_close, requires_cuda
from llmc.model import GPT, GPTConfig, split_params
from llmc.optim import AdamW, grad_norm, step_seed
from model_helpers import hf_adamw, hf_twin, random_batch, randomize_params, tiny_config

LR, BETAS, EPS, WD, CLIP = 1e-3, (0.9, 0.95), 1e-8, 0.1, 1.0
STEPS = 10


def _batches(config, B, T, n=3):
    return [random_batch(config, B, T, seed=100 + i, ignore_every=11) for i in range(n)]


def _train_llmc(model, opt, batches, steps, start=0, clip=CLIP):
    losses = []
    for step in range(start, start + steps):
        idx, targets = batches[step % len(batches)]
        model.zero_grad()
        losses.append(model.forward(idx.to(model.device), targets.to(model.device)))
        model.backward()
        norm = grad_norm(model)
        opt.step(LR, grad_scale=min(1.0, clip / (norm + 1e-6)))  # torch.nn.utils.clip_grad_norm_'s factor
    return losses


def _train_torch(hf, batches, steps, clip=CLIP):
    opt = hf_adamw(hf, LR, BETAS, EPS, WD)
    losses = []
    for step in range(steps):
        idx, targets = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        logits = hf(idx.long()).logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.long().flatten(), ignore_index=-1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), clip)
        opt.step()
        losses.append(loss.item())
    return losses


def _compare_training(model, tmp_path, B, T, loss_rtol):
    randomize_params(model, seed=31)
    hf = hf_twin(model, tmp_path)
    batches = _batches(model.config, B, T)
    opt = AdamW(model, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    losses = _train_llmc(model, opt, batches, STEPS)
    ref = _train_torch(hf, batches, STEPS)
    for step, (a, e) in enumerate(zip(losses, ref)):
        assert abs(a - e) <= loss_rtol * e, f"step {step}: llmc loss {a} vs torch {e}"
    assert ref[-1] < 0.9 * ref[0], "the reference did not learn; the comparison would be vacuous"
    assert not model.param_tensors["wte"][model.config.vocab_size:].any(), "padded wte rows must stay zero"
    return hf


def test_training_matches_torch_adamw_cpu(tmp_path):
    model = GPT(tiny_config(), device="cpu", seed=30)
    hf = _compare_training(model, tmp_path / "hf", B=4, T=16, loss_rtol=1e-5)
    from llmc.hf import llmc_params_from_hf

    trained = split_params(model.config, llmc_params_from_hf(model.config, hf.state_dict()))
    # AdamW moves every element by ~lr whatever its gradient's size, so where a gradient is near zero fp32
    # rounding noise becomes a visible fraction of a step: 10x the fp32 row (2e-5 of max|w| ~ 0.2 here, 2% of
    # one step of lr 1e-3) covers that, while any wrong update is off by ~lr.
    # The key bias has an exactly zero gradient (q.(k+b) shifts a query's scores by a constant, which softmax
    # ignores): both sides feed pure rounding noise to AdamW there, so those weights only stay within the
    # steps' reach, and are compared apart from the rest of qkvb.
    C = model.config.n_embd
    for name, value in model.param_tensors.items():
        expected = trained[name]
        if name == "qkvb":
            assert ((value[:, C:2 * C] - expected[:, C:2 * C]).abs() <= 2 * STEPS * LR).all()
            query_and_value = torch.cat([torch.arange(0, C), torch.arange(2 * C, 3 * C)])
            value, expected = value[:, query_and_value], expected[:, query_and_value]
        assert_close(value, expected, torch.float32, f"{name} after {STEPS} steps", scale=10.0)


@requires_cuda
@pytest.mark.cuda
def test_training_matches_torch_adamw_cuda(tmp_path):
    config = GPTConfig(n_layer=2, n_head=4, n_embd=256, vocab_size=1001, padded_vocab_size=1024, max_seq_len=128)
    model = GPT(config, device="cuda", seed=30)
    _compare_training(model, tmp_path / "hf", B=4, T=64, loss_rtol=1e-2)


def _fresh_run(device, config, seed=40):
    model = GPT(config, device=device, seed=seed)
    opt = AdamW(model, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    return model, opt


@pytest.mark.parametrize("device", DEVICES)
def test_two_runs_are_bit_identical_and_resume_is_exact(device):
    config = tiny_config() if device == "cpu" else \
        GPTConfig(n_layer=2, n_head=2, n_embd=128, vocab_size=1001, padded_vocab_size=1024, max_seq_len=64)
    batches = _batches(config, 4, 16)
    deterministic = torch.are_deterministic_algorithms_enabled()
    # cuDNN's attention backward is only deterministic in torch's deterministic mode (see llmc.ops)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        first, opt = _fresh_run(device, config)
        losses = _train_llmc(first, opt, batches, 6)
        second, opt = _fresh_run(device, config)
        assert _train_llmc(second, opt, batches, 6) == losses
        assert torch.equal(first.params, second.params)

        partial, opt = _fresh_run(device, config)
        head = _train_llmc(partial, opt, batches, 3)
        buffer = io.BytesIO()
        torch.save({"params": partial.params, "optimizer": opt.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer)
        resumed = GPT(config, device=device, seed=41)
        resumed.load_params_(saved["params"])
        resumed_opt = AdamW(resumed, seed=5)
        resumed_opt.load_state_dict(saved["optimizer"])
        assert resumed_opt.step_count == 3
        tail = _train_llmc(resumed, resumed_opt, batches, 3, start=3)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert head + tail == losses
    assert torch.equal(resumed.params, first.params)


def test_step_seed_is_a_deterministic_64_bit_mix():
    seeds = {step_seed(13371337, step) for step in range(1, 1001)}
    assert len(seeds) == 1000 and all(0 <= s < 2**64 for s in seeds)
    assert step_seed(1, 5) == step_seed(1, 5) != step_seed(2, 5)


@pytest.mark.parametrize("device", DEVICES)
def test_grad_norm_matches_torch(device):
    config = tiny_config()
    model = GPT(config, device=device, seed=50)
    idx, targets = random_batch(config, 2, 16, seed=51)
    model.forward(idx, targets)
    model.backward()
    expected = torch.linalg.vector_norm(model.grads.float()).item()
    assert grad_norm(model) == pytest.approx(expected, rel=1e-5)
    assert grad_norm(model) == grad_norm(model)


@requires_cuda
@pytest.mark.cuda
def test_cuda_master_weights_round_to_bf16_params():
    config = GPTConfig(n_layer=2, n_head=2, n_embd=128, vocab_size=1001, padded_vocab_size=1024, max_seq_len=64)
    model = GPT(config, device="cuda", seed=60)
    opt = AdamW(model, lr=LR, weight_decay=WD)
    assert opt.master is not None and opt.master.dtype == torch.float32
    _train_llmc(model, opt, _batches(config, 2, 32), 3)
    master, params = opt.master, model.params.float()
    # stochastic rounding picks one of the two bf16 neighbours: at most one bf16 spacing (2^-7 relative) away
    assert ((params - master).abs() <= master.abs() * 2**-7 + 1e-30).all()
    assert not torch.equal(params, master), "master weights should carry more precision than the bf16 params"
    plain = AdamW(GPT(config, device="cuda", seed=60), master_weights=False)
    assert plain.master is None


def test_cpu_has_no_master_copy_and_state_errors():
    model = GPT(tiny_config(), device="cpu")
    opt = AdamW(model)
    assert opt.master is None
    state = opt.state_dict()
    with pytest.raises(TypeError, match="llmc.GPT"):
        AdamW(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="lr"):
        AdamW(model, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW(model, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        opt.step(float("nan"))
    with pytest.raises(ValueError, match="lacks"):
        opt.load_state_dict({"m": state["m"]})
    with pytest.raises(ValueError, match="does not hold"):
        opt.load_state_dict({**state, "v": state["v"][1:]})
    other = AdamW(GPT(tiny_config(n_layer=1), device="cpu"))
    with pytest.raises(ValueError, match="does not hold"):
        other.load_state_dict(state)
    assert math.isfinite(grad_norm(model))
