// LayerNorm-backward kernel variants against the library's launcher (bit-identical outputs, graph-timed). Run: dev/cuda/run.sh dev/cuda/layernorm_backward.cu
// Standalone microbenchmark of LayerNorm-backward kernel variants against the library's own kernels. It compiles
// csrc/kernels/layernorm.cu and column_sums.cu into this translation unit, so the baseline is exactly what llmc runs
// (launcher layernorm_backward: the register kernel + the partials' reduction), and the variants reuse the library's
// per-element helpers. The library compiles only the variant it launches; the knobs live here: variant_regs_kernel
// is the library's register kernel with the teams per block, blocks per SM, rows in flight, how dinp's old values
// arrive and how the rows' statistics arrive as template arguments, and variant_reduce_kernel is the library's
// reduction of the partials with its block geometry and the early read of the gradients' old values as template
// arguments.
//
// Variants: "t<teams per block>b<blocks per SM>a<rows ahead>", with "o" when dinp's old values come with the row
// (accumulating only; without "o" an accumulating launch loads them after the row sums) and "c" when the rows' mean
// and rstd come 32 rows at a time (the library's choice when it overwrites dinp; variants without "c" load them row
// by row). Each exists only for the team width ceil(C / 256) it names in probe() and skips itself at other widths.
// The variants launch the library's reduction plainly (but those of add_reduction_variants); the library launches it
// as a programmatic dependent of the row kernel, so "library" against its own grid's variant shows what that gains.
// Every variant with another grid groups the dweight/dbias partials differently: those are compared against the
// baseline with a tolerance, and all against themselves (run twice, bit for bit).
// Build and run: run.sh [variant names...] (nvcc -O3 -std=c++17 -arch=sm_90a --use_fast_math); names pick
// variants (the library's own launch always runs first, as the baseline). PROBE_SHAPES="NxC,..." picks shapes,
// PROBE_ACC=0 or 1 one mode, PROBE_GRAPH=1 times the calls in a CUDA graph (as benchmarks/common.py does) instead
// of launching them one by one.
#include "../../csrc/kernels/layernorm.cu"
#include "../../csrc/kernels/column_sums.cu"
#include "probe_common.cuh"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <deque>
#include <functional>
#include <string>
#include <vector>

