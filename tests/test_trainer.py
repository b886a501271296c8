"""Trainer on the CPU reference backend: lr schedules, outlier detector, loss falls, determinism, exact resume,
bad inputs; and crash faults (SIGKILL mid-run, SIGKILL while writing a checkpoint) through `python -m llmc train`."""
import dataclasses
import fcntl
import math
import re
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from llmc.checkpoint import KILL_HOOK_ENV, CheckpointManager, write_model_file
from llmc.model import DEFAULT_LOSS_CHUNK, GPT
from llmc.ops import global_norm_squared
from llmc.schedule import OUTLIER_WINDOW, OutlierDetector, learning_rate
from llmc.trainer import TrainConfig, Trainer, parse_model_spec
from conftest import assert_close, requires_cuda
from train_helpers import read_metrics, tiny_config, write_tiny_shards

# Determinism and resume run on the GPU too (bf16 kernels, stochastic rounding); head size 64 there, the
# cuDNN attention path of real models.
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


def config_for(device):
    return tiny_config() if device == "cpu" else tiny_config(n_head=1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("data"))


def tiny_run(shards, out_dir, **overrides):
    train, val = shards
    options = dict(input_train=train, input_val=val, output_dir=str(out_dir), batch_size=4, seq_len=16,
                   num_iterations=10, learning_rate=1e-2, val_every=0, sample_every=0, checkpoint_every=5,
                   device="cpu", seed=7)
    return TrainConfig(**{**options, **overrides})


def losses(history):
    return [r["loss"] for r in history]


def test_new_run_refuses_a_folder_with_earlier_checkpoints(shards, tmp_path):
    Trainer(tiny_config(), tiny_run(shards, tmp_path, num_iterations=5)).fit()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="-y 1.*another -o"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, num_iterations=5)).fit()
    assert sorted(os.listdir(tmp_path)) == before  # nothing of the earlier run was removed


