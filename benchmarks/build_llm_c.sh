#!/usr/bin/env bash
# Builds llm.c's train_gpt2cu (cuDNN attention) as the side-by-side baseline of benchmarks/curves.py.
# Usage: benchmarks/build_llm_c.sh LLMC_C_SRC CUDNN_FRONTEND_INCLUDE OUTDIR
#   LLMC_C_SRC: an unpacked, writable checkout of github.com/karpathy/llm.c (kept in a git-ignored folder; its code
#   never enters this repository); CUDNN_FRONTEND_INCLUDE: the include/ folder of github.com/NVIDIA/cudnn-frontend.
# The build is patched in place, so one binary serves every curve run:
#   LLMC_C_SHUFFLE_SEED=N  seeds the training data's shuffling (llm.c hard-codes 42 + rank);
#   LLMC_C_SEQUENTIAL=1    reads the training data in order (no shuffling), as llmc's DataLoader(shuffle=False).
# And for CUDA 13: cudaMemAdvise takes a cudaMemLocation; cudnn-frontend 1.2x links NVRTC.
set -euo pipefail
src=${1:?llm.c checkout}; fe=${2:?cudnn-frontend include dir}; out=${3:?output dir}
fe=$(cd "$fe" && pwd)
cd "$src"
sed -i 's/cudaMemAdvise(\*out, bytes, cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdvise(*out, bytes, cudaMemAdviseSetPreferredLocation, cudaMemLocation{cudaMemLocationTypeHost, 0})/' llmc/cuda_utils.cuh
grep -q -- '-lcublasLt -lnvrtc' Makefile || sed -i 's/^NVCC_LDFLAGS = -lcublas -lcublasLt$/NVCC_LDFLAGS = -lcublas -lcublasLt -lnvrtc/' Makefile
sed -i 's/manual_seed(&shuffle_rng, 42 + process_rank);/manual_seed(\&shuffle_rng, (getenv("LLMC_C_SHUFFLE_SEED") ? atoi(getenv("LLMC_C_SHUFFLE_SEED")) : 42) + process_rank);/' llmc/dataloader.h
sed -i 's/int permute_train_loader = (overfit_single_batch == 1) ? 0 : 1;/int permute_train_loader = (overfit_single_batch == 1 || getenv("LLMC_C_SEQUENTIAL")) ? 0 : 1;/' train_gpt2.cu
grep -q LLMC_C_SHUFFLE_SEED llmc/dataloader.h && grep -q LLMC_C_SEQUENTIAL train_gpt2.cu \
  || { echo "build_llm_c.sh: this llm.c checkout differs from the one the patches know" >&2; exit 1; }
mkdir -p cudnn-frontend && ln -sfn "$fe" cudnn-frontend/include
make train_gpt2cu USE_CUDNN=1 GPU_COMPUTE_CAPABILITY=90 NO_MULTI_GPU=1 NO_USE_MPI=1 -j 16
mkdir -p "$out" && cp train_gpt2cu "$out/"
echo "built $out/train_gpt2cu"
