"""llmc.prepare: local files and named recipes (with fake `datasets` / URL fetches serving the fixtures of the
same schema) to llm.c shards, the offline errors, and the cached built-in corpus."""
import json
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import llmc.prepare as prep
from llmc.data import read_shard
from llmc.tokenizer import EOT, decode, encode

FIXTURES = Path(__file__).parent / "fixtures"
FINEWEB = FIXTURES / "fineweb_edu_sample.jsonl"
STORIES = FIXTURES / "tinystories_sample.jsonl"
SHAKESPEARE = FIXTURES / "tinyshakespeare_head.txt"


def _texts(path, column="text"):
    return [json.loads(line)[column] for line in path.read_text(encoding="utf-8").splitlines()]


def _stream(docs):
    """What the shards must hold, concatenated: EOT before every document."""
    return np.concatenate([np.array([EOT] + encode(d), dtype=np.uint16) for d in docs])


def _check_shards(paths, name, docs, shard_size, val_tokens):
    """Shards are named val first then train in order, sized as asked, and concatenate to the token stream."""
    paths = [Path(p) for p in paths]
    assert paths[0].name == f"{name}_val_000000.bin"
    assert [p.name for p in paths[1:]] == [f"{name}_train_{i:06d}.bin" for i in range(1, len(paths))]
    shards = [read_shard(p) for p in paths]
    expected = _stream(docs)
    assert len(shards[0]) == val_tokens
    assert all(len(s) == shard_size for s in shards[1:-1]) and 0 < len(shards[-1]) <= shard_size
    np.testing.assert_array_equal(np.concatenate(shards), expected)
    return shards


