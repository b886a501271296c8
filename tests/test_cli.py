"""`llmc` command routing and `llmc train`: llm.c's short flags (multi-character ones too), long options, the
no-argument quickstart, errors, and an end-to-end run through `python -m llmc train`."""
import dataclasses
import re
import subprocess
import sys

import pytest

from llmc import cli
from llmc.checkpoint import CheckpointManager, write_model_file
from llmc.model import GPT
from llmc.trainer import TrainConfig
from train_helpers import read_metrics, tiny_config, write_tiny_shards

SHORT = ("-i tr -j va -o out -e d6 -b 8 -t 256 -d 4096 -x 30 -l 1e-3 -u 5 -q 0.1 -k wsd -c 0.1 -v 5 -m 3 -s 7 "
         "-g 9 -n 11 -nk 2 -y 1 -r 2 -z 1 -w 0 -sl 3.5 -sg 4.5 -h 1 -ge 2 -a 1 --deterministic 0").split()
LONG = ("--input-train tr --input-val va --output-dir out --model d6 --batch-size 8 --seq-len 256 "
        "--total-batch-size 4096 --num-iterations 30 --learning-rate 1e-3 --warmup-iterations 5 "
        "--final-lr-fraction 0.1 --lr-schedule wsd --weight-decay 0.1 --val-every 5 --val-max-steps 3 "
        "--sample-every 7 --gen-tokens 9 --checkpoint-every 11 --keep-last 2 --resume 1 --recompute 2 "
        "--zero-stage 1 --master-weights 0 --skip-update-lossz 3.5 --skip-update-gradz 4.5 --hellaswag 1 "
        "--gelu-fusion 2 --overfit-single-batch 1 --deterministic 0").split()


def test_short_and_long_options_fill_the_same_config():
    config = cli.train_config(SHORT)
    assert config == cli.train_config(LONG)
    assert config == TrainConfig(
        input_train="tr", input_val="va", output_dir="out", model="d6", batch_size=8, seq_len=256,
        total_batch_size=4096, num_iterations=30, learning_rate=1e-3, warmup_iterations=5, final_lr_fraction=0.1,
        lr_schedule="wsd", weight_decay=0.1, val_every=5, val_max_steps=3, sample_every=7, gen_tokens=9,
        checkpoint_every=11, keep_last=2, resume=True, recompute=2, zero_stage=1, master_weights=False,
        skip_update_lossz=3.5, skip_update_gradz=4.5, hellaswag=True, gelu_fusion=2, overfit_single_batch=True,
        deterministic=False)


def test_unset_options_keep_llmc_defaults_and_no_arguments_is_the_quickstart():
    assert cli.train_config(["-x", "-1"]) == TrainConfig()
    from llmc.ops import cuda_available

    quick, expected = cli.train_config([]), TrainConfig.quickstart("cuda" if cuda_available() else "cpu")
    assert quick.output_dir.startswith("runs/quickstart-")  # a new folder per run: no earlier run is touched
    assert dataclasses.replace(quick, output_dir="") == dataclasses.replace(expected, output_dir="")


def test_bad_flags_exit_with_usage(capsys):
    for argv in (["-sl"], ["-y", "maybe"], ["-b", "four"], ["-zz", "1"]):
        with pytest.raises(SystemExit) as info:
            cli.train_config(argv)
        assert info.value.code == 2
    assert "usage: llmc train" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-h"], ["-b", "4", "-h"], ["-h", "--seed", "3"], ["--help"]])
