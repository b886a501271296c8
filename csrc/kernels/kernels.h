// Launcher declarations: the only header the bindings include.
// Conventions: raw device pointers, sizes, the CUDA stream last. Launchers check their launch and throw
// std::runtime_error on CUDA errors. Parameter gradients are accumulated (+=); activation gradients are
// overwritten unless a launcher says otherwise.
#pragma once
#include <cstdint>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

typedef __nv_bfloat16 floatX;

// ---- gelu.cu ----
void gelu_forward(floatX* out, const floatX* inp, int64_t n, cudaStream_t stream);
// dinp may alias dout (in-place backward).
void gelu_backward(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n, cudaStream_t stream);

// ---- encoder.cu ----

// ---- layernorm.cu ----

// ---- matmul.cu ----

// ---- attention (attention_cudnn.cpp, attention.cu) ----

// ---- fused_classifier.cu ----

// ---- adamw.cu ----

// ---- global_norm.cu ----
