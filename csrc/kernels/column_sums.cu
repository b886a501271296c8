// Deterministic column sums (see column_sums.cuh): the bias gradient dbias[c] += sum over rows of dout[r, c] in two
// kernels (per-block partial sums, then the partials added in block order), and the reduction of LayerNorm
// backward's per-block dweight / dbias partials. Gradients are accumulated (+=). bf16 in and out, fp32 sums.
// The two reductions of fp32 partials add in different orders, each fixed by the shape: the bias gradient's is the
// one fp8_cast_dbias shares (so FP8 and bf16 backward passes give the same dbias bits), LayerNorm's reads many
// partials per column with several loads in flight and is launched as a programmatic dependent of its row kernel.
#include "column_sums.cuh"
#include "kernels.h"

namespace {

// ---------------------------------------------------------------------------------------------------------
// kernels: the bias gradient
// ---------------------------------------------------------------------------------------------------------
// Block (bx, by) of the decomposition in column_sums.cuh: sums in fp32, then bias_grad_store_partials.
__global__ void bias_grad_partial_kernel(float* partials, const floatX* dout, int64_t N, int M) {
  const int col = (blockIdx.x * WARP_SIZE + threadIdx.x) * x128::size;
  float acc[x128::size] = {};
  if (col < M) {
    const int64_t step = (int64_t)gridDim.y * kBiasBlockRows;
    for (int64_t row = (int64_t)blockIdx.y * kBiasBlockRows + threadIdx.y; row < N; row += step) {
      x128 g = load128(dout + row * M + col);  // cached: the two GEMMs read dout next
#pragma unroll
      for (int k = 0; k < x128::size; k++) acc[k] += (float)g[k];
    }
  }
  bias_grad_store_partials(partials, acc, M);
}

// dbias[c] += partials[0][c] + partials[1][c] + ... in row order.
__global__ void bias_grad_reduce_kernel(floatX* dbias, const float* partials, int rows, int M) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= M) return;
  float s = 0.0f;
  for (int r = 0; r < rows; r++) s += partials[(int64_t)r * M + col];
  dbias[col] = (floatX)((float)dbias[col] + s);
}

