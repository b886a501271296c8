// Launcher declarations: the only header the bindings include.
// Conventions: raw device pointers, sizes, the CUDA stream last. Launchers check their launch and throw
// std::runtime_error on CUDA errors. Parameter gradients are accumulated (+=); activation gradients are
// overwritten unless a launcher says otherwise.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

typedef __nv_bfloat16 floatX;

// ---- gelu.cu ----
void gelu_forward(floatX* out, const floatX* inp, int64_t n, cudaStream_t stream);
// dinp may alias dout (in-place backward).
void gelu_backward(floatX* dinp, const floatX* dout, const floatX* inp, int64_t n, cudaStream_t stream);
// The epilogue of a GEMM written unfused (out holds the product (N, M), or pre when gelu): x = it + bias (may be
// null); gelu: pre = x and out = gelu(x); else out = x. M a multiple of 8.
void bias_gelu_forward(floatX* out, floatX* pre, const floatX* bias, int64_t N, int64_t M, bool gelu,
                       cudaStream_t stream);

// ---- encoder.cu ----
void encoder_forward(floatX* out, const int* idx, const floatX* wte, const floatX* wpe, int B, int T, int C,
                     cudaStream_t stream);
// Bytes of device scratch the backward needs for B*T = N positions of C channels and ids below V (llmc.ops
// allocates it; 256-byte aligned). Allocates nothing, launches nothing (reads the current device's properties).
int64_t encoder_backward_scratch_bytes(int N, int C, int V);
// Step 1 of the backward: sorts the B*T = N int32 token ids idx (each in [0, V)) stably into scratch, with the
// position each came from (CUB's onesweep radix sort over the ceil(log2 V) low bits). Depends on idx only.
void encoder_backward_sort(void* scratch, int64_t scratch_bytes, const int* idx, int N, int C, int V,
                           cudaStream_t stream);
// Step 2: dwte += , dwpe += ; deterministic (every sum has a fixed order), from dout and the scratch step 1
// filled (ordered before this on stream). The dwpe kernel runs on wpe_stream (may equal stream), the rest on
// stream: the caller makes wpe_stream wait for dout and then makes stream wait for wpe_stream.
void encoder_backward(floatX* dwte, floatX* dwpe, void* scratch, int64_t scratch_bytes, const floatX* dout, int B,
                      int T, int C, int V, cudaStream_t stream, cudaStream_t wpe_stream);

// ---- layernorm.cu ----
void layernorm_forward(floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight,
                       const floatX* bias, int N, int C, float eps, cudaStream_t stream);
// residual = inp1 + inp2, then out, mean, rstd = layernorm(residual), in one pass.
void fused_residual_layernorm_forward(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* inp1,
                                      const floatX* inp2, const floatX* weight, const floatX* bias, int N, int C,
                                      float eps, cudaStream_t stream);
// fp32 scratch the backward needs for N rows of C (llmc.ops allocates it).
int64_t layernorm_backward_scratch_floats(int N, int C);
// dinp = (or += with accumulate) the input gradient; dweight += , dbias += ; deterministic. dinp may alias dout.
// colsum (C, may be null) += the column sums of the dinp written (its final values): the bias gradient of the
// linear layer whose output gradient dinp is, summed in the same pass where the row fits the register kernel and
// the extra sums cost it no resident blocks, else in a separate pass (bias_grad_accumulate) over dinp.
void layernorm_backward(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                        const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N, int C,
                        bool accumulate, cudaStream_t stream, floatX* colsum = nullptr);

// ---- matmul.cu ----
// out (N,M) = inp (N,K) @ weight (M,K)^T [+ bias (M)], through cuBLASLt. With gelu, out = gelu_tanh of that and
// pre_gelu (N,M), if not null, receives the value before the GELU. bias and pre_gelu may be null. K, M multiples of 8.
void matmul_forward(floatX* out, floatX* pre_gelu, const floatX* inp, const floatX* weight, const floatX* bias,
                    int64_t N, int64_t K, int64_t M, bool gelu, cudaStream_t stream);
// dinp (N,K) = dout (N,M) @ weight (M,K), times gelu_tanh'(pre_gelu (N,K)) when pre_gelu is not null (dinp may then
// be pre_gelu); dweight += dout^T @ inp; dbias (may be null) += column sums of dout, deterministically.
void matmul_backward(floatX* dinp, floatX* dweight, floatX* dbias, const floatX* dout, const floatX* inp,
                     const floatX* weight, const floatX* pre_gelu, int64_t N, int64_t K, int64_t M,
                     cudaStream_t stream);
