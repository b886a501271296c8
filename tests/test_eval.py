"""llmc.eval: HellaSwag files (official jsonl, llm.c .bin), completion scoring with a stub model whose losses the
test controls (hand-checked acc / acc_norm, batching and rank splits that must not change a result), a real
tiny llmc.GPT, validation loss, and the eval/sample commands."""
import json
import math
import re
import struct
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llmc.eval as ev
import llmc.prepare as prep
from llmc.tokenizer import decode, encode

FIXTURES = Path(__file__).parent / "fixtures"
HELLASWAG = FIXTURES / "hellaswag_mini.jsonl"
V, VP = 50257, 50304
FAVOURED_LOGIT = 20.0


class StubModel:
    """Logits under which predicting token x costs ~0 when x is favoured and log(V) otherwise, whatever the
    context; the padded columns V..Vp-1 carry a huge logit that scoring must ignore."""

    def __init__(self, favoured):
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(vocab_size=V, padded_vocab_size=VP)
        self.bonus = torch.zeros(VP)
        self.bonus[sorted(set(favoured))] = FAVOURED_LOGIT
        self.shapes = []

    def forward(self, idx, targets=None, *, return_logits=False):
        assert return_logits and targets is None and idx.dtype == torch.int32
        B, T = idx.shape
        self.shapes.append((B, T))
        logits = torch.zeros(B, T, VP)
        logits[:, :, V:] = 100.0
        nxt = idx[:, 1:].long().unsqueeze(-1)
        logits[:, :-1].scatter_(2, nxt, self.bonus[nxt])
        return None, logits


BAD = math.log(V)                                      # loss of an ordinary token under the stub
GOOD = math.log(V - 1 + math.exp(FAVOURED_LOGIT)) - FAVOURED_LOGIT  # ~1e-4


def _fixture_rows():
    return [json.loads(line) for line in HELLASWAG.read_text(encoding="utf-8").splitlines()]


def test_read_jsonl_fixture():
    examples = ev.read_hellaswag_jsonl(HELLASWAG)
    rows = _fixture_rows()
    assert [ex.label for ex in examples] == [r["label"] for r in rows] == [2, 0, 1, 3, 2, 0]
    for ex, row in zip(examples, rows):
        assert list(ex.ctx_tokens) == encode(row["ctx"])
        assert [list(e) for e in ex.ending_tokens] == [encode(" " + e) for e in row["endings"]]
    assert ev.read_hellaswag_jsonl(HELLASWAG, limit=2) == examples[:2]
    assert ev.load_hellaswag(HELLASWAG) == examples


def _independent_bin(examples):
    """llm.c's write_evalfile layout, written out separately with struct."""
    body = b""
    longest = 0
    for i, ex in enumerate(examples):
        fields = [i, ex.label, len(ex.ending_tokens), len(ex.ctx_tokens), *ex.ctx_tokens]
        for e in ex.ending_tokens:
            fields += [len(e), *e]
        nbytes = 2 * (len(fields) + 2)
        longest = max(longest, nbytes)
        body += struct.pack(f"<{len(fields) + 2}H", 65535, nbytes, *fields)
    header = struct.pack("<256i", 20240522, 1, len(examples), longest, *([0] * 252))
    return header + body


def test_bin_matches_llmc_layout(tmp_path):
    examples = ev.read_hellaswag_jsonl(HELLASWAG)
    expected = _independent_bin(examples)
    independent = tmp_path / "independent.bin"
    independent.write_bytes(expected)
    assert ev.read_hellaswag_bin(independent) == examples
    assert ev.load_hellaswag(independent) == examples
    assert ev.read_hellaswag_bin(independent, limit=3) == examples[:3]
    ours = tmp_path / "ours.bin"
    ev.write_hellaswag_bin(ours, examples)
    assert ours.read_bytes() == expected


