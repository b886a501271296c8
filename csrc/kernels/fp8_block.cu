// Block-scaled FP8 (e4m3) quantization for the block-scaled FP8 GEMMs: one scale per 1x128 run of a row
// (activations and gradients) or per 128x128 tile (weights), taken from the tile's own amax.
//
// A block with amax a is stored as q = e4m3(x * s) with s = the largest power of two <= 448 / a (s = 1 when a is
// 0 or not finite; s <= 2^64), and the GEMM multiplies by 1/s again. Power-of-two scales make x * s exact, so the
// only rounding is e4m3's, and a block keeps its values when the tile is written transposed.
//
// Scale layouts (those cuBLASLt reads with CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F / BLK128x128_32F), for an
// operand of R rows of K contiguous elements:
//   1x128:   scale of row r, columns [128 b, 128 b + 128) at  s[b * R + r]          (ceil(K/128) x R, rows fastest)
//   128x128: scale of the tile (row block i, column block j) at  s[i * ld + j],  ld = ceil(K/128) rounded up to 4
// With a transposed copy qt (K rows of R) the same rules apply to it with R and K swapped.
//
// One block of 256 threads quantizes one 128x128 tile: it stages the tile in shared memory once and writes the rows
// of q and/or those of qt, so x is read once for both copies.
//
// Per-row scaling (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F) uses the same tile pass with one scale per whole row
// of q (s[r]) and per whole row of qt (st[c], i.e. per column of x), from the amaxes of a first pass over x.
#include <cuda_fp8.h>

#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kTile = 128;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / WARP_SIZE;
constexpr int kPad = 2;  // bf16 elements after each staged row: a row is 65 words, so column reads hit 32 banks

__device__ inline float pow2_scale(float amax) {
  if (!(amax > 0.0f) || !(amax <= 3.4028235e38f)) return 1.0f;
  const float v = fminf(__fdiv_rn(448.0f, amax), 0x1p64f);
  return __uint_as_float(__float_as_uint(v) & 0x7f800000u);  // round down to a power of two
}