// FP8 (sm_89+): out (N,M) = (x (N,K) @ w (M,K)^T) * x_scale_inv * w_scale_inv [+ bias (M)], x and w FP8 (e4m3, or
// e5m2 for at most one of them), the scales device scalars, fp32 accumulation (fast_accum: Hopper's faster
// accumulation), bf16 out. epilogue 0: none (bias optional); 1: GELU, out = gelu(.) and aux (N,M) = the value
// before it; 2: dGELU, out = (.) * gelu'(aux), aux other than out, no bias. K, M multiples of 16.
// x_scaling, w_scaling: 0 (the scales are scalars; both), 3 (one scale per row: x's N, w's M; both), or block
// scales (both): 1 one per 1x128 run of a row, 2 one per 128x128 tile, laid out as fp8_quantize_blocks writes
// them; no fast_accum then, N a multiple of 4.
// accumulate: out += the product (no bias, no GELU).
void matmul_fp8(floatX* out, floatX* aux, const void* x, const void* w, bool x_e5m2, bool w_e5m2,
                const float* x_scale_inv, const float* w_scale_inv, const floatX* bias, int64_t N, int64_t K,
                int64_t M, int epilogue, bool fast_accum, int x_scaling, int w_scaling, bool accumulate,
                cudaStream_t stream);
// One line per GEMM plan autotuning looked at on the current device so far: its shape and the algorithm kept.
std::vector<std::string> matmul_tuning_log();

// ---- column_sums.cu ----
// Floats of scratch the bias gradient's partial sums take for the column sums of N rows of M columns
// (fp8_cast_dbias; matmul_backward and layernorm_backward use their own scratch).
int64_t bias_grad_scratch_floats(int64_t N, int64_t M);
// dbias (M) += column sums of dout (N, M), matmul_backward's bias gradient bit for bit, through `scratch`, which
// holds scratch_floats floats (at least bias_grad_scratch_floats(N, M)).
void bias_grad_accumulate(floatX* dbias, const floatX* dout, int64_t N, int64_t M, float* scratch,
                          int64_t scratch_floats, cudaStream_t stream);

// ---- attention (attention_cudnn.cpp, attention.cu) ----
// Causal self-attention, scale 1/sqrt(HS). qkv and dqkv (B, T, 3, NH, HS); out and dout (B, T, NH, HS);
// stats fp32 (B, NH, T): log-sum-exp of each row's scaled, masked scores (the same in both backends).
// dqkv is overwritten. Plain CUDA (attention.cu), any head size up to kAttentionMaxHeadSize; the backward needs
// an fp32 scratch `delta` of B*NH*T floats.
constexpr int kAttentionMaxHeadSize = 128;
void attention_forward(floatX* out, float* stats, const floatX* qkv, int B, int T, int NH, int HS,
                       cudaStream_t stream);
void attention_backward(floatX* dqkv, float* delta, const floatX* dout, const floatX* qkv, const floatX* out,
                        const float* stats, int B, int T, int NH, int HS, cudaStream_t stream);
// cuDNN (attention_cudnn.cpp, built only with LLMC_WITH_CUDNN): head size 64 or 128. The backward's dQ sums
// with atomics (run to run differences in the last bits) unless `deterministic`, which costs a larger workspace.
void attention_forward_cudnn(floatX* out, float* stats, const floatX* qkv, int B, int T, int NH, int HS,
                             cudaStream_t stream);
void attention_backward_cudnn(floatX* dqkv, const floatX* dout, const floatX* qkv, const floatX* out,
                              const float* stats, int B, int T, int NH, int HS, bool deterministic,
                              cudaStream_t stream);

// ---- fused_classifier.cu ----
// logits (N, Vp) is overwritten with dlogits = (softmax - onehot) * dloss over the first V columns, 0 in the
// padding; losses (N) fp32 gets the per-row loss. targets[i] == -1 ignores row i (loss 0, zero gradient).
void fused_classifier(floatX* logits, float* losses, const int* targets, float dloss, int N, int V, int Vp,
                      cudaStream_t stream);

