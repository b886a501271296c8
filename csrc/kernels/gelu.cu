// GELU, tanh approximation (GPT-2's): out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// Forward reads inp, writes out. Backward reads dout and inp, writes dinp = dout * gelu'(inp); dinp may be
// dout itself, so the MLP's backward can recompute nothing and allocate nothing. bf16 storage, fp32 math.
#include "common.cuh"
#include "kernels.h"

namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluCubic = 0.044715f;

// The hardware tanh (one MUFU op, max relative error ~2^-11) instead of tanhf's long instruction sequence:
// with tanhf the kernels are bound by arithmetic, not memory; the error is below bf16's rounding.
__device__ inline float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ inline float gelu_tanh(float x) {
  float u = kGeluScale * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + fast_tanh(u));
}

__device__ inline float gelu_tanh_grad(float x) {
  float u = kGeluScale * (x + kGeluCubic * x * x * x);
  float th = fast_tanh(u);
  float sech2 = 1.0f - th * th;
  return 0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
}

// One 16-byte pack per thread per iteration; n is a multiple of x128::size (checked by the launcher).
__global__ void gelu_forward_kernel(floatX* out, const floatX* inp, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x * x128::size;
  for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * x128::size; i < n; i += stride) {
    x128 x = load128cs(inp + i);
    x128 y;
#pragma unroll
    for (int k = 0; k < x128::size; k++) y[k] = (floatX)gelu_tanh((float)x[k]);
    store128(out + i, y);
  }
}

__global__ void gelu_backward_kernel(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x * x128::size;
  for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * x128::size; i < n; i += stride) {
    x128 x = load128cs(inp + i);
    x128 g = load128cs(dout + i);
    x128 d;
#pragma unroll
    for (int k = 0; k < x128::size; k++) d[k] = (floatX)((float)g[k] * gelu_tanh_grad((float)x[k]));
    store128(dinp + i, d);
  }
}

// Enough blocks to fill the GPU several times over, but no more: the kernels stride through the rest.
int elementwise_grid(int64_t n, int block) {
  int64_t needed = ceil_div<int64_t>(n / x128::size, block);
  int64_t cap = (int64_t)current_device_sm_count() * 16;
  return (int)(needed < cap ? (needed > 0 ? needed : 1) : cap);
}

}  // namespace

void gelu_forward(floatX* out, const floatX* inp, int64_t n, cudaStream_t stream) {
  LLMC_REQUIRE(n % x128::size == 0, "gelu_forward: n must be a multiple of 8");
  if (n == 0) return;
  const int block = 256;
  gelu_forward_kernel<<<elementwise_grid(n, block), block, 0, stream>>>(out, inp, n);
  CUDA_CHECK(cudaGetLastError());
}

void gelu_backward(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n, cudaStream_t stream) {
  LLMC_REQUIRE(n % x128::size == 0, "gelu_backward: n must be a multiple of 8");
  if (n == 0) return;
  const int block = 256;
  gelu_backward_kernel<<<elementwise_grid(n, block), block, 0, stream>>>(dinp, dout, inp, n);
  CUDA_CHECK(cudaGetLastError());
}
