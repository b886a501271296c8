// GPT-2 embedding: out[b,t,:] = wte[idx[b,t],:] + wpe[t,:].
// Forward reads idx, wte, wpe and writes out. Backward reads dout and accumulates into dwte and dwpe (+=).
// bf16 storage, fp32 math.
//
// The backward is deterministic (no float atomics; the same inputs give bit-identical gradients):
//  * dwpe[t] += sum over b of dout[b,t], summed by one thread per (t, 8 channels) in increasing b.
//  * dwte: the B*T token ids are sorted on the device (CUB's stable LSD radix sort of (id, position) pairs over only
//    the ceil(log2 V) low bits an id can use: 2 passes of 8 bits for GPT-2's 50304 rows, where torch.sort of int32
//    keys makes 4 and moves int64 positions; on an H200 ~28 us against ~41, still latency-bound: CUB's one-block
//    segmented sort takes 43 us and a one-block shared-memory sort with __match_any_sync ranks 38 us at 8192 ids),
//    giving sorted_ids and the permutation perm (the row of dout behind each sorted position; increasing within a
//    run of equal ids: the sort is stable). The sorted array is
//    cut into segments of 32 positions, one warp per (segment, 256 channels). A warp sums each run of equal ids
//    inside its segment in position order. A run that starts and ends inside the segment is added to dwte directly; a
//    run that crosses a segment boundary leaves fp32 partial sums in scratch (the run's first piece in carry_last of
//    the segment where it starts, the other pieces in carry_first of the segments it continues into), and a second
//    kernel adds those pieces in segment order. Every warp does the same work whatever the token distribution, so a
//    frequent token (",", EOT) costs no more than a rare one.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kSegment = WARP_SIZE;                     // sorted positions per warp: one coalesced load
constexpr int kChannelsPerWarp = WARP_SIZE * x128::size;  // 256 channels, 8 per lane
constexpr int kWarpsPerBlock = 8;
constexpr int kRowBatch = 8;                            // dout rows loaded before they are summed
constexpr unsigned kFullMask = 0xffffffffu;

// One 16-byte pack of one position per thread over a flat grid (no loop): the gather is spread over as many
// loads in flight as the GPU holds: 103% vs 88% of the copy ceiling for a warp per position on an H100 at
// B*T=65536, C=768 (99% vs 97% at 8192 x 1600). Of the variants in dev/cuda/encoder_forward.cu only the streaming
// store of out (st.global.cs) is faster: 1.5% at 65536 x 768, 0.8% at 8192 x 1600.
constexpr int kForwardBlock = 128;
__global__ void __launch_bounds__(kForwardBlock)
    encoder_forward_kernel(floatX* __restrict__ out, const int* __restrict__ idx, const floatX* __restrict__ wte,
                           const floatX* __restrict__ wpe, int total_packs, int T, int C8) {
  const int q = blockIdx.x * kForwardBlock + threadIdx.x;
  if (q >= total_packs) return;
  const int bt = q / C8;
  const int c = (q - bt * C8) * x128::size;
  const int C = C8 * x128::size;
  // wte and wpe rows are read again by other positions with the same token / time step: cached loads. The ids and
  // wpe (small, and read by every thread) carry the evict_last hint, as torch.compile's Triton kernel does: without
  // it the gathered wte rows push them out of L2, 7% slower on an H200.
  const uint64_t keep = l2_evict_last_policy();
  const x128 e = load128(wte + (int64_t)load_int_keep(idx + bt, keep) * C + c);
  const x128 p = load128_keep(wpe + (int64_t)(bt % T) * C + c, keep);
  x128 y;
#pragma unroll
  for (int k = 0; k < x128::size; k++) y[k] = (floatX)((float)e[k] + (float)p[k]);
  store128cs(out + (int64_t)q * x128::size, y);  // streaming store: 1-1.5% faster (see above)
}

__device__ inline void add_into_bf16(floatX* dst, const float* acc) {
  const x128 old = load128(dst);
  x128 res;
#pragma unroll
  for (int k = 0; k < x128::size; k++) res[k] = (floatX)((float)old[k] + acc[k]);
  store128(dst, res);
}

