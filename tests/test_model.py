"""llmc.GPT against transformers' GPT-2 (same weights through llmc.hf): loss, logits and every parameter
gradient; the flat layout, init, recompute, generation, accounting and input errors.

Tolerances: the CPU model is fp32 end to end and lands within ~1e-6 of max|ref| of HF's fp32 GPT-2 for logits
and all gradients (measured), so the conftest fp32 row applies unchanged. On CUDA every activation is stored in
bf16 between ops (~20 roundings per layer, each up to 2^-9 relative); simulating that storage on the CPU gave
max errors of ~1.2% of max|ref| for two layers, just over the single-op bf16 row, so the GPU comparisons pass
scale=BF16_MODEL_SCALE (4x the row: about 3x margin over the simulation, still far below the O(1) error of a
wrong op). The loss, an average over many positions, is held to 0.5% relative on CUDA.
"""
import math
import re

import pytest
import torch

from conftest import DEVICES, assert_close, requires_cuda
from llmc.model import DECAYED_PARAMS, GPT, GPTConfig, PARAM_NAMES, PRESETS, split_params
from model_helpers import hf_loss_and_grads, hf_twin, random_batch, randomize_params, tiny_config

BF16_MODEL_SCALE = 4.0
BF16_LOSS_RTOL = 5e-3


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------
def test_presets_match_llm_c():
    assert {k: PRESETS[k] for k in ("d6", "d12", "d24", "d36", "d48")} == {
        "d6": (6, 6, 384), "d12": (12, 12, 768), "d24": (24, 16, 1024), "d36": (36, 20, 1280), "d48": (48, 25, 1600)}
    d12 = GPTConfig.from_preset("d12")
    assert (d12.vocab_size, d12.padded_vocab_size, d12.max_seq_len) == (50257, 50304, 1024)
    # llm.c's "num_parameters": Hugging Face's counts (124,439,808 and 1,557,611,200) plus 47 padded wte rows
    assert d12.num_params == 124_439_808 + 47 * 768 == 124_475_904
    assert GPTConfig.from_preset("gpt2:d48").num_params == 1_557_611_200 + 47 * 1600
    assert GPTConfig.from_preset("d12", max_seq_len=256).max_seq_len == 256
    for name in PRESETS:
        GPTConfig.from_preset(name)  # every preset is a valid config


@pytest.mark.parametrize("fields,error,match", [
    (dict(n_head=5), ValueError, "divisible"),
    (dict(n_embd=60, n_head=4), ValueError, "multiple of 8"),
    (dict(n_embd=72, n_head=6), ValueError, "head size"),
    (dict(n_embd=1024, n_head=2), ValueError, "head size"),
    (dict(padded_vocab_size=96), ValueError, "smaller than vocab_size"),
    (dict(padded_vocab_size=100), ValueError, "multiple of 8"),
    (dict(n_layer=0), ValueError, "at least 1"),
    (dict(max_seq_len=-4), ValueError, "at least 1"),
    (dict(n_layer=2.0), TypeError, "int"),
    (dict(n_head=True), TypeError, "int"),
])
def test_config_rejects_bad_shapes(fields, error, match):
    with pytest.raises(error, match=match):
        tiny_config(**fields)


def test_config_rejects_unknown_preset_and_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("d13")
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2}, device="cpu")
    with pytest.raises(ValueError, match="recompute"):
        GPT(tiny_config(), device="cpu", recompute=3)
    with pytest.raises(ValueError, match="device"):
        GPT(tiny_config(), device="mps")
    with pytest.raises(ValueError, match="device"):
        GPT(tiny_config(), device="gpu")
    with pytest.raises(TypeError, match="seed"):
        GPT(tiny_config(), device="cpu", seed="1")


