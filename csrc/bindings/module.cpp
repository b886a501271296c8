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
  m.def("encoder_forward", [](uintptr_t out, uintptr_t idx, uintptr_t wte, uintptr_t wpe, int B, int T, int C,
                              uintptr_t s) {
    encoder_forward(ptr<floatX>(out), ptr<const int>(idx), ptr<const floatX>(wte), ptr<const floatX>(wpe), B, T, C,
                    as_stream(s));
  }, "out[b,t] = wte[idx[b,t]] + wpe[t], bf16; idx int32");
  m.def("encoder_backward_scratch_bytes", &encoder_backward_scratch_bytes,
        "bytes of device scratch encoder_backward needs for N positions of C channels and ids below V");
  m.def("encoder_backward_sort", [](uintptr_t scratch, int64_t scratch_bytes, uintptr_t idx, int N, int C, int V,
                                    uintptr_t s) {
    encoder_backward_sort(ptr<void>(scratch), scratch_bytes, ptr<const int>(idx), N, C, V, as_stream(s));
  }, "step 1 of encoder_backward: the N int32 ids (each in [0, V)) sorted stably into scratch");
  m.def("encoder_backward", [](uintptr_t dwte, uintptr_t dwpe, uintptr_t scratch, int64_t scratch_bytes,
                               uintptr_t dout, int B, int T, int C, int V, uintptr_t s, uintptr_t wpe_stream) {
    encoder_backward(ptr<floatX>(dwte), ptr<floatX>(dwpe), ptr<void>(scratch), scratch_bytes,
                     ptr<const floatX>(dout), B, T, C, V, as_stream(s), as_stream(wpe_stream));
  }, "step 2: dwte += , dwpe += (deterministic) from dout and the sorted scratch of step 1; the dwpe kernel "
     "on wpe_stream (the caller forks and joins it), the rest on s");

  // ---- layernorm.cu ----
  m.def("layernorm_forward", [](uintptr_t out, uintptr_t mean, uintptr_t rstd, uintptr_t inp, uintptr_t weight,
                                uintptr_t bias, int N, int C, float eps, uintptr_t s) {
    layernorm_forward(ptr<floatX>(out), ptr<float>(mean), ptr<float>(rstd), ptr<const floatX>(inp),
                      ptr<const floatX>(weight), ptr<const floatX>(bias), N, C, eps, as_stream(s));
  }, "out = layernorm(inp) * weight + bias, bf16; mean, rstd fp32");
  m.def("fused_residual_layernorm_forward", [](uintptr_t residual, uintptr_t out, uintptr_t mean, uintptr_t rstd,
                                               uintptr_t inp1, uintptr_t inp2, uintptr_t weight, uintptr_t bias,
                                               int N, int C, float eps, uintptr_t s) {
    fused_residual_layernorm_forward(ptr<floatX>(residual), ptr<floatX>(out), ptr<float>(mean), ptr<float>(rstd),
                                     ptr<const floatX>(inp1), ptr<const floatX>(inp2), ptr<const floatX>(weight),
                                     ptr<const floatX>(bias), N, C, eps, as_stream(s));
  }, "residual = inp1 + inp2; out, mean, rstd = layernorm(residual); one pass");
  m.def("layernorm_backward_scratch_floats", &layernorm_backward_scratch_floats,
        "number of fp32 scratch elements layernorm_backward needs for N rows of C (on the current device)");
  m.def("layernorm_backward", [](uintptr_t dinp, uintptr_t dweight, uintptr_t dbias, uintptr_t scratch,
                                 uintptr_t dout, uintptr_t inp, uintptr_t weight, uintptr_t mean, uintptr_t rstd,
                                 int N, int C, bool accumulate, uintptr_t s, uintptr_t colsum) {
    layernorm_backward(ptr<floatX>(dinp), ptr<floatX>(dweight), ptr<floatX>(dbias), ptr<float>(scratch),
                       ptr<const floatX>(dout), ptr<const floatX>(inp), ptr<const floatX>(weight),
                       ptr<const float>(mean), ptr<const float>(rstd), N, C, accumulate, as_stream(s),
                       ptr<floatX>(colsum));
  }, "dinp = (or += with accumulate) input gradient; dweight += , dbias += ; colsum (0: none) += dinp's column "
     "sums (deterministic)");

  // ---- matmul.cu ----
  m.def("matmul_forward", [](uintptr_t out, uintptr_t pre_gelu, uintptr_t inp, uintptr_t weight, uintptr_t bias,
                             int64_t N, int64_t K, int64_t M, bool gelu, uintptr_t s) {
    matmul_forward(ptr<floatX>(out), ptr<floatX>(pre_gelu), ptr<const floatX>(inp), ptr<const floatX>(weight),
                   ptr<const floatX>(bias), N, K, M, gelu, as_stream(s));
  }, "out = [gelu](inp @ weight^T + bias) via cuBLASLt, bf16; pre_gelu and bias may be 0");
  m.def("matmul_backward", [](uintptr_t dinp, uintptr_t dweight, uintptr_t dbias, uintptr_t dout, uintptr_t inp,
                              uintptr_t weight, uintptr_t pre_gelu, int64_t N, int64_t K, int64_t M, uintptr_t s) {
    matmul_backward(ptr<floatX>(dinp), ptr<floatX>(dweight), ptr<floatX>(dbias), ptr<const floatX>(dout),
                    ptr<const floatX>(inp), ptr<const floatX>(weight), ptr<const floatX>(pre_gelu), N, K, M,
                    as_stream(s));
  }, "dinp = (dout @ weight) [* gelu'(pre_gelu)]; dweight += dout^T @ inp; dbias += colsum(dout); bf16");
  m.def("matmul_fp8", [](uintptr_t out, uintptr_t aux, uintptr_t x, uintptr_t w, bool x_e5m2, bool w_e5m2,
                         uintptr_t x_scale_inv, uintptr_t w_scale_inv, uintptr_t bias, int64_t N, int64_t K, int64_t M,
                         int epilogue, bool fast_accum, int x_scaling, int w_scaling, bool accumulate, uintptr_t s) {
    matmul_fp8(ptr<floatX>(out), ptr<floatX>(aux), ptr<const void>(x), ptr<const void>(w), x_e5m2, w_e5m2,
               ptr<const float>(x_scale_inv), ptr<const float>(w_scale_inv), ptr<const floatX>(bias), N, K, M,
               epilogue, fast_accum, x_scaling, w_scaling, accumulate, as_stream(s));
  }, "out (N,M) [+]= x (N,K) @ w (M,K)^T (FP8) * scales (scalars or blocks) [+ bias], epilogue 0 none, 1 GELU "
     "(aux = pre), 2 dGELU");
  m.def("matmul_tuning_log", &matmul_tuning_log,
        "one line per cuBLASLt plan autotuning looked at on the current device: shape and the algorithm kept");

  // ---- column_sums.cu ----
  m.def("bias_grad_scratch_floats", &bias_grad_scratch_floats,
        "floats of scratch fp8_cast_dbias and bias_grad_accumulate need for x (N, M)");
  m.def("bias_grad_accumulate", [](uintptr_t dbias, uintptr_t dout, int64_t N, int64_t M, uintptr_t scratch,
                                   int64_t scratch_floats, uintptr_t s) {
    bias_grad_accumulate(ptr<floatX>(dbias), ptr<const floatX>(dout), N, M, ptr<float>(scratch), scratch_floats,
                         as_stream(s));
  }, "dbias (M) += column sums of dout (N, M), as matmul_backward's dbias");

  // ---- fp8.cu ----
  m.def("fp8_amax", [](uintptr_t amax, uintptr_t x, int64_t n, uintptr_t s) {
    fp8_amax(ptr<float>(amax), ptr<const floatX>(x), n, as_stream(s));
  }, "*amax = max |x| (bf16 x, fp32 amax)");
  m.def("fp8_amax_rows", [](uintptr_t amax, uintptr_t x, int rows, int64_t n, uintptr_t s) {
    fp8_amax_rows(ptr<float>(amax), ptr<const floatX>(x), rows, n, as_stream(s));
  }, "amax[r] = max |x[r, :]| for rows of n elements (bf16 x, fp32 amax)");
  m.def("fp8_cast", [](uintptr_t out, uintptr_t x, int64_t n, bool e5m2, uintptr_t amax_ref, uintptr_t scale_inv,
                       uintptr_t amax_out, uintptr_t s) {
    fp8_cast(ptr<void>(out), ptr<const floatX>(x), n, e5m2, ptr<const float>(amax_ref), ptr<float>(scale_inv),
             ptr<float>(amax_out), as_stream(s));
  }, "out = fp8(x * fp8_max / *amax_ref), saturating; *scale_inv = the inverse scale; *amax_out raised to max |x|");
  m.def("fp8_cast_dbias", [](uintptr_t out, uintptr_t dbias, uintptr_t x, int64_t N, int64_t M, bool e5m2,
                             uintptr_t amax_ref, uintptr_t scale_inv, uintptr_t amax_out, uintptr_t scratch,
                             int64_t scratch_floats, uintptr_t s) {
    fp8_cast_dbias(ptr<void>(out), ptr<floatX>(dbias), ptr<const floatX>(x), N, M, e5m2, ptr<const float>(amax_ref),
                   ptr<float>(scale_inv), ptr<float>(amax_out), ptr<float>(scratch), scratch_floats, as_stream(s));
  }, "fp8_cast of x (N, M) that also adds x's column sums to dbias (M), as matmul_backward's dbias");
  m.def("fp8_cast_transpose", [](uintptr_t out, uintptr_t x, int rows, int cols, bool e5m2, uintptr_t amax_ref,
                                 uintptr_t scale_inv, uintptr_t amax_out, uintptr_t s) {
    fp8_cast_transpose(ptr<void>(out), ptr<const floatX>(x), rows, cols, e5m2, ptr<const float>(amax_ref),
                       ptr<float>(scale_inv), ptr<float>(amax_out), as_stream(s));
  }, "fp8_cast of x (rows, cols) written transposed (cols, rows)");
  // ---- fp8_block.cu ----
  m.def("fp8_quantize_blocks", [](uintptr_t q, uintptr_t sc, uintptr_t qt, uintptr_t st, uintptr_t x, int batch,
                                  int R, int K, bool tile_scale, uintptr_t s) {
    fp8_quantize_blocks(ptr<void>(q), ptr<float>(sc), ptr<void>(qt), ptr<float>(st), ptr<const floatX>(x), batch, R,
                        K, tile_scale, as_stream(s));
  }, "block-scaled e4m3 copies of x (batch, R, K): q, its inverse scales s, and optionally qt = the transposed copy");
  m.def("fp8_quantize_rows", [](uintptr_t q, uintptr_t sc, uintptr_t qt, uintptr_t st, uintptr_t x, uintptr_t amax,
                                int batch, int R, int K, uintptr_t s) {
    fp8_quantize_rows(ptr<void>(q), ptr<float>(sc), ptr<void>(qt), ptr<float>(st), ptr<const floatX>(x),
                      ptr<float>(amax), batch, R, K, as_stream(s));
  }, "row-scaled e4m3 copies of x (batch, R, K): q with one scale per row, and/or qt = the transposed copy with one "
     "per column of x");
  m.def("fp8_update_scales", [](uintptr_t amax_ref, uintptr_t history, uintptr_t amax, int slots, int len, int pos,
                                uintptr_t s) {
    fp8_update_scales(ptr<float>(amax_ref), ptr<float>(history), ptr<float>(amax), slots, len, pos, as_stream(s));
  }, "per slot: history[pos] = amax, amax = 0, amax_ref = max of history");

  // ---- attention (attention_cudnn.cpp, attention.cu) ----
  m.attr("ATTENTION_MAX_HEAD_SIZE") = kAttentionMaxHeadSize;
  m.def("attention_forward", [](uintptr_t out, uintptr_t stats, uintptr_t qkv, int B, int T, int NH, int HS,
                                uintptr_t s) {
    attention_forward(ptr<floatX>(out), ptr<float>(stats), ptr<const floatX>(qkv), B, T, NH, HS, as_stream(s));
  }, "plain CUDA causal attention: out (B,T,NH,HS) and log-sum-exp stats fp32 (B,NH,T) from qkv (B,T,3,NH,HS)");
  m.def("attention_backward", [](uintptr_t dqkv, uintptr_t delta, uintptr_t dout, uintptr_t qkv, uintptr_t out,
                                 uintptr_t stats, int B, int T, int NH, int HS, uintptr_t s) {
    attention_backward(ptr<floatX>(dqkv), ptr<float>(delta), ptr<const floatX>(dout), ptr<const floatX>(qkv),
                       ptr<const floatX>(out), ptr<const float>(stats), B, T, NH, HS, as_stream(s));
  }, "plain CUDA attention backward: dqkv overwritten; delta is fp32 scratch (B,NH,T)");
  m.def("has_cudnn", [] {
#ifdef LLMC_WITH_CUDNN
    return true;
#else
    return false;
#endif
  }, "whether the cuDNN attention was compiled in");
