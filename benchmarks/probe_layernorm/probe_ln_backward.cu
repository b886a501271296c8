// Standalone microbenchmark of LayerNorm-backward kernel variants against the library's own kernel.
// It compiles csrc/kernels/layernorm.cu into this translation unit, so the baseline is exactly what llmc runs
// (launcher layernorm_backward: the register kernel + the partials reduction), and the variants reuse its
// per-element helpers (add_pack_dn_sums, dinp_pack, add_pack_param_grads) and its reduction kernel.
//
// Variants (the row loop of layernorm_backward_regs_kernel, changed in one thing each):
//   early    the residual-gradient rows (`old`, read when accumulating) are loaded with dout and inp, before
//            the row reductions, instead of after them: one memory round trip per row instead of two.
//   same     the library's loop recompiled as a variant (what the variant scaffolding costs by itself).
//   split    every dinp store of the row first, then the dweight/dbias updates in shared memory.
//   earlysp  early and split.
//   team2    early, and each row shared by two warps (a "team" of 64 lanes, half the packs per lane), the row
//            sums exchanged through shared memory; 8-warp blocks, twice the warps per SM at the same registers.
//   team2lat / team2sp / team2esp: team2 with late residual loads / late and split / early and split.
//   t2b4sp   team2sp in 4-warp blocks (two teams), 4 blocks per SM.
//   team4 / team4B3: four warps per row (late residual loads), 8-warp blocks, 2 / 3 blocks per SM.
//   t2noRed  (diagnostic) team2lat without the partials' reduction kernel: what that second kernel costs.
//   pf / t2pf / t4pf / t4pfB3: one-warp rows / team2lat / team4 / team4B3 with the next row's dout, inp, mean and
//            rstd loaded before the current row is worked (double-buffered registers; session 7).
//   ca / t2ca / t4ca / t4caB3: the same with the next row's dout and inp copied to shared memory by cp.async
//            (double-buffered in shared memory, no registers held for it).
//   t2caPDL / t4caPDL: t2ca / t4ca with the reduction kernel as a programmatic dependent launch (the row kernel
//            triggers it at its start; it waits with griddepcontrol.wait): the launch gap between the two hidden.
// (Session 6, first run: early B3 and team2 at 3 blocks/SM spilled and were 5-70% slower: dropped. From
// 866fab8 the library ran team2lat's loop for C > 1024; since session 7's runs it runs t2ca's for 512 < C <= 1280
// and t4ca's above, so "library" now agrees with those, not with team2lat.)
// dinp must match the baseline bit for bit for the one-warp variants (same math, same order); team2 sums each
// row in another order (its dinp may differ in the last bf16 bit) and every variant with another grid groups
// the dweight/dbias partials differently: those are compared against the baseline with a tolerance, and all
// against themselves (run twice, bit for bit).
//
//   ahead1..ahead4 (session 9): the library's kernel and launch with 1-4 rows per team in flight (ahead1 = t2ca /
//            t4ca as they went into the library in session 7); the library runs kBackwardAhead.
//   old1..old3 (session 9, accumulating only): the same with dinp's old values copied in with each row.
// Build and run: run.sh [variant names...] (nvcc -O3 -std=c++17 -arch=sm_90a --use_fast_math); names pick
// variants (the library's own launch always runs first, as the baseline).
#include "../../csrc/kernels/layernorm.cu"
#include "bias_grad_shim.cuh"
#include "../probe_common.cuh"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

#define CK(x) CUDA_CHECK(x)

template <int kPacks, int kTeam, int kTeamsPerBlock, int kMinBlocks, bool kEarly, bool kSplit, int kPrefetch = 0,
          bool kTrigger = false>
