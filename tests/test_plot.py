"""llmc.plot: main.log parsing and the PNG of one or more runs (fixture logs under tests/fixtures/logs)."""
import json
import sys
from pathlib import Path

import pytest

import llmc.plot as plot

LOGS = Path(__file__).parent / "fixtures" / "logs"
RUN_A, RUN_B = LOGS / "run_a" / "main.log", LOGS / "run_b"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_parse_log():
    streams = plot.parse_log(RUN_A)
    assert streams["tel"] == ([0, 5, 10], [10.9882, 8.0511, 6.9012])
    assert streams["eval"] == ([0, 5, 10], [0.2480, 0.2520, 0.2600])
    steps, values = streams["trl"]
    assert steps == list(range(11)) and values[0] == 10.9951 and values[10] == 6.8803  # extra fields ignored
    resumed = plot.parse_log(RUN_B)  # a directory holding main.log; step 5 logged again after a resume
    assert resumed["trl"] == ([0, 5, 8, 10], [10.9930, 8.4500, 7.9000, 7.3000])
    assert resumed["eval"] == ([], [])


def test_parse_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        plot.parse_log(tmp_path / "missing.log")
    (tmp_path / "other.log").write_text("step 1/10 | loss 3.2\n")
    with pytest.raises(ValueError, match="no 's:<step>"):
        plot.parse_log(tmp_path / "other.log")
    (tmp_path / "bad.log").write_text("s:1 trl:3.0\ns:x trl:2.0\n")
    with pytest.raises(ValueError, match="s:x trl:2.0"):
        plot.parse_log(tmp_path / "bad.log")


def test_png_from_fixture_logs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    out = tmp_path / "curves" / "runs.png"
    assert plot.main([str(RUN_A), str(RUN_B), "--out", str(out), "--gpt2", "124M",
                      "--loss-ref", "baseline=3.28", "--title", "fixture"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1600, 1200)  # loss, HellaSwag and run_a's one lr point: two rows of two
    two = plot.main([str(RUN_A), str(RUN_B), "--out", str(out), "--panels", "loss,hellaswag"])
    assert two == 0 and _size(out) == (1600, 600)  # loss and HellaSwag side by side
    single = plot.plot_runs([RUN_B], tmp_path / "loss_only.png", labels=["b"])
    assert _size(single) == (800, 600)  # no HellaSwag, lr or throughput data, no refs: one panel


def _size(png):
    data = Path(png).read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_smoothing():
    assert plot.smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    # weight 0.5: averages 0.5, 1.25, 2.125 over the debiasing factors 0.5, 0.75, 0.875
    assert plot.smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 5 / 3, 17 / 7])
    assert plot.smooth([4.0] * 5, 0.9) == pytest.approx([4.0] * 5)  # a constant stays put from the first point
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            plot.smooth([1.0], bad)


def test_lr_and_throughput_panels_from_a_run_directory(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    run = tmp_path / "run"
    run.mkdir()
    (run / "main.log").write_text("".join(f"s:{i} trl:{5 - i / 10:.4f} lr:{i * 1e-4:.6f} norm:1.0\n"
                                          for i in range(10)))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0, "tokens_per_s": 1000.0 + i})
                                               + "\n" for i in range(10)))
    assert plot.parse_throughput(run) == (list(range(10)), [1000.0 + i for i in range(10)])
    assert plot.parse_log(run)["lr"] == (list(range(10)), [float(f"{i * 1e-4:.6f}") for i in range(10)])
    out = tmp_path / "p.png"
    assert plot.main([str(run), "--out", str(out), "--smooth", "0.9"]) == 0
    assert _size(out) == (1600, 1200)  # loss, lr, throughput
    assert plot.main([str(run), "--out", str(out), "--panels", "loss,throughput"]) == 0
    assert _size(out) == (1600, 600)
    capsys.readouterr()
    assert plot.main([str(run), "--out", str(out), "--panels", "loss,speed"]) == 1
    assert "unknown panel(s) ['speed']" in capsys.readouterr().err
    assert plot.main([str(run), "--out", str(out), "--smooth", "1.5"]) == 1
    assert "smoothing must lie in [0, 1)" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert plot.main([str(run), "--out", str(out)]) == 1
    assert "metrics.jsonl:1: not a metrics record" in capsys.readouterr().err


def test_plot_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="one label per log"):
        plot.plot_runs([RUN_A, RUN_B], tmp_path / "x.png", labels=["a"])
    with pytest.raises(ValueError, match="at least one log"):
        plot.plot_runs([], tmp_path / "x.png")
    with pytest.raises(SystemExit):
        plot.main([str(RUN_A), "--hellaswag-ref", "no-value"])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot.main([str(RUN_A), "--out", str(tmp_path / "x.png")]) == 1
    assert "pip install 'llmc[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
