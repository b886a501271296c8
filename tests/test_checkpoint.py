"""llm.c model files (bit-exact round trips, an independent writer, bad files) and full checkpoints (atomic
writes under SIGKILL, keep-last-K, only complete checkpoints are found)."""
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from llmc.checkpoint import KILL_HOOK_ENV, CheckpointManager, read_model_file, write_model_file
from llmc.model import GPT
from train_helpers import TINY, tiny_config


def tiny_model(seed=0):
    return GPT(tiny_config(), device="cpu", seed=seed)


def llmc_file_by_hand(path, cfg: dict, params: np.ndarray, version: int):
    """llm.c's layout written independently of llmc: 256 little-endian int32, then the parameters."""
    header = [20240326, version, cfg["max_seq_len"], cfg["vocab_size"], cfg["n_layer"], cfg["n_head"],
              cfg["n_embd"], cfg["padded_vocab_size"]] + [0] * 248
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(params.tobytes())


def test_fp32_file_round_trip_is_bit_exact(tmp_path):
    model = tiny_model()
    write_model_file(tmp_path / "m.bin", model, dtype="fp32")
    config, params = read_model_file(tmp_path / "m.bin")
    assert config == model.config
    assert params.dtype == torch.float32 and torch.equal(params, model.params)
    raw = (tmp_path / "m.bin").read_bytes()
    header = struct.unpack("<256i", raw[:1024])
    assert header[:8] == (20240326, 3, 64, 500, 2, 4, 64, 512) and not any(header[8:])
    assert len(raw) == 1024 + 4 * model.num_params


def test_bf16_file_round_trip_is_bit_exact(tmp_path):
    model = tiny_model()
    model.load_params_(model.params.bfloat16().float())  # values a bf16 file holds exactly
    write_model_file(tmp_path / "m.bin", model, dtype="bf16")
    config, params = read_model_file(tmp_path / "m.bin")
    assert config == model.config and torch.equal(params, model.params)
    raw = (tmp_path / "m.bin").read_bytes()
    assert struct.unpack("<2i", raw[:8]) == (20240326, 5) and len(raw) == 1024 + 2 * model.num_params
    # bf16 rounds fp32 to nearest, as torch does
    fresh = tiny_model(seed=1)
    write_model_file(tmp_path / "r.bin", fresh, dtype="bf16")
    assert torch.equal(read_model_file(tmp_path / "r.bin")[1], fresh.params.bfloat16().float())


@pytest.mark.parametrize("version", [3, 5])
def test_reads_a_file_written_by_an_independent_writer(tmp_path, version):
    n = tiny_config().num_params
    values = np.random.randn(n).astype(np.float32)
    if version == 5:
        payload = (torch.from_numpy(values).bfloat16().view(torch.int16).numpy())
        expected = torch.from_numpy(values).bfloat16().float()
    else:
        payload, expected = values, torch.from_numpy(values)
    llmc_file_by_hand(tmp_path / "m.bin", TINY, payload, version)
    config, params = read_model_file(tmp_path / "m.bin")
    assert config == tiny_config()
    assert torch.equal(params, expected)
    model = GPT(config, device="cpu").load_params_(params)
    assert torch.equal(model.param_tensors["lnfb"], expected[-64:])  # the last tensor lands where llm.c puts it


@pytest.mark.parametrize("change,match", [
    (lambda h, p: (h.__setitem__(0, 20240520), p), "magic 20240520"),
    (lambda h, p: (h.__setitem__(1, 4), p), "version 4"),
    (lambda h, p: (h, p[:-1]), "truncated or corrupt"),
    (lambda h, p: (h.__setitem__(5, 0), p), "no valid model"),
])
def test_bad_model_files_are_rejected(tmp_path, change, match):
    n = tiny_config().num_params
    header = [20240326, 3, 64, 500, 2, 4, 64, 512] + [0] * 248
    params = np.random.randn(n).astype(np.float32)
    _, params = change(header, params)
    with open(tmp_path / "bad.bin", "wb") as f:
        f.write(struct.pack("<256i", *header) + params.tobytes())
    with pytest.raises(ValueError, match=match):
        read_model_file(tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="does not exist"):
        read_model_file(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="'bf16' or 'fp32'"):
        write_model_file(tmp_path / "x.bin", tiny_model(), dtype="fp16")


