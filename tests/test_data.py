"""llm.c token shards (write/read/validation) and the DataLoader (layout, shuffling, ranks, wrap, exact resume)."""
import os

import numpy as np
import pytest
import torch

from llmc.data import HEADER_BYTES, DataLoader, read_shard, write_shard


def positional_shards(tmp_path, sizes, prefix="train"):
    """Shards whose token at global position p is p (ids stay below 65536), so a batch tells where it came from."""
    start, paths = 0, []
    for i, n in enumerate(sizes):
        path = tmp_path / f"{prefix}_{i:06d}.bin"
        write_shard(path, np.arange(start, start + n))
        paths.append(path)
        start += n
    return paths


def test_write_shard_layout_is_llmc(tmp_path):
    tokens = np.random.randint(0, 2**16, size=1001)
    path = tmp_path / "x.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * 1001
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 1001] and not header[3:].any()
    assert np.array_equal(np.frombuffer(raw[HEADER_BYTES:], dtype="<u2"), tokens)
    assert np.array_equal(read_shard(path), tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]  # no temporary file left behind


def test_write_shard_accepts_lists_and_tensors(tmp_path):
    write_shard(tmp_path / "a.bin", [5, 6, 65535])
    write_shard(tmp_path / "b.bin", torch.tensor([5, 6, 65535]))
    assert read_shard(tmp_path / "a.bin").tolist() == read_shard(tmp_path / "b.bin").tolist() == [5, 6, 65535]


@pytest.mark.parametrize("tokens,error,match", [
    (np.array([0, 65536]), ValueError, r"\[0, 65535\]"),
    (np.array([-1, 3]), ValueError, r"\[0, 65535\]"),
    (np.array([1.5, 2.0]), TypeError, "integers"),
    (np.zeros((2, 3), dtype=np.int64), ValueError, "1-D"),
    (np.array([], dtype=np.uint16), ValueError, "1 to"),
])
def test_write_shard_rejects_bad_tokens(tmp_path, tokens, error, match):
    with pytest.raises(error, match=match):
        write_shard(tmp_path / "x.bin", tokens)
    assert not list(tmp_path.iterdir())


def corrupt(path, *, magic=None, version=None, count=None, cut=0, extra=0):
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(raw[:HEADER_BYTES], dtype=np.int32).copy()
    for i, v in enumerate((magic, version, count)):
        if v is not None:
            header[i] = v
    raw[:HEADER_BYTES] = header.tobytes()
    path.write_bytes(bytes(raw[:len(raw) - cut]) + b"\0" * extra)


@pytest.mark.parametrize("change,match", [
    (dict(magic=20240326), "magic 20240326"),
    (dict(version=2), "version 2"),
    (dict(cut=2), "truncated"),
    (dict(extra=2), "longer than its header"),
    (dict(count=0), "at least one"),
    (dict(cut=2 * 100 + 1000), "shorter than the 1024-byte header"),
])
def test_read_shard_rejects_bad_files_naming_them(tmp_path, change, match):
    path = tmp_path / "bad.bin"
    write_shard(path, np.arange(100))
    corrupt(path, **change)
    with pytest.raises(ValueError, match=match) as info:
        read_shard(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=match):
        DataLoader(str(path), 1, 4)


def test_loader_unshuffled_reads_consecutive_batches_and_shifted_targets(tmp_path):
    positional_shards(tmp_path, [3 * 8 + 1, 2 * 8 + 5])
    loader = DataLoader(str(tmp_path / "train_*.bin"), B=2, T=4, shuffle=False)
    assert loader.num_tokens == 25 + 21
    starts = []
    for _ in range(5 + 2):
        x, y = loader.next_batch()
        assert x.dtype == y.dtype == torch.int32 and x.shape == y.shape == (2, 4)
        assert torch.equal(x.flatten(), torch.arange(x[0, 0], x[0, 0] + 8, dtype=torch.int32))
        assert torch.equal(y.flatten(), x.flatten() + 1)
        starts.append(int(x[0, 0]))
    # shard 0: 3 samples of 8; shard 1 (starts at 25): 2 samples; then epoch 1 from the start
    assert starts == [0, 8, 16, 25, 33, 0, 8]
    assert loader.epoch == 1


def row_starts(loader, batches):
    """The first input token (= global position, positional_shards) of every row of the next `batches` batches."""
    return [int(t) for _ in range(batches) for t in loader.next_batch()[0][:, 0]]


