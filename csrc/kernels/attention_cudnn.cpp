// Causal self-attention through cuDNN's fused flash-attention (cudnn-frontend graph API). All cudnn-frontend
// code lives in this file: its headers are heavy, and nothing else should pay for them.
// Forward reads Q, K, V straight out of the QKV matmul output qkv (B, T, 3, NH, HS) through strides and writes
// out (B, T, NH, HS) plus the fp32 log-sum-exp of each row's scaled, masked scores, stats (B, NH, T).
// Backward reads dout, qkv, out and stats and overwrites dqkv, laid out like qkv. bf16 I/O, fp32 softmax.
// Graphs are built once per shape and cached; one cudnnHandle and one grow-only workspace per device.
#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include <cudnn.h>
#include <cudnn_frontend.h>

#include "common.cuh"
#include "kernels.h"

namespace fe = cudnn_frontend;

namespace {

inline void llmc_cudnn_check(cudnnStatus_t status, const char* expr, const char* file, int line) {
  if (status != CUDNN_STATUS_SUCCESS) {
    char detail[1024] = {0};
    cudnnGetLastErrorString(detail, sizeof(detail));
    throw std::runtime_error(std::string("cuDNN error: ") + cudnnGetErrorString(status) + " " + detail + " (" +
                             expr + ") at " + file + ":" + std::to_string(line));
  }
}
#define CUDNN_CHECK(expr) llmc_cudnn_check((expr), #expr, __FILE__, __LINE__)

inline void llmc_cudnn_fe_check(fe::error_t err, const char* expr, const char* file, int line) {
  if (err.is_bad()) {
    throw std::runtime_error("cuDNN frontend error: " + err.get_message() + " (" + expr + ") at " + file + ":" +
                             std::to_string(line));
  }
}
#define CUDNN_FE_CHECK(expr) llmc_cudnn_fe_check((expr), #expr, __FILE__, __LINE__)

enum TensorUid : int64_t { kQ = 1, kK, kV, kO, kStats, kdO, kdQ, kdK, kdV };
enum class Pass { kForward, kBackward, kBackwardDeterministic };

struct Shape {
  int64_t B, T, NH, HS;
};

// Handles and workspaces live for the whole process: destroying them from static destructors would run after
// the CUDA context may already be gone.
struct DeviceState {
  cudnnHandle_t handle = nullptr;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

using GraphKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, Pass>;

std::mutex g_mutex;  // guards the maps below; held for a whole call
std::unordered_map<int, DeviceState> g_devices;
std::map<GraphKey, std::shared_ptr<fe::graph::Graph>> g_graphs;

DeviceState& device_state(int device) {
  DeviceState& st = g_devices[device];
  if (st.handle == nullptr) CUDNN_CHECK(cudnnCreate(&st.handle));
  return st;
}

void* workspace(DeviceState& st, int64_t bytes) {
  if (bytes > st.workspace_bytes) {
    // cudaFree waits for the device, so no queued kernel still uses the old buffer.
    if (st.workspace != nullptr) CUDA_CHECK(cudaFree(st.workspace));
    st.workspace = nullptr;
    st.workspace_bytes = 0;
    CUDA_CHECK(cudaMalloc(&st.workspace, (size_t)bytes));
    st.workspace_bytes = bytes;
  }
  return st.workspace;
}

// A (B, NH, T, HS) view of a (B, T, [3,] NH, HS) buffer: row_stride is NH*HS for out/dout, 3*NH*HS for the
// Q, K, V (and dQ, dK, dV) slices of qkv (dqkv).
void bhtd_layout(fe::graph::Tensor_attributes& t, int64_t uid, const Shape& s, int64_t row_stride) {
  t.set_uid(uid).set_dim({s.B, s.NH, s.T, s.HS}).set_stride({s.T * row_stride, s.HS, row_stride, 1});
}

void stats_layout(fe::graph::Tensor_attributes& t, const Shape& s) {
  t.set_uid(kStats).set_dim({s.B, s.NH, s.T, 1}).set_stride({s.NH * s.T, s.T, 1, 1}).set_data_type(
      fe::DataType_t::FLOAT);
}

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return graph;
}

std::array<std::shared_ptr<fe::graph::Tensor_attributes>, 3> qkv_inputs(fe::graph::Graph& graph, const Shape& s) {
  auto Q = graph.tensor(fe::graph::Tensor_attributes().set_name("Q"));
  auto K = graph.tensor(fe::graph::Tensor_attributes().set_name("K"));
  auto V = graph.tensor(fe::graph::Tensor_attributes().set_name("V"));
  bhtd_layout(*Q, kQ, s, 3 * s.NH * s.HS);
  bhtd_layout(*K, kK, s, 3 * s.NH * s.HS);
  bhtd_layout(*V, kV, s, 3 * s.NH * s.HS);
  return {Q, K, V};
}

std::shared_ptr<fe::graph::Graph> build_forward(cudnnHandle_t handle, const Shape& s) {
  auto graph = new_graph();
  auto [Q, K, V] = qkv_inputs(*graph, s);
  auto options = fe::graph::SDPA_attributes()
                     .set_name("attention_forward")
                     .set_generate_stats(true)
                     .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                     .set_diagonal_band_right_bound(0)
                     .set_attn_scale(1.0f / std::sqrt((float)s.HS));
  auto [O, stats] = graph->sdpa(Q, K, V, options);
  bhtd_layout(O->set_output(true), kO, s, s.NH * s.HS);
  stats_layout(stats->set_output(true), s);
  CUDNN_FE_CHECK(graph->build(handle, {fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}));
  return graph;
}

std::shared_ptr<fe::graph::Graph> build_backward(cudnnHandle_t handle, const Shape& s, bool deterministic) {
  auto graph = new_graph();
  auto [Q, K, V] = qkv_inputs(*graph, s);
  auto O = graph->tensor(fe::graph::Tensor_attributes().set_name("O"));
  auto dO = graph->tensor(fe::graph::Tensor_attributes().set_name("dO"));
  auto stats = graph->tensor(fe::graph::Tensor_attributes().set_name("stats"));
  bhtd_layout(*O, kO, s, s.NH * s.HS);
  bhtd_layout(*dO, kdO, s, s.NH * s.HS);
  stats_layout(*stats, s);
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("attention_backward")
                     .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                     .set_diagonal_band_right_bound(0)
                     .set_attn_scale(1.0f / std::sqrt((float)s.HS))
                     .set_deterministic_algorithm(deterministic);
  auto [dQ, dK, dV] = graph->sdpa_backward(Q, K, V, O, dO, stats, options);
  bhtd_layout(dQ->set_output(true), kdQ, s, 3 * s.NH * s.HS);
  bhtd_layout(dK->set_output(true), kdK, s, 3 * s.NH * s.HS);
  bhtd_layout(dV->set_output(true), kdV, s, 3 * s.NH * s.HS);
  CUDNN_FE_CHECK(graph->build(handle, {fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}));
  return graph;
}

// Runs the cached graph for (device, shape, pass), building it on first use, on `stream`.
void run_graph(const Shape& s, Pass pass, std::unordered_map<int64_t, void*>& pointers, cudaStream_t stream) {
  LLMC_REQUIRE(s.B > 0 && s.T > 0 && s.NH > 0, "attention (cuDNN): B, T and NH must be positive");
  LLMC_REQUIRE(s.HS == 64 || s.HS == 128, "attention (cuDNN): head size must be 64 or 128");
  std::lock_guard<std::mutex> lock(g_mutex);
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  DeviceState& st = device_state(device);
  CUDNN_CHECK(cudnnSetStream(st.handle, stream));
  auto& graph = g_graphs[GraphKey{device, s.B, s.T, s.NH, s.HS, pass}];
  if (!graph) {
    graph = pass == Pass::kForward ? build_forward(st.handle, s)
                                   : build_backward(st.handle, s, pass == Pass::kBackwardDeterministic);
  }
  int64_t bytes = 0;
  CUDNN_FE_CHECK(graph->get_workspace_size(bytes));
  CUDNN_FE_CHECK(graph->execute(st.handle, pointers, workspace(st, bytes)));
}

}  // namespace

