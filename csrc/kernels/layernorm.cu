// LayerNorm over the last dimension C of N rows: out = (x - mean) * rstd * weight + bias, with
// rstd = 1 / sqrt(var + eps) (biased variance). bf16 storage, fp32 math and statistics.
// Forward reads inp, weight, bias and writes out, mean (fp32, N) and rstd (fp32, N). The fused residual
// forward reads inp1 and inp2, writes residual = inp1 + inp2 (rounded to bf16) and then normalizes that
// stored residual, in one pass over memory.
// Backward reads dout, inp, weight, mean, rstd; writes dinp (overwritten, or += with `accumulate`, for the
// residual stream) and accumulates dweight and dbias (+=) deterministically: every block sums its rows
// into fp32 partials in a fixed order, and a second kernel adds the partials, in block order, into the
// parameter gradients. No float atomics.
//
// One warp per row. The warp stages its row in shared memory (any C that is a multiple of 8 fits, up to
// the shared memory of one block: C = 8192 at least), so the row is read from HBM exactly once, and the
// variance is the exact two-pass one. The backward blocks work in rounds of one row per warp: after a
// round the block's threads sum the staged rows column by column into the block's dweight/dbias partials.
#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kMaxWarpsPerBlock = 8;
constexpr int kBatch = 4;  // 128-bit loads per lane (per input) issued before any is used

// Pack index for a batched load: past the row's end, re-read its last pack (a cache hit) instead of
// branching, so that the batch's loads are all in flight together.
__device__ inline int clamp_pack(int j, int C8) { return j < C8 ? j : C8 - 1; }

// ---------------------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------------------
// Shared memory: weight and bias (C8 packs each), then one staged row per warp (C8 packs).
template <bool kResidual>
__global__ void layernorm_forward_kernel(floatX* __restrict__ out, float* __restrict__ mean,
                                         float* __restrict__ rstd, floatX* __restrict__ residual,
                                         const floatX* __restrict__ inp1, const floatX* __restrict__ inp2,
                                         const floatX* __restrict__ weight, const floatX* __restrict__ bias,
                                         int N, int C, float eps) {
  extern __shared__ int4 smem[];
  const int C8 = C / x128::size;
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int warps = blockDim.x / WARP_SIZE;
  x128* w_s = reinterpret_cast<x128*>(smem);
  x128* b_s = w_s + C8;
  x128* row_s = b_s + C8 + warp * C8;  // only this warp's lanes touch it, each its own packs
  for (int j = threadIdx.x; j < C8; j += blockDim.x) {
    w_s[j] = load128(weight + j * x128::size);
    b_s[j] = load128(bias + j * x128::size);
  }
  __syncthreads();

  for (int row = blockIdx.x * warps + warp; row < N; row += gridDim.x * warps) {
    const int64_t off = (int64_t)row * C;
    float sum = 0.0f;
    for (int j0 = lane; j0 < C8; j0 += WARP_SIZE * kBatch) {
      x128 a[kBatch], b[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; u++) {
        const int64_t at = off + clamp_pack(j0 + u * WARP_SIZE, C8) * x128::size;
        a[u] = load128cs(inp1 + at);
        if constexpr (kResidual) b[u] = load128cs(inp2 + at);
      }
#pragma unroll
      for (int u = 0; u < kBatch; u++) {
        const int j = j0 + u * WARP_SIZE;
        if (j >= C8) break;
        x128 x = a[u];
        if constexpr (kResidual) {
#pragma unroll
          for (int k = 0; k < x128::size; k++) x[k] = (floatX)((float)a[u][k] + (float)b[u][k]);
          store128(residual + off + j * x128::size, x);
        }
        row_s[j] = x;
#pragma unroll
        for (int k = 0; k < x128::size; k++) sum += (float)x[k];
      }
    }
    const float m = warp_reduce_sum(sum) / C;

    float var = 0.0f;
    for (int j = lane; j < C8; j += WARP_SIZE) {
      const x128 x = row_s[j];
#pragma unroll
      for (int k = 0; k < x128::size; k++) {
        const float d = (float)x[k] - m;
        var += d * d;
      }
    }
    const float s = rsqrtf(warp_reduce_sum(var) / C + eps);

    for (int j = lane; j < C8; j += WARP_SIZE) {
      const x128 x = row_s[j], w = w_s[j], b = b_s[j];
      x128 y;
#pragma unroll
      for (int k = 0; k < x128::size; k++) y[k] = (floatX)(((float)x[k] - m) * s * (float)w[k] + (float)b[k]);
      store128(out + off + j * x128::size, y);
    }
    if (lane == 0) {
      mean[row] = m;
      rstd[row] = s;
    }
  }
}

