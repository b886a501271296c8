# cuBLASLt's first heuristic algorithm against the fastest one for GPT-2's GEMMs, and whether their bits agree. Run: python dev/experiments/gemm_algos.py --configs d12:64,d48:8
"""How much the cuBLASLt heuristic's first choice leaves on the table for GPT-2's GEMMs, and whether the faster
algorithms give the same bits.

For every GEMM of a training step (forward, dinp, dweight of QKV, attention projection, MLP up/down and the lm_head,
with the epilogues llmc uses), times each algorithm the heuristic offers (up to 32; mean of --reps runs after 3
warm-up runs, CUDA events inside the extension, so no host time is counted), then runs the heuristic's choice and the
fastest once each from the same starting buffers and compares every output bit for bit. Prints a markdown table and
the ms per step the fastest algorithms would save (times the layer count). It ranks the heuristic's list
independently of llmc's autotuning (csrc/kernels/matmul.cu), which makes the same measurement once per shape at
run time; this script shows what is at stake and whether a faster algorithm can change results.

    python dev/experiments/gemm_algos.py --configs d12:64,d48:8 --markdown results/gemm_algos_h100.md
"""
from __future__ import annotations

import argparse

import torch

from llmc import ops
from llmc.model import DEFAULT_LOSS_CHUNK, GPTConfig

FWD, FWD_GELU, DINP, DINP_DGELU, DWEIGHT = range(5)
KIND_NAMES = {FWD: "fwd", FWD_GELU: "fwd gelu_aux_bias", DINP: "dinp", DINP_DGELU: "dinp dgelu", DWEIGHT: "dweight"}


def layer_gemms(C: int, Vp: int):
    """(name, K, M, has_bias, [kinds]) of one layer's linear maps and the lm_head, as model.py runs them."""
    return [("qkv", C, 3 * C, True, [FWD, DINP, DWEIGHT]),
            ("attproj", C, C, True, [FWD, DINP, DWEIGHT]),
            ("fc", C, 4 * C, True, [FWD_GELU, DINP, DWEIGHT]),
            ("fcproj", 4 * C, C, True, [FWD, DINP_DGELU, DWEIGHT]),
            ("lm_head", C, Vp, False, [FWD, DINP, DWEIGHT])]


def buffers(kind, N, K, M, gen, has_bias):
    """d, x, w, bias, aux for ops' _llmc.matmul_probe (see kernels.h), random bf16, never zeros."""
    def r(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, device="cuda") * std).to(torch.bfloat16)
    if kind in (FWD, FWD_GELU):
        return dict(d=r(N, M), x=r(N, K), w=r(M, K, std=K ** -0.5), bias=r(M, std=0.1) if has_bias else None,
                    aux=r(N, M) if kind == FWD_GELU else None)
    if kind in (DINP, DINP_DGELU):
        return dict(d=r(N, K), x=r(N, M), w=r(M, K, std=K ** -0.5), bias=None,
                    aux=r(N, K) if kind == DINP_DGELU else None)
    return dict(d=r(M, K, std=0.1), x=r(N, K), w=r(N, M), bias=None, aux=None)


def probe(ext, kind, rank, buf, N, K, M, reps):
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    return ext.matmul_probe(kind, rank, ptr(buf["d"]), ptr(buf["x"]), ptr(buf["w"]), ptr(buf["bias"]),
                            ptr(buf["aux"]), N, K, M, reps, torch.cuda.current_stream().cuda_stream)


def outputs_after_one_run(ext, kind, rank, buf, start, N, K, M):
    """Every buffer the GEMM writes, after one run from the `start` contents."""
    for name, t in start.items():
        buf[name].copy_(t)
    probe(ext, kind, rank, buf, N, K, M, 0)
    torch.cuda.synchronize()
    return {name: buf[name].clone() for name in start}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="d12:64,d48:8", help="preset:micro_batch list (T = 1024)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args()
    ext = ops._ext()
    gen = torch.Generator(device="cuda").manual_seed(0)
    lines = [f"cuBLASLt algorithms for GPT-2's GEMMs on {torch.cuda.get_device_name()} (T=1024; ms = mean of "
             f"{args.reps} runs; 'same bits': the fastest algorithm's outputs equal the heuristic choice's; in "
             f"brackets how many of all offered do)", "",
             "| config | gemm | N, K, M | offered | heuristic ms | fastest ms | fastest rank | TFLOP/s (h -> f) "
             "| same bits | fastest config |", "|---|---|---|---:|---:|---:|---:|---|---|---|"]
    for spec in args.configs.split(","):
        model, B = spec.split(":")
        cfg = GPTConfig.from_preset(model)
        N = int(B) * 1024
        saved = 0.0
        for name, K, M, has_bias, kinds in layer_gemms(cfg.n_embd, cfg.padded_vocab_size):
            rows, count = N, cfg.n_layer
            if name == "lm_head":  # the Trainer's default loss_chunk: the output layer runs that many rows at a time
                rows = min(N, DEFAULT_LOSS_CHUNK)
                count = -(-N // rows)  # the last chunk may be shorter: counted as a whole one
            for kind in kinds:
                buf = buffers(kind, rows, K, M, gen, has_bias)
                written = ["d"] + (["aux"] if kind == FWD_GELU else [])
                start = {w: buf[w].clone() for w in written}
                offered, ms0, conf0 = probe(ext, kind, 0, buf, rows, K, M, args.reps)
                reference = outputs_after_one_run(ext, kind, 0, buf, start, rows, K, M)
                best, identical = (ms0, 0, conf0), 1
                for rank in range(1, offered):
                    _, ms, conf = probe(ext, kind, rank, buf, rows, K, M, args.reps)
                    out = outputs_after_one_run(ext, kind, rank, buf, start, rows, K, M)
                    same_bits = all(torch.equal(reference[w], out[w]) for w in written)
                    identical += same_bits
                    if 0 < ms < best[0]:
                        best = (ms, rank, conf, same_bits)
                same = f"{'-' if best[1] == 0 else ('yes' if best[3] else 'NO')} ({identical}/{offered} same)"
                flops = 2.0 * rows * K * M
                saved += (ms0 - best[0]) * count
                lines.append(f"| {model} B={B} | {name} {KIND_NAMES[kind]} | {rows}, {K}, {M} | {offered} | "
                             f"{ms0:.3f} | {best[0]:.3f} | {best[1]} | {flops / ms0 / 1e9:.0f} -> "
                             f"{flops / best[0] / 1e9:.0f} | {same} | {best[2]} |")
                print(lines[-1], flush=True)
        lines.append(f"| {model} B={B} | **per step, fastest vs heuristic** | | | | | | saves {saved:.2f} ms | | |")
        print(lines[-1], flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
