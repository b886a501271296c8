// Causal self-attention in plain CUDA: the fallback where cuDNN is missing or does not take the shape (head
// sizes other than 64 and 128). Simple rather than fast; fp32 math on bf16 storage; deterministic (no atomics).
// Forward reads qkv (B, T, 3, NH, HS) and writes out (B, T, NH, HS) = softmax(Q K^T / sqrt(HS), causal) V and
// stats (B, NH, T), the log-sum-exp of each query row's scaled, masked scores. That is the statistic cuDNN
// saves too, so either backend's backward can follow either forward.
// Backward reads dout, qkv, out and stats and overwrites dqkv (laid out like qkv). With P recomputed from stats:
//   delta_i = dout_i . out_i,  dS_ij = P_ij (dout_i . V_j - delta_i),
//   dQ_i = s sum_j dS_ij K_j,  dK_j = s sum_i dS_ij Q_i,  dV_j = sum_i P_ij dout_i   (s = 1/sqrt(HS)).
// One kernel walks query rows and writes dQ (and delta, to a scratch buffer), a second walks key rows and writes
// dK and dV, so every gradient element is summed by one thread in a fixed order.
//
// Work layout shared by the kernels: a block owns kTile = 32 consecutive rows of one (batch, head); each of its
// 8 warps owns 4 of those rows. The block streams the other side (keys, or queries) through shared memory in
// tiles of 32, one per lane: lane j computes the 4 scores of its own key/query, and the weighted sums over the
// tile are then accumulated with lanes spread over the head dimension (element lane + 32 c).
#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kTile = 32;
constexpr int kWarps = 8;
constexpr int kRowsPerWarp = kTile / kWarps;
constexpr int kThreads = kWarps * WARP_SIZE;
constexpr unsigned kFullMask = 0xffffffffu;

// Row stride of a tile that lanes read one row each: odd, so the 32 rows fall in 32 different banks.
__host__ __device__ inline int lane_row_stride(int HS) { return HS | 1; }

// rows [row0, row0 + kTile) of a (T, HS) matrix whose rows are src_stride apart, as fp32 times `mul`, into
// dst (row stride dst_stride); rows at or past T are zero. Called by the whole block.
__device__ void load_tile(float* dst, int dst_stride, const floatX* src, int64_t src_stride, int row0, int T,
                          int HS, float mul) {
  for (int i = threadIdx.x; i < kTile * HS; i += blockDim.x) {
    const int r = i / HS, d = i % HS, t = row0 + r;
    dst[r * dst_stride + d] = t < T ? mul * (float)src[(int64_t)t * src_stride + d] : 0.0f;
  }
}

// Offsets of row 0 of this block's (batch, head) slice in qkv (Q; K and V follow at +C, +2C), out/dout, stats.
struct HeadView {
  int64_t qkv_offset, bthd_offset, stats_offset;
  __device__ HeadView(int T, int NH, int HS) {
    const int h = blockIdx.y, b = blockIdx.z;
    qkv_offset = (int64_t)b * T * 3 * NH * HS + (int64_t)h * HS;
    bthd_offset = (int64_t)b * T * NH * HS + (int64_t)h * HS;
    stats_offset = ((int64_t)b * NH + h) * T;
  }
};