def test_shuffled_epoch_visits_every_window_once_and_reshuffles(tmp_path):
    sizes = [10 * 6 + 1, 7 * 6 + 3, 4 * 6 + 1]
    positional_shards(tmp_path, sizes)
    offsets = np.cumsum([0] + sizes[:-1])
    every = sorted(int(o) + 3 * k for o, n in zip(offsets, sizes) for k in range((n - 1) // 6 * 2))
    batches = len(every) // 2
    loader = DataLoader(str(tmp_path / "*.bin"), B=2, T=3, seed=7)
    first, second = row_starts(loader, batches), row_starts(loader, batches)
    assert sorted(first) == every and sorted(second) == every
    assert first != every and first != second  # shuffled, and differently in the next epoch
    again = DataLoader(str(tmp_path / "*.bin"), B=2, T=3, seed=7)
    assert row_starts(again, 2 * batches) == first + second  # deterministic from the seed
    other = DataLoader(str(tmp_path / "*.bin"), B=2, T=3, seed=8)
    assert row_starts(other, batches) != first
    again.reset()
    assert row_starts(again, batches) == first


def test_shuffled_rows_of_a_batch_come_from_their_own_places(tmp_path):
    """Each row of a shuffled batch is its own window of the corpus, not the neighbour of the row before it (llm.c
    shuffles whole B*T blocks); unshuffled batches are contiguous text, as llm.c's."""
    B, T = 16, 8
    positional_shards(tmp_path, [4000 * T + 1, 3000 * T + 1])
    loader = DataLoader(str(tmp_path / "*.bin"), B, T, seed=3)
    x, y = loader.next_batch()
    assert torch.equal(y[:, :-1], x[:, 1:])  # each row still reads T+1 consecutive tokens
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    starts = x[:, 0].tolist()
    assert sum(b - a == T for a, b in zip(starts, starts[1:])) <= 1
    assert len({s >= 4000 * T + 1 for s in starts}) == 2  # both shards within one batch
    x, _ = DataLoader(str(tmp_path / "*.bin"), B, T, shuffle=False).next_batch()
    assert torch.equal(x.flatten(), torch.arange(B * T, dtype=torch.int32))


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_read_disjoint_slices_that_cover_the_epoch(tmp_path, shuffle):
    B, T, W = 2, 3, 3
    sizes = [5 * W * B * T + 1, 3 * W * B * T + 4]
    positional_shards(tmp_path, sizes)
    n = sum((s - 1) // (W * B * T) for s in sizes)
    seen = []
    for rank in range(W):
        loader = DataLoader(str(tmp_path / "*.bin"), B, T, rank=rank, world_size=W, shuffle=shuffle, seed=3)
        for _ in range(n):
            x, _ = loader.next_batch()
            seen.extend(x.flatten().tolist())
    offsets = np.cumsum([0] + sizes[:-1])
    expected = [int(o) + i for o, s in zip(offsets, sizes) for i in range((s - 1) // (W * B * T) * W * B * T)]
    assert sorted(seen) == expected


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_step_reads_the_same_tokens_however_it_is_split_among_ranks(tmp_path, shuffle):
    """World size x accumulation = 4 in every split: each optimizer step covers the same B*T pieces, in the same
    (micro-step, rank) positions, so N-GPU training matches 1-GPU training with the same total batch."""
    B, T = 2, 3
    positional_shards(tmp_path, [7 * 4 * B * T + 1, 5 * 4 * B * T + 3])
    steps = 7 + 5 + 4  # into the second epoch

    def pieces(world_size):
        loaders = [DataLoader(str(tmp_path / "*.bin"), B, T, rank=r, world_size=world_size, shuffle=shuffle, seed=5,
                              accum=4 // world_size) for r in range(world_size)]
        out = []
        for _ in range(steps):
            out.append([loaders[r].next_batch()[0].flatten().tolist() for k in range(4 // world_size)
                        for r in range(world_size)])
        return out

    one = pieces(1)
    rows = {tuple(x[i:i + T]) for step in one for x in step for i in range(0, B * T, T)}
    assert len(rows) == (7 + 5) * 4 * B  # each window of the epoch once; the 2nd epoch brings no new one
    for world_size in (2, 4):
        split = pieces(world_size)
        # a step of one rank accumulating pieces k = 0..3 equals ranks r of micro-step m with k = m*world + r
        assert [sorted(map(tuple, s)) for s in split] == [sorted(map(tuple, s)) for s in one]


def test_shards_smaller_than_a_step_fall_back_to_micro_batch_samples(tmp_path):
    B, T = 2, 3
    positional_shards(tmp_path, [5 * B * T + 1, 3 * B * T + 1])  # 5 and 3 micro-batches; a step needs 4
    loader = DataLoader(str(tmp_path / "*.bin"), B, T, accum=4, shuffle=False)
    assert loader.block_rows == B
    seen = [loader.next_batch()[0].flatten().tolist() for _ in range(8)]
    assert sorted(x for batch in seen for x in batch) == list(range(5 * B * T)) + \
        list(range(5 * B * T + 1, 5 * B * T + 1 + 3 * B * T))  # every micro-batch of the epoch once
    state = loader.state_dict()
    again = DataLoader(str(tmp_path / "*.bin"), B, T, accum=4, shuffle=False)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()[0], loader.next_batch()[0])


@pytest.mark.parametrize("accum", [1, 2])  # with 2, odd cuts stop in the middle of a step's sample
def test_state_dict_resumes_exactly_across_shards_and_epochs(tmp_path, accum):
    positional_shards(tmp_path, [4 * 8 + 1, 3 * 8 + 1, 5 * 8 + 1])
    pattern = str(tmp_path / "*.bin")
    reference = DataLoader(pattern, 2, 4, seed=11, accum=accum)
    expected = [reference.next_batch() for _ in range(40)]
    for cut in (0, 3, 4, 11, 12, 13, 25):
        loader = DataLoader(pattern, 2, 4, seed=11, accum=accum)
        for _ in range(cut):
            loader.next_batch()
        state = loader.state_dict()
        resumed = DataLoader(pattern, 2, 4, seed=11, accum=accum)
        resumed.next_batch()
        resumed.load_state_dict(state)
        for x_exp, y_exp in expected[cut:cut + 15]:
            x, y = resumed.next_batch()
            assert torch.equal(x, x_exp) and torch.equal(y, y_exp)


def test_load_state_dict_rejects_bad_positions_and_other_layouts(tmp_path):
    positional_shards(tmp_path, [100, 120])
    pattern = str(tmp_path / "*.bin")
    state = DataLoader(pattern, 2, 4, seed=1).state_dict()
    for row in (1, -2, 10**6, "0", None):
        with pytest.raises(ValueError, match="row"):
            DataLoader(pattern, 2, 4, seed=1).load_state_dict({**state, "row": row})
    with pytest.raises(ValueError, match="epoch"):
        DataLoader(pattern, 2, 4, seed=1).load_state_dict({**state, "epoch": -1})
    older = {k: v for k, v in state.items() if k not in ("rows", "row")}  # a loader state of another layout
    with pytest.raises(ValueError, match="rows: saved None"):
        DataLoader(pattern, 2, 4, seed=1).load_state_dict(older)


def test_load_state_dict_rejects_other_settings(tmp_path):
    positional_shards(tmp_path, [100, 120])
    pattern = str(tmp_path / "*.bin")
    state = DataLoader(pattern, 2, 4, seed=1).state_dict()
    with pytest.raises(ValueError, match="B: saved 2, now 3"):
        DataLoader(pattern, 3, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        DataLoader(pattern, 2, 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="files"):
        DataLoader(str(tmp_path / "train_000000.bin"), 2, 4, seed=1).load_state_dict(state)


def test_loader_bad_inputs(tmp_path):
    positional_shards(tmp_path, [2 * 4 * 8])
    pattern = str(tmp_path / "*.bin")
    with pytest.raises(ValueError, match="matches no file"):
        DataLoader(str(tmp_path / "nothing_*.bin"), 2, 4)
    with pytest.raises(ValueError, match="empty"):
        DataLoader("", 2, 4)
    os.mkdir(tmp_path / "dir.bin")
    with pytest.raises(ValueError, match="matches no file"):
        DataLoader(str(tmp_path / "dir.bin"), 2, 4)
    with pytest.raises(ValueError, match=r"fewer than one batch needs .* = 65"):
        DataLoader(pattern, 8, 8)
    with pytest.raises(ValueError, match=r"fewer than one batch needs .* = 129"):
        DataLoader(pattern, 4, 8, rank=1, world_size=4)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        DataLoader(pattern, 2, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="B must be at least 1"):
        DataLoader(pattern, 0, 4)
    with pytest.raises(TypeError, match="T must be an int"):
        DataLoader(pattern, 2, 4.0)
    DataLoader(pattern, 7, 9)  # exactly B*T+1 tokens is enough
