// Host-side helpers shared by the standalone kernel probes of dev/cuda: seeded random inputs, device
// upload/download, CUDA-graph timing like benchmarks/common.py's, the device line. Include it after the library
// .cu file a probe compiles in (it uses CUDA_CHECK, floatX and ceil_div from csrc/kernels/common.cuh).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

namespace probe_kit {

// xorshift64: the same numbers on every machine, no library state.
struct XorShift {
  uint64_t s;
  explicit XorShift(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * (float)((next() >> 11) * (1.0 / 9007199254740992.0)); }
  int below(int n) { return (int)(((next() >> 32) * (uint64_t)n) >> 32); }
};

// n values uniform in [lo, hi), as T (float or floatX).
template <class T>
std::vector<T> random_values(size_t n, uint64_t seed, float lo, float hi) {
  XorShift rng(seed);
  std::vector<T> v(n);
  for (auto& e : v) e = (T)rng.uniform(lo, hi);
  return v;
}

template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, h.size() * sizeof(T)));
  CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <class T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// The ceiling the probes report against: a kernel copying `bytes` (a multiple of 16) from src to dst, 16 bytes per
// thread, grid-stride. Not cudaMemcpyAsync: inside a CUDA graph that is a memcpy node run by a copy engine, about
// 2.7 TB/s on an H200 where kernels move 4.2 TB/s (session 8).
__global__ void copy16_kernel(int4* __restrict__ dst, const int4* __restrict__ src, size_t n16) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
    dst[i] = src[i];
  }
}
inline void copy_kernel(void* dst, const void* src, size_t bytes, cudaStream_t st) {
  const size_t n16 = bytes / 16;
  const int blocks = (int)std::min<size_t>((n16 + 255) / 256, (size_t)current_device_sm_count() * 16);
  copy16_kernel<<<blocks, 256, 0, st>>>(static_cast<int4*>(dst), static_cast<const int4*>(src), n16);
  CUDA_CHECK(cudaGetLastError());
}

// Microseconds per call: `iters` calls of launch(i % sets, stream) captured in one CUDA graph; median of 15
// replays after 3 warm-up ones, divided by iters.
inline double graph_us(const std::function<void(int, cudaStream_t)>& launch, int sets, int iters, cudaStream_t st) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int it = 0; it < iters; it++) launch(it % sets, st);
  CUDA_CHECK(cudaStreamEndCapture(st, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  for (int w = 0; w < 3; w++) CUDA_CHECK(cudaGraphLaunch(exec, st));
  std::vector<float> ms;
  for (int rep = 0; rep < 15; rep++) {
    CUDA_CHECK(cudaEventRecord(e0, st));
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    CUDA_CHECK(cudaEventRecord(e1, st));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2] * 1e3 / iters;
}

inline void print_device() {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
}

}  // namespace probe_kit
