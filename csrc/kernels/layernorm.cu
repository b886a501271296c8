// LayerNorm over the last dimension C of N rows: out = (x - mean) * rstd * weight + bias, with
// rstd = 1 / sqrt(var + eps) (biased variance). bf16 storage, fp32 math and statistics.
// Forward reads inp, weight, bias and writes out, mean (fp32, N) and rstd (fp32, N). The fused residual
// forward reads inp1 and inp2, writes residual = inp1 + inp2 (rounded to bf16) and then normalizes that
// stored residual, in one pass over memory. The forward's outputs are written with streaming stores (st.global.cs,
// evict-first in L2): 3% faster than plain stores on an H100 at both GPT-2 shapes (dev/cuda/layernorm_forward.cu).
// Backward reads dout, inp, weight, mean, rstd; writes dinp (overwritten, or += with `accumulate`, for the
// residual stream) and accumulates dweight and dbias (+=) deterministically: every block sums its rows
// into fp32 partials in a fixed order, and a second kernel (param_grad_reduce, column_sums.cu) adds the partials,
// in a fixed order too, into the parameter gradients. No float atomics.
//
// Rows of up to kMaxRegPacks * 32 packs (C <= 2048: every GPT-2 width) live in registers: all of a row's loads
// are in flight at once and the variance is the exact two-pass one over the registers. The forward gives each
// warp one row (a grid of N / warps blocks, so the tail is one row's latency) and touches no shared memory. The
// backward gives a row to a team of ceil(C / 256) warps, one 16-byte pack per lane, fetches each team's next rows
// into shared memory while it works the current one (see layernorm_backward_regs_kernel), and each lane sums its
// pack's dweight/dbias columns in fp32 registers over the rows its team owns (a fixed, resident grid); the block
// then adds its teams' sums in order into its partials.
// Wider rows are staged in shared memory instead (any C that is a multiple of 8 fits, up to the shared
// memory of one block: C = 8192 at least), so the row is still read from HBM exactly once; the backward's
// blocks then work in rounds of one row per warp, and after a round the block's threads sum the staged rows
// column by column into the block's partials. Both paths compute the same per-element math (helpers below).
#include <algorithm>
#include <type_traits>

#include "column_sums.cuh"
#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kMaxWarpsPerBlock = 8;
constexpr int kBatch = 4;  // 128-bit loads per lane (per input) issued before any is used

constexpr int kMaxRegPacks = 8;  // packs per lane of a register-resident row: C <= 8 * 32 * 8 = 2048
constexpr int kRegWarps = 4;     // rows (warps) per block of the register-resident kernels
// The backward's register kernel gives a row to a team of kTeam = ceil(C / 256) warps (1 to 8), one 16-byte pack
// per lane (see layernorm_backward_regs_kernel). Teams per block: 8 for one-warp rows, 4 for two and three, 2
// beyond, so that blocks have 8 or more warps and the partials (one set per block) stay few. Blocks per SM (the
// __launch_bounds__ minimum, so it caps the registers): as many as fit 28 resident warps, the fastest grid or within
// 4% of it at C = 768, 1024, 1280 and 1600 on an H200 (dev/cuda/layernorm_backward.cu); 32 warps spill registers.
// Rows of 1, 2, 6 and 8 warps (C <= 512, 1288-1536, 1800-2048) are not measured; 30 warps at 1280 when
// overwriting measured 6% faster than 20 and are a candidate.
__host__ __device__ constexpr int reg_backward_teams(int team) { return team == 1 ? 8 : team <= 3 ? 4 : 2; }
__host__ __device__ constexpr int reg_backward_blocks_per_sm(int team) {
  const int fit = 28 / (reg_backward_teams(team) * team);
  return fit > 0 ? fit : 1;
}
// Rows each team has in flight (cp.async into shared memory) ahead of the one it works: two, 1-4% faster than one
// at 768, 1024 and 1280 in the same probe and even at 1600 (three was slower everywhere).
constexpr int kBackwardAhead = 2;
// What the register backward kernel does with dinp is fixed at compile time (kAccumulate): overwrite it, or add to
// its old values (the residual stream's gradient, dinp +=), which are copied into shared memory with each row: 3-11%
// faster on an H200 at every GPT-2 width than loading them after the row sums. A runtime switch cost the overwriting
// launch a predicated-off load of the old values that still waited behind the row's cp.async traffic (12% of the
// stall samples at 8192 x 1600 in Nsight Compute).
// The partials' L2 hint: both backward kernels store their blocks' fp32 dweight / dbias partials with the L2 hint
// evict_last. The reduction (param_grad_reduce, column_sums.cu) reads them right after, and the next launch usually
// overwrites them in place (torch's caching allocator hands the same scratch back). With plain stores the streamed
// rows push them out of L2 (an L2 hit rate of 20% for the reduction in Nsight Compute); with the hint the whole op is
// 0.6-3% faster at every GPT-2 width on an H200, overwriting or accumulating.
// How the register backward kernel gets its rows' mean and rstd (see the kernel): one row ahead, or (chunk) 32 rows'
// at a time, one per lane, shuffled to the lanes row by row. The chunk is taken when overwriting dinp (1-8% faster
// on an H200), not when accumulating, where it is 2-4% slower.

