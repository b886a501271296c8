// FP8 (Hopper) support for the opt-in FP8 matmuls: casts from bf16 with a per-tensor scale, and the scale
// bookkeeping. The GEMMs themselves are in matmul.cu (matmul_fp8).
//
// A tensor x is stored as q = saturate(x * s) in e4m3 (activations, weights; max 448) or e5m2 (gradients; max
// 57344), with s = fp8_max / amax_ref: amax_ref is the largest |x| the scale is meant for. The GEMM multiplies by
// 1/s again (cuBLASLt's A/B scale pointers), which every cast writes to scale_inv. Two ways to pick amax_ref:
//   - current scaling (weights): fp8_amax() first, then the cast with amax_ref = that amax;
//   - delayed scaling (activations, gradients: no second pass over big tensors): amax_ref is the largest amax of
//     the last few casts of that tensor (fp8_update_scales keeps the history); the cast records this tensor's
//     amax (amax_out) for the next ones. Values beyond amax_ref saturate to +-fp8_max.
// Maxima are combined with atomicMax on the bits of non-negative floats: order-independent, so every run gives
// the same bits.
#include <cuda_fp8.h>

#include "column_sums.cuh"
#include "common.cuh"
#include "kernels.h"

namespace {

constexpr float kE4M3Max = 448.0f;
constexpr float kE5M2Max = 57344.0f;

// Correctly rounded divisions (the build uses --use_fast_math): the same bits as torch's fp32 arithmetic.
__device__ inline float fp8_scale(const float* amax_ref, float fp8_max) {
  const float a = *amax_ref;
  return a > 0.0f && a <= 3.4e38f ? __fdiv_rn(fp8_max, a) : 1.0f;
}

// Non-negative floats order like their bit patterns as unsigned ints.
__device__ inline void atomic_max_nonneg(float* addr, float v) {
  atomicMax(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
}

template <bool kE5M2>
__device__ inline uint8_t to_fp8(float v) {
  return kE5M2 ? (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E5M2)
               : (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

// Block-wide max of v (>= 0) added to *amax with one atomic per block.
__device__ inline void block_amax(float* amax, float v) {
  __shared__ float warp_max[32];
  v = warp_reduce_max(v);
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x / WARP_SIZE) ? warp_max[lane] : 0.0f;
    v = warp_reduce_max(v);
    if (lane == 0) atomic_max_nonneg(amax, v);
  }
}

__global__ void amax_kernel(float* amax, const floatX* x, int64_t n) {
  const int64_t n8 = n / x128::size;
  float m = 0.0f;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < n8; p += (int64_t)gridDim.x * blockDim.x) {
    const x128 v = load128(x + p * x128::size);
#pragma unroll
    for (int k = 0; k < x128::size; k++) m = fmaxf(m, fabsf((float)v[k]));
  }
  const int64_t tail = n8 * x128::size + threadIdx.x;  // the last n % 8 elements, read by block 0
  if (blockIdx.x == 0 && tail < n) m = fmaxf(m, fabsf((float)x[tail]));
  block_amax(amax, m);
}

// amax[r] = max |x[r, :]| for rows of n elements (a multiple of 8): grid.y = rows, grid.x blocks share a row.
__global__ void amax_rows_kernel(float* amax, const floatX* x, int64_t n) {
  const floatX* row = x + (int64_t)blockIdx.y * n;
  float m = 0.0f;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < n / x128::size;
       p += (int64_t)gridDim.x * blockDim.x) {
    const x128 v = load128(row + p * x128::size);
#pragma unroll
    for (int k = 0; k < x128::size; k++) m = fmaxf(m, fabsf((float)v[k]));
  }
  block_amax(amax + blockIdx.y, m);
}

// out[i] = fp8(x[i] * s), 16 elements (two 16-byte loads, one 16-byte store) per thread and iteration.
template <bool kE5M2>
__global__ void cast_kernel(uint8_t* out, const floatX* x, int64_t n16, const float* amax_ref, float* scale_inv,
                            float* amax_out) {
  const float s = fp8_scale(amax_ref, kE5M2 ? kE5M2Max : kE4M3Max);
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale_inv = __fdiv_rn(1.0f, s);
  float m = 0.0f;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < n16; p += (int64_t)gridDim.x * blockDim.x) {
    const x128 lo = load128cs(x + p * 16), hi = load128cs(x + p * 16 + 8);
    alignas(16) uint8_t q[16];
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const float a = (float)lo[k], b = (float)hi[k];
      m = fmaxf(m, fmaxf(fabsf(a), fabsf(b)));
      q[k] = to_fp8<kE5M2>(a * s);
      q[k + 8] = to_fp8<kE5M2>(b * s);
    }
    *reinterpret_cast<int4*>(out + p * 16) = *reinterpret_cast<const int4*>(q);
  }
  if (amax_out != nullptr) block_amax(amax_out, m);
}