void attention_forward_cudnn(floatX* out, float* stats, const floatX* qkv, int B, int T, int NH, int HS,
                             cudaStream_t stream) {
  const int64_t C = (int64_t)NH * HS;
  floatX* q = const_cast<floatX*>(qkv);  // cuDNN's variant pack takes void*; inputs are only read
  std::unordered_map<int64_t, void*> pointers = {
      {kQ, q}, {kK, q + C}, {kV, q + 2 * C}, {kO, out}, {kStats, stats}};
  run_graph(Shape{B, T, NH, HS}, Pass::kForward, pointers, stream);
}

void attention_backward_cudnn(floatX* dqkv, const floatX* dout, const floatX* qkv, const floatX* out,
                              const float* stats, int B, int T, int NH, int HS, bool deterministic,
                              cudaStream_t stream) {
  const int64_t C = (int64_t)NH * HS;
  floatX* q = const_cast<floatX*>(qkv);
  std::unordered_map<int64_t, void*> pointers = {
      {kQ, q}, {kK, q + C}, {kV, q + 2 * C},
      {kO, const_cast<floatX*>(out)}, {kdO, const_cast<floatX*>(dout)}, {kStats, const_cast<float*>(stats)},
      {kdQ, dqkv}, {kdK, dqkv + C}, {kdV, dqkv + 2 * C}};
  run_graph(Shape{B, T, NH, HS}, deterministic ? Pass::kBackwardDeterministic : Pass::kBackward, pointers, stream);
}
