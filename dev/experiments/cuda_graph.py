# A whole forward + backward captured in a CUDA graph against eager launches: what graphs would save. Run: python dev/experiments/cuda_graph.py
"""What a CUDA graph of a whole forward + backward would save: one model trained eagerly and with the
forward + backward captured once (torch.cuda.graph, after eager steps tuned the GEMMs) and replayed, the
optimizer step eager; each timed with a sync after every step and back to back; also with deterministic=False
attention. Checks that a replay gives the eager run's gradients bit for bit (deterministic attention).

    python probe_cuda_graph.py d12 64      # model preset, micro-batch (T = 1024)

Session 4 on an H100 (a307945): d12/B=64 eager 111.6 ms synced / 111.5 back to back, graph 110.7 / 111.4;
d48/B=8 eager 174.5 / 175.4, graph 174.9 / 174.8: the host is far enough ahead that a graph saves ~1 ms at most,
so the Trainer does not capture one. deterministic=False (cuDNN's atomic dQ) saved ~1.9 ms at d12 (109.7 ms
synced) and ~2.1 ms at d48 (172.4). (Measured with this script's first, terser version: the same steps.)
"""
import statistics
import sys
import time

import torch

from llmc.model import DEFAULT_LOSS_CHUNK, GPT, GPTConfig
from llmc.optim import AdamW, grad_norm_squared

T = 1024
STEPS = 12


def median_ms(step, batches, synced: bool) -> float:
    """Median ms of step(x, y) with a sync after each, or the mean over back-to-back steps."""
    if not synced:
        t0 = time.perf_counter()
        for x, y in batches:
            step(x, y)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / len(batches) * 1e3
    times = []
    for x, y in batches:
        t0 = time.perf_counter()
        step(x, y)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def probe(cfg: GPTConfig, B: int, deterministic: bool, batches) -> dict:
    model = GPT(cfg, device="cuda", loss_chunk=DEFAULT_LOSS_CHUNK, deterministic=deterministic)
    opt = AdamW(model, lr=6e-4, weight_decay=0.1)
    model.allocate(B, T)

    def update():
        opt.step(lr=6e-4, grad_norm_squared=grad_norm_squared(model), max_grad_norm=1.0)
        model.zero_grad()

    def eager(x, y):
        model.forward(x, y, sync=False)
        model.backward()
        update()

    # The graph replays forward + backward on the model's own buffers; tokens are staged outside it.
    def stage(x, y):
        acts = model._acts.carve((B, T), model._activation_specs(B, T))
        model._shape = (B, T)
        return acts, model._stage_tokens(acts, x, y)

    def forward_backward(acts, n_valid):
        model._forward_trunk(acts, B, T)
        model._chunked_loss(acts, B * T, 1.0 / n_valid, True)
        model._backward_ready = True
        model.backward()

    for x, y in batches[:3]:  # warm-up: GEMM autotuning, cuDNN plans
        eager(x, y)
    torch.cuda.synchronize()
    result = {"eager synced": median_ms(eager, batches, True), "eager back-to-back": median_ms(eager, batches, False)}

    x, y = batches[0]
    acts, n_valid = stage(x, y)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        forward_backward(acts, n_valid)
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward_backward(acts, n_valid)

    model.zero_grad()
    stage(x, y)
    forward_backward(acts, n_valid)
    eager_grads, eager_losses = model.grads.clone(), acts["losses"][0].clone()
    model.zero_grad()
    stage(x, y)
    graph.replay()
    torch.cuda.synchronize()
    print(f"deterministic={deterministic}: replay == eager: grads {torch.equal(eager_grads, model.grads)}, "
          f"losses {torch.equal(eager_losses, acts['losses'][0])}")

    def replayed(x, y):
        stage(x, y)
        graph.replay()
        update()

    result["graph synced"] = median_ms(replayed, batches, True)
    result["graph back-to-back"] = median_ms(replayed, batches, False)
    return result


def main():
    name, B = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    cfg = GPTConfig.from_preset(name)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(STEPS):
        tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen, dtype=torch.int32)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    for deterministic in (True, False):
        r = probe(cfg, B, deterministic, batches)
        print(f"{name} B={B} deterministic={deterministic}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in r.items()),
              flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