#ifdef LLMC_WITH_CUDNN
  m.def("attention_forward_cudnn", [](uintptr_t out, uintptr_t stats, uintptr_t qkv, int B, int T, int NH, int HS,
                                      uintptr_t s) {
    attention_forward_cudnn(ptr<floatX>(out), ptr<float>(stats), ptr<const floatX>(qkv), B, T, NH, HS,
                            as_stream(s));
  }, "cuDNN causal attention (HS 64/128): out and log-sum-exp stats from qkv");
  m.def("attention_backward_cudnn", [](uintptr_t dqkv, uintptr_t dout, uintptr_t qkv, uintptr_t out, uintptr_t stats,
                                       int B, int T, int NH, int HS, bool deterministic, uintptr_t s) {
    attention_backward_cudnn(ptr<floatX>(dqkv), ptr<const floatX>(dout), ptr<const floatX>(qkv),
                             ptr<const floatX>(out), ptr<const float>(stats), B, T, NH, HS, deterministic,
                             as_stream(s));
  }, "cuDNN attention backward: dqkv overwritten; deterministic=True orders the dQ sums");
#endif

  // ---- fused_classifier.cu ----
  m.def("fused_classifier", [](uintptr_t logits, uintptr_t losses, uintptr_t targets, float dloss, int N, int V,
                               int Vp, uintptr_t s) {
    fused_classifier(ptr<floatX>(logits), ptr<float>(losses), ptr<const int>(targets), dloss, N, V, Vp, as_stream(s));
  }, "losses = cross-entropy per row (fp32); logits (bf16) overwritten with (softmax - onehot) * dloss");

  // ---- adamw.cu ----
  m.attr("ADAMW_MAX_SEGMENTS") = kAdamWMaxSegments;
  m.def("adamw_update", [](uintptr_t params, uintptr_t grads, uintptr_t m_, uintptr_t v_, uintptr_t master, int64_t n,
                           double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                           uint64_t seed, double grad_scale, uintptr_t norm_squared, double max_norm,
                           const std::vector<int64_t>& tensor_sizes, const std::vector<bool>& tensor_decay,
                           uintptr_t s) {
    adamw_update(ptr<floatX>(params), ptr<const floatX>(grads), ptr<float>(m_), ptr<float>(v_), ptr<float>(master), n,
                 lr, beta1, beta2, eps, weight_decay, step, seed, grad_scale, ptr<const float>(norm_squared),
                 max_norm, tensor_sizes, tensor_decay, as_stream(s));
  }, "one AdamW step over a flat range; master and norm_squared may be 0; params (bf16) written with stochastic "
     "rounding; gradients clipped on the device to max_norm when norm_squared points at the squared global norm");

  // ---- global_norm.cu ----
  m.attr("GLOBAL_NORM_PARTIALS") = kGlobalNormPartials;
  m.def("global_norm_squared", [](uintptr_t out, uintptr_t inp, int64_t n, uintptr_t scratch, uintptr_t s) {
    global_norm_squared(ptr<float>(out), ptr<const floatX>(inp), n, ptr<float>(scratch), as_stream(s));
  }, "out[0] = sum(inp^2) in fp32, deterministic; scratch holds GLOBAL_NORM_PARTIALS floats");
}