// Shared memory: weight (C8 packs); staged dout and inp rows (warps * C8 packs each); the block's fp32
// partials [dweight | dbias] (2C floats); mean and rstd of the staged rows (2 * warps floats).
// Writes the block's partials to partials[blockIdx.x * 2C ...].
__global__ void layernorm_backward_kernel(floatX* dinp, float* __restrict__ partials, const floatX* dout,
                                          const floatX* inp, const floatX* __restrict__ weight,
                                          const float* __restrict__ mean, const float* __restrict__ rstd, int N,
                                          int C, bool accumulate) {
  extern __shared__ int4 smem[];
  const int C8 = C / x128::size;
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int warps = blockDim.x / WARP_SIZE;
  x128* w_s = reinterpret_cast<x128*>(smem);
  x128* g_s = w_s + C8;
  x128* x_s = g_s + warps * C8;
  float* acc = reinterpret_cast<float*>(x_s + warps * C8);
  float* mean_s = acc + 2 * C;
  float* rstd_s = mean_s + warps;
  for (int j = threadIdx.x; j < C8; j += blockDim.x) w_s[j] = load128(weight + j * x128::size);
  for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) acc[i] = 0.0f;
  __syncthreads();

  const int rounds = (N + warps - 1) / warps;
  for (int r = blockIdx.x; r < rounds; r += gridDim.x) {
    const int row = r * warps + warp;
    if (row < N) {
      const int64_t off = (int64_t)row * C;
      const float m = mean[row], s = rstd[row];
      x128* g_row = g_s + warp * C8;
      x128* x_row = x_s + warp * C8;
      float sum_dn = 0.0f, sum_dn_xhat = 0.0f;
      for (int j0 = lane; j0 < C8; j0 += WARP_SIZE * kBatch) {
        x128 g[kBatch], x[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; u++) {
          const int64_t at = off + clamp_pack(j0 + u * WARP_SIZE, C8) * x128::size;
          g[u] = load128cs(dout + at);
          x[u] = load128cs(inp + at);
        }
#pragma unroll
        for (int u = 0; u < kBatch; u++) {
          const int j = j0 + u * WARP_SIZE;
          if (j >= C8) break;
          const x128 w = w_s[j];
          g_row[j] = g[u];
          x_row[j] = x[u];
#pragma unroll
          for (int k = 0; k < x128::size; k++) {
            const float dn = (float)g[u][k] * (float)w[k];
            sum_dn += dn;
            sum_dn_xhat += dn * (((float)x[u][k] - m) * s);
          }
        }
      }
      const float mean_dn = warp_reduce_sum(sum_dn) / C;
      const float mean_dn_xhat = warp_reduce_sum(sum_dn_xhat) / C;
      // The row is staged, so dinp may be dout or inp itself: each lane reads its packs before writing them.
      for (int j = lane; j < C8; j += WARP_SIZE) {
        const x128 g = g_row[j], x = x_row[j], w = w_s[j];
        const x128 old = accumulate ? load128(dinp + off + j * x128::size) : x128::zeros();
        x128 d;
#pragma unroll
        for (int k = 0; k < x128::size; k++) {
          const float xhat = ((float)x[k] - m) * s;
          const float dn = (float)g[k] * (float)w[k];
          d[k] = (floatX)((float)old[k] + s * (dn - mean_dn - xhat * mean_dn_xhat));
        }
        store128(dinp + off + j * x128::size, d);
      }
      if (lane == 0) {
        mean_s[warp] = m;
        rstd_s[warp] = s;
      }
    }
    __syncthreads();
    // Column sums of this round's rows, in warp order; each thread owns its packs of acc.
    const int nrows = min(warps, N - r * warps);
    for (int p = threadIdx.x; p < C8; p += blockDim.x) {
      float dw[x128::size], db[x128::size];
#pragma unroll
      for (int k = 0; k < x128::size; k++) {
        dw[k] = acc[p * x128::size + k];
        db[k] = acc[C + p * x128::size + k];
      }
      for (int w = 0; w < nrows; w++) {
        const x128 g = g_s[w * C8 + p], x = x_s[w * C8 + p];
        const float m = mean_s[w], s = rstd_s[w];
#pragma unroll
        for (int k = 0; k < x128::size; k++) {
          dw[k] += (float)g[k] * (((float)x[k] - m) * s);
          db[k] += (float)g[k];
        }
      }
#pragma unroll
      for (int k = 0; k < x128::size; k++) {
        acc[p * x128::size + k] = dw[k];
        acc[C + p * x128::size + k] = db[k];
      }
    }
    __syncthreads();  // the next round overwrites the staged rows
  }
  float* mine = partials + (int64_t)blockIdx.x * 2 * C;
  for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) mine[i] = acc[i];
}

// Block (32, kReduceRows): x picks one of 32 consecutive columns of [dweight | dbias], y strides over the
// partials; the y-sums are then added in y order. Fixed order everywhere, so the result is deterministic.
constexpr int kReduceRows = 16;
__global__ void layernorm_param_grad_reduce_kernel(floatX* __restrict__ dweight, floatX* __restrict__ dbias,
                                                   const float* __restrict__ partials, int num_partials, int C) {
  __shared__ float sums[kReduceRows][WARP_SIZE + 1];
  const int col = blockIdx.x * WARP_SIZE + threadIdx.x;
  float v = 0.0f;
  if (col < 2 * C) {
    for (int g = threadIdx.y; g < num_partials; g += kReduceRows) v += partials[(int64_t)g * 2 * C + col];
  }
  sums[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0 && col < 2 * C) {
    float total = 0.0f;
    for (int y = 0; y < kReduceRows; y++) total += sums[y][threadIdx.x];
    floatX* dst = col < C ? dweight + col : dbias + (col - C);
    *dst = (floatX)((float)*dst + total);
  }
}