# ---------------------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------------------
def test_learning_rate_schedules():
    kw = dict(max_lr=1.0, warmup=10, total=110, final_fraction=0.1)
    for schedule in ("cosine", "linear", "wsd"):
        assert learning_rate(0, schedule=schedule, **kw) == pytest.approx(0.1)   # warmup: (step+1)/warmup
        assert learning_rate(9, schedule=schedule, **kw) == pytest.approx(1.0)
        assert learning_rate(10, schedule=schedule, **kw) == pytest.approx(1.0)
    assert learning_rate(60, schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert learning_rate(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert learning_rate(35, schedule="linear", **kw) == pytest.approx(1.0 - 0.25 * 0.9)
    assert learning_rate(110, schedule="linear", **kw) == pytest.approx(0.1)
    # llm.c's constant schedule has no warmup
    assert [learning_rate(s, schedule="constant", **kw) for s in (0, 9, 109)] == [1.0, 1.0, 1.0]
    assert learning_rate(87, schedule="wsd", **kw) == 1.0  # decay starts at int(0.8 * 110) = 88
    assert learning_rate(99, schedule="wsd", **kw) == pytest.approx(0.1 + (1 - math.sqrt(11 / 22)) * 0.9)
    assert learning_rate(110, schedule="wsd", **kw) == pytest.approx(0.1)


def test_outlier_detector_z_scores_and_skipping():
    values = [1.0 + 0.01 * (i % 5) for i in range(OUTLIER_WINDOW)]
    detector = OutlierDetector(threshold=3.0)
    assert all(math.isnan(detector.update(v)) for v in values)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    z = detector.update(1.5)
    assert z == pytest.approx((1.5 - mean) / std) and detector.is_outlier(z)
    assert detector.window == values  # an outlier stays out of the window ...
    restored = OutlierDetector(threshold=3.0)
    restored.load_state_dict(detector.state_dict())
    for d in (detector, restored):
        assert d.update(1.5) == pytest.approx(z) and d.window == values
        assert d.is_outlier(d.update(1.5)) and d.window == values[1:] + [1.5]  # ... except the third in a row
    assert not OutlierDetector(0.0).is_outlier(100.0)


def test_model_specs():
    assert parse_model_spec("d12") == tiny_config().__class__.from_preset("d12")
    custom = parse_model_spec("d4c128")
    assert (custom.n_layer, custom.n_embd, custom.n_head, custom.max_seq_len) == (4, 128, 2, 1024)
    custom = parse_model_spec("d2c64h4t256")
    assert (custom.n_layer, custom.n_embd, custom.n_head, custom.max_seq_len) == (2, 64, 4, 256)
    with pytest.raises(ValueError, match="neither a model file nor a preset"):
        parse_model_spec("gpt5")
    Trainer(None, TrainConfig.quickstart("cpu"))  # the README job's config validates
    Trainer(None, TrainConfig.quickstart("cuda"))


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------
def test_loss_falls_and_the_run_directory_is_written(shards, tmp_path):
    config = tiny_run(shards, tmp_path, num_iterations=24, val_every=12, val_max_steps=2, sample_every=24,
                      gen_tokens=4, total_batch_size=2 * 4 * 16, warmup_iterations=2, weight_decay=0.1)
    history = Trainer(tiny_config(), config).fit()
    assert [r["step"] for r in history] == list(range(24))
    first, last = losses(history[:4]), losses(history[-4:])
    assert sum(last) / 4 < sum(first) / 4 - 1.0, losses(history)
    log = (tmp_path / "main.log").read_text().splitlines()
    assert log[0].startswith("s:0 tel:") and log[1].startswith("s:0 trl:") and " lr:" in log[1] and " norm:" in log[1]
    assert sum(line.startswith("s:12 tel:") for line in log) == 1 and log[-1].startswith("s:24 tel:")
    assert (tmp_path / "samples.txt").read_text().startswith("=== step 24\n")
    assert CheckpointManager(tmp_path).steps() == [5, 10, 15, 20, 24]
    assert read_metrics(tmp_path) == {r["step"]: r["loss"] for r in history}


@pytest.mark.parametrize("device", DEVICES)
def test_two_runs_with_one_seed_are_bit_identical(shards, tmp_path, device):
    def run(name, seed=7):
        config = tiny_run(shards, tmp_path / name, num_iterations=6, checkpoint_every=0, seed=seed, device=device)
        return Trainer(config_for(device), config).fit()

    a, b = run("a"), run("b")
    assert losses(a) == losses(b) and [r["norm"] for r in a] == [r["norm"] for r in b]
    assert losses(run("c", seed=8)) != losses(a)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_chunk_trains_like_the_whole_batch(shards, tmp_path, device):
    def run(name, **extra):
        config = tiny_run(shards, tmp_path / name, num_iterations=6, checkpoint_every=0, val_every=3, device=device,
                          **extra)
        return Trainer(config_for(device), config).fit()

    whole, chunked = run("whole", loss_chunk=0), run("chunked", loss_chunk=24)  # 64 positions per micro-batch: 3 chunks
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # fp32: only the output layer's wte gradient is summed in another order; bf16: also rounded per chunk
    assert_close(torch.tensor(losses(chunked)), torch.tensor(losses(whole)), dtype, "losses with loss_chunk")
    with pytest.raises(ValueError, match="loss_chunk"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, loss_chunk=-1))
    with pytest.raises(ValueError, match=r"GPT\(\.\.\., loss_chunk=24\)"):
        Trainer(GPT(tiny_config(), device="cpu"), tiny_run(shards, tmp_path / "x", loss_chunk=24)).fit()


def test_default_loss_chunk_applies_to_models_the_trainer_builds(shards, tmp_path):
    """loss_chunk=None (the default): a model the Trainer builds gets DEFAULT_LOSS_CHUNK, a given GPT its own."""
    for source, expected in ((tiny_config(), DEFAULT_LOSS_CHUNK), (GPT(tiny_config(), device="cpu", loss_chunk=16), 16),
                             (GPT(tiny_config(), device="cpu"), 0)):
        trainer = Trainer(source, tiny_run(shards, tmp_path / f"d{expected}", num_iterations=1, checkpoint_every=0,
                                           val_every=0, device="cpu"))
        trainer.fit()
        assert trainer.model.loss_chunk == expected


def test_cpu_gradient_norm_has_the_same_bits_on_any_thread_count():
    # The norm sets every step's clipping factor. torch's own .sum() of a big tensor keeps one partial sum per
    # thread and changed in the last bit between thread counts, so a run resumed with another thread count (or
    # OMP_NUM_THREADS) drifted from its first step on.
    before = torch.get_num_threads()
    try:
        for n in (40_000, 136_960, 300_001, 5_000_000):  # the tiny model has 136,960 gradients
            grads = torch.randn(n)
            bits = set()
            for threads in (1, 2, 3, 7, 16):
                torch.set_num_threads(threads)
                bits.add(global_norm_squared(grads).view(torch.int32).item())
            assert len(bits) == 1, f"{n} gradients: {len(bits)} different norms over 1 to 16 threads"
    finally:
        torch.set_num_threads(before)


def copy_checkpoint(run_dir, step, new_dir):
    """A fresh run directory holding only checkpoint `step` of run_dir, as if the run had died right after it."""
    new_dir.mkdir()
    for name in (f"model_{step:08d}.bin", f"state_{step:08d}.pt", f"DONE_{step:08d}"):
        shutil.copy(run_dir / name, new_dir / name)
    return new_dir


@pytest.mark.parametrize("device", DEVICES)
def test_resume_from_step_5_reproduces_steps_6_to_10_exactly(shards, tmp_path, device):
    options = dict(total_batch_size=2 * 4 * 16, warmup_iterations=3, weight_decay=0.1, lr_schedule="cosine",
                   final_lr_fraction=0.1, device=device)
    full = Trainer(config_for(device), tiny_run(shards, tmp_path / "full", **options)).fit()
    resumed_dir = copy_checkpoint(tmp_path / "full", 5, tmp_path / "resumed")
    trainer = Trainer(config_for(device), tiny_run(shards, resumed_dir, resume=True, **options))
    resumed = trainer.fit()
    assert [r["step"] for r in resumed] == [5, 6, 7, 8, 9]
    assert losses(resumed) == losses(full[5:])
    assert [r["norm"] for r in resumed] == [r["norm"] for r in full[5:]]
    final = CheckpointManager(tmp_path / "full").load(10)[1]
    assert torch.equal(trainer.model.params.float().cpu(), final)


@requires_cuda
@pytest.mark.cuda
def test_fp8_resume_reproduces_the_uninterrupted_run_and_the_fp8_flag_is_checked(shards, tmp_path):
    from llmc.ops import fp8_supported

    if not fp8_supported():
        pytest.skip("FP8 needs a GPU of compute capability 8.9+ (H100)")
    # validation every 2 steps: forwards without backward between the steps (they must not disturb the scales)
    options = dict(total_batch_size=2 * 4 * 16, warmup_iterations=3, weight_decay=0.1, final_lr_fraction=0.1,
                   device="cuda", fp8=True, val_every=2, val_max_steps=2)
    full = Trainer(config_for("cuda"), tiny_run(shards, tmp_path / "full", **options)).fit()
    resumed_dir = copy_checkpoint(tmp_path / "full", 5, tmp_path / "resumed")
    resumed = Trainer(config_for("cuda"), tiny_run(shards, resumed_dir, resume=True, **options)).fit()
    assert losses(resumed) == losses(full[5:])
    assert [r["norm"] for r in resumed] == [r["norm"] for r in full[5:]]
    bf16_dir = copy_checkpoint(tmp_path / "full", 5, tmp_path / "as_bf16")
    with pytest.raises(ValueError, match="trained with fp8=True; resume it with --fp8 1"):
        Trainer(config_for("cuda"), tiny_run(shards, bf16_dir, resume=True, **{**options, "fp8": False})).fit()


def test_model_file_start_and_overfit_single_batch(shards, tmp_path):
    start = GPT(tiny_config(), device="cpu", seed=3)
    write_model_file(tmp_path / "start.bin", start, dtype="fp32")
    trainer = Trainer(str(tmp_path / "start.bin"), tiny_run(shards, tmp_path / "run", num_iterations=0,
                                                             checkpoint_every=1))
    trainer.fit()
    assert torch.equal(CheckpointManager(tmp_path / "run").load(0)[1], start.params)  # nothing trained: same weights
    overfit = tiny_run(shards, tmp_path / "o", overfit_single_batch=True, num_iterations=12, checkpoint_every=6)
    history = Trainer(tiny_config(), overfit).fit()
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    resumed_dir = copy_checkpoint(tmp_path / "o", 6, tmp_path / "o_resumed")
    resumed = Trainer(tiny_config(), dataclasses.replace(overfit, output_dir=str(resumed_dir), resume=True)).fit()
    assert losses(resumed) == losses(history[6:])  # the same single batch after resuming


# ---------------------------------------------------------------------------------------------------------
# bad inputs: each a clear error before training starts
# ---------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors(shards, tmp_path):
    with pytest.raises(ValueError, match=r"total_batch_size \(-d\) 100 is not a multiple of B\*T\*world_size"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, total_batch_size=100))
    with pytest.raises(ValueError, match="T=128 .* exceeds the model's context of 64"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path / "t", seq_len=128)).fit()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="output directory .* is not writable"):
        Trainer(tiny_config(), tiny_run(shards, blocker / "out")).fit()
    with pytest.raises(ValueError, match="matches no file"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path / "g", input_train=str(tmp_path / "none_*.bin"))).fit()
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path / "b", batch_size=64, seq_len=64)).fit()
    with pytest.raises(ValueError, match="lr_schedule"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, lr_schedule="step"))
    with pytest.raises(ValueError, match="resume needs the output directory"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, output_dir=None, resume=True))
    assert not (tmp_path / "t" / "metrics.jsonl").exists()