KILLED_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from llmc.checkpoint import write_model_file
from llmc.model import GPT
from train_helpers import tiny_config
write_model_file({path!r}, GPT(tiny_config(), device="cpu", seed=5), dtype="fp32")
"""


def test_writer_killed_before_rename_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "model.bin"
    write_model_file(path, tiny_model(seed=0), dtype="fp32")
    before = path.read_bytes()
    code = KILLED_WRITER.format(tests=os.path.dirname(__file__), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, KILL_HOOK_ENV: "model.bin"})
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.bin"]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]  # the complete temporary file was never renamed


def save(manager, step, model):
    manager.save(step, model, {"step": step, "blob": torch.arange(step + 3)})


def test_manager_saves_loads_and_keeps_the_last_k(tmp_path):
    manager = CheckpointManager(tmp_path / "run", keep_last=2)
    assert manager.latest() is None and manager.steps() == []
    models = {}
    for step in (5, 10, 15):
        models[step] = tiny_model(seed=step)
        save(manager, step, models[step])
    assert manager.steps() == [10, 15] and manager.latest() == 15
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "DONE_00000010", "DONE_00000015", "model_00000010.bin", "model_00000015.bin", "state_00000010.pt",
        "state_00000015.pt"]
    config, params, state = manager.load()
    assert config == tiny_config() and torch.equal(params, models[15].params)
    assert state["step"] == 15 and torch.equal(state["blob"], torch.arange(18))
    assert torch.equal(manager.load(10)[1], models[10].params)
    with pytest.raises(ValueError, match="missing or incomplete"):
        manager.load(5)
    manager.clear()
    assert manager.latest() is None and not list((tmp_path / "run").iterdir())
    with pytest.raises(ValueError, match="no complete checkpoint"):
        manager.load()
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_incomplete_checkpoints_are_never_latest(tmp_path):
    manager = CheckpointManager(tmp_path)
    model = tiny_model()
    save(manager, 3, model)
    save(manager, 6, model)
    (tmp_path / "DONE_00000006").unlink()                       # crashed before the marker
    (tmp_path / "DONE_00000009").write_bytes(b"")               # marker without files (e.g. deleted by hand)
    (tmp_path / "model_00000012.bin").write_bytes(b"partial")   # crashed while writing
    assert manager.latest() == 3
    save(manager, 4, model)  # the next save cleans the leftovers of this run's interrupted saves ...
    assert manager.steps() == [3, 4]
    assert not any(p.name.startswith(("model_00000006", "state_00000006")) for p in tmp_path.iterdir())
    # ... and leaves what it did not write
    assert (tmp_path / "model_00000012.bin").read_bytes() == b"partial" and (tmp_path / "DONE_00000009").exists()
    assert CheckpointManager(tmp_path).incomplete() == {9: ["DONE_00000009"], 12: ["model_00000012.bin"]}


KILLED_SAVE = """
import sys, torch
sys.path.insert(0, {tests!r})
from llmc.checkpoint import CheckpointManager
from llmc.model import GPT
from train_helpers import tiny_config
m = CheckpointManager({out!r})
model = GPT(tiny_config(), device="cpu")
m.save(2, model, {{"step": 2}})
m.save(4, model, {{"step": 4}})
"""


@pytest.mark.parametrize("victim", ["model_00000004", "state_00000004", "DONE_00000004"])
def test_save_killed_at_any_file_leaves_the_previous_checkpoint_latest(tmp_path, victim):
    code = KILLED_SAVE.format(tests=os.path.dirname(__file__), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, KILL_HOOK_ENV: victim})
    assert proc.returncode == -signal.SIGKILL
    manager = CheckpointManager(tmp_path)
    assert manager.latest() == 2 and manager.load()[2] == {"step": 2}
