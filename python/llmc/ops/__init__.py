"""Typed entry points to the llmc kernels, one module per kernel family (as csrc/kernels/): adamw, attention,
encoder, fp8, fused_classifier, gelu, global_norm, layernorm, matmul; `common` holds the backend and the checks.

Each op validates its tensors (type, device, dtype, contiguity, shape, alignment) and raises a
TypeError/ValueError that says what to fix before any kernel runs. CUDA tensors (bf16) go to the
`_llmc` extension on torch's current stream; CPU tensors go to `llmc.reference` (fp32 math, results
written back in the tensors' dtype). Outputs are allocated here unless passed in with `out=`-style
arguments; parameter gradients are accumulated (+=), activation gradients overwritten.
"""
from __future__ import annotations

from .adamw import adamw_update
from .attention import (ATTENTION_BACKENDS, CUDNN_ATTENTION_HEAD_SIZES, attention_backend, attention_backward,
                        attention_forward)
from .common import CPU_DTYPES, build_info, cuda_available
from .common import extension as _ext
from .encoder import encoder_backward, encoder_forward
from .fp8 import (FP8_BLOCK, FP8_E4M3, FP8_E5M2, FP8_MAX, fp8_amax, fp8_amax_rows, fp8_block_scales,
                  fp8_block_supported, fp8_cast, fp8_quantize_blocks, fp8_quantize_rows, fp8_supported,
                  fp8_update_scales, matmul_fp8)
from .fused_classifier import fused_classifier
from .gelu import gelu_backward, gelu_forward
from .global_norm import global_norm_squared
from .layernorm import fused_residual_layernorm_forward, layernorm_backward, layernorm_forward
from .matmul import bias_grad, matmul_backward, matmul_forward, matmul_tuning_log

__all__ = [
    "build_info", "cuda_available", "CPU_DTYPES",
    "adamw_update",
    "ATTENTION_BACKENDS", "CUDNN_ATTENTION_HEAD_SIZES", "attention_backend", "attention_forward", "attention_backward",
    "encoder_forward", "encoder_backward",
    "FP8_E4M3", "FP8_E5M2", "FP8_MAX", "fp8_supported", "fp8_amax", "fp8_amax_rows", "fp8_cast", "matmul_fp8",
    "fp8_update_scales", "FP8_BLOCK", "fp8_block_scales", "fp8_block_supported",
    "fp8_quantize_blocks", "fp8_quantize_rows",
    "fused_classifier",
    "gelu_forward", "gelu_backward",
    "global_norm_squared",
    "layernorm_forward", "fused_residual_layernorm_forward", "layernorm_backward",
    "matmul_forward", "matmul_backward", "matmul_tuning_log", "bias_grad",
]