// Per-element math shared by both paths, in one place so that they round identically.
__device__ inline x128 add_packs(const x128& a, const x128& b) {
  x128 r;
#pragma unroll
  for (int k = 0; k < x128::size; k++) r[k] = (floatX)((float)a[k] + (float)b[k]);
  return r;
}

__device__ inline void add_pack_sum(float& sum, const x128& x) {
#pragma unroll
  for (int k = 0; k < x128::size; k++) sum += (float)x[k];
}

__device__ inline void add_pack_sq_dev(float& var, const x128& x, float m) {
#pragma unroll
  for (int k = 0; k < x128::size; k++) {
    const float d = (float)x[k] - m;
    var += d * d;
  }
}

__device__ inline x128 normalize_pack(const x128& x, const x128& w, const x128& b, float m, float s) {
  x128 y;
#pragma unroll
  for (int k = 0; k < x128::size; k++) y[k] = (floatX)(((float)x[k] - m) * s * (float)w[k] + (float)b[k]);
  return y;
}

// The backward's per-element math. With xhat = (x - mean) rstd, computed as x rstd + (-mean rstd) (one FMA), and
// dn = dout * weight:
//   the row sums  sum(dn), sum(dn xhat);
//   dinp = rstd (dn - mean(dn) - xhat mean(dn xhat)) (+ dinp's old value) = fma(rstd, dn, fma(c, xhat, b)) with
//          b = -rstd mean(dn), c = -rstd mean(dn xhat): two FMAs, rounded to bf16 in pairs;
//   dweight += dout xhat, dbias += dout.
// A pack's 8 bf16 values as floats (exact): element 2k is the low half of 32-bit word k, so its bits shifted up,
// element 2k + 1 the high half with the low bits cleared: one integer instruction per element, where the element-wise
// conversion compiled to a byte permute and a shift for every high half.
__device__ inline void unpack_bf16(float* f, const x128& p) {
  const int4 b = p.as_int4();
  const unsigned u[4] = {(unsigned)b.x, (unsigned)b.y, (unsigned)b.z, (unsigned)b.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    f[2 * k] = __uint_as_float(u[k] << 16);
    f[2 * k + 1] = __uint_as_float(u[k] & 0xffff0000u);
  }
}

// xhat and dn of one pack's 8 elements.
__device__ inline void pack_xhat_dn(float* xhat, float* dn, const x128& g, const x128& x, const x128& w, float m,
                                    float s) {
  const float ms = -m * s;
  float gf[x128::size], xf[x128::size], wf[x128::size];
  unpack_bf16(gf, g);
  unpack_bf16(xf, x);
  unpack_bf16(wf, w);
#pragma unroll
  for (int k = 0; k < x128::size; k++) {
    xhat[k] = fmaf(xf[k], s, ms);
    dn[k] = gf[k] * wf[k];
  }
}

__device__ inline void add_row_sums(float& sum_dn, float& sum_dn_xhat, const float* xhat, const float* dn) {
#pragma unroll
  for (int k = 0; k < x128::size; k++) {
    sum_dn += dn[k];
    sum_dn_xhat = fmaf(dn[k], xhat[k], sum_dn_xhat);
  }
}

