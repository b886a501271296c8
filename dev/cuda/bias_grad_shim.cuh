// layernorm.cu's launcher calls matmul.cu's bias-gradient pass for dinp_colsum where the register kernel does not
// sum the columns itself. The probes compile layernorm.cu alone (no cuBLASLt) and never ask for dinp_colsum, so
// they get the scratch size it would need and a pass that refuses to run.
#pragma once

int64_t bias_grad_scratch_floats(int64_t N, int64_t M) { return (int64_t)bias_grad_row_blocks(N, M) * M; }

void bias_grad_accumulate(floatX*, const floatX*, int64_t, int64_t, float*, cudaStream_t) {
  LLMC_REQUIRE(false, "probe: layernorm_backward's separate dinp_colsum pass is not compiled in (matmul.cu)");
}
