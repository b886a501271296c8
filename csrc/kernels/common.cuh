// Shared by every kernel file: error checking (host side, usable from plain C++ too), the bf16 storage type,
// 128-bit packed loads/stores and fp32 warp/block reductions (device side, CUDA only).
#pragma once
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

// Multiprocessor count of the current device, asked once per device.
inline int current_device_sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && cached[dev] > 0) return cached[dev];
  int sms = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) cached[dev] = sms;
  return sms;
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
template <class T>
__device__ inline void store128(T* p, Packed128<T> v) {
  *reinterpret_cast<int4*>(p) = v.as_int4();
}
template <class T>
__device__ inline void store128cs(T* p, Packed128<T> v) {
  __stcs(reinterpret_cast<int4*>(p), v.as_int4());
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