// ---------------------------------------------------------------------------------------------------------
// kernels: LayerNorm backward's parameter-gradient partials
// ---------------------------------------------------------------------------------------------------------
// partials[g * width + col] summed over g < num_partials into dweight (col < C), dbias (col < 2C) and colsum
// (col < 3C, when given), width = 2C or 3C. Block (kReduceQuads, kReduceRows): x picks 4 consecutive columns (one
// float4; width and so every row of partials is a multiple of 8 floats, and the scratch a torch allocation, so the
// loads are aligned), y strides over the partials with kReduceDepth loads in flight per thread. Each thread adds its
// partials in g order, the warp's 8 rows are added by a fixed butterfly of shuffles, the block's warps in warp
// order: the same order every time, so the result is deterministic.
// One round of loads covers up to kReduceRows * kReduceDepth = 512 partials. What the reduction costs is mostly
// waiting on memory (layernorm.cu's L2 hint on the partials is what shortens it); 32 or 8 columns per block are no
// faster (dev/cuda/layernorm_backward.cu).
constexpr int kReduceQuads = 4;
constexpr int kReduceRows = 64;
constexpr int kReduceDepth = 8;
constexpr int kReduceCols = 4 * kReduceQuads;  // columns per block
constexpr int kReduceWarps = kReduceQuads * kReduceRows / WARP_SIZE;
__global__ void __launch_bounds__(kReduceQuads * kReduceRows)
    param_grad_reduce_kernel(floatX* __restrict__ dweight, floatX* __restrict__ dbias,
                             const float* __restrict__ partials, int num_partials, int C,
                             floatX* __restrict__ colsum) {
  __shared__ float4 warp_sums[kReduceWarps][kReduceQuads];
  const int width = (colsum != nullptr ? 3 : 2) * C;
  const int col = (blockIdx.x * kReduceQuads + threadIdx.x) * 4;
  // The gradients' old values, read before waiting: the kernel writing the partials does not touch them (kernels
  // before it on the stream have completed), so this read need not follow the partials' (0.3-0.4 us off the op at
  // 8192 x 1600 on an H200).
  floatX* dst = nullptr;
  float total[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (threadIdx.y == 0 && col < width) {
    dst = col < C ? dweight + col : col < 2 * C ? dbias + (col - C) : colsum + (col - 2 * C);
#pragma unroll
    for (int k = 0; k < 4; k++) total[k] = (float)dst[k];
  }
  pdl_wait();  // launched as a programmatic dependent of the kernel that writes the partials
  const int lane = (threadIdx.y * kReduceQuads + threadIdx.x) % WARP_SIZE;
  const int warp = (threadIdx.y * kReduceQuads + threadIdx.x) / WARP_SIZE;
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (col < width) {  // a quad is all inside the width or all outside (width % 8 == 0)
    for (int g0 = threadIdx.y; g0 < num_partials; g0 += kReduceRows * kReduceDepth) {
      float4 p[kReduceDepth];
#pragma unroll
      for (int k = 0; k < kReduceDepth; k++) {
        const int g = g0 + k * kReduceRows;
        p[k] = g < num_partials ? *reinterpret_cast<const float4*>(partials + (int64_t)g * width + col)
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int k = 0; k < kReduceDepth; k++) {
        v.x += p[k].x;
        v.y += p[k].y;
        v.z += p[k].z;
        v.w += p[k].w;
      }
    }
  }
  // lanes l, l ^ 4, l ^ 8, ... hold the same columns (threadIdx.x = lane % kReduceQuads)
#pragma unroll
  for (int off = kReduceQuads; off < WARP_SIZE; off <<= 1) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, off);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, off);
    v.z += __shfl_xor_sync(0xffffffffu, v.z, off);
    v.w += __shfl_xor_sync(0xffffffffu, v.w, off);
  }
  if (lane < kReduceQuads) warp_sums[warp][lane] = v;
  __syncthreads();
  if (dst != nullptr) {
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int w = 0; w < kReduceWarps; w++) {
      const float4 t = warp_sums[w][threadIdx.x];
      sum[0] += t.x;
      sum[1] += t.y;
      sum[2] += t.z;
      sum[3] += t.w;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) dst[k] = (floatX)(total[k] + sum[k]);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------------------
int64_t bias_grad_scratch_floats(int64_t N, int64_t M) { return (int64_t)bias_grad_row_blocks(N, M) * M; }

void bias_grad_accumulate(floatX* dbias, const floatX* dout, int64_t N, int64_t M, float* scratch,
                          int64_t scratch_floats, cudaStream_t stream) {
  const int row_blocks = bias_grad_row_blocks(N, M);
  LLMC_REQUIRE(row_blocks * M <= scratch_floats, "bias_grad_accumulate: the partials do not fit the scratch");
  bias_grad_partial_kernel<<<dim3(bias_grad_col_blocks(M), (unsigned)row_blocks), dim3(WARP_SIZE, kBiasBlockRows),
                             0, stream>>>(scratch, dout, N, (int)M);
  CUDA_CHECK(cudaGetLastError());
  bias_grad_reduce(dbias, scratch, row_blocks, M, stream);
}

void bias_grad_reduce(floatX* dbias, const float* partials, int rows, int64_t M, cudaStream_t stream) {
  const int block = 256;
  bias_grad_reduce_kernel<<<(int)ceil_div<int64_t>(M, block), block, 0, stream>>>(dbias, partials, rows, (int)M);
  CUDA_CHECK(cudaGetLastError());
}

void param_grad_reduce(floatX* dweight, floatX* dbias, const float* partials, int num_partials, int C,
                       floatX* colsum, cudaStream_t stream) {
  launch_dependent(param_grad_reduce_kernel, dim3(ceil_div((colsum != nullptr ? 3 : 2) * C, kReduceCols)),
                   dim3(kReduceQuads, kReduceRows), 0, stream, dweight, dbias, partials, num_partials, C, colsum);
}
