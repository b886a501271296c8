// Linear layers through cuBLASLt: out = inp @ weight^T + bias, with an optional GELU (tanh) epilogue, and backward.
// Forward reads inp (N,K), weight (M,K), bias (M) and writes out (N,M); with the GELU epilogue out = gelu(pre) and,
// when asked, pre_gelu (N,M) receives pre (the input of the GELU, kept for backward). Backward reads dout (N,M),
// inp, weight and optionally pre_gelu (N,K): dinp (N,K) is overwritten, with gelu'(pre_gelu) applied in the
// epilogue when pre_gelu is given (dinp must then be another buffer: cuBLASLt's DGELU epilogue reads its aux input
// while it writes D, and some of its kernels, e.g. at N = 7, K = 3072, M = 768 on an H200, clobbered pre_gelu when
// the two were one; llmc.ops runs an in-place call through a temporary); dweight and dbias are accumulated (+=).
// bf16 operands, fp32 accumulation. dbias is reduced by column_sums.cu in an order fixed by (N, M) alone, and
// split-K "in place" reductions are excluded, so a backward gives the same bits every run. (cuBLASLt's BGRADB
// epilogue was measured as the alternative: on an H100 it runs a separate reduction kernel, slower than these.)
//
// Layout. torch tensors are row-major, cuBLASLt is column-major. A row-major R x C matrix is, in the same memory
// with the same leading dimension C, the column-major C x R matrix: its transpose. So every product is computed
// transposed, with D being the output's own memory seen as column-major (m = its row length, n = its row count):
//   forward   out^T (M,N) = W (M,K)      . inp^T (K,N)  : A = weight, stored (K,M), op T; B = inp,  stored (K,N), op N
//   dinp     dinp^T (K,N) = W^T (K,M)    . dout^T (M,N) : A = weight, stored (K,M), op N; B = dout, stored (M,N), op N
//   dweight     dW^T (K,M) = inp^T (K,N) . dout (N,M)   : A = inp,    stored (K,N), op N; B = dout, stored (M,N), op T
// cuBLASLt's bias runs along D's column-major rows (length m = M), i.e. it is added to every row of the row-major
// output, as a linear layer wants; the GELU aux matrix (pre_gelu) has D's shape and leading dimension m.
//
// One handle and one workspace per device, made on first use and kept for the life of the process, as are the
// plans (descriptors + an algorithm) cached per shape, transposes, epilogue and pointer alignments. Between the
// kernels of one backward call the workspace also holds the bias gradient's partial sums. Everything is ordered by
// the caller's stream, so calls on one device from different streams must not run concurrently.
//
// Algorithm choice. cublasLtMatmulAlgoGetHeuristic ranks its algorithms by a model; on an H100 its first choice
// is up to 20% slower than another it offers for several of GPT-2's GEMMs.
// So the first call of a plan that overwrites its output (forward, dinp) times every offered algorithm on the
// call's own inputs (3 runs each) and keeps the fastest whose output has exactly the bits of the heuristic's first
// choice (compared by a hash of every output element). Every algorithm offered for those GEMMs gives the same bits
// on an H100, as expected of kernels that split only the output, not k. Accumulating GEMMs (dweight +=, where
// cuBLASLt may split k, and algorithms that do round differently) are tuned in a scratch output, run twice per
// algorithm: from zeros (the output is the rounded product alone, at full resolution: a different order of the k
// sums shows) and from a fixed pattern of values up to 2 in magnitude (how the old values are added shows); an
// algorithm is a candidate only when both runs give the first choice's bits. So the choice changes speed only, not
// results, in any run or process; only when the scratch fits kTuneScratchBytes. No tuning during CUDA graph
// capture (it synchronizes), nor with LLMC_GEMM_AUTOTUNE=0 (read at each call: it is part of the plan key).
// Tuning holds the plan lock while it synchronizes its stream: matmuls of other threads wait for it (once per
// shape).
#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "column_sums.cuh"
#include "common.cuh"
#include "kernels.h"