template <int D_MAX>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(floatX* out, float* stats, const floatX* qkv,
                                                                      int T, int NH, int HS, float scale) {
  constexpr int DPL = D_MAX / WARP_SIZE;  // head-dimension elements per lane
  extern __shared__ float smem[];
  const int ks = lane_row_stride(HS);
  float* q_s = smem;               // [kTile][HS], scaled by `scale`; read as broadcasts
  float* k_s = q_s + kTile * HS;   // [kTile][ks]
  float* v_s = k_s + kTile * ks;   // [kTile][HS]
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  const int q_tile = gridDim.x - 1 - blockIdx.x;  // the longest (last) query tiles start first
  const int q0 = q_tile * kTile;
  const HeadView hv(T, NH, HS);
  const int64_t qkv_row = 3 * (int64_t)NH * HS, C = (int64_t)NH * HS;
  const floatX* q_g = qkv + hv.qkv_offset;
  load_tile(q_s, HS, q_g, qkv_row, q0, T, HS, scale);

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < DPL; c++) acc[r][c] = 0.0f;
  }
  const int row0 = warp * kRowsPerWarp;
  for (int kt = 0; kt <= q_tile; kt++) {
    __syncthreads();  // previous tile fully consumed (and q_s written, on the first pass)
    load_tile(k_s, ks, q_g + C, qkv_row, kt * kTile, T, HS, 1.0f);
    load_tile(v_s, HS, q_g + 2 * C, qkv_row, kt * kTile, T, HS, 1.0f);
    __syncthreads();
    float s[kRowsPerWarp] = {};
    for (int d = 0; d < HS; d++) {
      const float kd = k_s[lane * ks + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; r++) s[r] += q_s[(row0 + r) * HS + d] * kd;
    }
    const int key = kt * kTile + lane;
    float p[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      // Key 0 is in the first tile and visible to every row, so m is finite from the first tile on.
      if (key > q0 + row0 + r) s[r] = -INFINITY;
      const float m_new = fmaxf(m[r], warp_reduce_max(s[r]));
      const float correction = __expf(m[r] - m_new);  // 0 on the first tile (m = -inf)
      p[r] = __expf(s[r] - m_new);
      l[r] = l[r] * correction + warp_reduce_sum(p[r]);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < DPL; c++) acc[r][c] *= correction;
    }
    for (int j = 0; j < kTile; j++) {
      float v[DPL];
#pragma unroll
      for (int c = 0; c < DPL; c++) v[c] = lane + c * WARP_SIZE < HS ? v_s[j * HS + lane + c * WARP_SIZE] : 0.0f;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; r++) {
        const float pj = __shfl_sync(kFullMask, p[r], j);
#pragma unroll
        for (int c = 0; c < DPL; c++) acc[r][c] += pj * v[c];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int t = q0 + row0 + r;
    if (t >= T) continue;
    const float inv_l = 1.0f / l[r];
    floatX* o = out + hv.bthd_offset + (int64_t)t * C;
#pragma unroll
    for (int c = 0; c < DPL; c++) {
      const int d = lane + c * WARP_SIZE;
      if (d < HS) o[d] = (floatX)(acc[r][c] * inv_l);
    }
    if (lane == 0) stats[hv.stats_offset + t] = m[r] + logf(l[r]);
  }
}

