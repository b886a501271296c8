"""The flat buffer's arithmetic (llmc.sharding): tensor ranges, ZeRO-1 shards and what a shard holds."""
import pytest

from llmc.sharding import LAYER_PARAMS, PARAM_NAMES, check_shard, shard_partition, shard_range, shard_size, \
    tensor_ranges


@pytest.mark.parametrize("n,world_size", [(1000, 2), (1003, 4), (124_475_904, 8), (37, 4)])
def test_shards_cover_the_flat_range_in_aligned_pieces(n, world_size):
    ranges = [shard_range(n, r, world_size) for r in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % 8 == 0 for start, _ in ranges)
    assert ranges[-1][1] - ranges[-1][0] - (ranges[0][1] - ranges[0][0]) < 8 * world_size  # only the tail extra
    assert all(end - start == shard_size(n, world_size) for start, end in ranges[:-1])


def test_shard_partition_cuts_tensors_at_the_shard_edges():
    sizes, decay = [10, 5, 20, 3], [True, False, True, False]
    assert tensor_ranges(sizes) == [(0, 10), (10, 15), (15, 35), (35, 38)]
    assert shard_partition(sizes, decay, 0, 38) == (sizes, decay)
    assert shard_partition(sizes, decay, 8, 16) == ([2, 5, 1], [True, False, True])
    assert shard_partition(sizes, decay, 16, 35) == ([19], [True])
    assert shard_partition(sizes, decay, 35, 38) == ([3], [False])


def test_check_shard_takes_aligned_ranges_of_the_buffer_only():
    assert check_shard([8, 40], 40) == (8, 40)
    for bad in ((1, 40), (0, 41), (8, 8), (0,), "all", (0.0, 8)):
        with pytest.raises(ValueError, match="shard"):
            check_shard(bad, 40)


def test_the_layer_tensors_lie_between_the_embeddings_and_the_final_layernorm():
    assert PARAM_NAMES[:2] == ("wte", "wpe") and PARAM_NAMES[-2:] == ("lnfw", "lnfb")
    assert LAYER_PARAMS == PARAM_NAMES[2:14] and len(LAYER_PARAMS) == 12
