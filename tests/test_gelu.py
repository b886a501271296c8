"""gelu_forward / gelu_backward against torch's tanh-approximated GELU in fp32."""
import pytest
import torch
import torch.nn.functional as F

import llmc.ops as ops
from conftest import assert_close, devices_and_dtypes, poisoned, randn, requires_cuda

# (4099, 3072): more 16-byte packs than the resident grid covers in one pass of its 4-pack iterations, so the
# grid-stride loop runs several times and ends part-way through an iteration.
SHAPES = [(1, 8), (7, 768), (1023, 1024), (3, 1600 * 4), (2, 2048), (4099, 3072)]


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_forward_matches_torch(device, dtype, shape):
    x = randn(shape, dtype, device, std=2.0)
    out = poisoned(shape, dtype, device)
    ops.gelu_forward(x, out=out)
    expected = F.gelu(x.float().cpu(), approximate="tanh")
    assert_close(out, expected, dtype, "gelu_forward")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_backward_matches_torch(device, dtype, shape):
    x = randn(shape, dtype, device, std=2.0)
    dout = randn(shape, dtype, device)
    dinp = poisoned(shape, dtype, device)
    ops.gelu_backward(dout, x, dinp=dinp)
    xr = x.float().cpu().requires_grad_(True)
    F.gelu(xr, approximate="tanh").backward(dout.float().cpu())
    assert_close(dinp, xr.grad, dtype, "gelu_backward")


@pytest.mark.parametrize("device,dtype", devices_and_dtypes())
def test_gelu_backward_in_place_and_deterministic(device, dtype):
    x = randn((64, 3072), dtype, device)
    dout = randn((64, 3072), dtype, device)
    expected = ops.gelu_backward(dout, x)
    again = ops.gelu_backward(dout, x)
    assert torch.equal(expected, again)
    in_place = dout.clone()
    ops.gelu_backward(in_place, x, dinp=in_place)
    assert torch.equal(in_place, expected)


def test_gelu_rejects_bad_input():
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="integer|float"):
        ops.gelu_forward(torch.ones(4, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.gelu_forward([1.0, 2.0])
    with pytest.raises(ValueError, match="contiguous"):
        ops.gelu_forward(x.t())
    with pytest.raises(ValueError, match="shape"):
        ops.gelu_backward(torch.randn(4, 16), x)
    with pytest.raises(ValueError, match="shape"):
        ops.gelu_forward(x, out=torch.empty(8, 4))


@requires_cuda
@pytest.mark.cuda
def test_gelu_cuda_rejects_bad_input():
    x = torch.randn(4, 8, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.gelu_forward(x.float())
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.gelu_forward(torch.randn(3, 5, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="one device"):
        ops.gelu_backward(x, x.cpu())
    with pytest.raises(ValueError, match="aligned"):
        ops.gelu_forward(torch.randn(40, device="cuda", dtype=torch.bfloat16)[1:33])