def test_only_the_zero_stages_that_run_are_accepted(shards, tmp_path, capsys):
    """ZeRO-0 and ZeRO-1 (llmc.distributed.GradientSync) run; any other -z is one error line saying what to use,
    with one process too."""
    from llmc.cli import train_main
    from llmc.distributed import ZERO_STAGES

    assert ZERO_STAGES == (0, 1)
    for stage in (-1, 0, 1):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, zero_stage=stage))
    for stage in (2, 3, -2, True, 1.5):
        with pytest.raises(ValueError, match=r"zero_stage \(-z\) .* is not implemented: use -z 0 .* or -z 1"):
            Trainer(tiny_config(), tiny_run(shards, tmp_path, zero_stage=stage))
    assert train_main(["-z", "2", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llmc train: error: zero_stage (-z) 2 is not implemented: use -z 0")


def test_resume_with_another_model_config_is_refused(shards, tmp_path):
    Trainer(tiny_config(), tiny_run(shards, tmp_path, num_iterations=5)).fit()
    with pytest.raises(ValueError, match="checkpoint at step 5 .* pass the same -e"):
        Trainer(tiny_config(n_layer=3), tiny_run(shards, tmp_path, resume=True)).fit()
    with pytest.raises(ValueError, match="B: saved 4, now 2"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, resume=True, batch_size=2)).fit()


def test_out_of_memory_at_allocation_suggests_smaller_batch_or_recompute(shards, tmp_path, monkeypatch):
    def no_memory(self, B, T, training=True):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(GPT, "allocate", no_memory)
    with pytest.raises(RuntimeError, match=r"out of GPU memory .* smaller micro-batch \(-b 2.*-r 1"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path)).fit()