// One pack of dinp from the row's b and c (above); with add_old, dinp's old values `old` are added before rounding.
__device__ inline x128 dinp_pack(const float* xhat, const float* dn, float s, float b, float c, const x128& old,
                                 bool add_old) {
  int4 bits;
  unsigned* u = reinterpret_cast<unsigned*>(&bits);
  float of[x128::size];
  unpack_bf16(of, old);
#pragma unroll
  for (int k = 0; k < x128::size; k += 2) {
    float d0 = fmaf(s, dn[k], fmaf(c, xhat[k], b)), d1 = fmaf(s, dn[k + 1], fmaf(c, xhat[k + 1], b));
    if (add_old) {
      d0 += of[k];
      d1 += of[k + 1];
    }
    const __nv_bfloat162 h = __floats2bfloat162_rn(d0, d1);
    u[k / 2] = *reinterpret_cast<const unsigned*>(&h);
  }
  return x128::from_int4(bits);
}

// dweight and dbias sums of one pack's 8 columns.
__device__ inline void add_pack_param_grads(float* dw, float* db, const x128& g, const float* xhat) {
  float gf[x128::size];
  unpack_bf16(gf, g);
#pragma unroll
  for (int k = 0; k < x128::size; k++) {
    dw[k] = fmaf(gf[k], xhat[k], dw[k]);
    db[k] += gf[k];
  }
}

// Pack index for a batched load: past the row's end, re-read its last pack (a cache hit) instead of
// branching, so that the batch's loads are all in flight together.
__device__ inline int clamp_pack(int j, int C8) { return j < C8 ? j : C8 - 1; }