namespace {

inline void llmc_cublas_check(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLASLt error: ") + cublasLtGetStatusName(status) + " (" +
                             cublasLtGetStatusString(status) + ") in " + expr + " at " + file + ":" +
                             std::to_string(line));
  }
}
#define CUBLAS_CHECK(expr) llmc_cublas_check((expr), #expr, __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------------------------
// cuBLASLt state: per device a handle, a workspace and the plan cache
// ---------------------------------------------------------------------------------------------------------
constexpr size_t kWorkspaceBytes = 32u << 20;  // plenty for Hopper's split-K / stream-K partials

// ---------------------------------------------------------------------------------------------------------
// kernels for tuning: a fixed pseudo-random fill, and an order-independent hash of a buffer's bits
// ---------------------------------------------------------------------------------------------------------
__device__ inline uint64_t mix64(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// p[i] = a value in [-2, 2) that depends on i only.
__global__ void fill_pattern_kernel(floatX* p, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    p[i] = (floatX)((float)(mix64((uint64_t)i) >> 40) * (4.0f / 16777216.0f) - 2.0f);
  }
}

// *hash += sum over i of mix64(i, bits of p[i]) mod 2^64: integer sums in any order give the same total.
__global__ void hash_kernel(unsigned long long* hash, const floatX* p, int64_t n) {
  uint64_t h = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    h += mix64(((uint64_t)i << 16) ^ (uint64_t)__bfloat16_as_ushort(p[i]));
  }
  for (int offset = 16; offset > 0; offset /= 2) h += __shfl_down_sync(0xffffffffu, h, offset);
  if (threadIdx.x % WARP_SIZE == 0) atomicAdd(hash, (unsigned long long)h);
}

template <class Handle, cublasStatus_t (*destroy)(Handle)>
struct LtDestroy {
  void operator()(Handle h) const { destroy(h); }
};
template <class Handle, cublasStatus_t (*destroy)(Handle)>
using LtOwned = std::unique_ptr<std::remove_pointer_t<Handle>, LtDestroy<Handle, destroy>>;
using OwnedDesc = LtOwned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using OwnedLayout = LtOwned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using OwnedPreference = LtOwned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// One D = alpha * op(A) op(B) + beta * C call, C = D, in cuBLAS's column-major terms (see the top of the file).
struct Gemm {
  int64_t m, n, k;
  bool trans_a, trans_b;
  const void* a;
  const void* b;
  floatX* d;
  bool accumulate;              // beta = 1 (D += ...), else beta = 0
  cublasLtEpilogue_t epilogue;
  const void* bias;             // when the epilogue adds a bias
  const void* aux;              // pre_gelu: written by GELU_AUX*, read by DGELU
  // FP8 operands (matmul_fp8): their types and the device scalars that undo their scaling; bf16 otherwise
  cudaDataType_t a_type = CUDA_R_16BF, b_type = CUDA_R_16BF;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  bool fast_accum = false;      // FP8 only: Hopper's faster, less precise accumulation
  // FP8 only: how a_scale / b_scale cover their operand (cublasLtMatmulMatrixScale_t; 0: one scalar)
  int a_scale_mode = 0, b_scale_mode = 0;
};

// Largest power of two (up to 256, cuBLASLt's default assumption) dividing the address.
uint32_t pointer_alignment(const void* p) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && addr % align != 0) align /= 2;
  return align;
}

// The heuristic's choice depends on the pointers only through their alignment, so plans are keyed by it.
// LLMC_GEMM_AUTOTUNE=0: the heuristic's first choice, untimed (see the top of the file).
bool autotune_enabled() {
  const char* v = std::getenv("LLMC_GEMM_AUTOTUNE");
  return v == nullptr || std::strcmp(v, "0") != 0;  // runs on every call (plan_key): no allocation
}

using PlanKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, bool, int, uint32_t, uint32_t, uint32_t, uint32_t,
                           uint32_t, bool, int, int, bool, int, int>;
PlanKey plan_key(const Gemm& g) {
  return PlanKey(g.m, g.n, g.k, g.trans_a, g.trans_b, g.accumulate, (int)g.epilogue, pointer_alignment(g.a),
                 pointer_alignment(g.b), pointer_alignment(g.d), pointer_alignment(g.bias), pointer_alignment(g.aux),
                 autotune_enabled(), (int)g.a_type, (int)g.b_type, g.fast_accum, g.a_scale_mode, g.b_scale_mode);
}