def test_h_without_a_value_shows_help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.train_config(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmc train") and "--hellaswag" in out
    assert cli.train_config(["-h", "1"]).hellaswag and not cli.train_config(["-h", "0"]).hellaswag


def test_o_naming_a_file_says_so(tmp_path, capsys):
    train, _ = write_tiny_shards(tmp_path / "data")
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["train", "-i", train, "-o", str(tmp_path / "notes.txt"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a directory" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_failed_run_leaves_no_empty_directory(tmp_path, capsys):
    out = tmp_path / "runs" / "new"
    assert cli.main(["train", "-i", str(tmp_path / "missing_*.bin"), "-o", str(out), "--device", "cpu"]) == 1
    assert "matches no file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "kept").mkdir()  # a directory the user made stays, even empty
    assert cli.main(["train", "-i", str(tmp_path / "missing_*.bin"), "-o", str(tmp_path / "kept"),
                     "--device", "cpu"]) == 1
    assert (tmp_path / "kept").is_dir()


def test_resume_into_a_missing_directory_is_loud(tmp_path, capsys):
    train, val = write_tiny_shards(tmp_path / "data")
    (tmp_path / "runs" / "tiny_d4").mkdir(parents=True)
    args = ["train", "-i", train, "-j", val, "-e", "d2c32", "-b", "2", "-t", "16", "-x", "1", "-v", "0", "-s", "0",
            "--device", "cpu", "-y", "1"]
    assert cli.main(args + ["-o", str(tmp_path / "runs" / "tiny_d5")]) == 0
    err = capsys.readouterr().err
    assert "WARNING: -y 1 but the output directory" in err and "starting a NEW run" in err
    assert f"Did you mean {tmp_path / 'runs' / 'tiny_d4'}?" in err


def test_routing(capsys, monkeypatch):
    assert cli.main([]) == 2 and "commands:" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    monkeypatch.setitem(cli.COMMANDS, "future", ("llmc.not_written_yet", "main", "later"))
    assert cli.main(["future"]) == 2 and "no llmc.not_written_yet module" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(cli, "train_main", lambda argv: calls.append(argv) or 0)
    assert cli.main(["train", "-b", "2"]) == 0 and calls == [["-b", "2"]]


def test_train_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert cli.main(["train", "-i", str(tmp_path / "missing_*.bin"), "-o", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llmc train: error: shard pattern") and "matches no file" in err


def test_end_to_end_with_llmc_short_flags(tmp_path):
    train, val = write_tiny_shards(tmp_path / "data")
    write_model_file(tmp_path / "start.bin", GPT(tiny_config(), device="cpu", seed=1), dtype="fp32")
    out = tmp_path / "run"
    argv = (f"-i {train} -j {val} -o {out} -e {tmp_path / 'start.bin'} -b 4 -t 16 -d 128 -x 4 -l 1e-3 -u 1 -q 0 "
            f"-k linear -c 0.1 -v 2 -m 1 -s 4 -g 4 -n 2 -nk 1 -y 0 -r 2 -z 0 -w 1 -sl 3 -sg 3 -h 0 -ge 0 -a 0").split()
    proc = subprocess.run([sys.executable, "-m", "llmc", "train", *argv, "--device", "cpu"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step    4/4 | loss" in proc.stdout and "grad_accum_steps=2" in proc.stdout
    log = (out / "main.log").read_text().splitlines()
    assert [line.split()[0] + " " + line.split()[1][:4] for line in log] == [
        "s:0 tel:", "s:0 trl:", "s:1 trl:", "s:2 tel:", "s:2 trl:", "s:3 trl:", "s:4 tel:"]
    assert sorted(read_metrics(out)) == [0, 1, 2, 3]
    assert CheckpointManager(out).steps() == [4]  # -nk 1
    assert (out / "samples.txt").read_text().startswith("=== step 4")


def test_ctrl_c_with_save_on_interrupt_checkpoints_the_last_completed_step(tmp_path):
    import signal
    import time

    train, val = write_tiny_shards(tmp_path / "data")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "llmc", "train", "-i", train, "-j", val, "-o", str(out), "-e", "d2c32", "-b", "2",
            "-t", "16", "-v", "0", "-s", "0", "-k", "constant", "--device", "cpu"]
    proc = subprocess.Popen(args + ["-x", "100000", "--save-on-interrupt", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and
                                          len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout + stderr
    assert "finishing this step and writing its checkpoint" in stderr
    steps = CheckpointManager(out).steps()
    done = sorted(read_metrics(out))
    assert len(steps) == 1 and done == list(range(steps[0])) and steps[0] >= 3  # every completed step, no more
    assert f"interrupted: writing checkpoint at step {steps[0]}" in stdout
    resumed = subprocess.run(args + ["-x", str(steps[0] + 2), "-y", "1"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from the checkpoint at step {steps[0]}" in resumed.stdout
    assert sorted(read_metrics(out)) == list(range(steps[0] + 2))


def test_save_on_interrupt_needs_an_output_directory(capsys):
    assert cli.main(["train", "--save-on-interrupt", "1", "--device", "cpu", "-x", "1"]) == 1
    assert "needs -o and one process" in capsys.readouterr().err


def test_cpu_runs_warn_when_slow_and_say_what_the_process_holds(tmp_path, capsys, monkeypatch):
    import llmc.trainer as trainer

    train, val = write_tiny_shards(tmp_path / "data")
    args = ["train", "-i", train, "-j", val, "-e", "d2c32", "-b", "2", "-t", "16", "-x", "2", "-v", "0", "-s", "0",
            "--device", "cpu"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "WARNING: on this CPU" not in captured.err  # a tiny model is quick
    assert re.search(r"memory after the first step: \d+\.\d\d GiB peak resident", captured.out)
    monkeypatch.setattr(trainer, "CPU_SLOW_STEP_S", 0.0)
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"WARNING: on this CPU a step of this model \(\d+M parameters, 32 tokens\) takes at least", err)
    assert "-e d4c128 -t 256" in err
