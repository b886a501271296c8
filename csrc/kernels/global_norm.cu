// Squared L2 norm of a flat bf16 range, accumulated in fp32: out[0] = sum(x^2) (overwritten).
// Deterministic: a fixed grid of kGlobalNormPartials blocks writes one partial sum each to a scratch buffer,
// then one block adds them in a fixed order; no atomics. The range may start at any element (a shard of a
// larger buffer): the elements before the first 16-byte boundary and after the last are summed one by one.
#include <algorithm>
#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kPartialsBlock = 256;

__device__ inline float square(floatX x) {
  const float f = (float)x;
  return f * f;
}

__global__ void __launch_bounds__(kPartialsBlock)
    global_norm_partials_kernel(float* partials, const floatX* x, int64_t n, int64_t head) {
  __shared__ float shared[WARP_SIZE];
  const int64_t thread = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const floatX* body = x + head;
  const int64_t npacks = (n - head) / x128::size;
  float acc = 0.0f;
#pragma unroll 4
  for (int64_t p = thread; p < npacks; p += stride) {
    const x128 v = load128cs(body + p * x128::size);
#pragma unroll
    for (int k = 0; k < x128::size; k++) acc = fmaf((float)v[k], (float)v[k], acc);
  }
  const int64_t tail = head + npacks * x128::size;
  if (thread < head) acc += square(x[thread]);
  if (thread < n - tail) acc += square(x[tail + thread]);
  const float block_sum = block_reduce_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = block_sum;
}

__global__ void __launch_bounds__(kGlobalNormPartials)
    global_norm_finish_kernel(float* out, const float* partials) {
  __shared__ float shared[WARP_SIZE];
  const float total = block_reduce_sum(partials[threadIdx.x], shared);
  if (threadIdx.x == 0) out[0] = total;
}

}  // namespace

void global_norm_squared(float* out, const floatX* inp, int64_t n, float* scratch, cudaStream_t stream) {
  LLMC_REQUIRE(n >= 0, "global_norm_squared: n must be >= 0");
  static_assert(kGlobalNormPartials % WARP_SIZE == 0 && kGlobalNormPartials <= 1024,
                "the finishing kernel runs one thread per partial");
  // bf16 elements are 2-byte aligned, so the distance to the next 16-byte boundary is a whole element count.
  const int64_t misalign = (int64_t)(reinterpret_cast<uintptr_t>(inp) % 16) / (int64_t)sizeof(floatX);
  const int64_t head = std::min<int64_t>(n, (x128::size - misalign) % x128::size);
  global_norm_partials_kernel<<<kGlobalNormPartials, kPartialsBlock, 0, stream>>>(scratch, inp, n, head);
  CUDA_CHECK(cudaGetLastError());
  global_norm_finish_kernel<<<1, kGlobalNormPartials, 0, stream>>>(out, scratch);
  CUDA_CHECK(cudaGetLastError());
}