// cast_kernel's output for x (N, M), plus the bias gradient's partial sums of x's columns: the blocks and the
// order of additions of bias_grad_partial_kernel (column_sums.cu), so dbias comes out as matmul_backward's.
template <bool kE5M2>
__global__ void cast_dbias_kernel(uint8_t* out, float* partials, const floatX* x, int64_t N, int M,
                                  const float* amax_ref, float* scale_inv, float* amax_out) {
  const float s = fp8_scale(amax_ref, kE5M2 ? kE5M2Max : kE4M3Max);
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) *scale_inv = __fdiv_rn(1.0f, s);
  const int col = (blockIdx.x * WARP_SIZE + threadIdx.x) * x128::size;
  float acc[x128::size] = {};
  float m = 0.0f;
  if (col < M) {
    const int64_t step = (int64_t)gridDim.y * kBiasBlockRows;
    for (int64_t row = (int64_t)blockIdx.y * kBiasBlockRows + threadIdx.y; row < N; row += step) {
      const x128 g = load128(x + row * M + col);  // cached: the weight-gradient GEMM reads x next
      alignas(8) uint8_t q[x128::size];
#pragma unroll
      for (int k = 0; k < x128::size; k++) {
        const float v = (float)g[k];
        acc[k] += v;
        m = fmaxf(m, fabsf(v));
        q[k] = to_fp8<kE5M2>(v * s);
      }
      *reinterpret_cast<uint2*>(out + row * M + col) = *reinterpret_cast<const uint2*>(q);
    }
  }
  bias_grad_store_partials(partials, acc, M);
  if (amax_out != nullptr) {  // one atomic per warp
    m = warp_reduce_max(m);
    if (threadIdx.x == 0) atomic_max_nonneg(amax_out, m);
  }
}

// out (cols, rows) = fp8(x (rows, cols) * s)^T, through 32 x 32 tiles in shared memory (weights: small).
constexpr int kTile = 32;
template <bool kE5M2>
__global__ void cast_transpose_kernel(uint8_t* out, const floatX* x, int rows, int cols, const float* amax_ref,
                                      float* scale_inv, float* amax_out) {
  __shared__ float tile[kTile][kTile + 1];
  const float s = fp8_scale(amax_ref, kE5M2 ? kE5M2Max : kE4M3Max);
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) *scale_inv = __fdiv_rn(1.0f, s);
  const int r0 = blockIdx.y * kTile, c0 = blockIdx.x * kTile;
  float m = 0.0f;
  for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
    const int r = r0 + dy, c = c0 + threadIdx.x;
    const float v = (r < rows && c < cols) ? (float)x[(int64_t)r * cols + c] : 0.0f;
    tile[dy][threadIdx.x] = v;
    m = fmaxf(m, fabsf(v));
  }
  __syncthreads();
  for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
    const int c = c0 + dy, r = r0 + threadIdx.x;  // out row c, column r
    if (c < cols && r < rows) out[(int64_t)c * rows + r] = to_fp8<kE5M2>(tile[threadIdx.x][dy] * s);
  }
  if (amax_out != nullptr) {
    // one atomic per warp (the block is 32 x 8, not a multiple-of-warps 1-D block for block_amax)
    m = warp_reduce_max(m);
    if (threadIdx.x == 0) atomic_max_nonneg(amax_out, m);
  }
}