def test_bin_errors(tmp_path):
    good = _independent_bin(ev.read_hellaswag_jsonl(HELLASWAG))
    p = tmp_path / "bad.bin"
    cases = {
        "magic": struct.pack("<i", 20240520) + good[4:],
        "version": good[:4] + struct.pack("<i", 2) + good[8:],
        "truncated": good[:-10],
        "after the 6 examples": good + struct.pack("<2H", 65535, 4),
        "start marker": good[:1024] + b"\x00\x00" + good[1026:],
        "do not add up": good[:1026] + struct.pack("<H", struct.unpack("<H", good[1026:1028])[0] + 2) + good[1028:],
        "header of 1024": good[:1001],
    }
    for message, data in cases.items():
        p.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            ev.read_hellaswag_bin(p)
    with pytest.raises(ValueError, match="label"):
        ev._example((1,), [(2,), (3,)], 2, "x")
    with pytest.raises(ValueError, match="at least one token"):
        ev._example((1,), [(2,), ()], 0, "x")
    with pytest.raises(ValueError, match="1 to 65535"):
        ev.write_hellaswag_bin(p, [])
    with pytest.raises(ValueError, match="fewer than 65536"):
        ev.write_hellaswag_bin(p, [ev.HellaSwagExample((1,) * 40000, ((2,),), 0)])
    (tmp_path / "test.jsonl").write_text('{"ctx": "a", "endings": ["b", "c"]}\n')
    with pytest.raises(ValueError, match="label.*test split"):
        ev.read_hellaswag_jsonl(tmp_path / "test.jsonl")
    with pytest.raises(ValueError, match="does not exist.*hellaswag_val.jsonl"):
        ev.load_hellaswag(tmp_path / "missing.jsonl")


def test_hand_checked_acc_and_acc_norm():
    # ctx (1, 2); tokens 10 and 11 favoured. Per ending, (sum, mean) of the losses:
    #   0: (10, 11, 12, 13) -> (2BAD + 2GOOD, (2BAD + 2GOOD)/4)     1: (20,)     -> (BAD, BAD)
    #   2: (30, 31, 32)     -> (3BAD, BAD)                           3: (40, 10) -> (BAD + GOOD, (BAD + GOOD)/2)
    # so acc (lowest sum) picks ending 1 and acc_norm (lowest mean) picks ending 0; labels 0, 1, 3 give 1 and 1.
    endings = ((10, 11, 12, 13), (20,), (30, 31, 32), (40, 10))
    examples = [ev.HellaSwagExample((1, 2), endings, label) for label in (0, 1, 3)]
    model = StubModel({10, 11})
    res = ev.hellaswag_eval(model, examples, B=8, T=8)
    assert (res.correct, res.correct_norm, res.total) == (1, 1, 3)
    assert res.acc == pytest.approx(1 / 3) and res.acc_norm == pytest.approx(1 / 3)
    batch = ev._render(examples[:2], 8, 8)
    _, logits = model.forward(batch.tokens, return_logits=True)
    sums, counts = ev.completion_losses(logits, batch.tokens, batch.mask, V)
    expected = torch.tensor([2 * BAD + 2 * GOOD, BAD, 3 * BAD, BAD + GOOD] * 2)
    torch.testing.assert_close(sums, expected.float(), rtol=1e-5, atol=1e-5)
    assert counts.tolist() == [4, 1, 3, 2] * 2


def test_fixture_with_oracle_and_biased_stubs():
    examples = ev.read_hellaswag_jsonl(HELLASWAG)
    oracle = StubModel(t for ex in examples for t in ex.ending_tokens[ex.label])
    res = ev.hellaswag_eval(oracle, examples, B=8, T=32)
    assert (res.correct, res.correct_norm, res.total) == (6, 6, 6)
    first = StubModel(t for ex in examples for t in ex.ending_tokens[0])  # always answers 0
    res = ev.hellaswag_eval(first, examples, B=8, T=32)
    assert (res.correct, res.correct_norm) == (2, 2)  # labels 2 0 1 3 2 0


