// Fused classifier: softmax cross-entropy loss and its gradient in one kernel, llm.c style.
// Reads logits (N, Vp) bf16 and targets (N) int32; writes losses (N) fp32 and overwrites the logits with
// dlogits = (softmax - onehot(target)) * dloss. Only the first V columns are the vocabulary: columns V..Vp-1
// (padding) take no part in the softmax and get zero gradient. A target of -1 marks an ignored position:
// loss 0, zero gradient row. One block per row, two passes over it: an online max/sum, then the gradient
// write; no probability buffer and nothing (N, V)-sized besides the logits themselves. Rows that fit in shared
// memory (two blocks per SM) are staged there and read from HBM once (fused_classifier_smem_kernel).
#include <cfloat>
#include <map>
#include <mutex>
#include <utility>

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

// The same math with the row staged in shared memory (Vp bf16, 100.6 KB for GPT-2's 50304 columns: two blocks per
// SM on an H100), so that the logits are read from HBM once: the kernel above reads every row twice and relies on
// the L2 for the second pass. Each thread copies packs t, t + kSmemThreads, ... of the row into shared memory by
// cp.async in kSmemChunks commit groups, folds each group into its online max/sum as soon as that group has landed
// (the later groups still in flight), and in pass 2 reads back only the packs it copied itself, so that no barrier
// is needed besides the block reduction's.
constexpr int kSmemThreads = 512;
constexpr int kSmemChunks = 4;

__global__ void __launch_bounds__(kSmemThreads, 2)
    fused_classifier_smem_kernel(floatX* logits, float* losses, const int* targets, float dloss, int V, int Vp) {
  extern __shared__ int4 smem_raw[];
  x128* staged = reinterpret_cast<x128*>(smem_raw);
  const int64_t row = blockIdx.x;
  floatX* x = logits + row * Vp;
  const int target = targets[row];
  const int npacks = Vp / x128::size;

  if (target < 0) {
    for (int i = threadIdx.x; i < npacks; i += blockDim.x) store128(x + i * x128::size, x128::zeros());
    if (threadIdx.x == 0) losses[row] = 0.0f;
    return;
  }
  const float target_logit = threadIdx.x == 0 ? (float)x[target] : 0.0f;

  // Thread t's k-th pack is t + k * kSmemThreads; chunk c holds its packs k in [c * per_chunk, (c + 1) * per_chunk).
  const int per_thread = (npacks + kSmemThreads - 1) / kSmemThreads;
  const int per_chunk = (per_thread + kSmemChunks - 1) / kSmemChunks;
#pragma unroll
  for (int c = 0; c < kSmemChunks; c++) {
    for (int k = c * per_chunk; k < (c + 1) * per_chunk && k < per_thread; k++) {
      const int i = threadIdx.x + k * kSmemThreads;
      if (i < npacks) cp_async16(staged + i, x + i * x128::size);
    }
    cp_async_commit();
  }

  SoftmaxStats s = {-FLT_MAX, 0.0f};
  auto fold_chunk = [&](int c) {
    for (int k = c * per_chunk; k < (c + 1) * per_chunk && k < per_thread; k++) {
      const int i = threadIdx.x + k * kSmemThreads;
      if (i >= npacks) break;
      const x128 p = staged[i];
      float pmax = -FLT_MAX;
#pragma unroll
      for (int e = 0; e < x128::size; e++) {
        if (i * x128::size + e < V) pmax = fmaxf(pmax, (float)p[e]);
      }
      const float m = fmaxf(s.max, pmax);
      float sum = s.sum * __expf(s.max - m);
#pragma unroll
      for (int e = 0; e < x128::size; e++) {
        if (i * x128::size + e < V) sum += __expf((float)p[e] - m);
      }
      s = {m, sum};
    }
  };
  static_assert(kSmemChunks == 4, "the waits below are written out for four chunks");
  cp_async_wait<3>();
  fold_chunk(0);
  cp_async_wait<2>();
  fold_chunk(1);
  cp_async_wait<1>();
  fold_chunk(2);
  cp_async_wait<0>();
  fold_chunk(3);
  s = block_reduce_stats(s);
  if (threadIdx.x == 0) losses[row] = s.max + __logf(s.sum) - target_logit;

  const float scale = dloss / s.sum;
  for (int k = 0; k < per_thread; k++) {
    const int i = threadIdx.x + k * kSmemThreads;
    if (i >= npacks) break;
    const x128 p = staged[i];
    x128 d;
#pragma unroll
    for (int e = 0; e < x128::size; e++) {
      const int col = i * x128::size + e;
      const float g = __expf((float)p[e] - s.max) * scale - (col == target ? dloss : 0.0f);
      d[e] = (floatX)(col < V ? g : 0.0f);
    }
    store128(x + i * x128::size, d);
  }
}

// Whether rows of Vp columns go to the shared-memory kernel: when two of its blocks fit on an SM (else the
// two-pass kernel, which has no limit on Vp).
// Decided once per device and Vp.
bool use_smem_kernel(int Vp) {
  static std::mutex lock;
  static std::map<std::pair<int, int>, bool> decided;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  {
    std::lock_guard<std::mutex> guard(lock);
    const auto it = decided.find({dev, Vp});
    if (it != decided.end()) return it->second;
  }
  const size_t smem = (size_t)Vp * sizeof(floatX);
  int optin = 0, per_sm = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (smem <= (size_t)optin) {
    ensure_dynamic_smem(fused_classifier_smem_kernel, smem);
    CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fused_classifier_smem_kernel, kSmemThreads, smem));
  }
  std::lock_guard<std::mutex> guard(lock);
  return decided[{dev, Vp}] = per_sm >= 2;
}

}  // namespace

void fused_classifier(floatX* logits, float* losses, const int* targets, float dloss, int N, int V, int Vp,
                      cudaStream_t stream) {
  LLMC_REQUIRE(Vp % x128::size == 0, "fused_classifier: Vp must be a multiple of 8");
  LLMC_REQUIRE(V >= 1 && V <= Vp, "fused_classifier: need 1 <= V <= Vp");
  LLMC_REQUIRE(N >= 0, "fused_classifier: N must be >= 0");
  if (N == 0) return;
  if (use_smem_kernel(Vp)) {
    fused_classifier_smem_kernel<<<N, kSmemThreads, (size_t)Vp * sizeof(floatX), stream>>>(logits, losses, targets,
                                                                                          dloss, V, Vp);
  } else {
    fused_classifier_kernel<<<N, kClassifierBlock, 0, stream>>>(logits, losses, targets, dloss, V, Vp);
  }
  CUDA_CHECK(cudaGetLastError());
}