// 8 fp32 partial sums <-> scratch, as two 128-bit accesses.
__device__ inline void store_floats(float* dst, const float* acc) {
  f128 lo, hi;
#pragma unroll
  for (int k = 0; k < f128::size; k++) {
    lo[k] = acc[k];
    hi[k] = acc[f128::size + k];
  }
  store128(dst, lo);
  store128(dst + f128::size, hi);
}

__device__ inline void add_floats(float* acc, const float* src) {
  const f128 lo = load128(src), hi = load128(src + f128::size);
#pragma unroll
  for (int k = 0; k < f128::size; k++) {
    acc[k] += lo[k];
    acc[f128::size + k] += hi[k];
  }
}

// One thread per (t, 8 channels); sums over b in increasing order.
__global__ void wpe_backward_kernel(floatX* __restrict__ dwpe, const floatX* __restrict__ dout, int B, int T,
                                    int C) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int C8 = C / x128::size;
  if (i >= T * C8) return;
  const int t = i / C8;
  const int c = (i - t * C8) * x128::size;
  float acc[x128::size] = {0.0f};
#pragma unroll 8
  for (int b = 0; b < B; b++) {
    const x128 g = load128(dout + ((int64_t)b * T + t) * C + c);
#pragma unroll
    for (int k = 0; k < x128::size; k++) acc[k] += (float)g[k];
  }
  add_into_bf16(dwpe + (int64_t)t * C + c, acc);
}

// One warp per (segment of 32 sorted positions, 256 channels); see the file comment.
__global__ void wte_backward_segments_kernel(floatX* __restrict__ dwte, float* __restrict__ carry_first,
                                             float* __restrict__ carry_last, const floatX* __restrict__ dout,
                                             const int* __restrict__ sorted_ids, const int* __restrict__ perm,
                                             int N, int C) {
  const int lane = threadIdx.x % WARP_SIZE;
  const int seg = blockIdx.x * kWarpsPerBlock + threadIdx.x / WARP_SIZE;
  const int p0 = seg * kSegment;
  if (p0 >= N) return;  // the whole warp leaves together
  const int n_here = min(kSegment, N - p0);
  const int c = blockIdx.y * kChannelsPerWarp + lane * x128::size;
  const bool active = c < C;
  const int my_id = lane < n_here ? sorted_ids[p0 + lane] : -1;
  const int my_row = lane < n_here ? perm[p0 + lane] : 0;
  const int prev_id = p0 > 0 ? sorted_ids[p0 - 1] : -1;
  const int next_id = p0 + n_here < N ? sorted_ids[p0 + n_here] : -1;
  const int64_t carry_off = (int64_t)seg * C + c;
  // Whether this lane's position ends a run that began in this segment (the run then goes straight into its
  // dwte row, which must be read): the run of the segment's first id began here unless it continues from the
  // previous segment.
  const int id_below = __shfl_down_sync(kFullMask, my_id, 1);  // every lane shuffles: no divergent shuffle
  const int following_mine = lane + 1 < n_here ? id_below : next_id;
  const int first_id = __shfl_sync(kFullMask, my_id, 0);
  const bool my_needs_row = lane < n_here && following_mine != my_id && (my_id != first_id || prev_id != my_id);

  float acc[x128::size] = {0.0f};
  bool first_run = true;
  for (int q0 = 0; q0 < n_here; q0 += kRowBatch) {
    // The batch's dout rows, and the dwte rows of the runs that end in the batch: a run that ends inside the
    // segment adds into its dwte row, which no other warp of this kernel touches, so that row can be read
    // ahead of time. Lanes past C, positions past the segment and positions whose dwte row is not needed load
    // a valid element they ignore (dwte's first: a cache hit): no branches, so the batch's loads are all in
    // flight together.
    x128 g[kRowBatch], old[kRowBatch];
#pragma unroll
    for (int k = 0; k < kRowBatch; k++) {
      const int row = __shfl_sync(kFullMask, my_row, (q0 + k) % WARP_SIZE);
      const int id = __shfl_sync(kFullMask, my_id, (q0 + k) % WARP_SIZE);
      const bool needs_row = __shfl_sync(kFullMask, my_needs_row, (q0 + k) % WARP_SIZE);
      g[k] = load128cs(dout + (int64_t)row * C + (active ? c : 0));
      old[k] = load128(dwte + (needs_row && active ? (int64_t)id * C + c : 0));
    }
#pragma unroll
    for (int k = 0; k < kRowBatch; k++) {
      const int q = q0 + k;
      const int id = __shfl_sync(kFullMask, my_id, q % WARP_SIZE);
      const int following_in_segment = __shfl_sync(kFullMask, my_id, (q + 1) % WARP_SIZE);
      if (q >= n_here) break;  // q is the same in every lane
      if (active) {
#pragma unroll
        for (int j = 0; j < x128::size; j++) acc[j] += (float)g[k][j];
      }
      const int following = q + 1 < n_here ? following_in_segment : next_id;
      const bool run_ends = following != id;
      if (!run_ends && q + 1 < n_here) continue;
      // A run ends here, or the segment does while the run goes on.
      const bool began_here = !(first_run && prev_id == id);
      if (active) {
        if (began_here && run_ends) {
          x128 res;
#pragma unroll
          for (int j = 0; j < x128::size; j++) res[j] = (floatX)((float)old[k][j] + acc[j]);
          store128(dwte + (int64_t)id * C + c, res);
        } else {
          store_floats((began_here ? carry_last : carry_first) + carry_off, acc);
        }
      }
#pragma unroll
      for (int j = 0; j < x128::size; j++) acc[j] = 0.0f;
      first_run = false;
    }
  }
}