namespace {

#define CK(x) CUDA_CHECK(x)

struct Variant {
  const char* name;
  int blocks;  // grid (resident), set up at launch configuration
  std::function<void(floatX*, floatX*, floatX*, float*, const floatX*, const floatX*, const floatX*, const float*,
                     const float*, int, int, bool)>
      run;
};

// Variants named on the command line (all when none is): main's arguments.
std::vector<std::string> g_only;
// The stream every launch goes to: the default one, or (PROBE_GRAPH=1) a stream captured into a CUDA graph.
cudaStream_t g_stream = 0;
bool wanted(const char* name) {
  return g_only.empty() || std::find(g_only.begin(), g_only.end(), std::string(name)) != g_only.end();
}

void print_launch(const char* name, const void* kernel, int per_sm, int threads, int blocks) {
  cudaFuncAttributes attr{};
  CK(cudaFuncGetAttributes(&attr, kernel));
  printf("  %-8s %d regs, %zu B local, %d blocks/SM x %d threads, grid %d\n", name, attr.numRegs,
         attr.localSizeBytes, per_sm, threads, blocks);
}

// A simpler reduction of the partials, for the "R" variants: block (32, 16), x one of 32 consecutive columns, y
// strides over the partials one load at a time; the 16 y-sums then added in y order by one warp.
constexpr int kOldReduceRows = 16;
__global__ void old_param_grad_reduce_kernel(floatX* __restrict__ dweight, floatX* __restrict__ dbias,
                                             const float* __restrict__ partials, int num_partials, int C) {
  pdl_wait();
  __shared__ float sums[kOldReduceRows][WARP_SIZE + 1];
  const int width = 2 * C;
  const int col = blockIdx.x * WARP_SIZE + threadIdx.x;
  float v = 0.0f;
  if (col < width) {
    for (int g = threadIdx.y; g < num_partials; g += kOldReduceRows) v += partials[(int64_t)g * width + col];
  }
  sums[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0 && col < width) {
    float total = 0.0f;
    for (int y = 0; y < kOldReduceRows; y++) total += sums[y][threadIdx.x];
    floatX* dst = col < C ? dweight + col : dbias + (col - C);
    *dst = (floatX)((float)*dst + total);
  }
}

// What the register kernel does with dinp: overwrite it, or add to its old values, loaded after the row sums
// (kAddLoaded) or staged in shared memory with the row (kAddStaged, the library's accumulating launch).
enum class Dinp { kWrite, kAddLoaded, kAddStaged };

// layernorm_backward_regs_kernel (layernorm.cu; without the fused column sums of dinp) with its knobs as template
// arguments: kTeams teams of kTeam warps per block, __launch_bounds__' kMinBlocks blocks per SM, kAhead rows in
// flight, dinp's mode, and kChunkStats (the rows' mean and rstd 32 rows at a time, shuffled to the lanes, instead of
// one row ahead). The library's launch is kTeams = reg_backward_teams(kTeam), kMinBlocks =
// reg_backward_blocks_per_sm(kTeam), kAhead = kBackwardAhead, kChunkStats when (and only when) it overwrites dinp.
// Shared memory (dynamic): variant_smem_bytes.
template <int kTeam, int kTeams, int kMinBlocks, int kAhead, Dinp kMode, bool kChunkStats>
__global__ void __launch_bounds__(kTeam * kTeams * WARP_SIZE, kMinBlocks)
    variant_regs_kernel(floatX* dinp, float* __restrict__ partials, const floatX* dout, const floatX* inp,
                        const floatX* __restrict__ weight, const float* __restrict__ mean,
                        const float* __restrict__ rstd, int N, int C) {
  constexpr bool kOld = kMode == Dinp::kAddStaged;
  pdl_launch_dependents();
  extern __shared__ int4 smem[];
  constexpr int kLanes = kTeam * WARP_SIZE;
  constexpr int kPlanes = kOld ? 3 : 2;  // rows per buffer: dout, inp (and dinp's old values with kOld)
  constexpr int kHalf = f128::size;
  __shared__ float2 exchange[kTeams][2][kTeam];
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int team = warp / kTeam, member = warp % kTeam, j = member * WARP_SIZE + lane;
  const int C8 = C / x128::size;
  const bool active = j < C8;
  x128* rows = reinterpret_cast<x128*>(smem) + team * kPlanes * (kAhead + 1) * C8;
  auto fetch_row = [&](int r, int buf) {
    if (r < N && active) {
      const int64_t o = (int64_t)r * C + j * x128::size;
      cp_async16(rows + kPlanes * buf * C8 + j, dout + o);
      cp_async16(rows + (kPlanes * buf + 1) * C8 + j, inp + o);
      if constexpr (kOld) cp_async16(rows + (kPlanes * buf + 2) * C8 + j, dinp + o);
    }
    cp_async_commit();
  };
  const int first = blockIdx.x * kTeams + team, stride = gridDim.x * kTeams;
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
  float dw[x128::size], db[x128::size];
#pragma unroll
  for (int k = 0; k < x128::size; k++) dw[k] = db[k] = 0.0f;
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
    cp_async_wait<kAhead - 1>();
    const int cur = buf;
    const int4 zero = make_int4(0, 0, 0, 0);
    const x128 g = x128::from_int4(active ? rows[kPlanes * cur * C8 + j].as_int4() : zero);
    const x128 x = x128::from_int4(active ? rows[(kPlanes * cur + 1) * C8 + j].as_int4() : zero);
    x128 old = x128::from_int4(kOld && active ? rows[(kPlanes * cur + 2) * C8 + j].as_int4() : zero);
    fetch_row(row + kAhead * stride, cur == 0 ? kAhead : cur - 1);
    buf = cur == kAhead ? 0 : cur + 1;
    if (!kChunkStats && row + stride < N) {
      next_m = mean[row + stride];
      next_s = rstd[row + stride];
    }
    float xhat[x128::size], dn[x128::size], sum_dn = 0.0f, sum_dn_xhat = 0.0f;
    pack_xhat_dn(xhat, dn, g, x, w, m, s);
    add_row_sums(sum_dn, sum_dn_xhat, xhat, dn);
    add_pack_param_grads(dw, db, g, xhat);
    sum_dn = warp_reduce_sum(sum_dn);
    sum_dn_xhat = warp_reduce_sum(sum_dn_xhat);
    if constexpr (kTeam > 1) {
      if (lane == 0) exchange[team][parity][member] = make_float2(sum_dn, sum_dn_xhat);
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
    if constexpr (kMode == Dinp::kAddLoaded) {
      // read here rather than with dout and inp: the registers the row sums no longer need (as whole words, see g)
      old = x128::from_int4(active ? load128(dinp + off).as_int4() : zero);
    }
    const x128 d = dinp_pack(xhat, dn, s, b, c, old, kMode != Dinp::kWrite);
    if (active) store128(dinp + off, d);
  }
  __syncthreads();
  float* all = reinterpret_cast<float*>(smem);
  auto put = [&](int part, const float* sums) {
    float* dst = all + (team * 2 + part) * C + j * x128::size;
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
  }
  __syncthreads();
  const uint64_t keep = l2_evict_last_policy();
  for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) {
    float v = 0.0f;
#pragma unroll
    for (int t = 0; t < kTeams; t++) v += all[t * 2 * C + i];
    store_float_keep(partials + (int64_t)blockIdx.x * 2 * C + i, v, keep);
  }
}