// ---------------------------------------------------------------------------------------------------------
// launch configuration
// ---------------------------------------------------------------------------------------------------------
size_t forward_smem_bytes(int C, int warps) { return (size_t)(2 + warps) * C * sizeof(floatX); }

size_t backward_smem_bytes(int C, int warps) {
  return (size_t)(1 + 2 * warps) * C * sizeof(floatX) + (size_t)2 * C * sizeof(float) +
         (size_t)2 * warps * sizeof(float);
}

int max_smem_per_block() {
  int dev = 0, bytes = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

struct LaunchConfig {
  int warps;
  int blocks;
  size_t smem;
};

// As many warps per block as fit (up to 8), as many blocks as are resident at once (grid-stride beyond).
template <class Kernel, class SmemFn>
LaunchConfig plan_launch(Kernel kernel, SmemFn smem_bytes, int N, int C, const char* what) {
  const int limit = max_smem_per_block();
  int warps = kMaxWarpsPerBlock;
  while (warps > 1 && smem_bytes(C, warps) > (size_t)limit) warps /= 2;
  const size_t smem = smem_bytes(C, warps);
  LLMC_REQUIRE(smem <= (size_t)limit, std::string(what) + ": C = " + std::to_string(C) +
                                          " needs more shared memory than one block has");
  if (smem > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  }
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, warps * WARP_SIZE, smem));
  const int resident = current_device_sm_count() * (per_sm > 0 ? per_sm : 1);
  const int needed = ceil_div(N, warps);
  return {warps, needed < resident ? needed : resident, smem};
}

template <bool kResidual>
void launch_forward(floatX* out, float* mean, float* rstd, floatX* residual, const floatX* inp1,
                    const floatX* inp2, const floatX* weight, const floatX* bias, int N, int C, float eps,
                    cudaStream_t stream, const char* what) {
  LLMC_REQUIRE(C % x128::size == 0 && C > 0, std::string(what) + ": C must be a positive multiple of 8");
  if (N == 0) return;
  auto kernel = layernorm_forward_kernel<kResidual>;
  const LaunchConfig cfg = plan_launch(kernel, forward_smem_bytes, N, C, what);
  kernel<<<cfg.blocks, cfg.warps * WARP_SIZE, cfg.smem, stream>>>(out, mean, rstd, residual, inp1, inp2, weight,
                                                                   bias, N, C, eps);
  CUDA_CHECK(cudaGetLastError());
}

LaunchConfig backward_config(int N, int C) {
  return plan_launch(layernorm_backward_kernel, backward_smem_bytes, N, C, "layernorm_backward");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------------------
void layernorm_forward(floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight,
                       const floatX* bias, int N, int C, float eps, cudaStream_t stream) {
  launch_forward<false>(out, mean, rstd, nullptr, inp, nullptr, weight, bias, N, C, eps, stream,
                        "layernorm_forward");
}

void fused_residual_layernorm_forward(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* inp1,
                                      const floatX* inp2, const floatX* weight, const floatX* bias, int N, int C,
                                      float eps, cudaStream_t stream) {
  launch_forward<true>(out, mean, rstd, residual, inp1, inp2, weight, bias, N, C, eps, stream,
                       "fused_residual_layernorm_forward");
}

int64_t layernorm_backward_scratch_floats(int N, int C) {
  LLMC_REQUIRE(C % x128::size == 0 && C > 0, "layernorm_backward: C must be a positive multiple of 8");
  if (N == 0) return 0;
  return (int64_t)backward_config(N, C).blocks * 2 * C;
}

void layernorm_backward(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                        const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N, int C,
                        bool accumulate, cudaStream_t stream) {
  LLMC_REQUIRE(C % x128::size == 0 && C > 0, "layernorm_backward: C must be a positive multiple of 8");
  if (N == 0) return;
  const LaunchConfig cfg = backward_config(N, C);
  layernorm_backward_kernel<<<cfg.blocks, cfg.warps * WARP_SIZE, cfg.smem, stream>>>(
      dinp, scratch, dout, inp, weight, mean, rstd, N, C, accumulate);
  CUDA_CHECK(cudaGetLastError());
  const dim3 block(WARP_SIZE, kReduceRows);
  layernorm_param_grad_reduce_kernel<<<ceil_div(2 * C, WARP_SIZE), block, 0, stream>>>(dweight, dbias, scratch,
                                                                                      cfg.blocks, C);
  CUDA_CHECK(cudaGetLastError());
}