__global__ void __launch_bounds__(kTeam * kTeamsPerBlock * WARP_SIZE, kMinBlocks)
    ln_bwd_variant(floatX* dinp, float* __restrict__ partials, const floatX* dout, const floatX* inp,
                   const floatX* __restrict__ weight, const float* __restrict__ mean, const float* __restrict__ rstd,
                   int N, int C, bool accumulate) {
  extern __shared__ int4 smem[];
  // kTrigger: let the dependent grid (the partials' reduction, launched with programmatic stream serialization)
  // be launched now; it waits (griddepcontrol.wait) until this grid has finished and its writes are visible
  if constexpr (kTrigger) asm volatile("griddepcontrol.launch_dependents;");
  constexpr int kLanes = kTeam * WARP_SIZE;
  constexpr int kHalf = f128::size;
  __shared__ float xch[kTeamsPerBlock][2][kTeam][2];  // row sums of each warp of a team, double-buffered
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int team = warp / kTeam, member = warp % kTeam, tl = member * WARP_SIZE + lane;
  const int C8 = C / x128::size;
  f128* sums = reinterpret_cast<f128*>(smem) + team * 4 * C8;
#pragma unroll
  for (int u = 0; u < kPacks; u++) {
    const int j = tl + u * kLanes;
    if (j < C8) {
#pragma unroll
      for (int plane = 0; plane < 4; plane++) sums[plane * C8 + j] = f128::zeros();
    }
  }
  int parity = 0;
  const int stride = gridDim.x * kTeamsPerBlock;
  // kPrefetch: the next row's dout, inp, mean and rstd are loaded (into gn, xn, mn, sn) before this row is worked
  auto load_row = [&](int r, x128* gr, x128* xr, float& mr, float& sr) {
    const int64_t o = (int64_t)r * C;
    mr = mean[r];
    sr = rstd[r];
#pragma unroll
    for (int u = 0; u < kPacks; u++) {
      const int j = tl + u * kLanes;
      if (j < C8) {
        gr[u] = load128cs(dout + o + j * x128::size);
        xr[u] = load128cs(inp + o + j * x128::size);
      }
    }
  };
  x128 gn[kPrefetch == 1 ? kPacks : 1], xn[kPrefetch == 1 ? kPacks : 1];
  float mn = 0.0f, sn = 0.0f;
  // kPrefetch == 2: the next row goes to shared memory by cp.async (no registers held): per team two buffers of
  // [dout | inp] rows after the teams' sums; each lane copies, and later reads, only its own packs, so a lane's
  // own cp.async.wait_group is the only synchronisation needed.
  x128* pf = reinterpret_cast<x128*>(reinterpret_cast<f128*>(smem) + kTeamsPerBlock * 4 * C8) + team * 4 * C8;
  auto issue_row = [&](int r, int buf) {
    const int64_t o = (int64_t)r * C;
#pragma unroll
    for (int u = 0; u < kPacks; u++) {
      const int j = tl + u * kLanes;
      if (j < C8) {
        const unsigned dg = (unsigned)__cvta_generic_to_shared(pf + (2 * buf) * C8 + j);
        const unsigned dx = (unsigned)__cvta_generic_to_shared(pf + (2 * buf + 1) * C8 + j);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dg), "l"(dout + o + j * x128::size));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dx), "l"(inp + o + j * x128::size));
      }
    }
    asm volatile("cp.async.commit_group;");
    mn = mean[r];
    sn = rstd[r];
  };
  int cur = 0;
  if (blockIdx.x * kTeamsPerBlock + team < N) {
    if constexpr (kPrefetch == 1) load_row(blockIdx.x * kTeamsPerBlock + team, gn, xn, mn, sn);
    if constexpr (kPrefetch == 2) issue_row(blockIdx.x * kTeamsPerBlock + team, 0);
  }
  for (int row = blockIdx.x * kTeamsPerBlock + team; row < N; row += stride) {
    const int64_t off = (int64_t)row * C;
    float m, s;
    x128 g[kPacks], x[kPacks], old[kPacks];
    if constexpr (kPrefetch == 1) {
#pragma unroll
      for (int u = 0; u < kPacks; u++) {
        g[u] = gn[u];
        x[u] = xn[u];
      }
      m = mn;
      s = sn;
      if (row + stride < N) load_row(row + stride, gn, xn, mn, sn);
    } else if constexpr (kPrefetch == 2) {
      asm volatile("cp.async.wait_group 0;" ::: "memory");
#pragma unroll
      for (int u = 0; u < kPacks; u++) {
        const int j = tl + u * kLanes;
        if (j < C8) {
          g[u] = pf[(2 * cur) * C8 + j];
          x[u] = pf[(2 * cur + 1) * C8 + j];
        }
      }
      m = mn;
      s = sn;
      if (row + stride < N) issue_row(row + stride, cur ^ 1);
      cur ^= 1;
    } else {
      load_row(row, g, x, m, s);
    }
    if constexpr (kEarly) {
#pragma unroll
      for (int u = 0; u < kPacks; u++) {
        const int j = tl + u * kLanes;
        if (j < C8) old[u] = accumulate ? load128(dinp + off + j * x128::size) : x128::zeros();
      }
    }
    float sum_dn = 0.0f, sum_dn_xhat = 0.0f;
#pragma unroll
    for (int u = 0; u < kPacks; u++) {
      const int j = tl + u * kLanes;
      if (j < C8) add_pack_dn_sums(sum_dn, sum_dn_xhat, g[u], x[u], load128(weight + j * x128::size), m, s);
    }
    sum_dn = warp_reduce_sum(sum_dn);
    sum_dn_xhat = warp_reduce_sum(sum_dn_xhat);
    if constexpr (kTeam > 1) {
      if (lane == 0) {
        xch[team][parity][member][0] = sum_dn;
        xch[team][parity][member][1] = sum_dn_xhat;
      }
      asm volatile("bar.sync %0, %1;" ::"r"(team + 1), "r"(kLanes) : "memory");
      sum_dn = 0.0f;
      sum_dn_xhat = 0.0f;
#pragma unroll
      for (int w = 0; w < kTeam; w++) {
        sum_dn += xch[team][parity][w][0];
        sum_dn_xhat += xch[team][parity][w][1];
      }
      parity ^= 1;
    }
    const float mean_dn = sum_dn / C, mean_dn_xhat = sum_dn_xhat / C;
    if constexpr (!kEarly) {
#pragma unroll
      for (int u = 0; u < kPacks; u++) {
        const int j = tl + u * kLanes;
        old[u] = accumulate && j < C8 ? load128(dinp + off + j * x128::size) : x128::zeros();
      }
    }
    if constexpr (kSplit) {  // every dinp store first, then the shared-memory sums
#pragma unroll
      for (int u = 0; u < kPacks; u++) {
        const int j = tl + u * kLanes;
        if (j < C8) {
          const x128 w = load128(weight + j * x128::size);
          store128(dinp + off + j * x128::size, dinp_pack(g[u], x[u], w, old[u], m, s, mean_dn, mean_dn_xhat));
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kPacks; u++) {
      const int j = tl + u * kLanes;
      if (j < C8) {
        if constexpr (!kSplit) {
          const x128 w = load128(weight + j * x128::size);
          store128(dinp + off + j * x128::size, dinp_pack(g[u], x[u], w, old[u], m, s, mean_dn, mean_dn_xhat));
        }
        float dw[x128::size], db[x128::size];
        const f128 dw_lo = sums[j], dw_hi = sums[C8 + j], db_lo = sums[2 * C8 + j], db_hi = sums[3 * C8 + j];
#pragma unroll
        for (int k = 0; k < kHalf; k++) {
          dw[k] = dw_lo[k];
          dw[kHalf + k] = dw_hi[k];
          db[k] = db_lo[k];
          db[kHalf + k] = db_hi[k];
        }
        add_pack_param_grads(dw, db, g[u], x[u], m, s);
        f128 a, b, c, d;
#pragma unroll
        for (int k = 0; k < kHalf; k++) {
          a[k] = dw[k];
          b[k] = dw[kHalf + k];
          c[k] = db[k];
          d[k] = db[kHalf + k];
        }
        sums[j] = a;
        sums[C8 + j] = b;
        sums[2 * C8 + j] = c;
        sums[3 * C8 + j] = d;
      }
    }
  }
  __syncthreads();
  const float* all = reinterpret_cast<const float*>(smem);
  for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) {
    const int col = i < C ? i : i - C;
    const int plane = (i < C ? 0 : 2) + (col % x128::size) / kHalf;
    const int at = (plane * C8 + col / x128::size) * kHalf + col % kHalf;
    float v = 0.0f;
#pragma unroll
    for (int t = 0; t < kTeamsPerBlock; t++) v += all[t * 4 * C8 * kHalf + at];
    partials[(int64_t)blockIdx.x * 2 * C + i] = v;
  }
}