// ---------------------------------------------------------------------------------------------------------
// kernels: rows held in registers (C <= 32 * kMaxRegPacks * 8)
// ---------------------------------------------------------------------------------------------------------
// Lane l holds packs l, l + 32, ..., l + 32 (kPacks - 1) of its row; packs past C8 are not touched.
template <bool kResidual, int kPacks>
__global__ void __launch_bounds__(kRegWarps * WARP_SIZE)
    layernorm_forward_regs_kernel(floatX* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                  floatX* __restrict__ residual, const floatX* __restrict__ inp1,
                                  const floatX* __restrict__ inp2, const floatX* __restrict__ weight,
                                  const floatX* __restrict__ bias, int N, int C, float eps) {
  const int lane = threadIdx.x % WARP_SIZE;
  const int row = blockIdx.x * kRegWarps + threadIdx.x / WARP_SIZE;
  if (row >= N) return;  // the whole warp leaves together
  const int C8 = C / x128::size;
  const int64_t off = (int64_t)row * C;
  x128 x[kPacks], y[kResidual ? kPacks : 1];
#pragma unroll
  for (int u = 0; u < kPacks; u++) {
    const int j = lane + u * WARP_SIZE;
    if (j < C8) {
      x[u] = load128cs(inp1 + off + j * x128::size);
      if constexpr (kResidual) y[u] = load128cs(inp2 + off + j * x128::size);
    }
  }
  float sum = 0.0f;
#pragma unroll
  for (int u = 0; u < kPacks; u++) {
    const int j = lane + u * WARP_SIZE;
    if (j < C8) {
      if constexpr (kResidual) {
        x[u] = add_packs(x[u], y[u]);
        store128cs(residual + off + j * x128::size, x[u]);
      }
      add_pack_sum(sum, x[u]);
    }
  }
  const float m = warp_reduce_sum(sum) / C;
  float var = 0.0f;
#pragma unroll
  for (int u = 0; u < kPacks; u++) {
    if (lane + u * WARP_SIZE < C8) add_pack_sq_dev(var, x[u], m);
  }
  const float s = rsqrtf(warp_reduce_sum(var) / C + eps);
  // (weight and bias take plain loads: the encoder's evict_last hint is 1-4% slower here on an H200)
#pragma unroll
  for (int u = 0; u < kPacks; u++) {
    const int j = lane + u * WARP_SIZE;
    if (j < C8) {
      const x128 w = load128(weight + j * x128::size), b = load128(bias + j * x128::size);
      store128cs(out + off + j * x128::size, normalize_pack(x[u], w, b, m, s));
    }
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

// Team t of the grid (t = blockIdx.x * kTeams + team; a team is kTeam warps) owns rows t, t + G, t + 2G, ... (G
// teams in all). Lane l of a team (0 .. 32 kTeam - 1) holds pack l of the row (lanes past C / 8 hold none), so a
// row's work is spread over as many lanes as it has packs, and each lane sums its pack's dweight / dbias columns
// in registers over the team's rows, in row order. The team's warps add their row sums through shared memory
// (warp 0's first).
// While a row is worked, the team's next kAhead rows (dout and inp; with kAccumulate dinp's old values too)
// are on their way into shared memory by cp.async (kAhead + 1 buffers per team, in turn): each lane copies, and
// later reads, only its own pack, so its own cp.async.wait_group is all the synchronisation needed, and no
// register holds a row ahead.
// One pack per lane with the column sums in registers is 11-20% faster on an H200 than teams with several packs per
// lane summing dweight / dbias in shared memory. At 1600 the row kernel is bound by instructions per row more than
// by memory (Nsight Compute: instructions issued in about 60% of cycles), hence the lean per-element math above.
// After the last row the block adds its teams' sums in team order (through shared memory, over the row buffers)
// and writes its partials [dweight | dbias] to partials[blockIdx.x * 2C ...] (3C with kColSum, below). dinp may
// be dout or inp: a team reads a row before it writes that row, and no other team touches it.
// kColSum: each lane also sums the dinp values it writes (their final values, after accumulation, as rounded to
// bf16), and the partials are [dweight | dbias | dinp's column sums]: the bias gradient of the linear layer whose
// output gradient dinp is (the residual stream's), without another pass over dinp.
// Shared memory (dynamic): reg_backward_smem_bytes.
template <int kTeam, bool kAccumulate, bool kColSum>
__global__ void __launch_bounds__(kTeam * reg_backward_teams(kTeam) * WARP_SIZE, reg_backward_blocks_per_sm(kTeam))
    layernorm_backward_regs_kernel(floatX* dinp, float* __restrict__ partials, const floatX* dout,
                                   const floatX* inp, const floatX* __restrict__ weight,
                                   const float* __restrict__ mean, const float* __restrict__ rstd, int N, int C) {
  constexpr int kTeams = reg_backward_teams(kTeam);
  constexpr int kAhead = kBackwardAhead;
  constexpr bool kChunkStats = !kAccumulate;  // the rows' mean and rstd 32 rows at a time (see the top of the file)
  // the partials' reduction (launched as a programmatic dependent) may be scheduled now; it waits for this grid
  pdl_launch_dependents();
  extern __shared__ int4 smem[];
  constexpr int kLanes = kTeam * WARP_SIZE;
  constexpr int kPlanes = kAccumulate ? 3 : 2;  // rows per buffer: dout, inp (and dinp's old values, accumulating)
  constexpr int kParts = kColSum ? 3 : 2;
  constexpr int kHalf = f128::size;
  __shared__ float2 exchange[kTeams][2][kTeam];  // a team's per-warp row sums, double-buffered by row
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int team = warp / kTeam, member = warp % kTeam, j = member * WARP_SIZE + lane;
  const int C8 = C / x128::size;
  const bool active = j < C8;
  x128* rows = reinterpret_cast<x128*>(smem) + team * kPlanes * (kAhead + 1) * C8;

  // Row r's pack j into buffer buf (plane p at rows[(kPlanes buf + p) C8]) as one commit group; an empty group
  // past the last row, so that every iteration commits exactly one.
  auto fetch_row = [&](int r, int buf) {
    if (r < N && active) {
      const int64_t o = (int64_t)r * C + j * x128::size;
      cp_async16(rows + kPlanes * buf * C8 + j, dout + o);
      cp_async16(rows + (kPlanes * buf + 1) * C8 + j, inp + o);
      if constexpr (kAccumulate) cp_async16(rows + (kPlanes * buf + 2) * C8 + j, dinp + o);
    }
    cp_async_commit();
  };
  const int first = blockIdx.x * kTeams + team, stride = gridDim.x * kTeams;
  // kAhead rows in flight: the team's k-th row goes to buffer k % (kAhead + 1); the buffer refilled in an iteration
  // is the one the previous iteration read into registers.
  // The rows' mean and rstd: with kChunkStats (overwriting launches) lane l of every warp holds those of the team's
  // row 32 q + l while the team works its rows 32 q .. 32 q + 31 (one gather per 32 rows), and a shuffle hands each
  // row's to the lanes; otherwise they are loaded into registers one row ahead. One-row-ahead loads queue behind the
  // rows' cp.async traffic, so the overwriting launch waits for them at the end of every row (18% of the stall
  // samples at 8192 x 1600 in Nsight Compute); the chunk avoids that wait. Slower alternatives are kept in
  // dev/cuda/layernorm_backward.cu.
  for (int k = 0; k < kAhead; k++) fetch_row(first + k * stride, k);
  float next_m = 0.0f, next_s = 0.0f, chunk_m = 0.0f, chunk_s = 0.0f;
  if constexpr (kChunkStats) {
    const int r = first + lane * stride;
    chunk_m = r < N ? mean[r] : 0.0f;
    chunk_s = r < N ? rstd[r] : 0.0f;
  } else {
    next_m = first < N ? mean[first] : 0.0f;
    next_s = first < N ? rstd[first] : 0.0f;
  }
  const x128 w = active ? load128(weight + j * x128::size) : x128::zeros();
  float dw[x128::size], db[x128::size], cs[x128::size];
#pragma unroll
  for (int k = 0; k < x128::size; k++) dw[k] = db[k] = cs[k] = 0.0f;
  int parity = 0, buf = 0, nth = 0;
  for (int row = first; row < N; row += stride, nth = (nth + 1) % WARP_SIZE) {
    const int64_t off = (int64_t)row * C + j * x128::size;
    float m, s;
    if constexpr (kChunkStats) {
      if (nth == 0 && row != first) {
        const int r = row + lane * stride;
        chunk_m = r < N ? mean[r] : 0.0f;
        chunk_s = r < N ? rstd[r] : 0.0f;
      }
      m = __shfl_sync(0xffffffffu, chunk_m, nth);
      s = __shfl_sync(0xffffffffu, chunk_s, nth);
    } else {
      m = next_m;
      s = next_s;
    }
    cp_async_wait<kAhead - 1>();  // this row's group: the oldest of the kAhead in flight
    const int cur = buf;
    // lanes without a pack work zeros: they add nothing to the row sums or to dweight / dbias. (Chosen as whole
    // 16-byte words: zeroing an x128 element by element and then overwriting it costs 16-bit merges per element.)
    const int4 zero = make_int4(0, 0, 0, 0);
    const x128 g = x128::from_int4(active ? rows[kPlanes * cur * C8 + j].as_int4() : zero);
    const x128 x = x128::from_int4(active ? rows[(kPlanes * cur + 1) * C8 + j].as_int4() : zero);
    const x128 old = x128::from_int4(kAccumulate && active ? rows[(kPlanes * cur + 2) * C8 + j].as_int4() : zero);
    fetch_row(row + kAhead * stride, cur == 0 ? kAhead : cur - 1);
    buf = cur == kAhead ? 0 : cur + 1;
    if (!kChunkStats && row + stride < N) {
      next_m = mean[row + stride];
      next_s = rstd[row + stride];
    }
    float xhat[x128::size], dn[x128::size], sum_dn = 0.0f, sum_dn_xhat = 0.0f;
    pack_xhat_dn(xhat, dn, g, x, w, m, s);
    add_row_sums(sum_dn, sum_dn_xhat, xhat, dn);
    add_pack_param_grads(dw, db, g, xhat);  // before the row sums arrive: nothing here waits for them
    sum_dn = warp_reduce_sum(sum_dn);
    sum_dn_xhat = warp_reduce_sum(sum_dn_xhat);
    if constexpr (kTeam > 1) {
      if (lane == 0) exchange[team][parity][member] = make_float2(sum_dn, sum_dn_xhat);
      // the team's warps only (barrier 0 is __syncthreads'); the other buffer is the next row's, so that a warp
      // running ahead cannot overwrite sums its partner has yet to read
      asm volatile("bar.sync %0, %1;" ::"r"(team + 1), "r"(kLanes) : "memory");
      sum_dn = 0.0f;
      sum_dn_xhat = 0.0f;
#pragma unroll
      for (int v = 0; v < kTeam; v++) {
        const float2 t = exchange[team][parity][v];
        sum_dn += t.x;
        sum_dn_xhat += t.y;
      }
      parity ^= 1;
    }
    const float b = -s * (sum_dn / C), c = -s * (sum_dn_xhat / C);
    const x128 d = dinp_pack(xhat, dn, s, b, c, old, kAccumulate);
    if (active) store128(dinp + off, d);
    if constexpr (kColSum) {
      float df[x128::size];
      unpack_bf16(df, d);
#pragma unroll
      for (int k = 0; k < x128::size; k++) cs[k] += active ? df[k] : 0.0f;
    }
  }

  // The block's partials: its teams' sums added in team order.
  __syncthreads();  // every team is done with its row buffers: they hold the teams' sums now
  float* all = reinterpret_cast<float*>(smem);
  auto put = [&](int part, const float* sums) {
    float* dst = all + (team * kParts + part) * C + j * x128::size;
    f128 lo, hi;
#pragma unroll
    for (int k = 0; k < kHalf; k++) {
      lo[k] = sums[k];
      hi[k] = sums[kHalf + k];
    }
    store128(dst, lo);
    store128(dst + kHalf, hi);
  };
  if (active) {
    put(0, dw);
    put(1, db);
    if constexpr (kColSum) put(2, cs);
  }
  __syncthreads();
  // stored with the L2 hint evict_last (see "The partials' L2 hint" above)
  const uint64_t keep = l2_evict_last_policy();
  for (int i = threadIdx.x; i < kParts * C; i += blockDim.x) {
    float v = 0.0f;
#pragma unroll
    for (int t = 0; t < kTeams; t++) v += all[t * kParts * C + i];
    store_float_keep(partials + (int64_t)blockIdx.x * kParts * C + i, v, keep);
  }
}

// ---------------------------------------------------------------------------------------------------------
// kernels: rows staged in shared memory (any C)
// ---------------------------------------------------------------------------------------------------------
// Shared memory: weight and bias (C8 packs each), then one staged row per warp (C8 packs).
template <bool kResidual>
__global__ void layernorm_forward_smem_kernel(floatX* __restrict__ out, float* __restrict__ mean,
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
          x = add_packs(a[u], b[u]);
          store128cs(residual + off + j * x128::size, x);
        }
        row_s[j] = x;
        add_pack_sum(sum, x);
      }
    }
    const float m = warp_reduce_sum(sum) / C;

    float var = 0.0f;
    for (int j = lane; j < C8; j += WARP_SIZE) add_pack_sq_dev(var, row_s[j], m);
    const float s = rsqrtf(warp_reduce_sum(var) / C + eps);

    for (int j = lane; j < C8; j += WARP_SIZE) {
      store128cs(out + off + j * x128::size, normalize_pack(row_s[j], w_s[j], b_s[j], m, s));
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
__global__ void layernorm_backward_smem_kernel(floatX* dinp, float* __restrict__ partials, const floatX* dout,
                                               const floatX* inp, const floatX* __restrict__ weight,
                                               const float* __restrict__ mean, const float* __restrict__ rstd,
                                               int N, int C, bool accumulate) {
  pdl_launch_dependents();  // as in the register kernel
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
          g_row[j] = g[u];
          x_row[j] = x[u];
          float xhat[x128::size], dn[x128::size];
          pack_xhat_dn(xhat, dn, g[u], x[u], w_s[j], m, s);
          add_row_sums(sum_dn, sum_dn_xhat, xhat, dn);
        }
      }
      const float b = -s * (warp_reduce_sum(sum_dn) / C), c = -s * (warp_reduce_sum(sum_dn_xhat) / C);
      // The row is staged, so dinp may be dout or inp itself: each lane reads its packs before writing them.
      for (int j = lane; j < C8; j += WARP_SIZE) {
        float xhat[x128::size], dn[x128::size];
        pack_xhat_dn(xhat, dn, g_row[j], x_row[j], w_s[j], m, s);
        const x128 old = accumulate ? load128(dinp + off + j * x128::size) : x128::zeros();
        store128(dinp + off + j * x128::size, dinp_pack(xhat, dn, s, b, c, old, accumulate));
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
        float xhat[x128::size], unused[x128::size];
        pack_xhat_dn(xhat, unused, g_s[w * C8 + p], x_s[w * C8 + p], w_s[p], mean_s[w], rstd_s[w]);
        add_pack_param_grads(dw, db, g_s[w * C8 + p], xhat);
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
  const uint64_t keep = l2_evict_last_policy();  // as the register kernel's ("The partials' L2 hint")
  for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) store_float_keep(mine + i, acc[i], keep);
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