// For each run that starts in a segment and continues past it: the run's pieces, added in segment order.
__global__ void wte_backward_carry_kernel(floatX* __restrict__ dwte, const float* __restrict__ carry_first,
                                          const float* __restrict__ carry_last, const int* __restrict__ sorted_ids,
                                          int N, int C) {
  const int lane = threadIdx.x % WARP_SIZE;
  const int seg = blockIdx.x * kWarpsPerBlock + threadIdx.x / WARP_SIZE;
  const int p0 = seg * kSegment;
  const int end = p0 + kSegment;  // first position after the segment
  if (end >= N) return;           // the last segment's runs all end inside it
  const int id = sorted_ids[end - 1];
  if (sorted_ids[end] != id) return;             // the segment's last run ends inside it
  if (p0 > 0 && sorted_ids[p0 - 1] == id) return;  // that run began in an earlier segment, which owns it
  const int c = blockIdx.y * kChannelsPerWarp + lane * x128::size;
  if (c >= C) return;
  float acc[x128::size] = {0.0f};
  add_floats(acc, carry_last + (int64_t)seg * C + c);
  for (int s = seg + 1;; s++) {
    add_floats(acc, carry_first + (int64_t)s * C + c);
    const int s_end = (s + 1) * kSegment;
    if (s_end >= N || sorted_ids[s_end] != id) break;
  }
  add_into_bf16(dwte + (int64_t)id * C + c, acc);
}

int num_segments(int N) { return ceil_div(N, kSegment); }

// The scratch encoder_backward carves up, each piece 256-byte aligned: the carry sums (fp32, 2 x segments x C),
// the sorted ids, the positions 0..N-1 and the permutation (int32, N each), and CUB's sort workspace.
struct BackwardScratch {
  float* carry;
  unsigned* sorted_ids;
  int* positions;
  int* perm;
  void* sort_temp;
  size_t sort_temp_bytes;
  size_t total;
};

constexpr size_t kScratchAlign = 256;
size_t align_up(size_t n) { return (n + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }

// Bits of an id below V: the sort only looks at these (an id outside [0, V) is the caller's error).
int id_bits(int V) {
  int bits = 1;
  while (bits < 31 && (int64_t(1) << bits) < V) bits++;
  return bits;
}

BackwardScratch carve_scratch(void* base, int N, int C, int V) {
  BackwardScratch s{};
  // CUB's size query allocates nothing and launches nothing (it reads the current device's properties).
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, s.sort_temp_bytes, (const unsigned*)nullptr,
                                             (unsigned*)nullptr, (const int*)nullptr, (int*)nullptr, N, 0,
                                             id_bits(V)));
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* at = p ? p + off : nullptr;
    off += align_up(bytes);
    return at;
  };
  s.carry = reinterpret_cast<float*>(take(sizeof(float) * 2 * (size_t)num_segments(N) * C));
  s.sorted_ids = reinterpret_cast<unsigned*>(take(sizeof(unsigned) * (size_t)N));
  s.positions = reinterpret_cast<int*>(take(sizeof(int) * (size_t)N));
  s.perm = reinterpret_cast<int*>(take(sizeof(int) * (size_t)N));
  s.sort_temp = take(s.sort_temp_bytes);
  s.total = off;
  return s;
}