struct Variant {
  const char* name;
  int blocks;  // grid (resident), set up at launch configuration
  std::function<void(floatX*, floatX*, floatX*, float*, const floatX*, const floatX*, const floatX*, const float*,
                     const float*, int, int, bool)>
      run;
};

// The library's reduction kernel, waiting first for the grid it depends on (programmatic dependent launch).
__global__ void reduce_after_wait(floatX* __restrict__ dweight, floatX* __restrict__ dbias,
                                  const float* __restrict__ partials, int num_partials, int C) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
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

// Variants named on the command line (all when none is): main's arguments.
std::vector<std::string> g_only;
bool wanted(const char* name) {
  return g_only.empty() || std::find(g_only.begin(), g_only.end(), std::string(name)) != g_only.end();
}

void print_launch(const char* name, const void* kernel, int per_sm, int threads, int blocks) {
  cudaFuncAttributes attr{};
  CK(cudaFuncGetAttributes(&attr, kernel));
  printf("  %-8s %d regs, %zu B local, %d blocks/SM x %d threads, grid %d\n", name, attr.numRegs,
         attr.localSizeBytes, per_sm, threads, blocks);
}

template <int kPacks, int kTeam, int kTeamsPerBlock, int kMinBlocks, bool kEarly, bool kSplit, int kPrefetch = 0,
          bool kTrigger = false>