__device__ inline uint8_t to_e4m3(float v) {
  return (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ inline float block_max(float v, float* scratch) {
  v = warp_reduce_max(v);
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; w++) m = fmaxf(m, scratch[w]);
  return m;
}

// kRuns: one scale per 128 elements of each row of q (and of each row of qt); kTiles: one per 128x128 tile; kRows:
// one per row of q and of qt, from row_amax (R) and col_amax (K) as amax_kernel leaves them.
enum class Scaling { kRuns, kTiles, kRows };

// Batched over grid.z (e.g. the layers of a stacked weight): every pointer advances by its batch stride.
template <Scaling kMode>
__global__ void __launch_bounds__(kThreads) quantize_kernel(uint8_t* q, float* s, uint8_t* qt, float* st,
                                                            const floatX* x, int R, int K, int s_ld, int st_ld,
                                                            int64_t s_batch, int64_t st_batch,
                                                            const unsigned* row_amax, const unsigned* col_amax) {
  constexpr bool kTileScale = kMode == Scaling::kTiles;
  __shared__ floatX tile[kTile][kTile + kPad];
  __shared__ float scratch[kWarps];
  const int64_t z = blockIdx.z;
  x += z * R * (int64_t)K;
  if (kMode == Scaling::kRows) {
    row_amax += z * R;
    col_amax += z * K;
  }
  if (q != nullptr) {
    q += z * R * (int64_t)K;
    s += z * s_batch;
  }
  if (qt != nullptr) {
    qt += z * R * (int64_t)K;
    st += z * st_batch;
  }
  const int r0 = blockIdx.y * kTile, c0 = blockIdx.x * kTile;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  const int col = c0 + 4 * lane;  // this lane's 4 columns; K is a multiple of 16, so all 4 are in or all out
  const bool col_in = col < K;

  // Stage the tile (zeros outside x), each warp 16 rows, each lane 4 consecutive columns (8 bytes).
  float m = 0.0f;
  for (int i = warp; i < kTile; i += kWarps) {
    const int r = r0 + i;
    uint2 v = make_uint2(0u, 0u);
    if (r < R && col_in) v = *reinterpret_cast<const uint2*>(x + (int64_t)r * K + col);
    *reinterpret_cast<uint32_t*>(&tile[i][4 * lane]) = v.x;
    *reinterpret_cast<uint32_t*>(&tile[i][4 * lane + 2]) = v.y;
    const floatX* e = reinterpret_cast<const floatX*>(&v);
    float rm = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) rm = fmaxf(rm, fabsf((float)e[k]));
    if (kTileScale) {
      m = fmaxf(m, rm);
    } else if (kMode == Scaling::kRows) {  // the whole row's scale, then this tile's 128 values of it
      if (r < R && q != nullptr) {
        const float sc = pow2_scale(__uint_as_float(row_amax[r]));
        if (lane == 0 && blockIdx.x == 0) s[r] = __frcp_rn(sc);
        if (col_in) {
          uint32_t packed = 0;
#pragma unroll
          for (int k = 0; k < 4; k++) packed |= (uint32_t)to_e4m3((float)e[k] * sc) << (8 * k);
          *reinterpret_cast<uint32_t*>(q + (int64_t)r * K + col) = packed;
        }
      }
    } else {  // the run's scale, then its 128 values
      rm = warp_reduce_max(rm);
      const float sc = pow2_scale(rm);
      if (r < R && q != nullptr) {
        if (lane == 0) s[(int64_t)blockIdx.x * R + r] = __frcp_rn(sc);
        if (col_in) {
          uint32_t packed = 0;
#pragma unroll
          for (int k = 0; k < 4; k++) packed |= (uint32_t)to_e4m3((float)e[k] * sc) << (8 * k);
          *reinterpret_cast<uint32_t*>(q + (int64_t)r * K + col) = packed;
        }
      }
    }
  }
  float tile_scale = 1.0f;
  if (kTileScale) {
    tile_scale = pow2_scale(block_max(m, scratch));  // block_max synchronizes: the tile is staged
    if (threadIdx.x == 0) {
      if (q != nullptr) s[(int64_t)blockIdx.y * s_ld + blockIdx.x] = __frcp_rn(tile_scale);
      if (qt != nullptr) st[(int64_t)blockIdx.x * st_ld + blockIdx.y] = __frcp_rn(tile_scale);
    }
    for (int i = warp; i < kTile && q != nullptr; i += kWarps) {
      const int r = r0 + i;
      if (r >= R || !col_in) continue;
      uint32_t packed = 0;
#pragma unroll
      for (int k = 0; k < 4; k++) packed |= (uint32_t)to_e4m3((float)tile[i][4 * lane + k] * tile_scale) << (8 * k);
      *reinterpret_cast<uint32_t*>(q + (int64_t)r * K + col) = packed;
    }
  } else if (qt != nullptr) {
    __syncthreads();
  }
  if (qt == nullptr) return;

  // qt (K rows of R): each warp 16 columns of the tile; lane l holds rows l, l + 32, l + 64, l + 96.
  for (int j = warp; j < kTile; j += kWarps) {
    const int c = c0 + j;
    if (c >= K) break;
    float v[4];
    float cm = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[k] = (float)tile[lane + 32 * k][j];
      cm = fmaxf(cm, fabsf(v[k]));
    }
    float sc = tile_scale;
    if (kMode == Scaling::kRuns) {
      sc = pow2_scale(warp_reduce_max(cm));
      if (lane == 0) st[(int64_t)blockIdx.y * K + c] = __frcp_rn(sc);
    } else if (kMode == Scaling::kRows) {
      sc = pow2_scale(__uint_as_float(col_amax[c]));
      if (lane == 0 && blockIdx.y == 0) st[c] = __frcp_rn(sc);
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int r = r0 + lane + 32 * k;
      if (r < R) qt[(int64_t)c * R + r] = to_e4m3(v[k] * sc);
    }
  }
}

// max |x| of every row (row_amax, R) and column (col_amax, K) of each 128x128 tile, folded into the zeroed outputs
// with atomicMax on the bits (non-negative floats order as their bits); NaNs do not count (fmaxf drops them).
// A null row_amax or col_amax is not wanted (its copy is not written) and is skipped.
__global__ void __launch_bounds__(kThreads) amax_kernel(unsigned* row_amax, unsigned* col_amax, const floatX* x,
                                                        int R, int K) {
  __shared__ float cols[kWarps][kTile];
  const int64_t z = blockIdx.z;
  x += z * R * (int64_t)K;
  if (row_amax != nullptr) row_amax += z * R;
  if (col_amax != nullptr) col_amax += z * K;
  const int r0 = blockIdx.y * kTile, c0 = blockIdx.x * kTile;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  const int col = c0 + 4 * lane;
  const bool col_in = col < K;
  float cm[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = warp; i < kTile; i += kWarps) {
    const int r = r0 + i;
    if (r >= R) break;  // r is the same in the whole warp
    uint2 v = make_uint2(0u, 0u);
    if (col_in) v = *reinterpret_cast<const uint2*>(x + (int64_t)r * K + col);
    const floatX* e = reinterpret_cast<const floatX*>(&v);
    float rm = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float a = fabsf((float)e[k]);
      rm = fmaxf(rm, a);
      cm[k] = fmaxf(cm[k], a);
    }
    if (row_amax != nullptr) {  // the same in the whole block
      rm = warp_reduce_max(rm);
      if (lane == 0) atomicMax(row_amax + r, __float_as_uint(rm));
    }
  }
  if (col_amax == nullptr) return;  // the same in the whole block
