// Fused classifier: softmax cross-entropy loss and its gradient in one kernel, llm.c style.
// Reads logits (N, Vp) bf16 and targets (N) int32; writes losses (N) fp32 and overwrites the logits with
// dlogits = (softmax - onehot(target)) * dloss. Only the first V columns are the vocabulary: columns V..Vp-1
// (padding) take no part in the softmax and get zero gradient. A target of -1 marks an ignored position:
// loss 0, zero gradient row. One block per row, two passes over it: an online max/sum, then the gradient
// write; no probability buffer and nothing (N, V)-sized besides the logits themselves.
#include <cfloat>
#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kClassifierBlock = 1024;

// Softmax statistics of a set of values: their max and sum(exp(x - max)). The empty set is
// (-FLT_MAX, 0): finite, so merging never computes inf - inf.
struct SoftmaxStats {
  float max;
  float sum;
};

__device__ inline SoftmaxStats merge(SoftmaxStats a, SoftmaxStats b) {
  const float m = fmaxf(a.max, b.max);
  return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}

// Both lanes of an xor pair add the same two terms (fp addition commutes), so every lane ends with the same
// bits and the result does not depend on scheduling.
__device__ inline SoftmaxStats warp_reduce_stats(SoftmaxStats s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    SoftmaxStats other = {__shfl_xor_sync(0xffffffff, s.max, off), __shfl_xor_sync(0xffffffff, s.sum, off)};
    s = merge(s, other);
  }
  return s;
}

__device__ inline SoftmaxStats block_reduce_stats(SoftmaxStats s) {
  __shared__ float shared_max[WARP_SIZE], shared_sum[WARP_SIZE];
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  s = warp_reduce_stats(s);
  if (lane == 0) {
    shared_max[warp] = s.max;
    shared_sum[warp] = s.sum;
  }
  __syncthreads();
  const bool present = lane < blockDim.x / WARP_SIZE;
  s = {present ? shared_max[lane] : -FLT_MAX, present ? shared_sum[lane] : 0.0f};
  return warp_reduce_stats(s);
}

__global__ void __launch_bounds__(kClassifierBlock)
    fused_classifier_kernel(floatX* logits, float* losses, const int* targets, float dloss, int V, int Vp) {
  const int64_t row = blockIdx.x;
  floatX* x = logits + row * Vp;
  const int target = targets[row];
  const int npacks = Vp / x128::size;

  if (target < 0) {
    for (int i = threadIdx.x; i < npacks; i += blockDim.x) store128(x + i * x128::size, x128::zeros());
    if (threadIdx.x == 0) losses[row] = 0.0f;
    return;
  }
  // Read before any thread of this block starts overwriting the row (pass 2 begins after a __syncthreads).
  const float target_logit = threadIdx.x == 0 ? (float)x[target] : 0.0f;

  // Pass 1 walks the row backwards, so pass 2, walking forwards, starts on the lines cached most recently.
  SoftmaxStats s = {-FLT_MAX, 0.0f};
  for (int i = npacks - 1 - (int)threadIdx.x; i >= 0; i -= (int)blockDim.x) {
    const x128 p = load128(x + i * x128::size);
    float pmax = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < x128::size; k++) {
      if (i * x128::size + k < V) pmax = fmaxf(pmax, (float)p[k]);
    }
    const float m = fmaxf(s.max, pmax);
    float sum = s.sum * __expf(s.max - m);
#pragma unroll
    for (int k = 0; k < x128::size; k++) {
      if (i * x128::size + k < V) sum += __expf((float)p[k] - m);
    }
    s = {m, sum};
  }
  s = block_reduce_stats(s);
  if (threadIdx.x == 0) losses[row] = s.max + __logf(s.sum) - target_logit;

  // Pass 2: last use of the logits, each pack rewritten in place by the thread that read it.
  const float scale = dloss / s.sum;
  for (int i = threadIdx.x; i < npacks; i += blockDim.x) {
    const x128 p = load128cs(x + i * x128::size);
    x128 d;
#pragma unroll
    for (int k = 0; k < x128::size; k++) {
      const int col = i * x128::size + k;
      const float g = __expf((float)p[k] - s.max) * scale - (col == target ? dloss : 0.0f);
      d[k] = (floatX)(col < V ? g : 0.0f);
    }
    store128(x + i * x128::size, d);
  }
}

}  // namespace

void fused_classifier(floatX* logits, float* losses, const int* targets, float dloss, int N, int V, int Vp,
                      cudaStream_t stream) {
  LLMC_REQUIRE(Vp % x128::size == 0, "fused_classifier: Vp must be a multiple of 8");
  LLMC_REQUIRE(V >= 1 && V <= Vp, "fused_classifier: need 1 <= V <= Vp");
  LLMC_REQUIRE(N >= 0, "fused_classifier: N must be >= 0");
  if (N == 0) return;
  fused_classifier_kernel<<<N, kClassifierBlock, 0, stream>>>(logits, losses, targets, dloss, V, Vp);
  CUDA_CHECK(cudaGetLastError());
}
