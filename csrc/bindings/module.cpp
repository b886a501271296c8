// pybind11 glue for llmc._llmc: pointers and streams arrive as Python ints; no math here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include "kernels.h"

namespace py = pybind11;

namespace {
template <class T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }
cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
}  // namespace

PYBIND11_MODULE(_llmc, m) {
  m.doc() = "llmc CUDA launchers: raw device pointers (ints), sizes, and a cudaStream_t (int) last";
  py::register_exception<std::invalid_argument>(m, "LaunchArgumentError", PyExc_ValueError);

  // ---- gelu.cu ----
  m.def("gelu_forward", [](uintptr_t out, uintptr_t inp, int64_t n, uintptr_t s) {
    gelu_forward(ptr<floatX>(out), ptr<const floatX>(inp), n, as_stream(s));
  }, "out = gelu_tanh(inp), bf16");
  m.def("gelu_backward", [](uintptr_t dinp, uintptr_t dout, uintptr_t inp, int64_t n, uintptr_t s) {
    gelu_backward(ptr<floatX>(dinp), ptr<const floatX>(dout), ptr<const floatX>(inp), n, as_stream(s));
  }, "dinp = dout * gelu_tanh'(inp), bf16; dinp may alias dout");

  // ---- encoder.cu ----

  // ---- layernorm.cu ----

  // ---- matmul.cu ----

  // ---- attention (attention_cudnn.cpp, attention.cu) ----

  // ---- fused_classifier.cu ----

  // ---- adamw.cu ----

  // ---- global_norm.cu ----
}
