"""The README's commands in the order a new user runs them, on a tiny model on the CPU, each process held to 4 GB of
address space beyond what torch and llmc map when loaded: prepare a text file, train into a run directory
(without -n), sample, evaluate and export from that directory, plot it. Checks the files each step leaves and
the lines it prints."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import CAP_4GB_BEYOND_LOADED

# Runs `python -m llmc ARGS` under the cap.
CAPPED = CAP_4GB_BEYOND_LOADED + "sys.argv = ['llmc'] + sys.argv[1:]; runpy.run_module('llmc', run_name='__main__')"


def llmc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", CAPPED, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"llmc {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the memory cap reads /proc (Linux)")
def test_readme_commands_in_order(tmp_path):
    pytest.importorskip("matplotlib", reason="llmc plot needs the optional 'plot' extra (in 'test')")
    pytest.importorskip("safetensors", reason="llmc export needs the optional 'hf' extra")
    from pydoc_data.topics import topics

    (tmp_path / "corpus.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)), encoding="utf-8")

    done = llmc(tmp_path, "prepare", "--input", "corpus.txt", "--name", "docs", "--text-unit", "paragraph",
                "--quiet")
    assert "validation: the first" in done.stdout and "a tenth of the corpus" in done.stdout
    assert (tmp_path / "data" / "docs" / "docs_val_000000.bin").is_file()

    done = llmc(tmp_path, "train", "-i", "data/docs/docs_train_*.bin", "-j", "data/docs/docs_val_*.bin",
                "-o", "runs/tiny", "-e", "d2c64", "-b", "4", "-t", "64", "-x", "20", "-v", "10", "-m", "2", "-s", "20",
                "-g", "16", "--device", "cpu")
    run = tmp_path / "runs" / "tiny"
    assert re.search(r"step   20/20 \| loss .* \d+:\d\d:\d\d elapsed, eta 0:00:00", done.stdout)
    assert "memory after the first step:" in done.stdout
    assert re.search(r"done: 20 steps \(0 -> 20\) in \d+:\d\d:\d\d, 5,120 tokens", done.stdout)
    assert f"model {Path('runs/tiny/model_00000020.bin')}" in done.stdout  # the model a run without -n ends with
    assert {"main.log", "metrics.jsonl", "samples.txt", "model_00000020.bin"} <= {p.name for p in run.iterdir()}
    assert "(+nanz)" not in done.stdout

    done = llmc(tmp_path, "sample", "runs/tiny", "--prompt", "The", "--max-new-tokens", "12")
    assert done.stdout.startswith("--- sample 0\nThe")
    assert "runs/tiny/model_00000020.bin" in done.stderr and "tokens/s" in done.stderr

    done = llmc(tmp_path, "eval", "runs/tiny", "--val", "data/docs/docs_val_*.bin", "--max-batches", "4")
    assert re.search(r"^val_loss \d+\.\d{4}$", done.stdout, re.M)

    old = os.umask(0o022)
    try:
        llmc(tmp_path, "export", "--hf", "hf", "runs/tiny")
    finally:
        os.umask(old)
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o644

    done = llmc(tmp_path, "plot", "runs/tiny", "--out", "curves.png", "--smooth", "0.5")
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
