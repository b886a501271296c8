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

// Each thread moves kUnroll 16-byte packs per iteration, one grid stride apart, all loads issued before any
// is used: enough bytes in flight per SM to cover HBM latency with a grid that is resident at once.
// n is a multiple of x128::size (checked by the launcher). Outputs may alias inputs (in-place calls): each
// thread reads its packs before writing them, and threads own disjoint packs.
constexpr int kUnroll = 4;

__global__ void gelu_forward_kernel(floatX* out, const floatX* inp, int64_t n) {
  const int64_t n8 = n / x128::size;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p0 < n8; p0 += kUnroll * stride) {
    x128 x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      if (p0 + u * stride < n8) x[u] = load128cs(inp + (p0 + u * stride) * x128::size);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      if (p0 + u * stride >= n8) break;
      x128 y;
#pragma unroll
      for (int k = 0; k < x128::size; k++) y[k] = (floatX)gelu_tanh((float)x[u][k]);
      store128(out + (p0 + u * stride) * x128::size, y);
    }
  }
}

__global__ void gelu_backward_kernel(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n) {
  const int64_t n8 = n / x128::size;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p0 < n8; p0 += kUnroll * stride) {
    x128 x[kUnroll], g[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      if (p0 + u * stride < n8) {
        x[u] = load128cs(inp + (p0 + u * stride) * x128::size);
        g[u] = load128cs(dout + (p0 + u * stride) * x128::size);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      if (p0 + u * stride >= n8) break;
      x128 d;
#pragma unroll
      for (int k = 0; k < x128::size; k++) d[k] = (floatX)((float)g[u][k] * gelu_tanh_grad((float)x[u][k]));
      store128(dinp + (p0 + u * stride) * x128::size, d);
    }
  }
}

// As many blocks as are resident at once (fewer for small n): one wave; each thread then strides through
// its share, so the busiest thread does at most kUnroll packs more than the idlest.
template <class Kernel>
int elementwise_grid(Kernel kernel, int64_t n, int block) {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, 0));
  const int64_t resident = (int64_t)current_device_sm_count() * (per_sm > 0 ? per_sm : 1);
  const int64_t needed = ceil_div<int64_t>(n / x128::size, block);
  return (int)(needed < resident ? needed : resident);
}

}  // namespace

void gelu_forward(floatX* out, const floatX* inp, int64_t n, cudaStream_t stream) {
  LLMC_REQUIRE(n % x128::size == 0, "gelu_forward: n must be a multiple of 8");
  if (n == 0) return;
  const int block = 256;
  gelu_forward_kernel<<<elementwise_grid(gelu_forward_kernel, n, block), block, 0, stream>>>(out, inp, n);
  CUDA_CHECK(cudaGetLastError());
}

void gelu_backward(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n, cudaStream_t stream) {
  LLMC_REQUIRE(n % x128::size == 0, "gelu_backward: n must be a multiple of 8");
  if (n == 0) return;
  const int block = 256;
  gelu_backward_kernel<<<elementwise_grid(gelu_backward_kernel, n, block), block, 0, stream>>>(dinp, dout, inp, n);
  CUDA_CHECK(cudaGetLastError());
}
