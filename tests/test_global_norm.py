"""global_norm_squared against torch.linalg.vector_norm(x)**2 (in fp64): odd lengths, shards, bit-identical reruns."""
import pytest
import torch

import llmc.ops as ops
from conftest import assert_close, devices_and_dtypes, poisoned, randn, requires_cuda

LENGTHS = [1, 7, 8, 1023, 4097, 1_000_003]


def expected_norm2(x):
    # Computed in fp64: torch's fp32 vector_norm on the CPU sums sequentially per thread and is itself off by
    # ~2e-5 at a million elements, beyond the fp32 table.
    return (torch.linalg.vector_norm(x.double().cpu()) ** 2).float().reshape(1)


# The result is fp32 on both paths, summed from the same values (bf16 ones upcast exactly on CUDA): held to the
# fp32 table; the difference is the order of fp32 additions.
@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("n", LENGTHS)
def test_global_norm_matches_torch(device, dtype, n):
    x = randn((n,), dtype, device, std=3.0)
    out = poisoned((1,), torch.float32, device)
    assert ops.global_norm_squared(x, out=out) is out
    assert_close(out, expected_norm2(x), torch.float32, "global_norm_squared")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_global_norm_of_shards_at_any_offset(device, dtype):
    buf = randn((100_003,), dtype, device)
    for start, length in [(0, 100_003), (1, 50_000), (3, 7), (5, 2), (13, 99_990), (8, 16), (7, 1), (4, 0)]:
        shard = buf[start:start + length]
        got = ops.global_norm_squared(shard)
        assert got.shape == (1,) and got.dtype == torch.float32
        assert_close(got, expected_norm2(shard), torch.float32, f"shard [{start}, {start + length})")
    halves = ops.global_norm_squared(buf[:50_001]) + ops.global_norm_squared(buf[50_001:])
    assert_close(halves, expected_norm2(buf), torch.float32, "sum over two shards")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_global_norm_is_deterministic(device, dtype):
    buf = randn((2_000_005,), dtype, device)
    for x in (buf, buf[3:]):
        first = ops.global_norm_squared(x)
        for _ in range(3):
            assert torch.equal(ops.global_norm_squared(x), first)


def test_global_norm_rejects_bad_input():
    x = torch.randn(64)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.global_norm_squared([1.0, 2.0])
    with pytest.raises(TypeError, match="dtype"):
        ops.global_norm_squared(torch.ones(8, dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous"):
        ops.global_norm_squared(x[::2])
    with pytest.raises(TypeError, match="float32"):
        ops.global_norm_squared(x, out=torch.empty(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        ops.global_norm_squared(x, out=torch.empty(2))


@requires_cuda
@pytest.mark.cuda
def test_global_norm_cuda_rejects_bad_input():
    x = torch.randn(64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.global_norm_squared(x.float())
    with pytest.raises(ValueError, match="one device"):
        ops.global_norm_squared(x, out=torch.empty(1))
