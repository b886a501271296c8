// Shared by every kernel file: error checking (host side, usable from plain C++ too), the bf16 storage type,
// 128-bit packed loads/stores and fp32 warp/block reductions (device side, CUDA only).
#pragma once
#include <algorithm>
#include <map>
#include <mutex>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

typedef __nv_bfloat16 floatX;  // storage type of activations, parameters and gradients

// Errors become C++ exceptions; pybind11 turns them into Python RuntimeError with this text.
inline void llmc_cuda_check(cudaError_t err, const char* expr, const char* file, int line) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " (" + expr + ") at " +
                             file + ":" + std::to_string(line));
  }
}
#define CUDA_CHECK(expr) llmc_cuda_check((expr), #expr, __FILE__, __LINE__)

inline void llmc_require(bool ok, const std::string& what, const char* file, int line) {
  if (!ok) throw std::invalid_argument(what + " (" + file + ":" + std::to_string(line) + ")");
}
// Last line of defence for launcher arguments; llmc.ops validates everything before calling in.
#define LLMC_REQUIRE(cond, msg) llmc_require((cond), (msg), __FILE__, __LINE__)

template <class T>
inline T ceil_div(T a, T b) { return (a + b - 1) / b; }

// A device attribute of the current device, read once per device and process.
template <cudaDeviceAttr kAttr>
inline int current_device_attribute() {
  static int cached[64] = {0};  // the value + 1; 0: not read yet
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && cached[dev] > 0) return cached[dev] - 1;
  int value = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, dev));
  if (dev < 64) cached[dev] = value + 1;
  return value;
}

// Multiprocessor count of the current device.
inline int current_device_sm_count() { return current_device_attribute<cudaDevAttrMultiProcessorCount>(); }

// Whether the current device runs programmatic dependent launches (compute capability 9.0 and later).
inline bool current_device_has_pdl() { return current_device_attribute<cudaDevAttrComputeCapabilityMajor>() >= 9; }

// Raise a kernel's dynamic shared-memory limit to at least `bytes` on the current device. The attribute persists
// for the process, so it is set only when this launch needs more than any earlier one did (a launcher that only
// set it above 48 KB would miss that the kernel's static shared memory counts too). Thread-safe.
template <class Kernel>
void ensure_dynamic_smem(Kernel kernel, size_t bytes) {
  static std::mutex lock;
  static std::map<std::pair<int, const void*>, size_t> granted;  // (device, kernel) -> limit set
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> guard(lock);
  size_t& have = granted[{dev, reinterpret_cast<const void*>(kernel)}];
  if (bytes <= have) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  have = bytes;
}

#ifdef __CUDACC__

constexpr int WARP_SIZE = 32;

// 16 bytes of T, moved with one vector instruction.
template <class T>
struct alignas(16) Packed128 {
  static constexpr int size = 16 / sizeof(T);
  T payload[size];
  __device__ Packed128() = default;
  __device__ static Packed128 constant(T v) {
    Packed128 p;
#pragma unroll
    for (int k = 0; k < size; k++) p.payload[k] = v;
    return p;
  }
  __device__ static Packed128 zeros() { return constant(T(0.0f)); }
  __device__ T& operator[](int k) { return payload[k]; }
  __device__ const T& operator[](int k) const { return payload[k]; }
  __device__ int4 as_int4() const { return *reinterpret_cast<const int4*>(payload); }
  __device__ static Packed128 from_int4(int4 bits) {
    Packed128 p;
    *reinterpret_cast<int4*>(p.payload) = bits;
    return p;
  }
};
typedef Packed128<floatX> x128;
typedef Packed128<float> f128;

template <class T>
__device__ inline Packed128<T> load128(const T* p) {
  return Packed128<T>::from_int4(*reinterpret_cast<const int4*>(p));
}
// Streaming load: data used once, do not keep it in L1/L2 ahead of data that is reused.
template <class T>
__device__ inline Packed128<T> load128cs(const T* p) {
  return Packed128<T>::from_int4(__ldcs(reinterpret_cast<const int4*>(p)));
}
// Loads with the L2 eviction priority evict_last, for small data that every thread of a streaming kernel reads
// again (the encoder's position rows and token ids): the hint keeps those lines in L2 ahead of the lines streamed
// past them. One policy register per thread (createpolicy, sm_80+). The encoder forward is 7% faster with it at
// both GPT-2 shapes on an H200; LayerNorm forward's weight and bias are not (layernorm.cu).
__device__ inline uint64_t l2_evict_last_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
template <class T>
__device__ inline Packed128<T> load128_keep(const T* p, uint64_t policy) {
  int4 v;
  asm("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(policy));
  return Packed128<T>::from_int4(v);
}
__device__ inline int load_int_keep(const int* p, uint64_t policy) {
  int v;
  asm("ld.global.L2::cache_hint.b32 %0, [%1], %2;" : "=r"(v) : "l"(p), "l"(policy));
  return v;
}
// A store with the same hint: LayerNorm backward's fp32 partials, read back right after by the reduction
// (layernorm.cu, "The partials' L2 hint"; 0.6-3% off the op on an H200).
__device__ inline void store_float_keep(float* p, float v, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.f32 [%0], %1, %2;" ::"l"(p), "f"(v), "l"(policy) : "memory");
}
template <class T>
__device__ inline void store128(T* p, Packed128<T> v) {
  *reinterpret_cast<int4*>(p) = v.as_int4();
}
template <class T>
__device__ inline void store128cs(T* p, Packed128<T> v) {
  __stcs(reinterpret_cast<int4*>(p), v.as_int4());
}

// 16 bytes global -> shared memory without passing through registers (cp.async, sm_80+; cached in L2 only).
// The copies a thread issued land after its cp_async_commit() and cp_async_wait_all(); only that thread may rely
// on them then (other threads need a barrier too).
// The package builds for sm_80 and sm_90a only (CMakeLists.txt); an older target fails here, at compile time.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "llmc's kernels need sm_80 or newer (cp.async)"
#endif
template <class T>
__device__ inline void cp_async16(Packed128<T>* smem_dst, const T* global_src) {
  const unsigned dst = (unsigned)__cvta_generic_to_shared(smem_dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(global_src) : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
// Until at most `kPending` of this thread's most recent commit groups are still in flight.
template <int kPending>
__device__ inline void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory"); }

// Programmatic dependent launch (sm_90 and later; no-ops when compiled for sm_80). A kernel launched with
// launch_dependent (below) may start while the kernel before it on the stream still runs, once every block of that
// one has called pdl_launch_dependents or exited; it must call pdl_wait before it reads anything that kernel wrote:
// pdl_wait returns once that kernel has completed and its writes are visible. Without the launch attribute (an
// sm_80 device) both do nothing and the launches serialise as usual.
__device__ inline void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ inline void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launch kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the kernel before it on the
// stream where the device has them (current_device_has_pdl), else as a plain launch. Stream capture keeps the
// dependency (a programmatic edge in the CUDA graph).
template <class... Params, class... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = current_device_has_pdl() ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

__device__ inline float warp_reduce_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffff, v, off);
  return v;
}
__device__ inline float warp_reduce_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, off));
  return v;
}

// Sum over the block in a fixed order (deterministic); every thread gets the result.
// `shared` needs 32 floats; the block size must be a multiple of 32.
__device__ inline float block_reduce_sum(float v, float* shared) {
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int nwarps = blockDim.x / WARP_SIZE;
  v = warp_reduce_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : 0.0f;
  return warp_reduce_sum(v);
}

#endif  // __CUDACC__