# ---------------------------------------------------------------------------------------------------------
# parameters: layout and init
# ---------------------------------------------------------------------------------------------------------
def test_flat_parameter_layout_is_llm_c_order():
    config = tiny_config()
    model = GPT(config, device="cpu")
    L, C, Vp, T = config.n_layer, config.n_embd, config.padded_vocab_size, config.max_seq_len
    expected = [Vp * C, T * C, L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C, L * C, L * C,
                L * 4 * C * C, L * 4 * C, L * C * 4 * C, L * C, C, C]
    assert model.param_sizes == expected
    assert list(model.param_tensors) == list(PARAM_NAMES)
    assert model.num_params == sum(expected) == model.params.numel()
    assert model.param_decay == [n in ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw") for n in PARAM_NAMES]
    offset = 0
    for name, view in model.param_tensors.items():
        assert view.data_ptr() == model.params.data_ptr() + offset * model.params.element_size(), name
        offset += view.numel()
    assert set(DECAYED_PARAMS) == {n for n, d in zip(PARAM_NAMES, model.param_decay) if d}


def test_init_follows_gpt2_and_is_seeded():
    config = tiny_config(n_layer=3, n_embd=256, n_head=4, vocab_size=1000, padded_vocab_size=1024, max_seq_len=128)
    model = GPT(config, device="cpu", seed=7)
    p = model.param_tensors
    for name in ("ln1w", "ln2w", "lnfw"):
        assert torch.equal(p[name], torch.ones_like(p[name])), name
    for name in ("ln1b", "ln2b", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
        assert not p[name].any(), name
    assert not p["wte"][config.vocab_size:].any(), "padded vocabulary rows must start at zero"
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, std in (("wte", 0.02), ("wpe", 0.02), ("qkvw", 0.02), ("fcw", 0.02), ("attprojw", residual_std),
                      ("fcprojw", residual_std)):
        values = p[name][:config.vocab_size] if name == "wte" else p[name]
        assert abs(values.std().item() / std - 1) < 0.05, name
        assert abs(values.mean().item()) < 0.1 * std, name
    assert torch.equal(GPT(config, device="cpu", seed=7).params, model.params)
    assert not torch.equal(GPT(config, device="cpu", seed=8).params, model.params)


def test_load_params_and_split_params():
    model = GPT(tiny_config(), device="cpu")
    flat = torch.randn(model.num_params)
    model.load_params_(flat)
    assert torch.equal(model.params, flat)
    with pytest.raises(ValueError, match="parameters"):
        model.load_params_(torch.randn(model.num_params + 1))
    with pytest.raises(TypeError, match="floating point"):
        model.load_params_(torch.ones(model.num_params, dtype=torch.int32))
    with pytest.raises(ValueError, match="elements"):
        split_params(model.config, flat[1:])


# ---------------------------------------------------------------------------------------------------------
# forward and backward against transformers' GPT-2
# ---------------------------------------------------------------------------------------------------------
def _compare_with_hf(model, tmp_path, B, T, dtype, scale, loss_rtol, grad_scale=1.0):
    config = model.config
    randomize_params(model, seed=1)
    hf = hf_twin(model, tmp_path)
    idx, targets = random_batch(config, B, T, seed=2, ignore_every=7)
    loss, logits = model.forward(idx.to(model.device), targets.to(model.device), grad_scale=grad_scale,
                                 return_logits=True)
    model.zero_grad()
    model.backward()
    ref_loss, ref_logits, ref_grads = hf_loss_and_grads(hf, config, idx, targets)
    assert abs(loss - ref_loss) <= loss_rtol * abs(ref_loss), (loss, ref_loss)
    assert logits.shape == (B, T, config.padded_vocab_size)
    assert_close(logits[..., :config.vocab_size], ref_logits, dtype, "logits", scale=scale)
    assert not logits[..., config.vocab_size:].any(), "padded vocabulary columns must have zero logits"
    grads = model.grad_tensors
    for name in PARAM_NAMES:
        assert_close(grads[name], grad_scale * ref_grads[name], dtype, f"d{name}", scale=scale)


@pytest.mark.parametrize("recompute", [0, 1, 2])
def test_matches_hf_gpt2_cpu(tmp_path, recompute):
    model = GPT(tiny_config(), device="cpu", recompute=recompute)
    _compare_with_hf(model, tmp_path, B=2, T=16, dtype=torch.float32, scale=1.0, loss_rtol=1e-5, grad_scale=0.5)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("recompute", [0, 1, 2])
@pytest.mark.parametrize("width", ["small", "d12"])
def test_matches_hf_gpt2_cuda(tmp_path, width, recompute):
    if width == "small":  # head size 64 (cuDNN), odd vocabulary
        config = GPTConfig(n_layer=2, n_head=4, n_embd=256, vocab_size=1001, padded_vocab_size=1024, max_seq_len=128)
    else:  # GPT-2 124M's width, heads and vocabulary, two layers
        config = GPTConfig.from_preset("d12", n_layer=2)
    model = GPT(config, device="cuda", recompute=recompute)
    _compare_with_hf(model, tmp_path, B=4, T=64, dtype=torch.bfloat16, scale=BF16_MODEL_SCALE,
                     loss_rtol=BF16_LOSS_RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gelu_fusion,recompute", [(0, 0), (0, 1), (1, 1)])
def test_gelu_fusion_choices_match_hf_gpt2(tmp_path, device, gelu_fusion, recompute):
    """GELU as its own kernel (0) or fused into the forward matmul only (1); 2, both fused, is the default that
    test_matches_hf_gpt2_* covers."""
    if device == "cpu":
        model = GPT(tiny_config(), device="cpu", recompute=recompute, gelu_fusion=gelu_fusion)
        _compare_with_hf(model, tmp_path, B=2, T=16, dtype=torch.float32, scale=1.0, loss_rtol=1e-5)
    else:
        config = GPTConfig(n_layer=2, n_head=4, n_embd=256, vocab_size=1001, padded_vocab_size=1024, max_seq_len=128)
        model = GPT(config, device="cuda", recompute=recompute, gelu_fusion=gelu_fusion)
        _compare_with_hf(model, tmp_path, B=4, T=64, dtype=torch.bfloat16, scale=BF16_MODEL_SCALE,
                         loss_rtol=BF16_LOSS_RTOL)


@pytest.mark.parametrize("value", [-1, 3, True, "2"])
def test_gelu_fusion_is_checked(value):
    with pytest.raises(ValueError, match="gelu_fusion"):
        GPT(tiny_config(), device="cpu", gelu_fusion=value)


def test_recompute_gives_the_same_results():
    config = tiny_config()
    idx, targets = random_batch(config, 3, 24, seed=4, ignore_every=5)
    results = []
    for recompute in (0, 1, 2):
        model = GPT(config, device="cpu", recompute=recompute, seed=3)
        loss = model.forward(idx, targets)
        model.backward()
        results.append((loss, model.grads.clone()))
    for loss, grads in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6)
        assert_close(grads, results[0][1], torch.float32, "grads with recompute")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk,recompute", [(16, 0), (50, 2), (1000, 1)])  # 72 rows: 4.5 chunks, 1.3 (50 -> 56), 1
def test_loss_chunks_give_the_loss_and_gradients_of_the_whole_batch(device, chunk, recompute):
    config = tiny_config()
    idx, targets = random_batch(config, 3, 24, seed=4, ignore_every=5)
    runs = []
    for loss_chunk in (0, chunk):
        model = GPT(config, device=device, recompute=recompute, seed=3, loss_chunk=loss_chunk)
        for _ in range(2):  # two micro-steps: gradients accumulate the same way
            loss = model.forward(idx, targets, grad_scale=0.5)
            model.backward()
        runs.append((loss, model.grads.clone(), model))
    (loss, grads, whole), (chunked_loss, chunked_grads, chunked) = runs
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # the same per-position math; the chunks' wte gradients are summed in another order (the bf16 table on CUDA:
    # dwte is accumulated in bf16 once per chunk)
    assert chunked_loss == pytest.approx(loss, rel=1e-6 if device == "cpu" else 1e-3)
    assert_close(chunked_grads, grads, dtype, f"gradients with loss_chunk={chunk}")
    # the logits buffer shrinks to the chunk (rounded up to 8 rows for aligned targets and losses);
    # return_logits still gives every position's logits
    assert chunked._acts.views["logits"][0].shape[0] == min(-(-chunk // 8) * 8, 72)
    _, logits = chunked.forward(idx, return_logits=True)
    _, expected = whole.forward(idx, return_logits=True)
    assert_close(logits, expected, dtype, "logits with loss_chunk")
    # under no_grad the loss alone (nothing added to the gradients), and backward() is refused
    before = chunked.grads.clone()
    with torch.no_grad():
        assert chunked.forward(idx, targets) == pytest.approx(chunked_loss, rel=1e-6 if device == "cpu" else 1e-3)
    assert torch.equal(chunked.grads, before)
    with pytest.raises(RuntimeError, match="forward"):
        chunked.backward()


def test_loss_chunk_is_checked_and_shrinks_the_memory_plan():
    config = tiny_config()
    with pytest.raises(ValueError, match="loss_chunk"):
        GPT(config, device="cpu", loss_chunk=-1)
    for bad in (1.5, None):
        with pytest.raises(TypeError, match="loss_chunk"):
            GPT(config, device="cpu", loss_chunk=bad)
    assert GPT(config, device="cpu").loss_chunk == 0  # the whole batch at once
    mib = lambda plan: float(re.search(r"activations: +([0-9.]+) MiB", plan).group(1))
    whole = GPT(config, device="cpu").memory_plan(16, 32)
    chunked = GPT(config, device="cpu", loss_chunk=64).memory_plan(16, 32)
    logits_saved = (16 * 32 - 64) * config.padded_vocab_size * 4 / 2**20
    assert mib(whole) - mib(chunked) == pytest.approx(logits_saved, abs=0.2)


def test_gradients_accumulate_and_zero_grad_clears():
    config = tiny_config()
    model = GPT(config, device="cpu", seed=5)
    idx, targets = random_batch(config, 2, 16, seed=6)
    first = model.forward(idx, targets)
    model.backward()
    once = model.grads.clone()
    assert once.any()
    assert model.forward(idx, targets) == first
    model.backward()
    # not bit-exact: wte gets two contributions per backward (LM head, embedding), summed in a different order
    assert_close(model.grads, 2 * once, torch.float32, "grads after two backward passes")
    model.zero_grad()
    assert not model.grads.any()
    assert not model.grad_tensors["wte"][config.vocab_size:].any(), "padded wte rows must get no gradient"


def test_logits_and_loss_semantics():
    config = tiny_config()
    model = GPT(config, device="cpu", seed=9)
    idx, targets = random_batch(config, 2, 10, seed=10, ignore_every=3)
    loss, plain = model.forward(idx, return_logits=True)
    assert loss is None
    plain = plain.clone()
    loss, logits = model.forward(idx.long(), targets.long(), return_logits=True)
    assert torch.equal(logits, plain), "return_logits must give the logits, not the classifier's gradient"
    valid = targets.flatten() != -1
    expected = torch.nn.functional.cross_entropy(plain.flatten(0, 1)[valid, :config.vocab_size],
                                                 targets.flatten()[valid].long())
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert model.forward(idx, targets) == loss


@pytest.mark.parametrize("device", DEVICES)
def test_forward_without_sync_returns_the_same_loss_as_a_tensor(device):
    config = tiny_config()
    idx, targets = random_batch(config, 2, 10, seed=13, ignore_every=4)
    losses, grads = [], []
    for sync in (True, False):
        model = GPT(config, device=device, seed=14)
        losses.append(model.forward(idx.long(), targets, sync=sync))
        model.backward()
        grads.append(model.grads.clone())
    assert isinstance(losses[0], float)
    assert isinstance(losses[1], torch.Tensor) and losses[1].dim() == 0 and losses[1].dtype == torch.float64
    assert losses[1].device.type == torch.device(device).type
    assert losses[1].item() == losses[0]
    assert torch.equal(grads[0], grads[1])


def test_smaller_batch_after_allocate_matches_a_fresh_model():
    config = tiny_config()
    model = GPT(config, device="cpu", seed=11)
    model.allocate(4, 32)
    idx, targets = random_batch(config, 2, 8, seed=12)
    loss = model.forward(idx, targets)
    model.backward()
    fresh = GPT(config, device="cpu", seed=11)
    assert fresh.forward(idx, targets) == loss
    fresh.backward()
    assert torch.equal(fresh.grads, model.grads)


# ---------------------------------------------------------------------------------------------------------
# generation, accounting
# ---------------------------------------------------------------------------------------------------------
def test_generate_is_seeded_and_greedy_follows_the_logits():
    config = tiny_config()
    model = GPT(config, device="cpu", seed=13)
    randomize_params(model, seed=14)
    prompt = [5, 17, 3]
    a = model.generate(prompt, 6, temperature=0.8, top_k=20, seed=1)
    assert a[:3] == prompt and len(a) == 9 and all(0 <= t < config.vocab_size for t in a)
    assert model.generate(prompt, 6, temperature=0.8, top_k=20, seed=1) == a
    greedy = model.generate(prompt, 4, temperature=0)
    assert model.generate(prompt, 4, top_k=1, seed=2) == greedy
    ids = list(prompt)
    for _ in range(4):
        _, logits = model.forward(torch.tensor([ids], dtype=torch.int32), return_logits=True)
        ids.append(int(logits[0, -1, :config.vocab_size].argmax()))
    assert greedy == ids
    long_prompt = [int(t) for t in torch.randint(0, config.vocab_size, (config.max_seq_len + 5,))]
    out = model.generate(long_prompt, 3, seed=3)
    assert out[:len(long_prompt)] == long_prompt and len(out) == len(long_prompt) + 3


def test_kv_cache_gives_the_full_forwards_logits():
    from llmc.model import _KVDecoder

    config = tiny_config()
    model = GPT(config, device="cpu", seed=13)
    randomize_params(model, seed=15)
    ids = [int(t) for t in torch.randint(0, config.vocab_size, (20,), generator=torch.Generator().manual_seed(0))]

    def full(context):
        _, logits = model.forward(torch.tensor([context], dtype=torch.int32), return_logits=True)
        return logits[0, -1, :config.vocab_size].float()

    decoder = _KVDecoder(model)
    torch.testing.assert_close(decoder.prefill(ids[:5]), full(ids[:5]), atol=2e-5, rtol=1e-5)
    for n in range(6, 21):
        torch.testing.assert_close(decoder.step(ids[n - 1]), full(ids[:n]), atol=2e-5, rtol=1e-5)


def test_stream_past_max_seq_len_keeps_the_newest_half():
    """Greedy streaming equals greedy decoding with the full forward over the documented window: the context
    grows to max_seq_len tokens, then restarts from its newest max_seq_len // 2 + 1."""
    config = tiny_config()
    model = GPT(config, device="cpu", seed=13)
    randomize_params(model, seed=16)
    maxT = config.max_seq_len
    rng = torch.Generator().manual_seed(1)
    prompt = [int(t) for t in torch.randint(0, config.vocab_size, (maxT - 3,), generator=rng)]
    streamed = list(model.stream(prompt, maxT, temperature=0))
    context, expected = list(prompt), []
    for _ in range(maxT):
        _, logits = model.forward(torch.tensor([context], dtype=torch.int32), return_logits=True)
        expected.append(int(logits[0, -1, :config.vocab_size].argmax()))
        context.append(expected[-1])
        if len(context) > maxT:
            context = context[-(maxT // 2 + 1):]
    assert streamed == expected


def test_generate_rejects_bad_input():
    model = GPT(tiny_config(), device="cpu")
    with pytest.raises(ValueError, match="empty"):
        model.generate([], 3)
    with pytest.raises(ValueError, match="vocab_size"):
        model.generate([1, 97], 3)
    with pytest.raises(TypeError, match="sequence of token ids"):
        model.generate("hello", 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate([1], -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate([1], 2, top_k=0)


def _mib(plan: str, label: str) -> float:
    return float(re.search(rf"^{label}:\s+([\d.]+) MiB", plan, re.M).group(1))


def test_memory_plan_and_flops():
    config = tiny_config(n_embd=128, n_head=4, n_layer=3)
    plans = {r: GPT(config, device="cpu", recompute=r).memory_plan(8, 32) for r in (0, 1, 2)}
    params_mib = GPT(config, device="cpu").num_params * 4 / 2**20
    assert _mib(plans[0], "parameters") == pytest.approx(params_mib, abs=0.05)
    assert _mib(plans[0], "optimizer state") == pytest.approx(2 * params_mib, abs=0.05)  # m, v; no master on CPU
    assert _mib(plans[0], "activations") > _mib(plans[1], "activations") > _mib(plans[2], "activations")
    assert "per sequence" in plans[0]
    model = GPT(config, device="cpu", recompute=1)
    assert "first forward" in model.memory_plan()
    model.allocate(8, 32)
    assert model.memory_plan() == plans[1]
    assert GPT(tiny_config(), device="cpu").flops_per_token(16) == \
        6 * tiny_config().num_params + 6 * 2 * 64 * 16
    d12 = GPTConfig.from_preset("d12")
    assert 6 * d12.num_params + 6 * 12 * 768 * 1024 == 803_478_528


def test_memory_plan_counts_only_the_zero1_shard_of_the_optimizer_state():
    from llmc.sharding import shard_range

    model = GPT(tiny_config(n_embd=128, n_head=4, n_layer=3), device="cpu")
    n = model.num_params
    full = model.memory_plan(8, 32, master_weights=True)
    shards = [shard_range(n, rank, 4) for rank in range(4)]
    plans = [model.memory_plan(8, 32, master_weights=True, shard=s) for s in shards]
    for (start, end), plan in zip(shards, plans):
        assert _mib(plan, "optimizer state") == pytest.approx((end - start) * 12 / 2**20, abs=0.05)
        assert f"this rank's ZeRO-1 shard: {end - start:,} of {n:,} parameters" in plan
        for label in ("parameters", "gradients", "activations"):
            assert _mib(plan, label) == _mib(full, label)
        assert _mib(plan, "total") == pytest.approx(
            _mib(full, "total") - _mib(full, "optimizer state") + _mib(plan, "optimizer state"), abs=0.15)
    assert "ZeRO-1" not in full and model.memory_plan(8, 32, shard=(0, n)) != full  # an explicit shard is named
    for bad in ((1, n), (0, n + 1), (8, 8), (0,), "all"):
        with pytest.raises(ValueError, match="shard"):
            model.memory_plan(8, 32, shard=bad)


# ---------------------------------------------------------------------------------------------------------
# input errors
# ---------------------------------------------------------------------------------------------------------
def test_forward_backward_reject_bad_input():
    config = tiny_config()
    model = GPT(config, device="cpu")
    idx, targets = random_batch(config, 2, 8, seed=0)
    with pytest.raises(RuntimeError, match="forward"):
        model.backward()
    with pytest.raises(TypeError, match="int32"):
        model.forward(idx.float())
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.forward([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.forward(idx[0])
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward(torch.zeros(1, config.max_seq_len + 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="outside"):
        model.forward(torch.full((1, 4), config.vocab_size, dtype=torch.int32))
    with pytest.raises(ValueError, match="outside"):
        model.forward(idx, torch.full_like(targets, -2))
    with pytest.raises(ValueError, match="shape"):
        model.forward(idx, targets[:, :4])
    with pytest.raises(ValueError, match="every target is -1"):
        model.forward(idx, torch.full_like(targets, -1))
    with pytest.raises(TypeError, match="grad_scale"):
        model.forward(idx, targets, grad_scale=float("nan"))
    model.forward(idx, targets)
    model.forward(idx)
    with pytest.raises(RuntimeError, match="forward"):
        model.backward()
    model.forward(idx, targets)
    model.backward()
    with pytest.raises(RuntimeError, match="once per forward"):
        model.backward()


@requires_cuda
@pytest.mark.cuda
def test_cuda_model_is_bf16_and_deterministic():
    config = GPTConfig(n_layer=2, n_head=4, n_embd=256, vocab_size=1001, padded_vocab_size=1024, max_seq_len=128)
    idx, targets = random_batch(config, 4, 64, seed=21, ignore_every=9)
    runs = []
    deterministic = torch.are_deterministic_algorithms_enabled()
    # cuDNN's attention backward sums dQ with atomics unless torch's deterministic mode is on (see ops)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for _ in range(2):
            model = GPT(config, device="cuda", seed=22)
            assert model.params.dtype == torch.bfloat16 and model.params.is_cuda
            loss = model.forward(idx, targets)
            model.backward()
            runs.append((loss, model.grads.clone()))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