// Packs per lane of a register-resident row of C channels; 0 when the row is too wide and is staged in
// shared memory instead.
int reg_packs(int C) {
  const int packs = ceil_div(C / x128::size, WARP_SIZE);
  return packs <= kMaxRegPacks ? packs : 0;
}

// fn(std::integral_constant<int, P>{}) with P = packs, for 1 <= packs <= kMaxRegPacks.
template <int P = 1, class Fn>
void dispatch_packs(int packs, Fn&& fn) {
  if constexpr (P <= kMaxRegPacks) {
    if (packs == P) {
      fn(std::integral_constant<int, P>{});
    } else {
      dispatch_packs<P + 1>(packs, fn);
    }
  }
}

// fn(kernel, team) with the register backward kernel for rows of C channels (C <= 32 * kMaxRegPacks * 8) and its
// warps per row (the team: ceil(C / 256)).
template <bool kAccumulate, bool kColSum, class Fn>
void dispatch_backward(int C, Fn&& fn) {
  dispatch_packs(reg_packs(C), [&](auto t) {  // packs per warp = warps per row
    fn(layernorm_backward_regs_kernel<decltype(t)::value, kAccumulate, kColSum>, (int)decltype(t)::value);
  });
}

// Dynamic shared memory of the register backward kernel: per team (`teams` per block), kBackwardAhead + 1 row
// buffers of dout and inp (and with `accumulate` dinp's old values; C bf16 each), which after the rows hold the
// team's sums (2C floats, 3C with colsum).
size_t reg_backward_smem_bytes(int C, int teams, bool accumulate, bool colsum) {
  const size_t rows = (size_t)(kBackwardAhead + 1) * (accumulate ? 3 : 2) * C * sizeof(floatX);
  const size_t sums = (size_t)(colsum ? 3 : 2) * C * sizeof(float);
  return (size_t)teams * std::max(rows, sums);
}