struct Plan {
  OwnedDesc op;
  OwnedLayout a, b, d;
  cublasLtMatmulAlgo_t algo;
  int offered = 0;  // algorithms the heuristic offers for this key (asked for up to kTuneAsk when tuned or DGELU)
};

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;  // nullptr: no algorithm for that key
  unsigned long long* hash = nullptr;               // tuning's output hash (device)
  std::vector<std::string> tuning_log;              // one line per plan made
};

template <class T>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}
template <class T>
void set_preference(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

OwnedLayout matrix_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, rows, cols, ld));
  return OwnedLayout(layout);
}

bool epilogue_has_bias(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
bool epilogue_has_aux(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU;
}

// The plan with the heuristic's `rank`-th algorithm (0: its first choice), or nullptr when it offers fewer. With
// `offered`, also how many it offers when asked for up to `ask` (rank < ask).
std::unique_ptr<Plan> make_plan(cublasLtHandle_t handle, const Gemm& g, int rank = 0, int ask = 1,
                                int* offered = nullptr) {
  auto owned = std::make_unique<Plan>();
  Plan& plan = *owned;
  cublasLtMatmulDesc_t op;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  plan.op.reset(op);
  set_desc(op, CUBLASLT_MATMUL_DESC_TRANSA, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(op, CUBLASLT_MATMUL_DESC_TRANSB, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(op, CUBLASLT_MATMUL_DESC_EPILOGUE, g.epilogue);
  if (epilogue_has_bias(g.epilogue)) {
    set_desc(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_16BF);
    set_desc(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);  // the heuristic reads its alignment
  }
  if (epilogue_has_aux(g.epilogue)) {
    set_desc(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.m);  // aux has D's shape; default type: D's (bf16)
    set_desc(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
  }
  if (g.a_scale) set_desc(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, g.a_scale);
  if (g.b_scale) set_desc(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, g.b_scale);
  if (g.fast_accum) set_desc(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, (int8_t)1);
  if (g.a_scale_mode) set_desc(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, (int32_t)g.a_scale_mode);
  if (g.b_scale_mode) set_desc(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, (int32_t)g.b_scale_mode);
  // Stored (before op) shapes: op N -> m x k (A) / k x n (B); op T -> k x m / n x k. Leading dim = stored rows.
  plan.a = g.trans_a ? matrix_layout(g.a_type, g.k, g.m, g.k) : matrix_layout(g.a_type, g.m, g.k, g.m);
  plan.b = g.trans_b ? matrix_layout(g.b_type, g.n, g.k, g.n) : matrix_layout(g.b_type, g.k, g.n, g.k);
  plan.d = matrix_layout(CUDA_R_16BF, g.m, g.n, g.m);

  cublasLtMatmulPreference_t raw_pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref));
  OwnedPreference pref(raw_pref);
  set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (uint64_t)kWorkspaceBytes);
  set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, pointer_alignment(g.a));
  set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, pointer_alignment(g.b));
  set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, pointer_alignment(g.d));
  set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, pointer_alignment(g.d));
  // No split-K reduced "in place" in D: it is the one scheme whose partial sums pass through the output buffer.
  // The other schemes keep partials in the workspace and reduce them in a fixed order.
  set_preference(raw_pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                 (uint32_t)(CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_INPLACE));

  std::vector<cublasLtMatmulHeuristicResult_t> results(std::max(ask, rank + 1));
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, op, plan.a.get(), plan.b.get(), plan.d.get(),
                                                               plan.d.get(), raw_pref, (int)results.size(),
                                                               results.data(), &found);
  if (status != CUBLAS_STATUS_SUCCESS) found = 0;
  if (offered) *offered = found;
  if (found <= rank) return nullptr;
  plan.algo = results[rank].algo;
  return owned;
}

std::mutex state_mutex;

// Caller holds state_mutex.
DeviceState& device_state() {
  static auto* states = new std::map<int, DeviceState>();  // never freed: handles outlive Python's teardown
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  DeviceState& s = (*states)[dev];
  if (s.handle == nullptr) {
    void* workspace = nullptr;
    CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
    cublasLtHandle_t handle = nullptr;
    const cublasStatus_t status = cublasLtCreate(&handle);
    if (status != CUBLAS_STATUS_SUCCESS) cudaFree(workspace);
    CUBLAS_CHECK(status);
    s.workspace = workspace;
    s.handle = handle;
  }
  return s;
}

