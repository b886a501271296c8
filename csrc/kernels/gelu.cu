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

// One 16-byte pack per thread over a flat grid of 128-thread blocks, no loop, plain loads and stores: what torch's
// elementwise kernels do. A microbenchmark on an H100 put it at 100-101% of the copy ceiling, against
// 93% for a one-wave grid-stride loop with 4 streaming loads in flight per thread. n is a multiple of x128::size
// (checked by the launcher). Outputs may alias inputs (in-place calls): each thread reads its pack before
// writing it, and threads own disjoint packs.
constexpr int kBlock = 128;

__global__ void __launch_bounds__(kBlock) gelu_forward_kernel(floatX* out, const floatX* inp, int64_t n8) {
  const int64_t p = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  if (p >= n8) return;
  const x128 x = load128(inp + p * x128::size);
  x128 y;
#pragma unroll
  for (int k = 0; k < x128::size; k++) y[k] = (floatX)gelu_tanh((float)x[k]);
  store128(out + p * x128::size, y);
}

__global__ void __launch_bounds__(kBlock)
    gelu_backward_kernel(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n8) {
  const int64_t p = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  if (p >= n8) return;
  const x128 x = load128(inp + p * x128::size);
  const x128 g = load128(dout + p * x128::size);
  x128 d;
#pragma unroll
  for (int k = 0; k < x128::size; k++) d[k] = (floatX)((float)g[k] * gelu_tanh_grad((float)x[k]));
  store128(dinp + p * x128::size, d);
}

// x = src + bias (per column; bias may be null), then pre = x and out = gelu(x) when gelu, else out = x; src is
// pre when gelu, else out (in place). M (the row length) is a multiple of 8, so a pack never spans two rows.
__global__ void __launch_bounds__(kBlock) bias_gelu_kernel(floatX* out, floatX* pre, const floatX* bias, int64_t n8,
                                                           int M, bool gelu) {
  const int64_t p = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  if (p >= n8) return;
  floatX* src = gelu ? pre : out;
  const x128 x = load128(src + p * x128::size);
  x128 b = x128::zeros();
  if (bias != nullptr) b = load128(bias + (p * x128::size) % M);
  x128 y, z;
#pragma unroll
  for (int k = 0; k < x128::size; k++) {
    const float v = (float)x[k] + (float)b[k];
    z[k] = (floatX)v;
    y[k] = gelu ? (floatX)gelu_tanh(v) : z[k];
  }
  if (gelu) store128(pre + p * x128::size, z);
  store128(out + p * x128::size, y);
}

unsigned elementwise_grid(int64_t n) {
  const int64_t blocks = ceil_div<int64_t>(n / x128::size, kBlock);
  LLMC_REQUIRE(blocks < ((int64_t)1 << 31), "gelu: tensor too large for one launch");
  return (unsigned)blocks;
}

}  // namespace

void gelu_forward(floatX* out, const floatX* inp, int64_t n, cudaStream_t stream) {
  LLMC_REQUIRE(n % x128::size == 0, "gelu_forward: n must be a multiple of 8");
  if (n == 0) return;
  gelu_forward_kernel<<<elementwise_grid(n), kBlock, 0, stream>>>(out, inp, n / x128::size);
  CUDA_CHECK(cudaGetLastError());
}

void gelu_backward(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n, cudaStream_t stream) {
  LLMC_REQUIRE(n % x128::size == 0, "gelu_backward: n must be a multiple of 8");
  if (n == 0) return;
  gelu_backward_kernel<<<elementwise_grid(n), kBlock, 0, stream>>>(dinp, dout, inp, n / x128::size);
  CUDA_CHECK(cudaGetLastError());
}

void bias_gelu_forward(floatX* out, floatX* pre, const floatX* bias, int64_t N, int64_t M, bool gelu,
                       cudaStream_t stream) {
  LLMC_REQUIRE(M % x128::size == 0 && N >= 0, "bias_gelu_forward: M must be a multiple of 8");
  LLMC_REQUIRE(!gelu || pre != nullptr, "bias_gelu_forward: gelu needs pre");
  if (N == 0) return;
  bias_gelu_kernel<<<elementwise_grid(N * M), kBlock, 0, stream>>>(out, pre, bias, N * M / x128::size, (int)M, gelu);
  CUDA_CHECK(cudaGetLastError());
}