def _direct_counts(model, examples):
    """One row at a time, straight from the definition: cross-entropy of the ending tokens given all before."""
    correct = correct_norm = 0
    for ex in examples:
        sums, means = [], []
        for ending in ex.ending_tokens:
            row = torch.tensor([list(ex.ctx_tokens) + list(ending)], dtype=torch.int32)
            _, logits = model.forward(row, return_logits=True)
            n = len(ex.ctx_tokens)
            losses = F.cross_entropy(logits[0, n - 1:-1, :V].float(), row[0, n:].long(), reduction="none")
            sums.append(losses.sum().item())
            means.append(losses.mean().item())
        correct += int(np.argmin(sums)) == ex.label
        correct_norm += int(np.argmin(means)) == ex.label
    return correct, correct_norm


def test_batching_and_ranks_do_not_change_results():
    examples = ev.read_hellaswag_jsonl(HELLASWAG)
    vocab = sorted({t for ex in examples for e in ex.ending_tokens for t in e})
    rng = np.random.default_rng(7)
    for trial in range(3):
        model = StubModel(rng.choice(vocab, size=len(vocab) // 2, replace=False).tolist())
        expected = _direct_counts(model, examples)
        for B, T in [(4, 32), (5, 29), (8, 40), (12, 32), (64, 32)]:
            model.shapes.clear()
            res = ev.hellaswag_eval(model, examples, B=B, T=T)
            assert (res.correct, res.correct_norm, res.total) == (*expected, 6), (trial, B, T)
            assert set(model.shapes) == {(B, T)}  # always the fixed shape
            assert len(model.shapes) == math.ceil(6 / (B // 4))
        for world in (2, 4, 7):
            parts = [ev.hellaswag_eval(model, examples, B=8, T=32, rank=r, world_size=world) for r in range(world)]
            assert sum(p.total for p in parts) == 6
            assert (sum(p.correct for p in parts), sum(p.correct_norm for p in parts)) == expected


def test_scoring_errors():
    examples = ev.read_hellaswag_jsonl(HELLASWAG)
    model = StubModel([])
    with pytest.raises(ValueError, match="B >= 4"):
        ev.hellaswag_eval(model, examples, B=3, T=32)
    with pytest.raises(ValueError, match="T >= "):
        ev.hellaswag_eval(model, examples, B=4, T=8)
    with pytest.raises(ValueError, match="rank"):
        ev.hellaswag_eval(model, examples, B=4, T=32, rank=2, world_size=2)
    with pytest.raises(ValueError, match="T must be a positive int"):
        ev.hellaswag_eval(model, examples, B=4, T=0)
    with pytest.raises(ValueError, match="B must be a positive int"):
        ev.val_loss(model, "unused_*.bin", B=0, T=8)
    assert math.isnan(ev.hellaswag_eval(model, [], B=4, T=32).acc_norm)


def test_fetch_hellaswag(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(prep, "fetch_text", offline)
    with pytest.raises(RuntimeError, match=r"rowanz/hellaswag/master/data/hellaswag_val.jsonl.*save it as"):
        ev.fetch_hellaswag("val", tmp_path)
    fetched = []
    monkeypatch.setattr(prep, "fetch_text", lambda url: fetched.append(url) or HELLASWAG.read_text("utf-8"))
    path = ev.fetch_hellaswag("val", tmp_path)
    assert path == tmp_path / "hellaswag" / "hellaswag_val.jsonl" and len(fetched) == 1
    assert ev.load_hellaswag(path) == ev.read_hellaswag_jsonl(HELLASWAG)
    assert ev.fetch_hellaswag("val", tmp_path) == path and len(fetched) == 1  # cached
    with pytest.raises(ValueError, match="no labels"):
        ev.fetch_hellaswag("test", tmp_path)


def test_write_bin_command(tmp_path, capsys):
    out = tmp_path / "hellaswag_val.bin"
    assert ev.main(["--hellaswag", str(HELLASWAG), "--write-bin", str(out)]) == 0
    assert "wrote 6 examples" in capsys.readouterr().out
    assert out.read_bytes() == _independent_bin(ev.read_hellaswag_jsonl(HELLASWAG))
    with pytest.raises(SystemExit):
        ev.main(["--hellaswag", str(HELLASWAG)])  # scoring needs a model
    assert ev.main(["--hellaswag", str(tmp_path / "nope.jsonl"), "--write-bin", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# validation loss, and the real model (these use the data / model / checkpoint modules of the package)
# ---------------------------------------------------------------------------------------------------------
class TargetMeanModel:
    """forward(x, y) -> the mean target id, so every batch's 'loss' is known from the data."""
    device = torch.device("cpu")

    def forward(self, idx, targets=None):
        assert idx.shape == targets.shape and torch.equal(idx[:, 1:], targets[:, :-1])
        return targets.double().mean().item()


def test_val_loss(tmp_path):
    from llmc.data import DataLoader

    docs = [json.loads(line)["text"] for line in (FIXTURES / "fineweb_edu_sample.jsonl").read_text("utf-8").split("\n")
            if line]
    prep.write_shards(docs * 3, tmp_path, "v", shard_size=200, val_tokens=150, workers=1, progress=False)
    pattern = str(tmp_path / "v_train_*.bin")
    B, T = 2, 16
    loader = DataLoader(pattern, B, T, shuffle=False)
    n = loader.num_tokens // (B * T)
    expected = [loader.next_batch()[1].double().mean().item() for _ in range(n)]
    model = TargetMeanModel()
    assert ev.val_loss(model, pattern, B, T) == pytest.approx(sum(expected) / n)
    assert ev.val_loss(model, pattern, B, T, max_batches=3) == pytest.approx(sum(expected[:3]) / 3)
    assert ev.val_loss(model, loader, B, T, max_batches=3) == pytest.approx(sum(expected[:3]) / 3)  # reset first
    with pytest.raises(ValueError, match="fewer than one batch"):
        ev.val_loss(model, str(tmp_path / "v_val_*.bin"), 8, 32)


def _tiny_gpt():
    model_mod = pytest.importorskip("llmc.model")
    config = model_mod.GPTConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=64)
    return model_mod.GPT(config, device="cpu", seed=1234)


def test_real_tiny_gpt_scoring():
    model = _tiny_gpt()
    examples = ev.read_hellaswag_jsonl(HELLASWAG)
    B, T = 8, 64
    res = ev.hellaswag_eval(model, examples, B=B, T=T)
    # the model's own loss: targets -1 everywhere except one row's ending tokens gives that row's mean loss
    correct = correct_norm = 0
    for ex in examples:
        group = ev._render([ex], B, T)
        means = []
        for row in range(len(ex.ending_tokens)):
            targets = torch.full((B, T), -1, dtype=torch.int32)
            mask = group.mask[row, 1:]
            targets[row, :-1][mask] = group.tokens[row, 1:][mask]
            means.append(model.forward(group.tokens, targets))
        sums = [m * len(e) for m, e in zip(means, ex.ending_tokens)]
        correct += int(np.argmin(sums)) == ex.label
        correct_norm += int(np.argmin(means)) == ex.label
    assert (res.correct, res.correct_norm, res.total) == (correct, correct_norm, 6)
    assert ev.hellaswag_eval(model, examples, B=4, T=T) == ev.hellaswag_eval(model, examples, B=24, T=T)

    class LogitsOnly:  # any model with forward(idx, return_logits=True): the logits path of hellaswag_eval
        device, config = model.device, model.config

        def forward(self, idx, return_logits=False):
            return model.forward(idx, return_logits=return_logits)

    assert ev.hellaswag_eval(LogitsOnly(), examples, B=B, T=T) == res
    chunked = type(model)(model.config, device="cpu", loss_chunk=48)  # per-position losses, no full logits
    chunked.load_params_(model.params)
    assert ev.hellaswag_eval(chunked, examples, B=B, T=T) == res


def test_eval_and_sample_commands(tmp_path, capsys):
    checkpoint = pytest.importorskip("llmc.checkpoint")
    model = _tiny_gpt()
    path = tmp_path / "model.bin"
    checkpoint.write_model_file(path, model, dtype="fp32")
    train, val = prep.builtin_corpus(tmp_path / "cache")
    assert ev.main([str(path), "--val", val, "--hellaswag", str(HELLASWAG), "-B", "4", "-T", "64",
                    "--max-batches", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    loss = float(out.split("val_loss ")[1].split()[0])
    assert 9.0 < loss < 12.0  # an untrained model is close to ln(50257) = 10.8
    assert "hellaswag acc " in out and "(6 examples)" in out
    assert ev.sample_main([str(path), "--prompt", "Once upon a time", "--max-new-tokens", "8", "--num-samples", "2",
                           "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("Once upon a time") == 2 and "--- sample 1" in captured.out
    assert re.search(r"^\d+ tokens in [\d.]+ s \([\d.]+ tokens/s, cpu\)$", captured.err, re.M)
    assert ev.sample_main([str(tmp_path / "missing.bin"), "--device", "cpu"]) == 1


def test_sample_streams_text_as_tokens_come(monkeypatch, capsys):
    """Each token's text is on stdout before the next token is drawn; characters that span tokens come out whole."""
    text = "Grüße ✓ 日本語 done"
    tokens = encode(text)
    seen = []

    class FakeModel:
        device = torch.device("cpu")

        def stream(self, prompt, n, **kw):
            for t in tokens:
                seen.append(capsys.readouterr().out)
                yield t

    monkeypatch.setattr(ev, "load_model", lambda path, device: FakeModel())
    assert ev.sample_main(["m.bin", "--max-new-tokens", str(len(tokens))]) == 0
    out = "".join(seen) + capsys.readouterr().out
    assert out == f"--- sample 0\n{text}\n"
    assert seen[:2] == ["--- sample 0\n", decode(tokens[:1])]  # the first token's text before the second is drawn
    assert "\ufffd" not in out


def test_sample_takes_a_run_directory(tmp_path, capsys):
    checkpoint = pytest.importorskip("llmc.checkpoint")
    model = _tiny_gpt()
    manager = checkpoint.CheckpointManager(tmp_path / "run")
    manager.save(3, model, {"step": 3}, dtype="fp32")
    manager.save(7, model, {"step": 7}, dtype="fp32")
    assert ev.sample_main([str(tmp_path / "run"), "--max-new-tokens", "4", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "--- sample 0" in captured.out
    assert f"model: {tmp_path / 'run' / 'model_00000007.bin'} (the newest complete checkpoint" in captured.err
    (tmp_path / "empty").mkdir()
    assert ev.sample_main([str(tmp_path / "empty"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llmc sample: error: run directory") and "no complete checkpoint" in err


def test_llmc_eval_with_its_defaults_fits_in_a_few_gigabytes_on_the_cpu(tmp_path):
    """GPT-2's vocabulary at T=1024: full logits of 32 rows would be 6.6 GB; the chunked loss and the CPU's default
    batch keep `llmc eval` within 4 GB of address space beyond what the process maps once torch and llmc (with
    its CUDA libraries, in a CUDA build) are loaded."""
    import subprocess
    import sys

    import numpy as np

    from llmc.checkpoint import write_model_file
    from llmc.data import write_shard
    from llmc.model import GPT
    from llmc.trainer import parse_model_spec
    from train_helpers import CAP_4GB_BEYOND_LOADED

    write_shard(tmp_path / "v_val_000000.bin", np.random.default_rng(0).integers(0, 50257, size=40000))
    write_model_file(tmp_path / "m.bin", GPT(parse_model_spec("d2c64"), device="cpu", seed=1))
    cap = CAP_4GB_BEYOND_LOADED + \
        "sys.argv = ['llmc', 'eval', sys.argv[1], '--val', sys.argv[2], '--device', 'cpu']; " \
        "runpy.run_module('llmc', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", cap, str(tmp_path / "m.bin"), str(tmp_path / "v_val_*.bin")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"val_loss \d+\.\d{4}\n", done.stdout)
