"""llmc.trackers and `llmc train --log`: TensorBoard event files with the run's own numbers, W&B calls (a recording
stand-in for the wandb module; the real package offline where it is installed), and the errors before any work."""
import json
import sys
import types

import pytest

from llmc import cli
from llmc.trackers import parse_trackers
from train_helpers import write_tiny_shards

STEPS = 4


def _train_args(tmp_path, out, *extra):
    train, val = write_tiny_shards(tmp_path / "data")
    return ["train", "-i", train, "-j", val, "-o", str(out), "-e", "d2c32", "-b", "2", "-t", "16", "-x", str(STEPS),
            "-v", "2", "-m", "1", "-s", "4", "-g", "4", "--device", "cpu", *extra]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_parse_trackers():
    assert parse_trackers("") == () and parse_trackers(None) == ()
    assert parse_trackers("TensorBoard, wandb,tensorboard") == ("tensorboard", "wandb")
    assert parse_trackers(["wandb"]) == ("wandb",)
    with pytest.raises(ValueError, match="unknown tracker.*'mlflow'.*tensorboard, wandb"):
        parse_trackers("tensorboard,mlflow")


def test_tensorboard_gets_the_runs_numbers(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is the optional 'tensorboard' extra (in 'test')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert cli.main(_train_args(tmp_path, out, "--log", "tensorboard")) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert {"train/loss", "train/norm", "train/lr", "train/tokens_per_s", "train/ms", "val/loss"} <= \
        set(events.Tags()["scalars"])
    records = _metrics(out)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in records] == list(range(STEPS))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)  # stored as float32
    val_steps = [int(line.split()[0][2:]) for line in (out / "main.log").read_text().splitlines() if " tel:" in line]
    assert [e.step for e in events.Scalars("val/loss")] == val_steps == [0, 2, 4]


class _FakeWandb(types.ModuleType):
    """Records what llmc asks of wandb: init's arguments, each log call, finish."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        fake = self

        class Run:
            def log(self, values, step):
                fake.calls.append(("log", step, dict(values)))

            def finish(self):
                fake.calls.append(("finish",))

        return Run()


def test_wandb_gets_config_scalars_samples_and_finish(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("llmc.trainer.tracker_installed", lambda name: True)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    out = tmp_path / "myrun"
    assert cli.main(_train_args(tmp_path, out, "--log", "wandb")) == 0
    kind, init = fake.calls[0]
    assert kind == "init" and init["project"] == "llmc" and init["name"] == "myrun" and init["dir"] == str(out)
    assert init["config"]["batch_size"] == 2 and init["config"]["num_iterations"] == STEPS
    assert fake.calls[-1] == ("finish",)
    logged = [c for c in fake.calls if c[0] == "log"]
    train = [(step, values["train/loss"]) for _, step, values in logged if "train/loss" in values]
    assert train == [(r["step"], r["loss"]) for r in _metrics(out)]
    assert [step for _, step, values in logged if "val/loss" in values] == [0, 2, 4]
    assert [step for _, step, values in logged if "samples" in values] == [4]


def test_wandb_offline_with_the_real_package(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is the optional 'wandb' extra")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    assert cli.main(_train_args(tmp_path, out, "--log", "wandb")) == 0
    assert list((out / "wandb").glob("offline-run-*"))


def test_tracker_errors_come_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    assert cli.main(_train_args(tmp_path, out, "--log", "wandb")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'llmc[wandb]'" in err
    assert not out.exists()
    assert cli.main(_train_args(tmp_path, out, "--log", "neptune")) == 1
    assert "unknown tracker(s) ['neptune']" in capsys.readouterr().err
    args = _train_args(tmp_path, out, "--log", "tensorboard")
    i = args.index("-o")
    assert cli.main(args[:i] + args[i + 2:]) == 1
    assert "--log tensorboard writes into the run directory: give -o" in capsys.readouterr().err