// variant_regs_kernel's dynamic shared memory: per team, ahead + 1 row buffers of dout and inp (and with `old`
// dinp's old values), which after the rows hold the team's dweight / dbias sums.
size_t variant_smem_bytes(int C, int teams, int ahead, bool old) {
  const size_t rows = (size_t)(ahead + 1) * (old ? 3 : 2) * C * sizeof(floatX);
  return (size_t)teams * std::max(rows, (size_t)2 * C * sizeof(float));
}

// param_grad_reduce_kernel (column_sums.cu; without colsum) with its block geometry as template arguments: kQuads
// quads of columns by kRows rows, kDepth loads in flight per thread; kPrefetch: the gradients' old values read
// before pdl_wait (the library's choice) or after it. <kReduceQuads, kReduceRows, kReduceDepth, true> is the library's.
template <int kQuads, int kRows, int kDepth, bool kPrefetch>
__global__ void __launch_bounds__(kQuads * kRows)
    variant_reduce_kernel(floatX* __restrict__ dweight, floatX* __restrict__ dbias,
                          const float* __restrict__ partials, int num_partials, int C) {
  constexpr int kWarps = kQuads * kRows / WARP_SIZE;
  __shared__ float4 warp_sums[kWarps][kQuads];
  const int width = 2 * C;
  const int col = (blockIdx.x * kQuads + threadIdx.x) * 4;
  floatX* dst = nullptr;
  float total[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (threadIdx.y == 0 && col < width) {
    dst = col < C ? dweight + col : dbias + (col - C);
    if constexpr (kPrefetch) {
#pragma unroll
      for (int k = 0; k < 4; k++) total[k] = (float)dst[k];
    }
  }
  pdl_wait();
  const int lane = (threadIdx.y * kQuads + threadIdx.x) % WARP_SIZE;
  const int warp = (threadIdx.y * kQuads + threadIdx.x) / WARP_SIZE;
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (col < width) {
    for (int g0 = threadIdx.y; g0 < num_partials; g0 += kRows * kDepth) {
      float4 p[kDepth];
#pragma unroll
      for (int k = 0; k < kDepth; k++) {
        const int g = g0 + k * kRows;
        p[k] = g < num_partials ? *reinterpret_cast<const float4*>(partials + (int64_t)g * width + col)
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int k = 0; k < kDepth; k++) {
        v.x += p[k].x;
        v.y += p[k].y;
        v.z += p[k].z;
        v.w += p[k].w;
      }
    }
  }
#pragma unroll
  for (int off = kQuads; off < WARP_SIZE; off <<= 1) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, off);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, off);
    v.z += __shfl_xor_sync(0xffffffffu, v.z, off);
    v.w += __shfl_xor_sync(0xffffffffu, v.w, off);
  }
  if (lane < kQuads) warp_sums[warp][lane] = v;
  __syncthreads();
  if (dst != nullptr) {
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int w = 0; w < kWarps; w++) {
      const float4 t = warp_sums[w][threadIdx.x];
      sum[0] += t.x;
      sum[1] += t.y;
      sum[2] += t.z;
      sum[3] += t.w;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
      if constexpr (!kPrefetch) total[k] = (float)dst[k];
      dst[k] = (floatX)(total[k] + sum[k]);
    }
  }
}