@requires_cuda
@pytest.mark.cuda
def test_real_gpu_out_of_memory_at_allocation_names_the_fix_and_recovers():
    """Activations that fit no GPU (d12 at B=4096, T=1024: ~1.7 TB): the real CUDA allocation fails with the
    suggestion (the Trainer turns it into its error, test above), and the GPU is usable again afterwards."""
    from llmc.model import GPTConfig

    model = GPT(GPTConfig.from_preset("d12"), device="cuda")
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"smaller micro-batch \(-b\) or recompute"):
        model.allocate(4096, 1024)
    model.allocate(2, 64)  # the failed allocation left nothing behind that blocks a small one
    idx = torch.randint(0, 50257, (2, 64), dtype=torch.int32)
    assert math.isfinite(model.forward(idx, idx))


# ---------------------------------------------------------------------------------------------------------
# crashes: `python -m llmc train` killed mid-run / mid-checkpoint, then resumed with -y 1
# ---------------------------------------------------------------------------------------------------------
STEPS = 40  # its console output must well exceed a 4096-byte pipe (see the SIGKILL test)


def cli_args(shards, model_file, out_dir):
    train, val = shards
    return [sys.executable, "-m", "llmc", "train", "-i", train, "-j", val, "-o", str(out_dir), "-e", str(model_file),
            "-b", "4", "-t", "16", "-d", "128", "-x", str(STEPS), "-l", "0.01", "-u", "2", "-q", "0.1", "-c", "0.1",
            "-n", "3", "-v", "0", "-s", "0", "--device", "cpu"]


# The crash tests run the CLI on one CPU thread: every op then adds in one fixed order, so the killed-and-resumed
# run must match the uninterrupted one bit for bit on any machine. Several threads: see the last test.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli_env(threads, **env):
    return {**os.environ, **threads, **env}


