"""Fault injection on a run directory (CPU): concurrent runs, lost markers, flipped bytes, bad state values, damaged
files, a full disk, planted symlinks. Each must end in one clear error that names the file (or be impossible), and
never in a silent restart, a silently different resume, or a deleted file the run did not write."""
import errno
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from llmc.checkpoint import (CheckpointManager, RunDirectoryLock, atomic_write, read_marker, read_model_file,
                             write_model_file)
from llmc.model import GPT
from llmc.trainer import TrainConfig, Trainer
from train_helpers import tiny_config, write_tiny_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(train pattern, val pattern, a tiny model file to start from)."""
    directory = tmp_path_factory.mktemp("data")
    write_model_file(directory / "tiny.bin", GPT(tiny_config(), device="cpu", seed=3), dtype="fp32")
    return write_tiny_shards(directory) + (str(directory / "tiny.bin"),)


def run(shards, out_dir, **overrides):
    train, val, init = shards
    options = dict(input_train=train, input_val=val, output_dir=str(out_dir), model=init, batch_size=4, seq_len=16,
                   num_iterations=6, learning_rate=1e-2, val_every=0, sample_every=0, checkpoint_every=3,
                   device="cpu", seed=7)
    return Trainer(None, TrainConfig(**{**options, **overrides})).fit()


def listing(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != "llmc.lock"}


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------
# 1. two runs, one -o
# ---------------------------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_directory_stops_at_once_naming_the_holder(shards, tmp_path):
    holder = RunDirectoryLock(tmp_path).acquire()
    try:
        with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} is in use by another llmc run \(pid "
                                             rf"{os.getpid()} on"):
            run(shards, tmp_path)
        assert listing(tmp_path) == {}  # nothing written by the refused run
    finally:
        holder.release()
    run(shards, tmp_path)  # free again once the holder is gone
    assert CheckpointManager(tmp_path).steps() == [3, 6]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = f"from llmc.checkpoint import RunDirectoryLock; RunDirectoryLock({str(tmp_path)!r}).acquire(); " \
           f"print('locked', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match=f"pid {proc.pid} on"):
        RunDirectoryLock(tmp_path).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    RunDirectoryLock(tmp_path).acquire().release()


def test_temporary_files_carry_their_writer_and_are_created_exclusively(tmp_path, monkeypatch):
    names = []
    real_open = os.open

    def spy(path, flags, *args):
        names.append((os.path.basename(path), flags))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", spy)
    atomic_write(tmp_path / "x.bin", lambda f: f.write(b"abc"))
    atomic_write(tmp_path / "x.bin", lambda f: f.write(b"abc"))
    temps = [(n, flags) for n, flags in names if n.startswith(".x.bin.tmp-")]
    assert len(temps) == 2 and temps[0][0] != temps[1][0]  # a random tag: no two writes share a name
    assert all(re.fullmatch(rf"\.x\.bin\.tmp-{os.getpid()}-[0-9a-f]{{8}}", n) for n, _ in temps)
    assert all(flags & os.O_EXCL and flags & os.O_NOFOLLOW for _, flags in temps)


# ---------------------------------------------------------------------------------------------------------
# 2. no silent restart over an existing run
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["DONE_00000006", "state_00000006.pt", "all markers"])
def test_resume_without_a_complete_checkpoint_stops_and_deletes_nothing(shards, tmp_path, damage):
    run(shards, tmp_path, keep_last=1)
    names = ["DONE_00000006"] if damage == "all markers" else [damage]
    for name in names:
        (tmp_path / name).unlink()
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=r"-y 1 found no complete checkpoint to resume .* incomplete checkpoint at "
                                         r"step 6 .*Nothing was changed"):
        run(shards, tmp_path, resume=True, num_iterations=9)
    assert listing(tmp_path) == before  # main.log kept whole, no model or state file pruned


def test_a_new_run_over_an_earlier_one_needs_restart_which_moves_it_aside(shards, tmp_path):
    run(shards, tmp_path, checkpoint_every=0)  # no checkpoints, only logs
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=r"holds an earlier run \(complete checkpoints at steps \[6\]; main.log, "
                                         r"metrics.jsonl\); resume it with -y 1, start over with --restart 1"):
        run(shards, tmp_path)
    assert listing(tmp_path) == before
    run(shards, tmp_path, restart=True)
    earlier = [p for p in tmp_path.iterdir() if p.name.startswith("earlier-")]
    assert len(earlier) == 1 and listing(earlier[0]) == before
    assert CheckpointManager(tmp_path).steps() == [3, 6]


# ---------------------------------------------------------------------------------------------------------
# 3. checksums
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,offset", [("state_00000006.pt", -100), ("state_00000006.pt", 2000),
                                         ("model_00000006.bin", 4096), ("model_00000006.bin", -2)])
def test_a_flipped_byte_in_a_checkpoint_is_found_on_resume(shards, tmp_path, name, offset):
    run(shards, tmp_path)
    path = tmp_path / name
    flip(path, offset % path.stat().st_size)
    with pytest.raises(ValueError, match=rf"{re.escape(name)} does not match the checksum in its DONE marker"):
        run(shards, tmp_path, resume=True, num_iterations=9)


def test_a_model_file_is_checked_against_the_manifest_beside_it_and_for_finite_values(tmp_path):
    model = GPT(tiny_config(), device="cpu", seed=1)
    manager = CheckpointManager(tmp_path)
    manager.save(4, model, {"step": 4})
    assert set(read_marker(tmp_path / "DONE_00000004")["files"]) == {"model_00000004.bin", "state_00000004.pt"}
    flip(tmp_path / "model_00000004.bin", 5000)
    with pytest.raises(ValueError, match="does not match the checksum"):
        read_model_file(tmp_path / "model_00000004.bin")
    model.params[123] = float("nan")
    write_model_file(tmp_path / "alone.bin", model)  # exported: no manifest, but never a non-finite parameter
    with pytest.raises(ValueError, match=r"alone.bin holds 1 parameters that are not finite"):
        read_model_file(tmp_path / "alone.bin")


# ---------------------------------------------------------------------------------------------------------
# 4. values read from files are validated; a non-finite loss stops the run
# ---------------------------------------------------------------------------------------------------------
def rewrite_state(tmp_path, step, change):
    """Change the state file of checkpoint `step` and re-sign it, as a file with valid checksums but bad values."""
    manager = CheckpointManager(tmp_path)
    state = torch.load(manager.state_path(step), weights_only=True)
    change(state)
    config, params = read_model_file(manager.model_path(step))
    model = GPT(config, device="cpu")
    model.load_params_(params)
    (tmp_path / f"DONE_{step:08d}").unlink()
    manager.save(step, model, state, dtype="fp32")


@pytest.mark.parametrize("change,match", [
    (lambda s: s.update(cpu_threads=100000), "cpu_threads is 100000"),
    (lambda s: s.update(step=10**6), "holds step 1000000, but belongs to the checkpoint of step 6"),
    (lambda s: s["optimizer"]["m"].__setitem__(0, float("nan")), "'m' holds values that are not finite"),
    (lambda s: s["optimizer"]["v"].__setitem__(3, -1.0), "negative second moments"),
    (lambda s: s.pop("rng"), r"lacks \['rng'\]"),
    (lambda s: s["loss_detector"]["window"].append(float("inf")), "loss_detector is not a window"),
    (lambda s: s["train_loader"].update(row=3), "row 3"),
])
def test_bad_values_in_a_state_file_are_refused(shards, tmp_path, change, match):
    run(shards, tmp_path)
    rewrite_state(tmp_path, 6, change)
    with pytest.raises(ValueError, match=match):
        run(shards, tmp_path, resume=True, num_iterations=9)


def test_a_non_finite_loss_stops_the_run_without_writing_a_checkpoint_of_it(shards, tmp_path, monkeypatch):
    import llmc.optim

    model = GPT(tiny_config(), device="cpu", seed=7)
    real_step, calls = llmc.optim.AdamW.step, []

    def step_then_diverge(self, *args, **kwargs):  # the third update leaves nan in the weights, as divergence does
        real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            model.params[0] = float("nan")

    monkeypatch.setattr(llmc.optim.AdamW, "step", step_then_diverge)
    train, val, _ = shards
    config = TrainConfig(input_train=train, input_val=val, output_dir=str(tmp_path), batch_size=4, seq_len=16,
                         num_iterations=6, val_every=0, sample_every=0, checkpoint_every=2, device="cpu")
    with pytest.raises(RuntimeError, match=r"step 4: the loss is nan .* resume from the checkpoint at step 2"):
        Trainer(model, config).fit()
    assert CheckpointManager(tmp_path).steps() == [2]


# ---------------------------------------------------------------------------------------------------------
# 5. errors, not tracebacks
# ---------------------------------------------------------------------------------------------------------
def legacy_marker(tmp_path, step):
    """A marker without checksums (llmc before the manifests), so damage reaches the readers themselves."""
    (tmp_path / f"DONE_{step:08d}").write_bytes(b"")


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip", b"PK\x03\x04" + b"\x00" * 200])
def test_a_damaged_state_file_without_checksums_is_a_clear_error(shards, tmp_path, content):
    run(shards, tmp_path)
    legacy_marker(tmp_path, 6)
    (tmp_path / "state_00000006.pt").write_bytes(content)
    with pytest.raises(ValueError, match=r"state_00000006.pt cannot be read .*the state file is damaged"):
        run(shards, tmp_path, resume=True, num_iterations=9)


def test_a_binary_marker_is_a_clear_error(shards, tmp_path):
    run(shards, tmp_path)
    (tmp_path / "DONE_00000006").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"DONE_00000006 is not a checkpoint marker"):
        run(shards, tmp_path, resume=True, num_iterations=9)


def test_an_out_of_vocabulary_token_names_its_shard(tmp_path):
    from llmc.data import write_shard

    write_shard(tmp_path / "bad_train_000001.bin", [600] * 2000)  # the tiny model's vocabulary is 500
    with pytest.raises(ValueError, match=r"rows from bad_train_000001.bin\): idx has \d+ token ids outside"):
        Trainer(GPT(tiny_config(), device="cpu"), TrainConfig(
            input_train=str(tmp_path / "bad_train_*.bin"), input_val=None, batch_size=4, seq_len=16,
            num_iterations=2, val_every=0, sample_every=0, device="cpu")).fit()


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")

    def fill(f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=rf"no space left in {re.escape(str(tmp_path))} while writing state.pt \(1,000 "
                                      rf"bytes written, [\d,]+ free\)") as info:
        atomic_write(target, fill)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with pytest.raises(OSError, match="no space left"):  # torch.save's zip writer says it its own way
        atomic_write(target, lambda f: (_ for _ in ()).throw(RuntimeError("[enforce fail at inline_container.cc:672] "
                                                                          ". unexpected pos 64 vs 0")))


def test_the_cli_turns_run_directory_faults_into_one_error_line(shards, tmp_path):
    train, val, init = shards
    args = ["-i", train, "-j", val, "-o", str(tmp_path), "-b", "4", "-t", "16", "-x", "4", "-v", "0", "-s", "0",
            "-n", "2", "-e", init, "--device", "cpu"]
    assert subprocess.run([sys.executable, "-m", "llmc", "train", *args], capture_output=True).returncode == 0
    (tmp_path / "DONE_00000004").write_bytes(b"\x80binary")
    done = subprocess.run([sys.executable, "-m", "llmc", "train", *args, "-y", "1"], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"llmc train: error: {tmp_path}/DONE_00000004 is not a checkpoint "
                                                f"marker (not text): the checkpoint is corrupt; move the marker away "
                                                f"to resume from an earlier checkpoint"]


# ---------------------------------------------------------------------------------------------------------
# 6. symlinks
# ---------------------------------------------------------------------------------------------------------
def test_checkpoint_files_that_are_symlinks_are_refused(shards, tmp_path):
    run(shards, tmp_path / "run")
    victim = tmp_path / "precious.bin"
    victim.write_bytes(b"precious")
    state = tmp_path / "run" / "state_00000006.pt"
    os.replace(state, tmp_path / "moved.pt")
    os.symlink(tmp_path / "moved.pt", state)
    with pytest.raises(ValueError, match=r"checkpoint files that are symbolic links \(state_00000006.pt\)"):
        run(shards, tmp_path / "run", resume=True, num_iterations=9)
    os.symlink(victim, tmp_path / "run" / "model_00000009.bin")  # planted where the next checkpoint goes
    state.unlink()
    os.replace(tmp_path / "moved.pt", state)
    with pytest.raises(ValueError, match=r"symbolic links \(model_00000009.bin\)"):
        run(shards, tmp_path / "run", resume=True, num_iterations=9)
    assert victim.read_bytes() == b"precious"


def test_the_lock_file_is_never_followed(tmp_path):
    victim = tmp_path / "precious"
    victim.write_bytes(b"precious")
    (tmp_path / "run").mkdir()
    os.symlink(victim, tmp_path / "run" / "llmc.lock")
    with pytest.raises(ValueError, match="cannot open the run directory's lock"):
        RunDirectoryLock(tmp_path / "run").acquire()
    assert victim.read_bytes() == b"precious"


# ---------------------------------------------------------------------------------------------------------
# 7. supported torch versions
# ---------------------------------------------------------------------------------------------------------
def test_torch_floor_excludes_the_weights_only_bypass():
    """torch < 2.6 lets a crafted file run code through torch.load(weights_only=True) (CVE-2025-32434)."""
    pyproject = open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")).read()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', pyproject)
    assert floor and (int(floor.group(1)), int(floor.group(2))) >= (2, 6)
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 6)