struct LaunchConfig {
  int warps;
  int blocks;
  size_t smem;
};

// As many blocks as are resident at once, or as the rows need if fewer (grid-stride beyond).
template <class Kernel>
LaunchConfig resident_launch(Kernel kernel, int warps, size_t smem, int N) {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, warps * WARP_SIZE, smem));
  const int resident = current_device_sm_count() * (per_sm > 0 ? per_sm : 1);
  const int needed = ceil_div(N, warps);
  return {warps, needed < resident ? needed : resident, smem};
}

// Shared-memory kernels: as many warps per block as fit (up to 8), a resident grid.
template <class Kernel, class SmemFn>
LaunchConfig plan_smem_launch(Kernel kernel, SmemFn smem_bytes, int N, int C, const char* what) {
  const int limit = max_smem_per_block();
  int warps = kMaxWarpsPerBlock;
  while (warps > 1 && smem_bytes(C, warps) > (size_t)limit) warps /= 2;
  const size_t smem = smem_bytes(C, warps);
  LLMC_REQUIRE(smem <= (size_t)limit, std::string(what) + ": C = " + std::to_string(C) +
                                          " needs more shared memory than one block has");
  ensure_dynamic_smem(kernel, smem);
  return resident_launch(kernel, warps, smem, N);
}

