// AdamW over one flat range of parameters in a single launch.
// Reads grads (bf16) and the fp32 moments m, v; reads the fp32 master weights, or the bf16 params themselves
// when there are none. Writes m, v, the master weights (fp32) and the params (bf16, stochastically rounded
// from a counter-based hash of (seed, element index), so a run is reproducible bit for bit from its seed).
// The range is a concatenation of tensors; decoupled weight decay applies only to those flagged for it.
// With t = step: g = grad * scale, m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
// w -= lr * (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd * w), as torch.optim.AdamW.
// scale = grad_scale, times max_norm / norm when a device pointer to the squared global gradient norm is given
// and norm = sqrt(norm_squared) exceeds max_norm: gradient clipping decided on the GPU, so the host never waits
// for the norm. The clip factor is formed in double, as a host computing it from the fp32 norm would.
#include <algorithm>
#include <cmath>
#include "common.cuh"
#include "kernels.h"

namespace {

// One pack of 8 elements per thread over a flat grid of 128-thread blocks: 10% faster than one wave of 512-thread
// blocks striding through the range, with bit-identical results (dev/cuda/adamw.cu on an H100).
constexpr int kAdamWBlock = 128;

// Everything the kernel needs besides the pointers, passed by value (__grid_constant__, not copied per thread).
// Adjacent tensors with the same weight decay are merged into one segment.
struct AdamWArgs {
  float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps;
  double grad_scale, max_norm;
  const float* norm_squared;  // nullptr: no clipping
  float inv_bias_correction1, inv_bias_correction2;
  uint32_t seed_key0, seed_key1;
  int num_segments;
  int64_t segment_end[kAdamWMaxSegments];     // exclusive end index of each segment, increasing
  float segment_decay[kAdamWMaxSegments];     // weight decay of each segment (0 where the flag is off)
};

// A 32-bit bijection with full avalanche (xorshift-multiply rounds); host side too, to derive the seed keys.
__host__ __device__ inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__device__ inline uint32_t rounding_bits(const AdamWArgs& a, int64_t idx) {
  return mix32(mix32((uint32_t)idx ^ a.seed_key0) + ((uint32_t)((uint64_t)idx >> 32) ^ a.seed_key1));
}

// Adding 16 uniform random bits below the bf16 mantissa and truncating rounds away from zero with probability
// (discarded bits) / 2^16: unbiased in expectation. inf and nan take the ordinary conversion (truncating a nan
// could turn it into inf).
__device__ inline floatX round_stochastic(float x, uint32_t random) {
  const uint32_t bits = __float_as_uint(x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);
  return __ushort_as_bfloat16((unsigned short)((bits + (random & 0xffffu)) >> 16));
}

// The segment that holds element i (binary search over the segment ends).
__device__ inline int find_segment(const AdamWArgs& a, int64_t i) {
  int lo = 0, hi = a.num_segments - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (i < a.segment_end[mid]) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// Moves seg forward to the segment that holds element i; callers visit increasing i, so this is amortised O(1).
__device__ inline int advance_segment(const AdamWArgs& a, int seg, int64_t i) {
  while (i >= a.segment_end[seg]) seg++;
  return seg;
}

// The factor every gradient is multiplied by (module comment); the same for every thread.
__device__ inline float gradient_scale(const AdamWArgs& a) {
  if (a.norm_squared != nullptr) {
    const double norm = sqrt((double)*a.norm_squared);
    if (norm > a.max_norm) return (float)(a.grad_scale * a.max_norm / norm);
  }
  return (float)a.grad_scale;
}

// One element's update; m and v in place, returns the new weight.
__device__ inline float adamw_element(float grad, float scale, float& m, float& v, float w, float decay,
                                      const AdamWArgs& a) {
  const float g = grad * scale;
  m = a.beta1 * m + a.one_minus_beta1 * g;
  v = a.beta2 * v + a.one_minus_beta2 * g * g;
  const float mhat = m * a.inv_bias_correction1, vhat = v * a.inv_bias_correction2;
  return w - a.lr * (mhat / (sqrtf(vhat) + a.eps) + decay * w);
}

__device__ inline void load8(float (&dst)[8], const float* src) {
  const f128 lo = load128cs(src), hi = load128cs(src + f128::size);
#pragma unroll
  for (int k = 0; k < f128::size; k++) {
    dst[k] = lo[k];
    dst[k + f128::size] = hi[k];
  }
}

__device__ inline void store8(float* dst, const float (&src)[8]) {
  f128 lo, hi;
#pragma unroll
  for (int k = 0; k < f128::size; k++) {
    lo[k] = src[k];
    hi[k] = src[k + f128::size];
  }
  store128cs(dst, lo);
  store128cs(dst + f128::size, hi);
}

// Thread t updates the pack of 8 elements at 8t (16-byte aligned, checked by the launcher); the n % 8 leftover
// elements go one per thread to the threads after the last pack. kMaster: w comes from and goes to `master`;
// otherwise from the bf16 params.
template <bool kMaster>
__global__ void __launch_bounds__(kAdamWBlock)
    adamw_kernel(floatX* params, const floatX* grads, float* m, float* v, float* master, int64_t n,
                 const __grid_constant__ AdamWArgs args) {
  constexpr int P = x128::size;
  static_assert(P == 8, "load8/store8 move 8 fp32 values per pack of bf16");
  const int64_t pack = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t npacks = n / P;
  const float scale = gradient_scale(args);
  if (pack < npacks) {
    const int64_t i = pack * P;
    const x128 g = load128cs(grads + i);
    float mk[P], vk[P], wk[P];
    load8(mk, m + i);
    load8(vk, v + i);
    if constexpr (kMaster) {
      load8(wk, master + i);
    } else {
      const x128 wb = load128(params + i);
#pragma unroll
      for (int k = 0; k < P; k++) wk[k] = (float)wb[k];
    }
    int seg = find_segment(args, i);
    x128 out;
#pragma unroll
    for (int k = 0; k < P; k++) {
      seg = advance_segment(args, seg, i + k);
      wk[k] = adamw_element((float)g[k], scale, mk[k], vk[k], wk[k], args.segment_decay[seg], args);
      out[k] = round_stochastic(wk[k], rounding_bits(args, i + k));
    }
    store8(m + i, mk);
    store8(v + i, vk);
    if constexpr (kMaster) store8(master + i, wk);
    store128(params + i, out);
    return;
  }
  const int64_t i = npacks * P + (pack - npacks);
  if (i < n) {
    float w = kMaster ? master[i] : (float)params[i];
    float mi = m[i], vi = v[i];
    w = adamw_element((float)grads[i], scale, mi, vi, w, args.segment_decay[find_segment(args, i)], args);
    m[i] = mi;
    v[i] = vi;
    if constexpr (kMaster) master[i] = w;
    params[i] = round_stochastic(w, rounding_bits(args, i));
  }
}

// One thread per pack, plus one per leftover element.
template <bool kMaster>
void launch_adamw(floatX* params, const floatX* grads, float* m, float* v, float* master, int64_t n,
                  const AdamWArgs& args, cudaStream_t stream) {
  const int64_t threads = n / x128::size + n % x128::size;
  const int64_t grid = ceil_div<int64_t>(threads, kAdamWBlock);
  LLMC_REQUIRE(grid < ((int64_t)1 << 31), "adamw_update: more than 2^31 blocks of parameters");
  adamw_kernel<kMaster><<<(unsigned)grid, kAdamWBlock, 0, stream>>>(params, grads, m, v, master, n, args);
  CUDA_CHECK(cudaGetLastError());
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void adamw_update(floatX* params, const floatX* grads, float* m, float* v, float* master, int64_t n, double lr,
                  double beta1, double beta2, double eps, double weight_decay, int64_t step, uint64_t seed,
                  double grad_scale, const float* norm_squared, double max_norm,
                  const std::vector<int64_t>& tensor_sizes, const std::vector<bool>& tensor_decay, cudaStream_t stream) {
  LLMC_REQUIRE(step >= 1, "adamw_update: step counts from 1");
  LLMC_REQUIRE(tensor_sizes.size() == tensor_decay.size(),
               "adamw_update: tensor_sizes and tensor_decay must have the same length");
  LLMC_REQUIRE(aligned16(params) && aligned16(grads) && aligned16(m) && aligned16(v) &&
               (master == nullptr || aligned16(master)),
               "adamw_update: every buffer must start on a 16-byte boundary");
  LLMC_REQUIRE(norm_squared == nullptr || max_norm > 0, "adamw_update: max_norm must be > 0 when clipping");
  AdamWArgs args = {};
  int64_t end = 0;
  for (size_t t = 0; t < tensor_sizes.size(); t++) {
    LLMC_REQUIRE(tensor_sizes[t] >= 0, "adamw_update: tensor sizes must be >= 0");
    if (tensor_sizes[t] == 0) continue;
    end += tensor_sizes[t];
    const float decay = tensor_decay[t] ? (float)weight_decay : 0.0f;
    if (args.num_segments > 0 && args.segment_decay[args.num_segments - 1] == decay) {
      args.segment_end[args.num_segments - 1] = end;
      continue;
    }
    LLMC_REQUIRE(args.num_segments < kAdamWMaxSegments,
                 "adamw_update: more than 64 runs of tensors alternate between decay and no decay");
    args.segment_end[args.num_segments] = end;
    args.segment_decay[args.num_segments] = decay;
    args.num_segments++;
  }
  LLMC_REQUIRE(end == n, "adamw_update: tensor_sizes must add up to n");
  if (n == 0) return;
  // Hyperparameters arrive in double and derived ones are formed before rounding to fp32, as torch does.
  args.lr = (float)lr;
  args.beta1 = (float)beta1;
  args.beta2 = (float)beta2;
  args.one_minus_beta1 = (float)(1.0 - beta1);
  args.one_minus_beta2 = (float)(1.0 - beta2);
  args.eps = (float)eps;
  args.grad_scale = grad_scale;
  args.norm_squared = norm_squared;
  args.max_norm = max_norm;
  args.inv_bias_correction1 = (float)(1.0 / (1.0 - std::pow(beta1, (double)step)));
  args.inv_bias_correction2 = (float)(1.0 / (1.0 - std::pow(beta2, (double)step)));
  args.seed_key0 = mix32((uint32_t)seed + 0x9e3779b9u);
  args.seed_key1 = mix32((uint32_t)(seed >> 32) ^ args.seed_key0);
  if (master != nullptr) launch_adamw<true>(params, grads, m, v, master, n, args, stream);
  else launch_adamw<false>(params, grads, m, v, master, n, args, stream);
}
