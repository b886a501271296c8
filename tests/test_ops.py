"""llmc.ops as a package: every name callers use is exported from llmc.ops, each op lives in the module of its
kernel family, and the checks shared by all ops refuse a non-tensor where a tensor goes and a non-bool flag."""
import importlib

import pytest
import torch

import llmc.ops as ops

FAMILIES = {
    "adamw": ["adamw_update"],
    "attention": ["attention_backend", "attention_forward", "attention_backward"],
    "encoder": ["encoder_forward", "encoder_backward"],
    "fp8": ["fp8_supported", "fp8_amax", "fp8_amax_rows", "fp8_cast", "matmul_fp8", "fp8_update_scales",
            "fp8_quantize_blocks", "fp8_quantize_rows", "fp8_block_scales", "fp8_block_supported"],
    "fused_classifier": ["fused_classifier"],
    "gelu": ["gelu_forward", "gelu_backward"],
    "global_norm": ["global_norm_squared"],
    "layernorm": ["layernorm_forward", "fused_residual_layernorm_forward", "layernorm_backward"],
    "matmul": ["matmul_forward", "matmul_backward", "matmul_tuning_log", "bias_grad"],
}


def test_every_op_is_exported_from_its_family_module():
    for family, names in FAMILIES.items():
        module = importlib.import_module(f"llmc.ops.{family}")
        for name in names:
            assert getattr(ops, name) is getattr(module, name), name
    exported = {name for names in FAMILIES.values() for name in names}
    assert {name for name in ops.__all__ if callable(getattr(ops, name))} == \
        exported | {"build_info", "cuda_available"}
    for name in ("CPU_DTYPES", "FP8_E4M3", "FP8_E5M2", "FP8_MAX", "ATTENTION_BACKENDS", "CUDNN_ATTENTION_HEAD_SIZES",
                 "_ext"):
        assert hasattr(ops, name), name


def _bad_calls():
    x, w, b = torch.randn(4, 8), torch.randn(8, 8), torch.randn(8)
    ids = torch.zeros(1, 4, dtype=torch.int32)
    qkv = torch.randn(1, 4, 3, 2, 4)
    one = torch.ones(1)
    x8 = torch.zeros(16, 16, dtype=ops.FP8_E4M3)
    return {
        "out": (lambda: ops.gelu_forward(x, out=3), "out must be a torch.Tensor"),
        "mean": (lambda: ops.layernorm_forward(x, b, b, mean=[0.0] * 4), "mean must be a torch.Tensor"),
        "dinp": (lambda: ops.matmul_backward(x, x, w, torch.zeros(8, 8), dinp="buffer"),
                 "dinp must be a torch.Tensor"),
        "compute_dinp": (lambda: ops.matmul_backward(x, x, w, torch.zeros(8, 8), compute_dinp=1),
                         "compute_dinp must be a bool"),
        "gelu": (lambda: ops.matmul_forward(x, w, gelu=1), "gelu must be a bool"),
        "encoder validate": (lambda: ops.encoder_forward(ids, torch.randn(5, 8), torch.randn(4, 8), validate=0),
                             "validate must be a bool"),
        "classifier validate": (lambda: ops.fused_classifier(torch.randn(4, 8), torch.zeros(4, dtype=torch.int32), 8,
                                                             dloss=1.0, validate=None), "validate must be a bool"),
        "losses": (lambda: ops.fused_classifier(torch.randn(4, 8), torch.zeros(4, dtype=torch.int32), 8,
                                                losses=torch.zeros(4).numpy()), "losses must be a torch.Tensor"),
        "transpose": (lambda: ops.fp8_cast(x, one, transpose=1), "transpose must be a bool"),
        "fp8 dtype": (lambda: ops.fp8_cast(x, one, "e4m3"), "dtype must be torch.float8"),
        "fast_accum": (lambda: ops.matmul_fp8(x8, x8, one, one, fast_accum=1), "fast_accum must be a bool"),
        "deterministic": (lambda: ops.attention_backward(torch.randn(1, 4, 2, 4), qkv, torch.randn(1, 4, 2, 4),
                                                         torch.randn(1, 2, 4), deterministic=1),
                          "deterministic must be None or a bool"),
        "global norm out": (lambda: ops.global_norm_squared(x.view(-1), out=1.0), "out must be a torch.Tensor"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_a_wrong_argument_type_is_a_type_error_naming_it(case):
    call, message = _bad_calls()[case]
    with pytest.raises(TypeError, match=message):
        call()