// How a variant reduces its partials: the library's reduction kernel launched plainly (kPlain) or as a programmatic
// dependent as the library does (kPdl), the simpler reduction above as a programmatic dependent (kOldPdl), none at
// all (kNone: a diagnostic, what the row kernel costs by itself; dweight / dbias are then left unchanged), a
// dependent that only waits (kEmpty), or variant_reduce_kernel with 32 or 8 columns per block (kPdlQ8, kPdlQ2) or
// with the old values read after the wait (kPdlNoPre).
enum class Red { kPlain, kPdl, kOldPdl, kNone, kEmpty, kPdlQ8, kPdlQ2, kPdlNoPre };

// kEmpty's dependent: waits for the row kernel and does nothing (what the dependent launch costs by itself)
__global__ void empty_dependent_kernel() { pdl_wait(); }

// variant_regs_kernel for rows of C channels with kTeams teams per block, kMinBlocks blocks per SM and kAhead rows
// in flight: none (skipped) unless kTeam = ceil(C / 256), the library's team for C.
// kChunk: the statistics 32 rows at a time, whatever the library chooses for the launch's mode.
template <int kTeam, int kTeams, int kMinBlocks, int kAhead, bool kOld = false, bool kChunk = false,
          Red kRed = Red::kPlain>
Variant make_lib_variant(const char* name, int N, int C, bool accumulate) {
  Variant v{name, 0, nullptr};
  if (!wanted(name) || reg_packs(C) != kTeam || (kOld && !accumulate)) return v;
  if (kRed != Red::kPlain && !kOld && accumulate) return v;  // the reduction variants: the library's own kernels only
  // "o": old values staged with the row; otherwise an accumulating launch loads them after the row sums
  constexpr int T = kTeam, G = kTeams, B = kMinBlocks;
  auto kernel = kOld       ? variant_regs_kernel<T, G, B, kAhead, Dinp::kAddStaged, kChunk>
                : accumulate ? variant_regs_kernel<T, G, B, kAhead, Dinp::kAddLoaded, kChunk>
                             : variant_regs_kernel<T, G, B, kAhead, Dinp::kWrite, kChunk>;
  const size_t smem = variant_smem_bytes(C, kTeams, kAhead, kOld);
  ensure_dynamic_smem(kernel, smem);
  const int threads = kTeam * kTeams * WARP_SIZE;
  int per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const int blocks = std::min(ceil_div(N, kTeams), current_device_sm_count() * std::max(per_sm, 1));
  print_launch(name, reinterpret_cast<const void*>(kernel), per_sm, threads, blocks);
  v.blocks = blocks;
  v.run = [=](floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout, const floatX* inp,
              const floatX* weight, const float* mean, const float* rstd, int n, int c, bool acc) {
    kernel<<<blocks, threads, smem, g_stream>>>(dinp, scratch, dout, inp, weight, mean, rstd, n, c);
    CK(cudaGetLastError());
    if constexpr (kRed == Red::kPlain) {
      param_grad_reduce_kernel<<<ceil_div(2 * c, kReduceCols), dim3(kReduceQuads, kReduceRows), 0, g_stream>>>(
          dweight, dbias, scratch, blocks, c, nullptr);
    } else if constexpr (kRed == Red::kPdl) {
      param_grad_reduce(dweight, dbias, scratch, blocks, c, nullptr, g_stream);
    } else if constexpr (kRed == Red::kOldPdl) {
      launch_dependent(old_param_grad_reduce_kernel, dim3(ceil_div(2 * c, WARP_SIZE)), dim3(WARP_SIZE, kOldReduceRows),
                       0, g_stream, dweight, dbias, (const float*)scratch, blocks, c);
    } else if constexpr (kRed == Red::kPdlQ8) {  // 32 columns per block, 32 rows
      launch_dependent(variant_reduce_kernel<8, 32, 8, true>, dim3(ceil_div(2 * c, 32)), dim3(8, 32), 0, g_stream,
                       dweight, dbias, (const float*)scratch, blocks, c);
    } else if constexpr (kRed == Red::kPdlQ2) {  // 8 columns per block, 128 rows
      launch_dependent(variant_reduce_kernel<2, 128, 4, true>, dim3(ceil_div(2 * c, 8)), dim3(2, 128), 0, g_stream,
                       dweight, dbias, (const float*)scratch, blocks, c);
    } else if constexpr (kRed == Red::kPdlNoPre) {  // the old values read after the wait
      launch_dependent(variant_reduce_kernel<kReduceQuads, kReduceRows, kReduceDepth, false>,
                       dim3(ceil_div(2 * c, kReduceCols)), dim3(kReduceQuads, kReduceRows), 0, g_stream, dweight,
                       dbias, (const float*)scratch, blocks, c);
    } else if constexpr (kRed == Red::kEmpty) {
      launch_dependent(empty_dependent_kernel, dim3(ceil_div(2 * c, kReduceCols)), dim3(kReduceQuads, kReduceRows),
                       0, g_stream);
    }
    CK(cudaGetLastError());
  };
  return v;
}