#pragma unroll
  for (int k = 0; k < 4; k++) cols[warp][4 * lane + k] = cm[k];
  __syncthreads();
  const int c = c0 + threadIdx.x;
  if (threadIdx.x < kTile && c < K) {
    float m = cols[0][threadIdx.x];
#pragma unroll
    for (int w = 1; w < kWarps; w++) m = fmaxf(m, cols[w][threadIdx.x]);
    atomicMax(col_amax + c, __float_as_uint(m));
  }
}

// Floats per row of the 128x128 tiles' scales of an operand with `cols` columns: ceil(cols/128) rounded up to 4.
int tile_scale_ld(int cols) { return (ceil_div(cols, kTile) + 3) / 4 * 4; }

}  // namespace

void fp8_quantize_blocks(void* q, float* s, void* qt, float* st, const floatX* x, int batch, int R, int K,
                         bool tile_scale, cudaStream_t stream) {
  LLMC_REQUIRE(batch > 0 && batch < 65536 && R > 0 && K > 0, "fp8_quantize_blocks: need 0 < batch < 65536, R, K > 0");
  LLMC_REQUIRE(K % 16 == 0 && R % 4 == 0, "fp8_quantize_blocks: K must be a multiple of 16 and R of 4");
  LLMC_REQUIRE(ceil_div(R, kTile) < 65536, "fp8_quantize_blocks: at most 65535 * 128 rows");
  LLMC_REQUIRE((q == nullptr) == (s == nullptr) && (qt == nullptr) == (st == nullptr) && (q || qt),
               "fp8_quantize_blocks: q and s, qt and st go together, and one pair is needed");
  LLMC_REQUIRE(reinterpret_cast<uintptr_t>(x) % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 4 == 0,
               "fp8_quantize_blocks: x must be 8-byte and q 4-byte aligned");
  const int rb = ceil_div(R, kTile), cb = ceil_div(K, kTile);
  const dim3 grid(cb, rb, batch);
  auto* q8 = static_cast<uint8_t*>(q);
  auto* qt8 = static_cast<uint8_t*>(qt);
  if (tile_scale) {
    const int s_ld = tile_scale_ld(K), st_ld = tile_scale_ld(R);
    quantize_kernel<Scaling::kTiles><<<grid, kThreads, 0, stream>>>(q8, s, qt8, st, x, R, K, s_ld, st_ld,
                                                                    (int64_t)rb * s_ld, (int64_t)cb * st_ld,
                                                                    nullptr, nullptr);
  } else {
    quantize_kernel<Scaling::kRuns><<<grid, kThreads, 0, stream>>>(q8, s, qt8, st, x, R, K, R, K, (int64_t)cb * R,
                                                                   (int64_t)rb * K, nullptr, nullptr);
  }
  CUDA_CHECK(cudaGetLastError());
}

void fp8_quantize_rows(void* q, float* s, void* qt, float* st, const floatX* x, float* amax, int batch, int R,
                       int K, cudaStream_t stream) {
  LLMC_REQUIRE(batch > 0 && batch < 65536 && R > 0 && K > 0, "fp8_quantize_rows: need 0 < batch < 65536, R, K > 0");
  LLMC_REQUIRE(K % 16 == 0 && R % 4 == 0, "fp8_quantize_rows: K must be a multiple of 16 and R of 4");
  LLMC_REQUIRE(ceil_div(R, kTile) < 65536, "fp8_quantize_rows: at most 65535 * 128 rows");
  LLMC_REQUIRE((q == nullptr) == (s == nullptr) && (qt == nullptr) == (st == nullptr) && (q || qt) && amax,
               "fp8_quantize_rows: q and s, qt and st go together, one pair is needed, and amax");
  LLMC_REQUIRE(reinterpret_cast<uintptr_t>(x) % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 4 == 0,
               "fp8_quantize_rows: x must be 8-byte and q 4-byte aligned");
  const dim3 grid(ceil_div(K, kTile), ceil_div(R, kTile), batch);
  auto* row_amax = reinterpret_cast<unsigned*>(amax);
  unsigned* col_amax = row_amax + (int64_t)batch * R;
  CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float) * (int64_t)batch * (R + K), stream));
  amax_kernel<<<grid, kThreads, 0, stream>>>(q ? row_amax : nullptr, qt ? col_amax : nullptr, x, R, K);
  CUDA_CHECK(cudaGetLastError());
  quantize_kernel<Scaling::kRows><<<grid, kThreads, 0, stream>>>(static_cast<uint8_t*>(q), s,
                                                                 static_cast<uint8_t*>(qt), st, x, R, K, 0, 0, R, K,
                                                                 row_amax, col_amax);
  CUDA_CHECK(cudaGetLastError());
}