// The same transposed cast when cols % 8 == 0 and rows % 16 == 0 (every weight of the model): 64 x 64 tiles,
// read with one 16-byte load per thread, cast into shared memory, and written as 16 contiguous bytes per thread
// (16 consecutive rows of x, one column).
constexpr int kVecTile = 64;
constexpr int kVecTileStride = kVecTile + 4;  // bytes per shared row: 4-byte aligned, banks staggered
template <bool kE5M2>
__global__ void __launch_bounds__(256) cast_transpose_vec_kernel(uint8_t* out, const floatX* x, int rows, int cols,
                                                                 const float* amax_ref, float* scale_inv,
                                                                 float* amax_out) {
  __shared__ alignas(16) uint8_t tile[kVecTile][kVecTileStride];
  const float s = fp8_scale(amax_ref, kE5M2 ? kE5M2Max : kE4M3Max);
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *scale_inv = __fdiv_rn(1.0f, s);
  const int r0 = blockIdx.y * kVecTile, c0 = blockIdx.x * kVecTile;
  const int pack = threadIdx.x % 8, c = c0 + pack * 8;  // this thread's 8 columns
  float m = 0.0f;
  for (int dy = threadIdx.x / 8; dy < kVecTile; dy += 32) {
    const int r = r0 + dy;
    alignas(4) uint8_t q[8] = {};
    if (r < rows && c < cols) {
      const x128 v = load128cs(x + (int64_t)r * cols + c);
#pragma unroll
      for (int k = 0; k < 8; k++) {
        m = fmaxf(m, fabsf((float)v[k]));
        q[k] = to_fp8<kE5M2>((float)v[k] * s);
      }
    }
    uint32_t* dst = reinterpret_cast<uint32_t*>(&tile[dy][pack * 8]);
    dst[0] = reinterpret_cast<const uint32_t*>(q)[0];
    dst[1] = reinterpret_cast<const uint32_t*>(q)[1];
  }
  __syncthreads();
  const int oc = threadIdx.x / 4, seg = threadIdx.x % 4;  // out row c0 + oc, x rows r0 + seg*16 ... + 15
  const int r = r0 + seg * 16;
  if (c0 + oc < cols && r < rows) {
    alignas(16) uint8_t q[16];
#pragma unroll
    for (int j = 0; j < 16; j++) q[j] = tile[seg * 16 + j][oc];
    *reinterpret_cast<int4*>(out + (int64_t)(c0 + oc) * rows + r) = *reinterpret_cast<const int4*>(q);
  }
  if (amax_out != nullptr) block_amax(amax_out, m);
}

// Per slot i: history[i][pos] = amax[i] when it is > 0 and finite (a tensor cast since the last update: a forward
// without backward leaves the gradients' slots at 0, and must not wipe their history); amax[i] = 0;
// amax_ref[i] = max over history[i].
__global__ void update_scales_kernel(float* amax_ref, float* history, float* amax, int slots, int len, int pos) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= slots) return;
  float* h = history + (int64_t)i * len;
  const float a = amax[i];
  if (a > 0.0f && a <= 3.4e38f) h[pos] = a;
  amax[i] = 0.0f;
  float m = 0.0f;
  for (int j = 0; j < len; j++) m = fmaxf(m, h[j]);
  amax_ref[i] = m;
}

int grid_for(int64_t work, int block) {
  const int64_t most = (int64_t)current_device_sm_count() * 8;
  const int64_t needed = ceil_div<int64_t>(work, block);
  return (int)std::max<int64_t>(1, std::min(needed, most));
}

}  // namespace

void fp8_amax(float* amax, const floatX* x, int64_t n, cudaStream_t stream) {
  CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), stream));
  if (n == 0) return;
  const int block = 512;  // > the 7-element tail block 0 also reads
  amax_kernel<<<grid_for(std::max<int64_t>(n / 8, 1), block), block, 0, stream>>>(amax, x, n);
  CUDA_CHECK(cudaGetLastError());
}

void fp8_amax_rows(float* amax, const floatX* x, int rows, int64_t n, cudaStream_t stream) {
  LLMC_REQUIRE(rows > 0 && rows < 65536 && n >= 0 && n % 8 == 0,
               "fp8_amax_rows: need 0 < rows < 65536 and n a multiple of 8");
  CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float) * rows, stream));
  if (n == 0) return;
  const int block = 512;
  const int per_row = (int)std::max<int64_t>(1, grid_for(n / 8, block) / rows);
  amax_rows_kernel<<<dim3(per_row, rows), block, 0, stream>>>(amax, x, n);
  CUDA_CHECK(cudaGetLastError());
}

