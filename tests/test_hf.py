"""llmc.hf: export to a transformers GPT-2 directory and import back; the GPT-2 tokenizer files; `llmc export`.

Logits are compared in fp32 with the conftest row (both sides are fp32 GPT-2s with the same weights); weights
must survive the round trip bit for bit.
"""
import json

import pytest
import torch

from conftest import assert_close
from llmc.hf import export_hf, import_hf, main
from llmc.model import GPT, GPTConfig
from model_helpers import hf_twin, random_batch, randomize_params, tiny_config

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def _llmc_logits(model, idx):
    _, logits = model.forward(idx, return_logits=True)
    return logits[..., :model.config.vocab_size].clone()


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
    config = tiny_config()
    model = GPT(config, device="cpu")
    randomize_params(model, seed=70)
    hf = hf_twin(model, tmp_path)
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    assert (hf.config.n_layer, hf.config.n_head, hf.config.n_embd, hf.config.vocab_size, hf.config.n_positions) == \
        (config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.max_seq_len)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "the LM head must stay tied"
    idx, _ = random_batch(config, 3, 20, seed=71)
    with torch.no_grad():
        expected = hf(idx.long()).logits
    assert_close(_llmc_logits(model, idx), expected, torch.float32, "logits of the exported model")
    assert not (tmp_path / "vocab.json").exists(), "tokenizer files belong to GPT-2's vocabulary only"


def test_round_trip_is_exact_and_import_accepts_a_model_or_a_directory(tmp_path):
    config = tiny_config()
    model = GPT(config, device="cpu")
    flat = randomize_params(model, seed=72)
    export_hf(model, tmp_path)
    from_dir = import_hf(tmp_path, device="cpu")
    assert from_dir.config == config
    assert torch.equal(from_dir.params, flat)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path))
    assert torch.equal(import_hf(hf, device="cpu").params, flat)


def test_import_of_a_transformers_initialised_model(tmp_path):
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=24,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(73)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    for p in hf.parameters():  # transformers initialises biases to 0 and layernorms to 1: randomise them all
        p.data.add_(torch.randn_like(p) * 0.02)
    model = import_hf(hf, device="cpu")
    assert model.config == GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=300, padded_vocab_size=384,
                                     max_seq_len=24)
    assert not model.param_tensors["wte"][300:].any()
    idx = torch.randint(0, 300, (2, 24), dtype=torch.int32)
    with torch.no_grad():
        expected = hf(idx.long()).logits
    assert_close(_llmc_logits(model, idx), expected, torch.float32, "logits of the imported model")


def test_import_rejects_models_llmc_cannot_run():
    for change, match in ((dict(activation_function="relu"), "tanh"), (dict(n_inner=48), "n_inner"),
                          (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
                          (dict(scale_attn_by_inverse_layer_idx=True), "scaling")):
        hf_config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=8, **change)
        with pytest.raises(ValueError, match=match):
            import_hf(transformers.GPT2LMHeadModel(hf_config), device="cpu")
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        import_hf(42, device="cpu")
    with pytest.raises(TypeError, match="llmc.GPT"):
        export_hf("model", "out")


def test_gpt2_vocabulary_exports_a_working_tokenizer(tmp_path):
    from llmc.tokenizer import encode

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, max_seq_len=64), device="cpu")
    export_hf(model, tmp_path, dtype="bfloat16")
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) == 1 + 50000
    assert len(json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))) == 50257
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Hello world! Ünïcödé — tabs\tand  spaces,\n12345 numbers, and emoji 🤖 in one line.\n\n"
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode(text) == encode(text)
    assert tokenizer.decode(encode(text)) == text
    assert tokenizer.eos_token_id == 50256
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path))
    assert hf.transformer.wte.weight.shape == (50257, 16)


def test_export_command(tmp_path, capsys):
    from llmc.checkpoint import write_model_file

    model = GPT(tiny_config(), device="cpu")
    randomize_params(model, seed=74)
    write_model_file(tmp_path / "model.bin", model, dtype="fp32")
    assert main(["--hf", str(tmp_path / "hf"), str(tmp_path / "model.bin")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert torch.equal(import_hf(tmp_path / "hf", device="cpu").params, model.params)
    (tmp_path / "bad.bin").write_bytes(b"not a model")
    assert main(["--hf", str(tmp_path / "hf2"), str(tmp_path / "bad.bin")]) == 1
    assert "llmc export: error" in capsys.readouterr().err


def test_export_takes_a_run_directory_and_writes_files_the_umask_allows(tmp_path, capsys):
    import os

    from llmc.checkpoint import CheckpointManager

    model = GPT(tiny_config(), device="cpu")
    manager = CheckpointManager(tmp_path / "run")
    for step in (2, 4):
        randomize_params(model, seed=step)
        manager.save(step, model, {"step": step}, dtype="fp32")
    old = os.umask(0o022)
    try:
        assert main(["--hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    assert torch.equal(import_hf(tmp_path / "hf", device="cpu").params, model.params)  # step 4's weights
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644
    (tmp_path / "empty").mkdir()
    assert main(["--hf", str(tmp_path / "hf3"), str(tmp_path / "empty")]) == 1
    assert "holds no complete checkpoint" in capsys.readouterr().err