// dQ for a tile of query rows; also writes delta_i = dout_i . out_i for the dK/dV kernel.
template <int D_MAX>
__global__ void __launch_bounds__(kThreads) attention_backward_dq_kernel(
    floatX* dqkv, float* delta, const floatX* dout, const floatX* qkv, const floatX* out, const float* stats, int T,
    int NH, int HS, float scale) {
  constexpr int DPL = D_MAX / WARP_SIZE;
  extern __shared__ float smem[];
  const int ks = lane_row_stride(HS);
  float* q_s = smem;                // [kTile][HS], scaled; broadcasts
  float* do_s = q_s + kTile * HS;   // [kTile][HS]; broadcasts
  float* k_s = do_s + kTile * HS;   // [kTile][ks]
  float* v_s = k_s + kTile * ks;    // [kTile][ks]
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  const int q_tile = gridDim.x - 1 - blockIdx.x;
  const int q0 = q_tile * kTile;
  const HeadView hv(T, NH, HS);
  const int64_t qkv_row = 3 * (int64_t)NH * HS, C = (int64_t)NH * HS;
  const floatX* q_g = qkv + hv.qkv_offset;
  load_tile(q_s, HS, q_g, qkv_row, q0, T, HS, scale);
  load_tile(do_s, HS, dout + hv.bthd_offset, C, q0, T, HS, 1.0f);
  __syncthreads();

  const int row0 = warp * kRowsPerWarp;
  float lse[kRowsPerWarp], dlt[kRowsPerWarp], acc[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int t = q0 + row0 + r;
    float sum = 0.0f;
    if (t < T) {
      const floatX* o = out + hv.bthd_offset + (int64_t)t * C;
      for (int d = lane; d < HS; d += WARP_SIZE) sum += do_s[(row0 + r) * HS + d] * (float)o[d];
    }
    dlt[r] = warp_reduce_sum(sum);
    lse[r] = t < T ? stats[hv.stats_offset + t] : 0.0f;
    if (t < T && lane == 0) delta[hv.stats_offset + t] = dlt[r];
#pragma unroll
    for (int c = 0; c < DPL; c++) acc[r][c] = 0.0f;
  }
  for (int kt = 0; kt <= q_tile; kt++) {
    __syncthreads();
    load_tile(k_s, ks, q_g + C, qkv_row, kt * kTile, T, HS, 1.0f);
    load_tile(v_s, ks, q_g + 2 * C, qkv_row, kt * kTile, T, HS, 1.0f);
    __syncthreads();
    float s[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
    for (int d = 0; d < HS; d++) {
      const float kd = k_s[lane * ks + d], vd = v_s[lane * ks + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; r++) {
        s[r] += q_s[(row0 + r) * HS + d] * kd;
        dp[r] += do_s[(row0 + r) * HS + d] * vd;
      }
    }
    const int key = kt * kTile + lane;
    float ds[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      const float p = key <= q0 + row0 + r ? __expf(s[r] - lse[r]) : 0.0f;
      ds[r] = p * (dp[r] - dlt[r]);
    }
    for (int j = 0; j < kTile; j++) {
      float k[DPL];
#pragma unroll
      for (int c = 0; c < DPL; c++) k[c] = lane + c * WARP_SIZE < HS ? k_s[j * ks + lane + c * WARP_SIZE] : 0.0f;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; r++) {
        const float dsj = __shfl_sync(kFullMask, ds[r], j);
#pragma unroll
        for (int c = 0; c < DPL; c++) acc[r][c] += dsj * k[c];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int t = q0 + row0 + r;
    if (t >= T) continue;
    floatX* dq = dqkv + hv.qkv_offset + (int64_t)t * qkv_row;
#pragma unroll
    for (int c = 0; c < DPL; c++) {
      const int d = lane + c * WARP_SIZE;
      if (d < HS) dq[d] = (floatX)(scale * acc[r][c]);
    }
  }
}

// dK and dV for a tile of key rows, streaming the query tiles that can see them (query >= key).
template <int D_MAX>
__global__ void __launch_bounds__(kThreads) attention_backward_dkv_kernel(
    floatX* dqkv, const float* delta, const floatX* dout, const floatX* qkv, const float* stats, int T, int NH,
    int HS, float scale) {
  constexpr int DPL = D_MAX / WARP_SIZE;
  extern __shared__ float smem[];
  const int ks = lane_row_stride(HS);
  float* k_s = smem;                // [kTile][HS]; broadcasts
  float* v_s = k_s + kTile * HS;    // [kTile][HS]; broadcasts
  float* q_s = v_s + kTile * HS;    // [kTile][ks], scaled
  float* do_s = q_s + kTile * ks;   // [kTile][ks]
  float* lse_s = do_s + kTile * ks; // [kTile]
  float* dlt_s = lse_s + kTile;     // [kTile]
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  const int k_tile = blockIdx.x;  // the first key tiles see the most queries and start first
  const int k0 = k_tile * kTile;
  const HeadView hv(T, NH, HS);
  const int64_t qkv_row = 3 * (int64_t)NH * HS, C = (int64_t)NH * HS;
  const floatX* q_g = qkv + hv.qkv_offset;
  load_tile(k_s, HS, q_g + C, qkv_row, k0, T, HS, 1.0f);
  load_tile(v_s, HS, q_g + 2 * C, qkv_row, k0, T, HS, 1.0f);

  const int row0 = warp * kRowsPerWarp;
  float dk[kRowsPerWarp][DPL] = {}, dv[kRowsPerWarp][DPL] = {};
  for (int qt = k_tile; qt < (int)gridDim.x; qt++) {
    const int q0 = qt * kTile;
    __syncthreads();
    load_tile(q_s, ks, q_g, qkv_row, q0, T, HS, scale);
    load_tile(do_s, ks, dout + hv.bthd_offset, C, q0, T, HS, 1.0f);
    if (threadIdx.x < kTile) {
      const int t = q0 + threadIdx.x;
      lse_s[threadIdx.x] = t < T ? stats[hv.stats_offset + t] : 0.0f;
      dlt_s[threadIdx.x] = t < T ? delta[hv.stats_offset + t] : 0.0f;
    }
    __syncthreads();
    float s[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
    for (int d = 0; d < HS; d++) {
      const float qd = q_s[lane * ks + d], dod = do_s[lane * ks + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; r++) {
        s[r] += qd * k_s[(row0 + r) * HS + d];
        dp[r] += dod * v_s[(row0 + r) * HS + d];
      }
    }
    const int query = q0 + lane;
    float p[kRowsPerWarp], ds[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      p[r] = query < T && query >= k0 + row0 + r ? __expf(s[r] - lse_s[lane]) : 0.0f;
      ds[r] = p[r] * (dp[r] - dlt_s[lane]);
    }
    for (int i = 0; i < kTile; i++) {
      float q[DPL], g[DPL];
#pragma unroll
      for (int c = 0; c < DPL; c++) {
        const bool in = lane + c * WARP_SIZE < HS;
        q[c] = in ? q_s[i * ks + lane + c * WARP_SIZE] : 0.0f;
        g[c] = in ? do_s[i * ks + lane + c * WARP_SIZE] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; r++) {
        const float pi = __shfl_sync(kFullMask, p[r], i), dsi = __shfl_sync(kFullMask, ds[r], i);
#pragma unroll
        for (int c = 0; c < DPL; c++) {
          dv[r][c] += pi * g[c];
          dk[r][c] += dsi * q[c];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int t = k0 + row0 + r;
    if (t >= T) continue;
    floatX* dkv = dqkv + hv.qkv_offset + (int64_t)t * qkv_row;
#pragma unroll
    for (int c = 0; c < DPL; c++) {
      const int d = lane + c * WARP_SIZE;
      if (d < HS) {
        dkv[C + d] = (floatX)dk[r][c];  // q_s carries the scale, so dK needs no extra factor
        dkv[2 * C + d] = (floatX)dv[r][c];
      }
    }
  }
}

template <class Kernel, class... Args>
void launch(Kernel kernel, int B, int T, int NH, size_t smem_bytes, cudaStream_t stream, Args... args) {
  ensure_dynamic_smem(kernel, smem_bytes);
  const dim3 grid(ceil_div(T, kTile), NH, B);
  kernel<<<grid, kThreads, smem_bytes, stream>>>(args...);
  CUDA_CHECK(cudaGetLastError());
}

void check_shape(const char* who, int B, int T, int NH, int HS) {
  LLMC_REQUIRE(B > 0 && T > 0 && NH > 0, std::string(who) + ": B, T and NH must be positive");
  LLMC_REQUIRE(HS > 0 && HS <= kAttentionMaxHeadSize,
               std::string(who) + ": head size must be in 1.." + std::to_string(kAttentionMaxHeadSize));
  LLMC_REQUIRE(B <= 65535 && NH <= 65535, std::string(who) + ": B and NH must be at most 65535 (grid limits)");
}

template <int D_MAX>
void forward_launch(floatX* out, float* stats, const floatX* qkv, int B, int T, int NH, int HS, float scale,
                    cudaStream_t stream) {
  const size_t smem = sizeof(float) * kTile * (2 * HS + lane_row_stride(HS));
  launch(attention_forward_kernel<D_MAX>, B, T, NH, smem, stream, out, stats, qkv, T, NH, HS, scale);
}

template <int D_MAX>
void backward_launch(floatX* dqkv, float* delta, const floatX* dout, const floatX* qkv, const floatX* out,
                     const float* stats, int B, int T, int NH, int HS, float scale, cudaStream_t stream) {
  const size_t smem = sizeof(float) * kTile * (2 * HS + 2 * lane_row_stride(HS));
  launch(attention_backward_dq_kernel<D_MAX>, B, T, NH, smem, stream, dqkv, delta, dout, qkv, out, stats, T, NH,
         HS, scale);
  launch(attention_backward_dkv_kernel<D_MAX>, B, T, NH, smem + sizeof(float) * 2 * kTile, stream, dqkv,
         (const float*)delta, dout, qkv, stats, T, NH, HS, scale);
}

}  // namespace

// The kernels keep D_MAX / 32 head-dimension elements per lane in registers: the smallest bound that holds HS.
void attention_forward(floatX* out, float* stats, const floatX* qkv, int B, int T, int NH, int HS,
                       cudaStream_t stream) {
  check_shape("attention_forward", B, T, NH, HS);
  const float scale = 1.0f / sqrtf((float)HS);
  if (HS <= 32) {
    forward_launch<32>(out, stats, qkv, B, T, NH, HS, scale, stream);
  } else if (HS <= 64) {
    forward_launch<64>(out, stats, qkv, B, T, NH, HS, scale, stream);
  } else {
    forward_launch<128>(out, stats, qkv, B, T, NH, HS, scale, stream);
  }
}

void attention_backward(floatX* dqkv, float* delta, const floatX* dout, const floatX* qkv, const floatX* out,
                        const float* stats, int B, int T, int NH, int HS, cudaStream_t stream) {
  check_shape("attention_backward", B, T, NH, HS);
  const float scale = 1.0f / sqrtf((float)HS);
  if (HS <= 32) {
    backward_launch<32>(dqkv, delta, dout, qkv, out, stats, B, T, NH, HS, scale, stream);
  } else if (HS <= 64) {
    backward_launch<64>(dqkv, delta, dout, qkv, out, stats, B, T, NH, HS, scale, stream);
  } else {
    backward_launch<128>(dqkv, delta, dout, qkv, out, stats, B, T, NH, HS, scale, stream);
  }
}