Variant make_variant(const char* name, int N, int C, bool reduce = true) {
  if (!wanted(name)) return Variant{name, 0, nullptr};
  auto kernel = ln_bwd_variant<kPacks, kTeam, kTeamsPerBlock, kMinBlocks, kEarly, kSplit, kPrefetch, kTrigger>;
  const size_t smem = (size_t)kTeamsPerBlock * 2 * C * sizeof(float) +
                      (kPrefetch == 2 ? (size_t)kTeamsPerBlock * 4 * C * sizeof(floatX) : 0);
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const int threads = kTeam * kTeamsPerBlock * WARP_SIZE;
  int per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const int blocks = std::min(ceil_div(N, kTeamsPerBlock), current_device_sm_count() * std::max(per_sm, 1));
  print_launch(name, reinterpret_cast<const void*>(kernel), per_sm, threads, blocks);
  Variant v{name, blocks, nullptr};
  v.run = [=](floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout, const floatX* inp,
              const floatX* weight, const float* mean, const float* rstd, int n, int c, bool accumulate) {
    kernel<<<blocks, threads, smem>>>(dinp, scratch, dout, inp, weight, mean, rstd, n, c, accumulate);
    CK(cudaGetLastError());
    if (!reduce) return;
    const dim3 block(WARP_SIZE, kReduceRows);
    if constexpr (kTrigger) {
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(ceil_div(2 * c, WARP_SIZE));
      cfg.blockDim = block;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[0].val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      CK(cudaLaunchKernelEx(&cfg, reduce_after_wait, dweight, dbias, (const float*)scratch, blocks, c));
    } else {
      layernorm_param_grad_reduce_kernel<<<ceil_div(2 * c, WARP_SIZE), block>>>(dweight, dbias, scratch, blocks, c);
    }
    CK(cudaGetLastError());
  };
  return v;
}