@pytest.mark.parametrize("workers", [1, 2])
def test_jsonl_to_shards(tmp_path, workers):
    docs = _texts(FINEWEB)
    total = len(_stream(docs))
    paths = prep.write_shards(prep.file_documents([FINEWEB]), tmp_path, "edu", shard_size=97, val_tokens=50,
                              workers=workers, progress=False)
    assert len(paths) == 1 + -(-(total - 50) // 97)
    shards = _check_shards(paths, "edu", docs, shard_size=97, val_tokens=50)
    assert shards[0][0] == EOT
    assert "café" in decode(np.concatenate(shards).tolist())


def test_val_defaults_to_a_tenth_of_a_small_corpus(tmp_path):
    docs = _texts(STORIES)
    total = len(_stream(docs))
    paths = prep.write_shards(docs, tmp_path, "s", shard_size=40, workers=1, progress=False)
    _check_shards(paths, "s", docs, shard_size=40, val_tokens=total // 10)


@pytest.mark.parametrize("cap,shard_size", [(7, 100), (100, 9)])
def test_val_default_is_capped(tmp_path, monkeypatch, cap, shard_size):
    """A corpus of ten times the cap or more gets a validation shard of min(cap, shard_size) tokens."""
    docs = _texts(FINEWEB)
    assert len(_stream(docs)) >= 10 * min(cap, shard_size)
    monkeypatch.setattr(prep, "AUTO_VAL_MAX", cap)
    paths = prep.write_shards(docs, tmp_path, "c", shard_size=shard_size, workers=1, progress=False)
    _check_shards(paths, "c", docs, shard_size=shard_size, val_tokens=min(cap, shard_size))


def test_val_default_under_100m_tokens_on_the_command_line(tmp_path, capsys):
    """`llmc prepare --input FILE` works for a small corpus without --val-tokens and says what it chose."""
    docs = _texts(FINEWEB)
    out = tmp_path / "out"
    assert prep.main(["--input", str(FINEWEB), "--out-dir", str(out), "--name", "edu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    val = len(_stream(docs)) // 10
    assert f"validation: the first {val:,} tokens, a tenth of the corpus" in printed
    _check_shards(sorted(out.glob("edu_val_*.bin")) + sorted(out.glob("edu_train_*.bin")), "edu", docs,
                  shard_size=prep.DEFAULT_SHARD_SIZE, val_tokens=val)


def test_parquet_with_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in FINEWEB.read_text(encoding="utf-8").splitlines()]
    # fineweb's layout: several parquet files, text in one column among many
    for i in range(2):
        part = rows[i * 4:(i + 1) * 4]
        table = pa.table({"body": [r["text"] for r in part], "id": [r["id"] for r in part],
                          "score": [r["score"] for r in part]})
        pq.write_table(table, tmp_path / f"part-{i:05d}.parquet")
    files = prep.expand_inputs([str(tmp_path / "part-*.parquet")])
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    paths = prep.write_shards(prep.file_documents(files, column="body"), tmp_path / "out", "pq", shard_size=128,
                              val_tokens=64, workers=1, progress=False)
    _check_shards(paths, "pq", [r["text"] for r in rows], shard_size=128, val_tokens=64)
    with pytest.raises(ValueError, match=r"no column 'text'.*'body'"):
        list(prep.file_documents(files))


@pytest.mark.parametrize("unit,sep", [("file", None), ("paragraph", "\n\n"), ("line", "\n")])
def test_text_units(unit, sep):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    docs = list(prep.split_text(text, unit))
    # separators stay with the document before them; only whitespace-only pieces (blank lines) are dropped
    assert "".join(docs) == (text.replace("\n\n", "\n") if unit == "line" else text)
    if sep is None:
        assert docs == [text]
    else:
        assert all(d.strip() for d in docs) and len(docs) == len([p for p in text.split(sep) if p.strip()])
        assert all(d.endswith(sep) for d in docs[:-1])
    assert list(prep.split_text("a\n\n\n\nb", "paragraph")) == ["a\n\n", "b"]  # whitespace-only pieces dropped


def test_text_files_and_format_inference(tmp_path):
    (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "b.md").write_text("second file", encoding="utf-8")
    files = prep.expand_inputs([str(tmp_path / "*.txt"), tmp_path / "b.md"])
    assert list(prep.file_documents(files)) == ["first file", "second file"]
    (tmp_path / "c.csv").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="--format"):
        list(prep.file_documents([tmp_path / "c.csv"]))
    assert list(prep.file_documents([tmp_path / "c.csv"], fmt="text")) == ["x"]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        prep.expand_inputs([str(tmp_path / "*.jsonl")])
    with pytest.raises(ValueError, match="matches no file"):
        prep.expand_inputs([tmp_path / "missing.txt"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        list(prep.file_documents([bad]))
    bad.write_text('{"text": "ok"}\n{"content": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: no field 'text'.*--column"):
        list(prep.file_documents([bad]))
    bad.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="expected a string"):
        list(prep.file_documents([bad]))
    with pytest.raises(ValueError, match="format must be"):
        list(prep.file_documents([bad], fmt="csv"))
    with pytest.raises(ValueError, match="text_unit"):
        list(prep.split_text("x", "sentence"))
    docs = ["short"]
    for kwargs, err in [(dict(shard_size=0), ValueError), (dict(shard_size=1.5), TypeError),
                        (dict(val_tokens=-1), ValueError), (dict(workers=0), ValueError)]:
        with pytest.raises(err):
            prep.write_shards(docs, tmp_path, "x", progress=False, **kwargs)
    with pytest.raises(ValueError, match="name"):
        prep.write_shards(docs, tmp_path, "a/b", progress=False)


def test_too_small_corpus_leaves_nothing(tmp_path):
    docs = _texts(STORIES)
    total = len(_stream(docs))
    for val_tokens in (total, total + 10):
        with pytest.raises(ValueError, match=f"only {total} tokens.*--val-tokens"):
            prep.write_shards(docs, tmp_path, "t", val_tokens=val_tokens, workers=1, progress=False)
        assert list(tmp_path.iterdir()) == []
    # an error after some shards were written removes them too
    bad = tmp_path / "late_error.jsonl"
    bad.write_text(FINEWEB.read_text(encoding="utf-8") + '{"text": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="late_error.jsonl:9: field 'text' is int"):
        prep.write_shards(prep.file_documents([bad]), tmp_path / "out", "t", shard_size=20, val_tokens=20,
                          workers=2, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_shards_need_overwrite(tmp_path):
    docs = _texts(STORIES)
    first = prep.write_shards(docs, tmp_path, "t", shard_size=20, val_tokens=20, workers=1, progress=False)
    (tmp_path / "other_train_000001.bin").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="overwrite"):
        prep.write_shards(docs, tmp_path, "t", shard_size=20, workers=1, progress=False)
    second = prep.write_shards(docs, tmp_path, "t", shard_size=60, val_tokens=20, workers=1, progress=False,
                               overwrite=True)
    assert len(second) < len(first)
    assert sorted(p.name for p in tmp_path.glob("t_*.bin")) == sorted(p.name for p in second)  # no stale shards
    assert (tmp_path / "other_train_000001.bin").read_bytes() == b"not ours"


def test_tokenize_document_checks_uint16(monkeypatch):
    np.testing.assert_array_equal(prep.tokenize_document("Hello world"), [EOT, 15496, 995])
    monkeypatch.setattr(prep, "encode", lambda text: [70000])
    with pytest.raises(ValueError, match="uint16"):
        prep.tokenize_document("x")


# ---------------------------------------------------------------------------------------------------------
# named recipes, served from the fixtures
# ---------------------------------------------------------------------------------------------------------
def _fake_datasets(monkeypatch, rows, calls):
    fake = types.ModuleType("datasets")

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return iter(rows)

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)


@pytest.mark.parametrize("recipe,subset,fixture,config", [
    ("fineweb-edu", None, FINEWEB, "sample-10BT"),
    ("fineweb-edu", "sample-100BT", FINEWEB, "sample-100BT"),
    ("fineweb", "sample-10BT", FINEWEB, "sample-10BT"),
    ("tinystories", None, STORIES, None),
])
def test_hf_recipes(tmp_path, monkeypatch, recipe, subset, fixture, config):
    rows = [json.loads(line) for line in fixture.read_text(encoding="utf-8").splitlines()]
    calls = []
    _fake_datasets(monkeypatch, rows, calls)
    monkeypatch.chdir(tmp_path)
    paths = prep.prepare_recipe(recipe, subset=subset, shard_size=64, val_tokens=32, workers=1, progress=False)
    assert calls == [(prep.RECIPES[recipe].location, config, "train")]
    name = recipe.replace("-", "_")
    _check_shards(paths, name, [r["text"] for r in rows], shard_size=64, val_tokens=32)
    expected_dir = Path("data") / (recipe if subset is None else f"{recipe}-{subset}")
    assert paths[0].parent == expected_dir


def test_tinyshakespeare_recipe(tmp_path, monkeypatch):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    monkeypatch.setattr(prep, "fetch_text", lambda url: text)
    paths = prep.prepare_recipe("tinyshakespeare", tmp_path, val_tokens=30, workers=1, progress=False)
    # llm.c's recipe: one document per blank-line-separated section
    _check_shards(paths, "tinyshakespeare", list(prep.split_text(text, "paragraph")), shard_size=10**8,
                  val_tokens=30)
    assert len(paths) == 2


def test_recipes_offline_say_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(RuntimeError, match=r"pip install 'llmc\[data\]'.*huggingface.co/datasets/HuggingFaceFW/"
                                           r"fineweb-edu.*llmc prepare --input FILES --format parquet --column text"):
        prep.prepare_recipe("fineweb-edu", tmp_path)

    fake = types.ModuleType("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    fake.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(RuntimeError, match=r"ConnectionError.*datasets/roneneldan/TinyStories"):
        prep.prepare_recipe("tinystories", tmp_path)

    def no_network(url, timeout=None):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(RuntimeError, match=r"could not fetch .*tinyshakespeare/input.txt.*--text-unit paragraph"):
        prep.prepare_recipe("tinyshakespeare", tmp_path)
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(ValueError, match="unknown recipe"):
        prep.prepare_recipe("openwebtext", tmp_path)
    with pytest.raises(ValueError, match="subsets"):
        prep.prepare_recipe("fineweb", tmp_path, subset="sample-1BT")


# ---------------------------------------------------------------------------------------------------------
# built-in corpus and the command line
# ---------------------------------------------------------------------------------------------------------
def test_builtin_corpus(tmp_path, monkeypatch):
    from pydoc_data.topics import topics

    monkeypatch.setenv("LLMC_CACHE", str(tmp_path / "env-cache"))
    train, val = prep.builtin_corpus()
    assert train.startswith(str(tmp_path / "env-cache"))
    (val_path,), (train_path,) = Path(val).parent.glob("pydoc_val_*.bin"), Path(train).parent.glob("pydoc_train_*.bin")
    docs = [topics[k] for k in sorted(topics)]
    _check_shards([val_path, train_path], "pydoc", docs, shard_size=prep.DEFAULT_SHARD_SIZE,
                  val_tokens=prep.BUILTIN_VAL_TOKENS)
    stamp = train_path.stat().st_mtime_ns
    assert prep.builtin_corpus() == (train, val)  # cached: not rewritten
    assert train_path.stat().st_mtime_ns == stamp
    explicit = prep.builtin_corpus(tmp_path / "explicit")
    assert explicit[0].startswith(str(tmp_path / "explicit"))


def test_main(tmp_path, capsys):
    out = tmp_path / "out"
    rc = prep.main(["--input", str(FINEWEB), "--out-dir", str(out), "--name", "edu", "--shard-size", "100",
                    "--val-tokens", "60", "--workers", "1", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"train: {out / 'edu_train_*.bin'}" in printed and f"val: {out / 'edu_val_*.bin'}" in printed
    _check_shards(sorted(out.glob("edu_val_*.bin")) + sorted(out.glob("edu_train_*.bin")), "edu", _texts(FINEWEB),
                  shard_size=100, val_tokens=60)
    assert prep.main(["--input", str(FINEWEB), "--out-dir", str(out), "--name", "edu", "--quiet"]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert prep.main(["--builtin", "--out-dir", str(tmp_path / "cache")]) == 0
    assert "pydoc_train_*.bin" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        prep.main(["fineweb-edu", "--input", str(FINEWEB)])  # one source only