__global__ void iota_kernel(int* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i;
}

}  // namespace

void encoder_forward(floatX* out, const int* idx, const floatX* wte, const floatX* wpe, int B, int T, int C,
                     cudaStream_t stream) {
  LLMC_REQUIRE(C % x128::size == 0, "encoder_forward: C must be a multiple of 8");
  const int64_t total_packs = (int64_t)B * T * (C / x128::size);
  LLMC_REQUIRE(total_packs < INT32_MAX, "encoder_forward: B*T*C/8 must be below 2^31");
  if (total_packs == 0) return;
  encoder_forward_kernel<<<(unsigned)ceil_div<int64_t>(total_packs, kForwardBlock), kForwardBlock, 0, stream>>>(
      out, idx, wte, wpe, (int)total_packs, T, C / x128::size);
  CUDA_CHECK(cudaGetLastError());
}

int64_t encoder_backward_scratch_bytes(int N, int C, int V) {
  LLMC_REQUIRE(N >= 0 && C >= 0 && V > 0, "encoder_backward_scratch_bytes: N, C >= 0 and V > 0");
  return (int64_t)carve_scratch(nullptr, N, C, V).total;
}

void encoder_backward_sort(void* scratch, int64_t scratch_bytes, const int* idx, int N, int C, int V,
                           cudaStream_t stream) {
  LLMC_REQUIRE(V > 0 && N >= 0, "encoder_backward_sort: V must be positive, N >= 0");
  if (N == 0) return;
  const BackwardScratch s = carve_scratch(scratch, N, C, V);
  LLMC_REQUIRE(scratch_bytes >= (int64_t)s.total, "encoder_backward_sort: scratch smaller than "
               "encoder_backward_scratch_bytes(N, C, V)");
  iota_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(s.positions, N);
  CUDA_CHECK(cudaGetLastError());
  size_t temp_bytes = s.sort_temp_bytes;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.sort_temp, temp_bytes, reinterpret_cast<const unsigned*>(idx),
                                             s.sorted_ids, s.positions, s.perm, N, 0, id_bits(V), stream));
}

void encoder_backward(floatX* dwte, floatX* dwpe, void* scratch, int64_t scratch_bytes, const floatX* dout, int B,
                      int T, int C, int V, cudaStream_t stream, cudaStream_t wpe_stream) {
  LLMC_REQUIRE(C % x128::size == 0, "encoder_backward: C must be a multiple of 8");
  LLMC_REQUIRE((int64_t)B * T * C < INT32_MAX * (int64_t)x128::size,
               "encoder_backward: B*T*C/8 must be below 2^31");
  LLMC_REQUIRE(V > 0, "encoder_backward: V must be positive");
  const int N = B * T;
  if (N == 0) return;
  const BackwardScratch s = carve_scratch(scratch, N, C, V);
  LLMC_REQUIRE(scratch_bytes >= (int64_t)s.total, "encoder_backward: scratch smaller than "
               "encoder_backward_scratch_bytes(N, C, V)");
  const int block = 256;
  const int C8 = C / x128::size;
  // dwpe needs only dout: on wpe_stream it can run beside the wte kernels (or the sort); the caller orders
  // wpe_stream after dout is ready and joins it back.
  wpe_backward_kernel<<<ceil_div(T * C8, block), block, 0, wpe_stream>>>(dwpe, dout, B, T, C);
  CUDA_CHECK(cudaGetLastError());

  const int nseg = num_segments(N);
  float* carry_first = s.carry;
  float* carry_last = s.carry + (int64_t)nseg * C;
  const int* sorted_ids = reinterpret_cast<const int*>(s.sorted_ids);
  const dim3 grid(ceil_div(nseg, kWarpsPerBlock), ceil_div(C, kChannelsPerWarp));
  const int threads = kWarpsPerBlock * WARP_SIZE;
  wte_backward_segments_kernel<<<grid, threads, 0, stream>>>(dwte, carry_first, carry_last, dout, sorted_ids,
                                                             s.perm, N, C);
  CUDA_CHECK(cudaGetLastError());
  wte_backward_carry_kernel<<<grid, threads, 0, stream>>>(dwte, carry_first, carry_last, sorted_ids, N, C);
  CUDA_CHECK(cudaGetLastError());
}