// The reductions probed with one row kernel, named prefix + "P": the library's reduction as a
// programmatic dependent (the library's launch), "R": the simpler reduction the same way, "N": no reduction,
// "E": a dependent that only waits (the launch's own cost), "Q8" / "Q2": the library's reduction with 32 / 8 columns
// per block, "W": with the gradients' old values read after the wait.
template <int kTeam, int kT, int kB, bool kOld, bool kChunk, class NameFn>
void add_reduction_variants(std::vector<Variant>& vs, int N, int C, bool acc, NameFn&& name,
                            const std::string& prefix) {
  auto n = [&](const char* red) { return name((prefix + red).c_str()); };
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, kOld, kChunk, Red::kPdl>(n("P"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, kOld, kChunk, Red::kOldPdl>(n("R"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, kOld, kChunk, Red::kNone>(n("N"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, kOld, kChunk, Red::kEmpty>(n("E"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, kOld, kChunk, Red::kPdlQ8>(n("Q8"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, kOld, kChunk, Red::kPdlQ2>(n("Q2"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, kOld, kChunk, Red::kPdlNoPre>(n("W"), N, C, acc));
}

// The variants of one team width and grid shape: "t<teams>b<blocks>" + "a1", "a2", "a3", "a1o", "a2o".
template <int kTeam, int kT, int kB>
void add_lib_variants(std::vector<Variant>& vs, int N, int C, bool acc) {
  auto name = [&](const char* suffix) {
    static std::deque<std::string> names;  // the Variant keeps the pointer: a deque never moves its elements
    names.push_back("t" + std::to_string(kT) + "b" + std::to_string(kB) + suffix);
    return names.back().c_str();
  };
  vs.push_back(make_lib_variant<kTeam, kT, kB, 1>(name("a1"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2>(name("a2"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 3>(name("a3"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 1, true>(name("a1o"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, true>(name("a2o"), N, C, acc));
  // the statistics 32 rows at a time, shuffled to the lanes (kChunkStats); "c" and "oc"
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, false, true>(name("a2c"), N, C, acc));
  vs.push_back(make_lib_variant<kTeam, kT, kB, 2, true, true>(name("a2oc"), N, C, acc));
  // the reduction of the partials with the library's own row kernel (a2c overwriting, a2o accumulating)
  add_reduction_variants<kTeam, kT, kB, false, true>(vs, N, C, acc, name, "a2c");
  add_reduction_variants<kTeam, kT, kB, true, false>(vs, N, C, acc, name, "a2o");
}

float bf2f(floatX v) { return __bfloat162float(v); }

void probe(int N, int C, bool accumulate, int sets, int iters) {
  const int C8 = C / 8, packs = ceil_div(C8, WARP_SIZE);
  printf("\nN=%d C=%d accumulate=%d (%d warps per row)\n", N, C, (int)accumulate, packs);
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
    layernorm_backward(di, dw, db, sc, g, x, w, m, r, n, c, acc, g_stream);
  };
  vs.push_back(base);
  // around the library's choice for each GPT-2 width (768: 3 warps per row, 1024: 4, 1280: 5, 1600: 7)
  add_lib_variants<3, 2, 4>(vs, N, C, accumulate);
  add_lib_variants<3, 2, 5>(vs, N, C, accumulate);
  add_lib_variants<3, 4, 2>(vs, N, C, accumulate);
  add_lib_variants<4, 2, 3>(vs, N, C, accumulate);
  add_lib_variants<4, 2, 4>(vs, N, C, accumulate);
  add_lib_variants<5, 2, 2>(vs, N, C, accumulate);
  add_lib_variants<5, 2, 3>(vs, N, C, accumulate);
  add_lib_variants<7, 2, 2>(vs, N, C, accumulate);
  add_lib_variants<7, 1, 4>(vs, N, C, accumulate);
  // the same warps per SM in one block per SM: half or less of the partials for the reduction to read
  add_lib_variants<3, 8, 1>(vs, N, C, accumulate);
  add_lib_variants<4, 6, 1>(vs, N, C, accumulate);
  add_lib_variants<5, 4, 1>(vs, N, C, accumulate);
  add_lib_variants<7, 4, 1>(vs, N, C, accumulate);
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
    if (getenv("PROBE_GRAPH") && atoi(getenv("PROBE_GRAPH")) == 1) {
      // as benchmarks/common.py times the ops: `iters` calls captured in one graph, median of 15 replays
      CK(cudaDeviceSynchronize());
      CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
      ms.push_back(1e-3f * (float)probe_kit::graph_us(
                               [&](int i, cudaStream_t) {
                                 v.run(dinp[i], dweight, dbias, scratch, dout[i], inp[i], weight, mean[i], rstd[i],
                                       N, C, accumulate);
                               },
                               sets, iters, g_stream));
      CK(cudaStreamDestroy(g_stream));
      g_stream = 0;
    }
    for (int rep = 0; rep < 7 && ms.empty(); rep++) {
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
  // PROBE_SHAPES="NxC,..." (e.g. 8192x1600,65536x768) runs only those shapes; PROBE_ACC=0 or 1 only that mode
  const char* only_shapes = getenv("PROBE_SHAPES");
  const char* only_acc = getenv("PROBE_ACC");
  auto shape_wanted = [&](int n, int c) {
    return !only_shapes || strstr(only_shapes, (std::to_string(n) + "x" + std::to_string(c)).c_str()) != nullptr;
  };
  for (bool acc : {true, false}) {
    if (only_acc && atoi(only_acc) != (int)acc) continue;
    if (shape_wanted(8192, 1600)) probe(8192, 1600, acc, 4, 40);
    if (shape_wanted(65536, 768)) probe(65536, 768, acc, 3, 20);
    if (shape_wanted(32768, 1024)) probe(32768, 1024, acc, 3, 20);
    if (shape_wanted(16384, 1280)) probe(16384, 1280, acc, 3, 20);
  }
  return 0;
}
