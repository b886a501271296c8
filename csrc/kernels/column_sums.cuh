// Deterministic column sums, dst[c] += sum over rows r of x[r, c], for the kernel files that need them (kernels in
// column_sums.cu): the bias gradient of a linear layer (matmul.cu's backward, fp8.cu's cast that sums on the way,
// layernorm.cu's backward where it does not fuse them) and the reduction of LayerNorm backward's per-block partials.
// The order of every addition depends on the shape only, never on timing, and no atomics are involved.
#pragma once
#include "common.cuh"

// The bias gradient's decomposition, followed by every kernel that computes it (bias_grad_partial_kernel, fp8.cu's
// cast_dbias_kernel) so that all give the same bits: blocks of 32 x kBiasBlockRows threads, block (bx, by) summing
// columns [bx * 256, bx * 256 + 256) (8 per thread, one 16-byte load per row) over rows by * 8 + threadIdx.y, then
// + gridDim.y * 8, ...; it writes its column sums to row `by` of partials (gridDim.y x M), and bias_grad_reduce adds
// those rows to dbias in order. The order of every addition depends only on N and M.
constexpr int kBiasBlockRows = 8;               // blockDim.y: rows in flight per block
constexpr int kBiasBlockCols = 32 * 8;          // a warp reads 256 contiguous columns of one row
constexpr int kBiasMinRowsPerThread = 8;
constexpr int kBiasTargetBlocks = 1024;         // ~8 resident blocks on each of an H100's 132 SMs
inline int bias_grad_col_blocks(int64_t M) { return (int)ceil_div<int64_t>(M, kBiasBlockCols); }
inline int bias_grad_row_blocks(int64_t N, int64_t M) {  // >= 1, also for N = 0
  const int64_t rows = ceil_div<int64_t>(N, (int64_t)kBiasBlockRows * kBiasMinRowsPerThread);
  const int64_t most = std::max(1, kBiasTargetBlocks / bias_grad_col_blocks(M));
  return (int)std::max<int64_t>(1, std::min(rows, most));
}

#ifdef __CUDACC__

// The end of a bias-gradient partial block: acc holds this thread's sums of its 8 columns; the block's 8 row lanes
// are added in order and written to row blockIdx.y of partials (M columns).
__device__ inline void bias_grad_store_partials(float* partials, const float (&acc)[8], int M) {
  static_assert(kBiasBlockRows * WARP_SIZE == kBiasBlockCols, "one thread per block column in the reduction");
  __shared__ float lane_sums[kBiasBlockRows][8][WARP_SIZE];
#pragma unroll
  for (int k = 0; k < 8; k++) lane_sums[threadIdx.y][k][threadIdx.x] = acc[k];
  __syncthreads();
  const int t = threadIdx.y * WARP_SIZE + threadIdx.x;  // this thread's column within the block
  const int col = blockIdx.x * kBiasBlockCols + t;
  if (col < M) {
    float s = 0.0f;
#pragma unroll
    for (int y = 0; y < kBiasBlockRows; y++) s += lane_sums[y][t % 8][t / 8];
    partials[(int64_t)blockIdx.y * M + col] = s;
  }
}

#endif  // __CUDACC__

// bias_grad_accumulate (kernels.h) runs both kernels of the decomposition.
// The second kernel alone, for kernels that compute the partials on the way (fp8_cast_dbias): dbias (M) += the
// `rows` rows of partials (rows x M), added in row order.
void bias_grad_reduce(floatX* dbias, const float* partials, int rows, int64_t M, cudaStream_t stream);

// LayerNorm backward's parameter gradients: dweight (C) += , dbias (C) += and, when colsum is not null, colsum (C) +=
// the column sums of partials (num_partials rows of [dweight | dbias] or [dweight | dbias | colsum] sums, fp32,
// 16-byte aligned), in an order fixed by num_partials and C. Launched as a programmatic dependent of the kernel before
// it on the stream, which writes the partials.
void param_grad_reduce(floatX* dweight, floatX* dbias, const float* partials, int num_partials, int C,
                       floatX* colsum, cudaStream_t stream);