def start(args, threads=ONE_THREAD, **env):
    return subprocess.Popen(args, env=cli_env(threads, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def run_cli(args, threads=ONE_THREAD) -> str:
    """Run `llmc train` to the end; its console output."""
    proc = start(args, threads)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def crash_setup(shards, tmp_path_factory):
    """(model file, {step: loss} of an uninterrupted CLI run)."""
    root = tmp_path_factory.mktemp("crash")
    model_file = root / "start.bin"
    write_model_file(model_file, GPT(tiny_config(), device="cpu", seed=11), dtype="fp32")
    run_cli(cli_args(shards, model_file, root / "reference"))
    reference = read_metrics(root / "reference")
    assert sorted(reference) == list(range(STEPS))
    return model_file, reference


def resume_and_compare(shards, model_file, out_dir, reference, expect_step):
    out = run_cli(cli_args(shards, model_file, out_dir) + ["-y", "1"])
    assert f"resuming from the checkpoint at step {expect_step}" in out, out
    assert read_metrics(out_dir) == reference  # every step, including those redone after the crash
    assert CheckpointManager(out_dir).latest() == STEPS


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(shards, crash_setup, tmp_path):
    model_file, reference = crash_setup
    # The victim's stdout is a pipe of one page that nobody reads: once its console lines fill it, the victim
    # blocks inside a step (the run prints more than a page), so it cannot finish before it is killed, however
    # fast the machine is.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    victim = subprocess.Popen(cli_args(shards, model_file, tmp_path), env=cli_env(ONE_THREAD), stdout=write_end,
                              stderr=subprocess.STDOUT)
    os.close(write_end)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 8:  # complete lines only
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    os.close(read_end)
    assert victim.returncode == -signal.SIGKILL
    done = CheckpointManager(tmp_path).latest()
    assert done is not None and 6 <= done < STEPS
    resume_and_compare(shards, model_file, tmp_path, reference, done)


def test_sigkill_while_writing_a_checkpoint_then_resume(shards, crash_setup, tmp_path):
    model_file, reference = crash_setup
    victim = start(cli_args(shards, model_file, tmp_path), **{KILL_HOOK_ENV: "state_00000006"})
    out, _ = victim.communicate(timeout=600)
    assert victim.returncode == -signal.SIGKILL, out
    assert (tmp_path / "model_00000006.bin").exists() and not (tmp_path / "DONE_00000006").exists()
    assert CheckpointManager(tmp_path).latest() == 3  # the half-written checkpoint 6 is not picked up
    resume_and_compare(shards, model_file, tmp_path, reference, 3)


# Several CPU threads (the machine's default). torch's own ops split their work the same way for a given thread
# count, but the BLAS may choose how many threads each matrix product uses while running, and on some CPUs its
# sums then differ in the last bits (on a 16-core host two uninterrupted runs were 7e-7 apart at step 3, 3e-6 at
# step 5). So the promise is: bit for bit with one thread (the tests above), and within that fp32 noise here. The
# bound, 1e-4 relative, is ~30x that noise and below what a broken resume gives: an AdamW step count off by one at
# step 21 moves the losses by 6e-4, lost moments by orders of magnitude.
def test_resume_on_several_cpu_threads_matches_within_fp32_noise(shards, crash_setup, tmp_path):
    model_file, _ = crash_setup
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_cli(cli_args(shards, model_file, full), threads={})
    out = run_cli(cli_args(shards, model_file, copy_checkpoint(full, 21, resumed)) + ["-y", "1"], threads={})
    assert "resuming from the checkpoint at step 21" in out, out
    reference, after = read_metrics(full), read_metrics(resumed)
    assert sorted(after) == list(range(21, STEPS))
    assert after == pytest.approx({step: reference[step] for step in after}, rel=1e-4)
    assert CheckpointManager(resumed).latest() == STEPS


def test_deterministic_option_reaches_the_model_and_is_checked(shards, tmp_path):
    trainer = Trainer(tiny_config(), tiny_run(shards, tmp_path, num_iterations=2, checkpoint_every=0,
                                              deterministic=False))
    trainer.fit()
    assert trainer.model.deterministic is False
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        Trainer(tiny_config(), tiny_run(shards, tmp_path, deterministic=0))
    model = GPT(tiny_config(), device="cpu")  # deterministic by default
    with pytest.raises(ValueError, match="build it with GPT\\(..., deterministic=False\\)"):
        Trainer(model, tiny_run(shards, tmp_path / "m", deterministic=False)).fit()


def test_a_run_with_an_output_directory_ends_with_a_model_and_a_summary(shards, tmp_path, capsys):
    """-o without -n still leaves the final model (llm.c format) and its checkpoint; the run ends with a summary of
    where everything went; step lines carry elapsed time and an ETA, and no z-score before the window is full."""
    Trainer(tiny_config(), tiny_run(shards, tmp_path, num_iterations=4, checkpoint_every=0, val_every=2)).fit()
    assert CheckpointManager(tmp_path).steps() == [4]
    out = capsys.readouterr().out
    assert "nanz" not in out and "z)" not in out
    assert re.search(r"step    4/4 \| loss [\d.]+ \| norm [\d.]+ \| .* \| 0:00:\d\d elapsed, eta 0:00:00", out)
    summary = out[out.index("done: 4 steps"):]
    assert re.search(r"done: 4 steps \(0 -> 4\) in 0:00:\d\d, 256 tokens", summary)
    assert re.search(r"val loss [\d.]+ at step 4 \(best [\d.]+ at step \d\)", summary)
    assert f"model {tmp_path / 'model_00000004.bin'} (llm.c format" in summary