void fp8_cast(void* out, const floatX* x, int64_t n, bool e5m2, const float* amax_ref, float* scale_inv,
              float* amax_out, cudaStream_t stream) {
  LLMC_REQUIRE(n % 16 == 0, "fp8_cast: n must be a multiple of 16");
  const int block = 256;
  const int grid = grid_for(std::max<int64_t>(n / 16, 1), block);
  auto* o = static_cast<uint8_t*>(out);
  if (e5m2) {
    cast_kernel<true><<<grid, block, 0, stream>>>(o, x, n / 16, amax_ref, scale_inv, amax_out);
  } else {
    cast_kernel<false><<<grid, block, 0, stream>>>(o, x, n / 16, amax_ref, scale_inv, amax_out);
  }
  CUDA_CHECK(cudaGetLastError());
}

void fp8_cast_dbias(void* out, floatX* dbias, const floatX* x, int64_t N, int64_t M, bool e5m2,
                    const float* amax_ref, float* scale_inv, float* amax_out, float* scratch, int64_t scratch_floats,
                    cudaStream_t stream) {
  LLMC_REQUIRE(N >= 0 && M > 0 && M % 8 == 0 && M < ((int64_t)1 << 31),
               "fp8_cast_dbias: need N >= 0 and M > 0 a multiple of 8 (16-byte rows)");
  const int row_blocks = bias_grad_row_blocks(N, M);
  LLMC_REQUIRE(scratch_floats >= (int64_t)row_blocks * M, "fp8_cast_dbias: scratch smaller than "
               "bias_grad_scratch_floats(N, M)");
  const dim3 grid(bias_grad_col_blocks(M), row_blocks), block(WARP_SIZE, kBiasBlockRows);
  auto* o = static_cast<uint8_t*>(out);
  if (e5m2) {
    cast_dbias_kernel<true><<<grid, block, 0, stream>>>(o, scratch, x, N, (int)M, amax_ref, scale_inv, amax_out);
  } else {
    cast_dbias_kernel<false><<<grid, block, 0, stream>>>(o, scratch, x, N, (int)M, amax_ref, scale_inv, amax_out);
  }
  CUDA_CHECK(cudaGetLastError());
  bias_grad_reduce(dbias, scratch, row_blocks, M, stream);
}

void fp8_cast_transpose(void* out, const floatX* x, int rows, int cols, bool e5m2, const float* amax_ref,
                        float* scale_inv, float* amax_out, cudaStream_t stream) {
  LLMC_REQUIRE(rows > 0 && cols > 0, "fp8_cast_transpose: need rows, cols > 0");
  LLMC_REQUIRE(ceil_div(rows, kTile) < 65536, "fp8_cast_transpose: at most 65535 * 32 rows");
  auto* o = static_cast<uint8_t*>(out);
  if (cols % 8 == 0 && rows % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    const dim3 grid(ceil_div(cols, kVecTile), ceil_div(rows, kVecTile));
    if (e5m2) {
      cast_transpose_vec_kernel<true><<<grid, 256, 0, stream>>>(o, x, rows, cols, amax_ref, scale_inv, amax_out);
    } else {
      cast_transpose_vec_kernel<false><<<grid, 256, 0, stream>>>(o, x, rows, cols, amax_ref, scale_inv, amax_out);
    }
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  const dim3 grid(ceil_div(cols, kTile), ceil_div(rows, kTile)), block(kTile, 8);
  if (e5m2) {
    cast_transpose_kernel<true><<<grid, block, 0, stream>>>(o, x, rows, cols, amax_ref, scale_inv, amax_out);
  } else {
    cast_transpose_kernel<false><<<grid, block, 0, stream>>>(o, x, rows, cols, amax_ref, scale_inv, amax_out);
  }
  CUDA_CHECK(cudaGetLastError());
}

void fp8_update_scales(float* amax_ref, float* history, float* amax, int slots, int history_len, int pos,
                       cudaStream_t stream) {
  LLMC_REQUIRE(slots > 0 && history_len > 0 && pos >= 0 && pos < history_len,
               "fp8_update_scales: need slots > 0 and 0 <= pos < history_len");
  const int block = 128;
  update_scales_kernel<<<ceil_div(slots, block), block, 0, stream>>>(amax_ref, history, amax, slots, history_len,
                                                                    pos);
  CUDA_CHECK(cudaGetLastError());
}