// ---- adamw.cu ----
// Most segments (runs of adjacent tensors with the same decay flag) one launch takes: they travel as kernel
// parameters.
constexpr int kAdamWMaxSegments = 64;
// One AdamW step over n elements; master may be nullptr (then params are read as fp32 and updated directly).
// tensor_sizes partition n; weight decay applies where tensor_decay is set. params get stochastic rounding.
// Gradients are multiplied by grad_scale and, when norm_squared (device, one float) is not nullptr, clipped to a
// global norm of max_norm, read on the device.
void adamw_update(floatX* params, const floatX* grads, float* m, float* v, float* master, int64_t n, double lr,
                  double beta1, double beta2, double eps, double weight_decay, int64_t step, uint64_t seed,
                  double grad_scale, const float* norm_squared, double max_norm,
                  const std::vector<int64_t>& tensor_sizes, const std::vector<bool>& tensor_decay,
                  cudaStream_t stream);

// ---- global_norm.cu ----
// Floats of scratch (device memory) global_norm_squared needs: one partial sum per block of its fixed grid.
constexpr int kGlobalNormPartials = 1024;
// out[0] = sum(inp[i]^2) in fp32, deterministic; inp may start at any element offset.
void global_norm_squared(float* out, const floatX* inp, int64_t n, float* scratch, cudaStream_t stream);

// ---- fp8.cu ----
// FP8 casts with per-tensor scales (see fp8.cu): q = saturate(x * s), s = fp8_max / *amax_ref (1 when it is 0);
// 1/s goes to *scale_inv; amax_out (may be null) is raised to max |x| (atomic max, order-independent).
// *amax = max |x| (set, not raised); x 16-byte aligned.
void fp8_amax(float* amax, const floatX* x, int64_t n, cudaStream_t stream);
// amax[r] = max |x[r, :]| for `rows` contiguous rows of n elements (n a multiple of 8; set, not raised).
void fp8_amax_rows(float* amax, const floatX* x, int rows, int64_t n, cudaStream_t stream);
// n a multiple of 16, out and x 16-byte aligned.
void fp8_cast(void* out, const floatX* x, int64_t n, bool e5m2, const float* amax_ref, float* scale_inv,
              float* amax_out, cudaStream_t stream);
// out (cols, rows) = the cast of x (rows, cols), transposed.
void fp8_cast_transpose(void* out, const floatX* x, int rows, int cols, bool e5m2, const float* amax_ref,
                        float* scale_inv, float* amax_out, cudaStream_t stream);
// fp8_cast of x (N, M) that also adds x's column sums to dbias (M), deterministically and bit for bit as
// matmul_backward's dbias: one pass over x for both. M a multiple of 8; scratch: bias_grad_scratch_floats(N, M).
void fp8_cast_dbias(void* out, floatX* dbias, const floatX* x, int64_t N, int64_t M, bool e5m2,
                    const float* amax_ref, float* scale_inv, float* amax_out, float* scratch, int64_t scratch_floats,
                    cudaStream_t stream);

// ---- fp8_block.cu ----
// Block-scaled e4m3 copies of x (batch x R x K, bf16; see fp8_block.cu for the scale layouts): q (R, K) and/or
// qt (K, R) = the transposed copy (either may be null, with its scales). tile_scale: one power-of-two scale per
// 128x128 tile (weights), else one per 128 elements of each row of q and of qt. s / st receive the inverse scales.
// K a multiple of 16, R of 4.
void fp8_quantize_blocks(void* q, float* s, void* qt, float* st, const floatX* x, int batch, int R, int K,
                         bool tile_scale, cudaStream_t stream);
// e4m3 copies of x (batch, R, K) with one power-of-two scale per row: q (R rows of K, inverse scales s (batch, R))
// and/or qt (the transposed copy, K rows of R, scaled per column of x: st (batch, K)). amax: scratch of
// batch * (R + K) floats. Two passes over x (the amaxes, then both copies). K a multiple of 16, R of 4.
void fp8_quantize_rows(void* q, float* s, void* qt, float* st, const floatX* x, float* amax, int batch, int R,
                       int K, cudaStream_t stream);

// For each of `slots` tensors: history[i][pos] = amax[i] if it is > 0 and finite (else the entry stays), amax[i] =
// 0, amax_ref[i] = max of history[i] (len history_len).
void fp8_update_scales(float* amax_ref, float* history, float* amax, int slots, int history_len, int pos,
                       cudaStream_t stream);