// The library's own kernel and launch (dispatch_backward's team, a resident grid, its reduction kernel) with
// kAhead rows in flight per team instead of kBackwardAhead: "ahead1" is the kernel of sessions 7-8 (one row
// prefetched; t2ca / t4ca), "ahead<kBackwardAhead>" is the library's.
template <int kAhead, bool kOld = false>
Variant make_ahead_variant(const char* name, int N, int C, bool accumulate) {
  Variant v{name, 0, nullptr};
  if (!wanted(name) || (kOld && !accumulate)) return v;
  dispatch_backward<kAhead, kOld>(C, [&](auto kernel, int team, int ahead) {
    const size_t smem = reg_backward_smem_bytes(C, team, ahead, kOld);
    ensure_dynamic_smem(kernel, smem);
    const LaunchConfig cfg = resident_launch(kernel, reg_backward_teams(team) * team, smem, N * team);
    int per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, cfg.warps * WARP_SIZE, smem));
    print_launch(name, reinterpret_cast<const void*>(kernel), per_sm, cfg.warps * WARP_SIZE, cfg.blocks);
    v.blocks = cfg.blocks;
    v.run = [=](floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout, const floatX* inp,
                const floatX* weight, const float* mean, const float* rstd, int n, int c, bool accumulate) {
      kernel<<<cfg.blocks, cfg.warps * WARP_SIZE, cfg.smem>>>(dinp, scratch, dout, inp, weight, mean, rstd, n, c,
                                                              accumulate);
      CK(cudaGetLastError());
      layernorm_param_grad_reduce_kernel<<<ceil_div(2 * c, WARP_SIZE), dim3(WARP_SIZE, kReduceRows)>>>(
          dweight, dbias, scratch, cfg.blocks, c);
      CK(cudaGetLastError());
    };
  });
  return v;
}

float bf2f(floatX v) { return __bfloat162float(v); }

template <int kPacks>
void add_variants(std::vector<Variant>& vs, int N, int C, bool accumulate) {
  constexpr int kB = kPacks <= 5 ? 3 : 2;
  vs.push_back(make_variant<kPacks, 1, 4, kB, false, false>("same", N, C));  // the library's loop, recompiled
  vs.push_back(make_variant<kPacks, 1, 4, kB, true, false>("early", N, C));
  vs.push_back(make_variant<kPacks, 1, 4, kB, false, true>("split", N, C));
  vs.push_back(make_variant<kPacks, 1, 4, kB, true, true>("earlysp", N, C));
  constexpr int kHalfPacks = (kPacks + 1) / 2;
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, true, false>("team2", N, C));
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, false, false>("team2lat", N, C));
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, false, true>("team2sp", N, C));
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, true, true>("team2esp", N, C));
  vs.push_back(make_variant<kHalfPacks, 2, 2, 4, false, true>("t2b4sp", N, C));
  // not yet run on a GPU (added after session 6's runs): four warps per row, 2 rows per 8-warp block
  constexpr int kQuarterPacks = (kPacks + 3) / 4;
  vs.push_back(make_variant<kQuarterPacks, 4, 2, 2, false, false>("team4", N, C));
  vs.push_back(make_variant<kQuarterPacks, 4, 2, 3, false, false>("team4B3", N, C));
  // a diagnostic, not a candidate: team2lat without the second kernel (the partials' reduction into dweight and
  // dbias), to show what that kernel costs; its dweight/dbias are wrong by construction
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, false, false>("t2noRed", N, C, false));
  // session 7: the next row's loads issued before this row is worked (registers double-buffered)
  vs.push_back(make_variant<kPacks, 1, 4, kB, false, false, 1>("pf", N, C));
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, false, false, 1>("t2pf", N, C));
  vs.push_back(make_variant<kQuarterPacks, 4, 2, 2, false, false, 1>("t4pf", N, C));
  vs.push_back(make_variant<kQuarterPacks, 4, 2, 3, false, false, 1>("t4pfB3", N, C));
  // the next row copied to shared memory with cp.async instead (no registers held for it)
  vs.push_back(make_variant<kPacks, 1, 4, kB, false, false, 2>("ca", N, C));
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, false, false, 2>("t2ca", N, C));
  vs.push_back(make_variant<kQuarterPacks, 4, 2, 2, false, false, 2>("t4ca", N, C));
  vs.push_back(make_variant<kQuarterPacks, 4, 2, 3, false, false, 2>("t4caB3", N, C));
  // not yet run on a GPU (written after session 7's runs): t2ca / t4ca with the reduction kernel launched as a
  // programmatic dependent of the row kernel (its launch overlapping the row kernel's tail)
  vs.push_back(make_variant<kHalfPacks, 2, 4, 2, false, false, 2, true>("t2caPDL", N, C));
  vs.push_back(make_variant<kQuarterPacks, 4, 2, 2, false, false, 2, true>("t4caPDL", N, C));
  // session 9: the library's kernel with 1 to 4 rows in flight per team (cp.async into shared memory)
  vs.push_back(make_ahead_variant<1>("ahead1", N, C, accumulate));
  vs.push_back(make_ahead_variant<2>("ahead2", N, C, accumulate));
  vs.push_back(make_ahead_variant<3>("ahead3", N, C, accumulate));
  vs.push_back(make_ahead_variant<4>("ahead4", N, C, accumulate));
  // accumulating: dinp's old values copied in with the row too (not loaded after the row sums)
  vs.push_back(make_ahead_variant<1, true>("old1", N, C, accumulate));
  vs.push_back(make_ahead_variant<2, true>("old2", N, C, accumulate));
  vs.push_back(make_ahead_variant<3, true>("old3", N, C, accumulate));
}