std::string describe_gemm(const Gemm& g) {
  return "m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) + " epilogue=" +
         std::to_string((int)g.epilogue) + (g.accumulate ? " +=" : "");
}

cublasStatus_t try_enqueue_gemm(DeviceState& s, const Gemm& g, const Plan& plan, cudaStream_t stream) {
  // The plan's descriptor is reused: only the pointers change between calls (read when the call is enqueued).
  if (epilogue_has_bias(g.epilogue)) set_desc(plan.op.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (epilogue_has_aux(g.epilogue)) set_desc(plan.op.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
  if (g.a_scale) set_desc(plan.op.get(), CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, g.a_scale);
  if (g.b_scale) set_desc(plan.op.get(), CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, g.b_scale);
  const float alpha = 1.0f, beta = g.accumulate ? 1.0f : 0.0f;
  return cublasLtMatmul(s.handle, plan.op.get(), &alpha, g.a, plan.a.get(), g.b, plan.b.get(), &beta, g.d,
                        plan.d.get(), g.d, plan.d.get(), &plan.algo, s.workspace, kWorkspaceBytes, stream);
}

void enqueue_gemm(DeviceState& s, const Gemm& g, const Plan& plan, cudaStream_t stream) {
  CUBLAS_CHECK(try_enqueue_gemm(s, g, plan, stream));
}

constexpr int kTuneAsk = 16;                     // algorithms asked of the heuristic
constexpr int kTuneRuns = 3;                     // timed runs per algorithm (the fastest counts)
constexpr size_t kTuneScratchBytes = 512u << 20; // largest output tuned in a scratch (dweight +=)

// A buffer and two events for tuning that free themselves.
struct DeviceBuffer {
  void* p = nullptr;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    CUDA_CHECK(cudaEventCreate(&start));
    if (cudaEventCreate(&stop) != cudaSuccess) {
      cudaEventDestroy(start);
      throw std::runtime_error("matmul autotuning: cudaEventCreate failed");
    }
  }
  ~EventPair() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
};

// The plan whose algorithm is the fastest of those giving the heuristic first choice's bits (see the top of the
// file); `first` when there is nothing to choose from, or no scratch could be had.
std::unique_ptr<Plan> tune_plan(DeviceState& s, const Gemm& call, std::unique_ptr<Plan> first, int offered,
                                cudaStream_t stream) {
  Gemm g = call;  // what the tuning runs: the call, or its output moved to the scratch
  const int64_t elems = g.m * g.n;
  const bool in_scratch = g.accumulate;
  const int fills = g.accumulate ? 2 : 1;  // the scratch's starting values per hashed run: see the top of the file
  DeviceBuffer scratch;
  if (in_scratch) {
    const size_t bytes = (size_t)elems * sizeof(floatX);
    if (bytes > kTuneScratchBytes || cudaMalloc(&scratch.p, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear a failed allocation: tuning is optional
      s.tuning_log.push_back(describe_gemm(g) + ": heuristic's first choice (no scratch to tune in)");
      return first;
    }
    g.d = static_cast<floatX*>(scratch.p);
  }
  if (s.hash == nullptr) CUDA_CHECK(cudaMalloc(&s.hash, sizeof(unsigned long long)));
  const bool writes_aux = g.epilogue == CUBLASLT_EPILOGUE_GELU_AUX || g.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const int grid = current_device_sm_count() * 4, block = 256;
  // The scratch's starting values: zeros for an accumulating GEMM's first hashed run, else the pattern.
  auto refill = [&](int fill) {
    if (!in_scratch) return;
    if (g.accumulate && fill == 0) {
      CUDA_CHECK(cudaMemsetAsync(g.d, 0, (size_t)elems * sizeof(floatX), stream));
    } else {
      fill_pattern_kernel<<<grid, block, 0, stream>>>(g.d, elems);
      CUDA_CHECK(cudaGetLastError());
    }
  };
  // The hash of the outputs of `fills` runs of `plan` (summed), or false when cuBLASLt refuses to run it.
  auto output_hash = [&](const Plan& plan, unsigned long long* h) {
    CUDA_CHECK(cudaMemsetAsync(s.hash, 0, sizeof(unsigned long long), stream));
    for (int fill = 0; fill < fills; fill++) {
      refill(fill);
      if (try_enqueue_gemm(s, g, plan, stream) != CUBLAS_STATUS_SUCCESS) return false;
      hash_kernel<<<grid, block, 0, stream>>>(s.hash, g.d, elems);
      if (writes_aux) hash_kernel<<<grid, block, 0, stream>>>(s.hash, static_cast<const floatX*>(g.aux), elems);
      CUDA_CHECK(cudaGetLastError());
    }
    CUDA_CHECK(cudaMemcpyAsync(h, s.hash, sizeof(*h), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return true;
  };
  EventPair events;
  auto fastest_ms = [&](const Plan& plan) {  // after output_hash ran it once
    float best = 0.0f;
    for (int i = 0; i < kTuneRuns; i++) {
      refill(fills - 1);
      CUDA_CHECK(cudaEventRecord(events.start, stream));
      enqueue_gemm(s, g, plan, stream);
      CUDA_CHECK(cudaEventRecord(events.stop, stream));
      CUDA_CHECK(cudaEventSynchronize(events.stop));
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, events.start, events.stop));
      if (i == 0 || ms < best) best = ms;
    }
    return best;
  };
  unsigned long long reference = 0, h = 0;
  if (!output_hash(*first, &reference)) {
    s.tuning_log.push_back(describe_gemm(g) + ": not tuned (cuBLASLt did not run its first choice)");
    return first;  // the call itself will fail with cuBLASLt's error
  }
  const float first_ms = fastest_ms(*first);
  float best_ms = first_ms;
  int best_rank = 0, same = 1;
  std::unique_ptr<Plan> best = std::move(first);
  for (int rank = 1; rank < offered; rank++) {
    // Planned for the call's own pointers' alignment (the scratch, freshly allocated, is aligned for any plan).
    std::unique_ptr<Plan> candidate = make_plan(s.handle, call, rank, kTuneAsk);
    if (!candidate || !output_hash(*candidate, &h) || h != reference) continue;
    same++;
    const float ms = fastest_ms(*candidate);
    if (ms < 0.99f * best_ms) {  // a clear win only: timing noise should not flip the choice
      best_ms = ms;
      best_rank = rank;
      best = std::move(candidate);
    }
  }
  char line[160];
  snprintf(line, sizeof(line), ": rank %d of %d (%d with the same bits), %.4f ms vs the first choice's %.4f ms",
           best_rank, offered, same, best_ms, first_ms);
  s.tuning_log.push_back(describe_gemm(g) + line);
  return best;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

const Plan* find_plan(DeviceState& s, const Gemm& g, cudaStream_t stream) {
  const PlanKey key = plan_key(g);
  auto it = s.plans.find(key);
  if (it == s.plans.end()) {
    int offered = 0;
    const bool autotune = autotune_enabled() && !capturing(stream);
    // A DGELU plan always learns how many algorithms the heuristic offers (matmul_backward's rule reads it); other
    // GEMMs ask for one unless tuned.
    const int ask = autotune || g.epilogue == CUBLASLT_EPILOGUE_DGELU ? kTuneAsk : 1;
    std::unique_ptr<Plan> plan = make_plan(s.handle, g, 0, ask, &offered);
    if (plan && autotune && offered > 1) plan = tune_plan(s, g, std::move(plan), offered, stream);
    if (plan) plan->offered = offered;
    it = s.plans.emplace(key, std::move(plan)).first;
  }
  return it->second.get();
}

void run_gemm(DeviceState& s, const Gemm& g, cudaStream_t stream) {
  const Plan* plan = find_plan(s, g, stream);
  if (plan == nullptr) throw std::runtime_error("cuBLASLt found no algorithm for " + describe_gemm(g));
  enqueue_gemm(s, g, *plan, stream);
}

// dweight^T (K,M) += inp^T (K,N) . dout (N,M), as the top of the file lays it out.
Gemm dweight_gemm(floatX* dweight, const floatX* dout, const floatX* inp, int64_t N, int64_t K, int64_t M) {
  return Gemm{K, M, N, /*trans_a=*/false, /*trans_b=*/true, inp, dout, dweight, /*accumulate=*/true,
              CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr};
}

void require_gemm_dims(int64_t N, int64_t K, int64_t M, const char* who) {
  LLMC_REQUIRE(N >= 0 && K > 0 && M > 0, std::string(who) + ": need N >= 0, K > 0, M > 0");
  LLMC_REQUIRE(K % 8 == 0 && M % 8 == 0, std::string(who) + ": K and M must be multiples of 8 (16-byte rows)");
  LLMC_REQUIRE(M < (int64_t)1 << 31, std::string(who) + ": M must fit in an int");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------------------
void matmul_forward(floatX* out, floatX* pre_gelu, const floatX* inp, const floatX* weight, const floatX* bias,
                    int64_t N, int64_t K, int64_t M, bool gelu, cudaStream_t stream) {
  require_gemm_dims(N, K, M, "matmul_forward");
  LLMC_REQUIRE(gelu || pre_gelu == nullptr, "matmul_forward: pre_gelu is only written with gelu=true");
  if (N == 0) return;
  cublasLtEpilogue_t epilogue;
  if (!gelu) {
    epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  } else if (pre_gelu) {
    epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  } else {
    epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  }
  std::lock_guard<std::mutex> lock(state_mutex);
  DeviceState& s = device_state();
  run_gemm(s, Gemm{M, N, K, /*trans_a=*/true, /*trans_b=*/false, weight, inp, out, /*accumulate=*/false, epilogue,
                   bias, pre_gelu},
           stream);
}

void matmul_backward(floatX* dinp, floatX* dweight, floatX* dbias, const floatX* dout, const floatX* inp,
                     const floatX* weight, const floatX* pre_gelu, int64_t N, int64_t K, int64_t M,
                     cudaStream_t stream) {
  require_gemm_dims(N, K, M, "matmul_backward");
  LLMC_REQUIRE(pre_gelu == nullptr || dinp != pre_gelu, "matmul_backward: dinp must not be pre_gelu (cuBLASLt's "
               "DGELU epilogue reads pre_gelu while it writes dinp); pass another buffer");
  if (N == 0) return;
  std::lock_guard<std::mutex> lock(state_mutex);
  DeviceState& s = device_state();
  if (dbias) {
    bias_grad_accumulate(dbias, dout, N, M, static_cast<float*>(s.workspace), kWorkspaceBytes / sizeof(float),
                         stream);
  }
  run_gemm(s, dweight_gemm(dweight, dout, inp, N, K, M), stream);
  if (dinp == nullptr) return;  // the caller computes dinp itself (matmul_fp8)
  Gemm g{K, N, M, /*trans_a=*/false, /*trans_b=*/false, weight, dout, dinp, /*accumulate=*/false,
         pre_gelu ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT, nullptr, pre_gelu};
  if (pre_gelu != nullptr) {
    // Where the heuristic offers a single DGELU algorithm, it was an sm80 CUTLASS kernel at GPT-2 350M's fcproj
    // (C = 1024, N = 32768): 0.82 ms at 335 TFLOP/s on an H200, against 0.58 ms for the plain GEMM and then the
    // GELU backward in place (dev/experiments/dgelu.py; at d12 and d48 it offers 8, and the fused epilogue is as
    // fast or faster). The rule depends on the heuristic's answer only, not on timing, so a
    // given GPU and library always take the same path (the two paths' dinp differ in the last bf16 bit).
    const Plan* fused = find_plan(s, g, stream);
    if (fused == nullptr || fused->offered <= 1) {
      g.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
      g.aux = nullptr;
      run_gemm(s, g, stream);
      gelu_backward(dinp, dinp, pre_gelu, N * K, stream);
      return;
    }
  }
  run_gemm(s, g, stream);
}

void matmul_fp8(floatX* out, floatX* aux, const void* x, const void* w, bool x_e5m2, bool w_e5m2,
                const float* x_scale_inv, const float* w_scale_inv, const floatX* bias, int64_t N, int64_t K,
                int64_t M, int epilogue, bool fast_accum, int x_scaling, int w_scaling, bool accumulate,
                cudaStream_t stream) {
  require_gemm_dims(N, K, M, "matmul_fp8");
  LLMC_REQUIRE(K % 16 == 0 && M % 16 == 0, "matmul_fp8: K and M must be multiples of 16 (16-byte FP8 rows)");
  LLMC_REQUIRE(!(x_e5m2 && w_e5m2), "matmul_fp8: at most one operand may be e5m2");
  LLMC_REQUIRE(x_scale_inv != nullptr && w_scale_inv != nullptr, "matmul_fp8: both scales are required");
  LLMC_REQUIRE(epilogue >= 0 && epilogue <= 2, "matmul_fp8: epilogue must be 0 (none/bias), 1 (GELU) or 2 (dGELU)");
  LLMC_REQUIRE(epilogue == 0 || aux != nullptr, "matmul_fp8: the GELU epilogues need aux (pre_gelu)");
  LLMC_REQUIRE(epilogue != 2 || (bias == nullptr && aux != out), "matmul_fp8: dGELU takes no bias and an aux "
               "other than out");
  LLMC_REQUIRE(x_scaling >= 0 && x_scaling <= 3 && w_scaling >= 0 && w_scaling <= 3,
               "matmul_fp8: scalings are 0 (per tensor), 1 (1x128), 2 (128x128) or 3 (per row)");
  LLMC_REQUIRE((x_scaling == 0) == (w_scaling == 0) && (x_scaling == 3) == (w_scaling == 3),
               "matmul_fp8: both operands per tensor, both per row, or both block-scaled");
  const bool blocks = x_scaling == 1 || x_scaling == 2;
  LLMC_REQUIRE(!blocks || (!fast_accum && N % 4 == 0), "matmul_fp8: block-scaled operands take no fast "
               "accumulation and N a multiple of 4");
  LLMC_REQUIRE(!accumulate || (bias == nullptr && epilogue == 0), "matmul_fp8: accumulate takes no bias or GELU");
  if (N == 0) return;
  cublasLtEpilogue_t e = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  if (epilogue == 1) e = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  if (epilogue == 2) e = CUBLASLT_EPILOGUE_DGELU;
  // out^T (M,N) = w (M,K) . x^T (K,N), as the forward at the top of the file: A = w op T, B = x op N, which is
  // the one layout ("TN") cuBLASLt runs FP8 in.
  Gemm g{M, N, K, /*trans_a=*/true, /*trans_b=*/false, w, x, out, accumulate, e, bias, aux};
  g.a_type = w_e5m2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  g.b_type = x_e5m2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  g.a_scale = w_scale_inv;
  g.b_scale = x_scale_inv;
  g.fast_accum = fast_accum;
  const int modes[4] = {CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
                        CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F};
  g.a_scale_mode = modes[w_scaling];
  g.b_scale_mode = modes[x_scaling];
  std::lock_guard<std::mutex> lock(state_mutex);
  DeviceState& s = device_state();
  const Plan* plan = find_plan(s, g, stream);
  if (plan != nullptr) {
    enqueue_gemm(s, g, *plan, stream);
    return;
  }
  LLMC_REQUIRE(epilogue != 0 || bias != nullptr, "matmul_fp8: cuBLASLt found no algorithm for " +
               describe_gemm(g));
  if (epilogue != 2) {  // no FP8 kernel with this bias/GELU epilogue (block scales): the product, then the epilogue
    g.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    g.bias = nullptr;
    g.aux = nullptr;
    if (epilogue == 1) g.d = aux;
    run_gemm(s, g, stream);
    bias_gelu_forward(out, aux, bias, N, M, epilogue == 1, stream);
    return;
  }
  // No FP8 kernel with the dGELU epilogue: the plain product, then the GELU backward in place.
  g.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  g.aux = nullptr;
  run_gemm(s, g, stream);
  gelu_backward(out, out, aux, N * M, stream);
}

std::vector<std::string> matmul_tuning_log() {
  std::lock_guard<std::mutex> lock(state_mutex);
  return device_state().tuning_log;
}