template <bool kResidual>
void launch_forward(floatX* out, float* mean, float* rstd, floatX* residual, const floatX* inp1,
                    const floatX* inp2, const floatX* weight, const floatX* bias, int N, int C, float eps,
                    cudaStream_t stream, const char* what) {
  LLMC_REQUIRE(C % x128::size == 0 && C > 0, std::string(what) + ": C must be a positive multiple of 8");
  if (N == 0) return;
  const int packs = reg_packs(C);
  if (packs > 0) {
    dispatch_packs(packs, [&](auto p) {
      layernorm_forward_regs_kernel<kResidual, decltype(p)::value>
          <<<ceil_div(N, kRegWarps), kRegWarps * WARP_SIZE, 0, stream>>>(out, mean, rstd, residual, inp1, inp2,
                                                                         weight, bias, N, C, eps);
    });
  } else {
    auto kernel = layernorm_forward_smem_kernel<kResidual>;
    const LaunchConfig cfg = plan_smem_launch(kernel, forward_smem_bytes, N, C, what);
    kernel<<<cfg.blocks, cfg.warps * WARP_SIZE, cfg.smem, stream>>>(out, mean, rstd, residual, inp1, inp2, weight,
                                                                     bias, N, C, eps);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <bool kAccumulate, bool kColSum>
LaunchConfig reg_backward_config(int N, int C) {
  LaunchConfig cfg{};
  dispatch_backward<kAccumulate, kColSum>(C, [&](auto kernel, int team) {
    const int teams = reg_backward_teams(team);
    const size_t smem = reg_backward_smem_bytes(C, teams, kAccumulate, kColSum);
    // The opt-in above 48 KB counts the kernel's static shared memory (the row-sum exchange) too. So the limit is
    // raised to whatever this launch asks.
    ensure_dynamic_smem(kernel, smem);
    cfg = resident_launch(kernel, teams * team, smem, N * team);  // `teams` rows per block
  });
  return cfg;
}

// The grid, and so the number of partials (layernorm_backward_scratch_floats), depends on N and C only, and for the
// register kernel on `accumulate` and `colsum` (the kernel that also sums dinp's columns).
LaunchConfig backward_config(int N, int C, bool accumulate, bool colsum = false) {
  if (reg_packs(C) == 0) {
    return plan_smem_launch(layernorm_backward_smem_kernel, backward_smem_bytes, N, C, "layernorm_backward");
  }
  if (colsum) {
    return accumulate ? reg_backward_config<true, true>(N, C) : reg_backward_config<false, true>(N, C);
  }
  return accumulate ? reg_backward_config<true, false>(N, C) : reg_backward_config<false, false>(N, C);
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
  int64_t floats = bias_grad_scratch_floats(N, C);  // colsum's separate pass, where it is not fused
  for (const bool accumulate : {false, true}) {
    floats = std::max(floats, (int64_t)backward_config(N, C, accumulate).blocks * 2 * C);
    if (reg_packs(C) > 0) floats = std::max(floats, (int64_t)backward_config(N, C, accumulate, true).blocks * 3 * C);
  }
  return floats;
}

void layernorm_backward(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                        const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N, int C,
                        bool accumulate, cudaStream_t stream, floatX* colsum) {
  LLMC_REQUIRE(C % x128::size == 0 && C > 0, "layernorm_backward: C must be a positive multiple of 8");
  if (N == 0) return;
  const int packs = reg_packs(C);
  // The register kernel sums dinp's columns itself only where its two extra planes of sums cost no resident blocks
  // (at C = 1280 they would halve them); elsewhere a separate pass (bias_grad_accumulate) does.
  LaunchConfig cfg = backward_config(N, C, accumulate);
  bool fused = false;
  if (colsum != nullptr && packs > 0) {
    const LaunchConfig with_sums = backward_config(N, C, accumulate, true);
    fused = with_sums.blocks >= cfg.blocks;
    if (fused) cfg = with_sums;
  }
  auto launch = [&](auto kernel, int) {
    kernel<<<cfg.blocks, cfg.warps * WARP_SIZE, cfg.smem, stream>>>(dinp, scratch, dout, inp, weight, mean, rstd, N,
                                                                   C);
  };
  auto launch_regs = [&](auto colsum_tag) {
    constexpr bool kColSum = decltype(colsum_tag)::value;
    if (accumulate) {
      dispatch_backward<true, kColSum>(C, launch);
    } else {
      dispatch_backward<false, kColSum>(C, launch);
    }
  };
  if (fused) {
    launch_regs(std::true_type{});
  } else if (packs > 0) {
    launch_regs(std::false_type{});
  } else {
    layernorm_backward_smem_kernel<<<cfg.blocks, cfg.warps * WARP_SIZE, cfg.smem, stream>>>(
        dinp, scratch, dout, inp, weight, mean, rstd, N, C, accumulate);
  }
  CUDA_CHECK(cudaGetLastError());
  // A programmatic dependent launch on sm_90: scheduled while the row kernel runs, so that the launch gap between
  // the two is hidden (1-3% of the op).
  param_grad_reduce(dweight, dbias, scratch, cfg.blocks, C, fused ? colsum : nullptr, stream);
  // Not fused: the column sums of the dinp just written, in a pass of their own (the scratch is free again; its
  // size, layernorm_backward_scratch_floats, covers this pass).
  if (colsum != nullptr && !fused) {
    bias_grad_accumulate(colsum, dinp, N, C, scratch, bias_grad_scratch_floats(N, C), stream);
  }
}