void probe(int N, int C, bool accumulate, int sets, int iters) {
  const int C8 = C / 8, packs = ceil_div(C8, WARP_SIZE);
  printf("\nN=%d C=%d accumulate=%d (%d packs per lane)\n", N, C, (int)accumulate, packs);
  const size_t nc = (size_t)N * C;
  std::vector<floatX*> dout(sets), inp(sets), dinp(sets), old(sets);
  std::vector<float*> mean(sets), rstd(sets);
  for (int i = 0; i < sets; i++) {
    dout[i] = probe_kit::upload(probe_kit::random_values<floatX>(nc, 10 * i + 1, -1.0f, 1.0f));
    inp[i] = probe_kit::upload(probe_kit::random_values<floatX>(nc, 10 * i + 2, -2.0f, 2.0f));
    old[i] = probe_kit::upload(probe_kit::random_values<floatX>(nc, 10 * i + 3, -1.0f, 1.0f));
    mean[i] = probe_kit::upload(probe_kit::random_values<float>(N, 10 * i + 4, -0.3f, 0.3f));
    rstd[i] = probe_kit::upload(probe_kit::random_values<float>(N, 10 * i + 5, 0.5f, 1.5f));
    CK(cudaMalloc(&dinp[i], nc * sizeof(floatX)));
  }
  floatX* weight = probe_kit::upload(probe_kit::random_values<floatX>(C, 7, 0.5f, 1.5f));
  floatX *dweight = nullptr, *dbias = nullptr;
  CK(cudaMalloc(&dweight, C * sizeof(floatX)));
  CK(cudaMalloc(&dbias, C * sizeof(floatX)));
  std::vector<Variant> vs;
  Variant base{"library", 0, nullptr};
  const int64_t lib_scratch = layernorm_backward_scratch_floats(N, C);
  base.run = [](floatX* di, floatX* dw, floatX* db, float* sc, const floatX* g, const floatX* x, const floatX* w,
                const float* m, const float* r, int n, int c, bool acc) {
    layernorm_backward(di, dw, db, sc, g, x, w, m, r, n, c, acc, 0);
  };
  vs.push_back(base);
  dispatch_packs(packs, [&](auto p) { add_variants<decltype(p)::value>(vs, N, C, accumulate); });
  vs.erase(std::remove_if(vs.begin() + 1, vs.end(), [](const Variant& v) { return !v.run; }), vs.end());
  float* scratch = nullptr;
  CK(cudaMalloc(&scratch, sizeof(float) * std::max<int64_t>(lib_scratch, (int64_t)4 * 264 * 4 * 2 * C)));

  auto reset = [&](int i) {
    CK(cudaMemcpy(dinp[i], old[i], nc * sizeof(floatX), cudaMemcpyDeviceToDevice));
    CK(cudaMemset(dweight, 0, C * sizeof(floatX)));
    CK(cudaMemset(dbias, 0, C * sizeof(floatX)));
  };
  std::vector<floatX> ref_dinp, ref_dw, ref_db;
  const double bytes = (double)nc * 2 * (accumulate ? 4 : 3) + 8.0 * N;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (size_t vi = 0; vi < vs.size(); vi++) {
    Variant& v = vs[vi];
    // correctness: set 0, twice (bit-identical to itself), against the library
    std::vector<floatX> got[2][3];
    for (int rep = 0; rep < 2; rep++) {
      reset(0);
      v.run(dinp[0], dweight, dbias, scratch, dout[0], inp[0], weight, mean[0], rstd[0], N, C, accumulate);
      CK(cudaDeviceSynchronize());
      got[rep][0] = probe_kit::download(dinp[0], nc);
      got[rep][1] = probe_kit::download(dweight, C);
      got[rep][2] = probe_kit::download(dbias, C);
    }
    bool self_same = true;
    for (int k = 0; k < 3; k++)
      self_same &= memcmp(got[0][k].data(), got[1][k].data(), got[0][k].size() * sizeof(floatX)) == 0;
    if (vi == 0) {
      ref_dinp = got[0][0];
      ref_dw = got[0][1];
      ref_db = got[0][2];
    }
    size_t dinp_diff = 0;
    double dinp_max = 0, p_max = 0;
    for (size_t i = 0; i < nc; i++) {
      if (memcmp(&got[0][0][i], &ref_dinp[i], sizeof(floatX))) {
        dinp_diff++;
        dinp_max = std::max(dinp_max, (double)fabsf(bf2f(got[0][0][i]) - bf2f(ref_dinp[i])));
      }
    }
    size_t p_diff = 0;
    for (int i = 0; i < C; i++) {
      const floatX* a[2] = {&got[0][1][i], &got[0][2][i]};
      const floatX* b[2] = {&ref_dw[i], &ref_db[i]};
      for (int k = 0; k < 2; k++) {
        if (memcmp(a[k], b[k], sizeof(floatX))) {
          p_diff++;
          const double ref = fabs(bf2f(*b[k]));
          p_max = std::max(p_max, fabs(bf2f(*a[k]) - bf2f(*b[k])) / std::max(ref, 1e-3));
        }
      }
    }
    // timing: rotate over the sets (beyond L2), dinp reset excluded (accumulating into a dirty dinp is fine)
    for (int w = 0; w < 3; w++)
      v.run(dinp[w % sets], dweight, dbias, scratch, dout[w % sets], inp[w % sets], weight, mean[w % sets],
            rstd[w % sets], N, C, accumulate);
    std::vector<float> ms;
    for (int rep = 0; rep < 7; rep++) {
      CK(cudaEventRecord(e0));
      for (int it = 0; it < iters; it++) {
        const int i = it % sets;
        v.run(dinp[i], dweight, dbias, scratch, dout[i], inp[i], weight, mean[i], rstd[i], N, C, accumulate);
      }
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float t = 0;
      CK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t / iters);
    }
    std::sort(ms.begin(), ms.end());
    const double us = ms[ms.size() / 2] * 1e3;
    printf("  %-8s %8.2f us  %7.1f GB/s  self-identical %s  dinp differs %zu (max %.3g)  dweight/dbias differ "
           "%zu of %d (max rel %.3g)\n",
           v.name, us, bytes / us * 1e-3, self_same ? "yes" : "NO", dinp_diff, dinp_max, p_diff, 2 * C, p_max);
  }
  for (int i = 0; i < sets; i++) {
    CK(cudaFree(dout[i]));
    CK(cudaFree(inp[i]));
    CK(cudaFree(dinp[i]));
    CK(cudaFree(old[i]));
    CK(cudaFree(mean[i]));
    CK(cudaFree(rstd[i]));
  }
  CK(cudaFree(weight));
  CK(cudaFree(dweight));
  CK(cudaFree(dbias));
  CK(cudaFree(scratch));
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++) g_only.emplace_back(argv[i]);  // variant names to run (all when none given)
  probe_kit::print_device();
  for (bool acc : {true, false}) {
    probe(8192, 1600, acc, 4, 40);
    probe(65536, 768, acc, 3, 20);
    probe(32768, 1024, acc, 3, 20);
    probe(16384, 1280, acc, 3, 20);
  }
  return 0;
}
