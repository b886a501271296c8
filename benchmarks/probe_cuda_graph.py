"""What a CUDA graph of a whole forward + backward would save: one model trained eagerly and with the
forward + backward captured once (torch.cuda.graph, after eager steps tuned the GEMMs) and replayed, the
optimizer step eager; each timed with a sync after every step and back to back; also with deterministic=False
attention. Checks that a replay gives the eager run's gradients bit for bit (deterministic attention).

    python probe_cuda_graph.py d12 64      # model preset, micro-batch (T = 1024)

Session 4 on an H100 (a307945): d12/B=64 eager 111.6 ms synced / 111.5 back to back, graph 110.7 / 111.4;
d48/B=8 eager 174.5 / 175.4, graph 174.9 / 174.8: the host is far enough ahead that a graph saves ~1 ms at most,
so the Trainer does not capture one.
"""
import sys, time, statistics
import torch
from llmc.model import GPT, GPTConfig
from llmc.optim import AdamW, grad_norm_squared

torch.set_num_threads(1)
name, B = sys.argv[1], int(sys.argv[2])
T = 1024
cfg = GPTConfig.from_preset(name)
gen = torch.Generator().manual_seed(0)

def batch():
    t = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen, dtype=torch.int32)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()

def run(det):
    model = GPT(cfg, device="cuda", loss_chunk=8192, deterministic=det)
    opt = AdamW(model, lr=6e-4, weight_decay=0.1)
    model.allocate(B, T)
    def eager(x, y):
        model.forward(x, y, sync=False); model.backward()
        opt.step(lr=6e-4, grad_norm_squared=grad_norm_squared(model), max_grad_norm=1.0); model.zero_grad()
    def stage(x, y):
        a = model._acts.carve((B, T), model._activation_specs(B, T)); model._shape = (B, T)
        return a, model._stage_tokens(a, x, y)
    def fb(a, n):
        model._forward_trunk(a, B, T); model._chunked_loss(a, B * T, 1.0 / n, True)
        model._backward_ready = True; model.backward()
    for _ in range(3):
        eager(*batch())
    torch.cuda.synchronize()
    res = {}
    w = []
    for _ in range(12):
        x, y = batch(); t0 = time.perf_counter(); eager(x, y); torch.cuda.synchronize(); w.append(time.perf_counter() - t0)
    res["eager synced"] = statistics.median(w) * 1e3
    bs = [batch() for _ in range(12)]
    t0 = time.perf_counter()
    for x, y in bs: eager(x, y)
    torch.cuda.synchronize(); res["eager back-to-back"] = (time.perf_counter() - t0) / 12 * 1e3
    # graph
    x, y = batch(); a, n = stage(x, y)
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fb(a, n)
    torch.cuda.current_stream().wait_stream(s); model.zero_grad(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            fb(a, n)
    except Exception as e:
        print("capture failed:", repr(e)[:500]); return res
    torch.cuda.synchronize()
    print("captured; mem GB", torch.cuda.max_memory_allocated() / 1e9)
    # same tokens: eager vs graph gradients bitwise
    model.zero_grad(); stage(x, y); fb(a, n); torch.cuda.synchronize(); ge = model.grads.clone(); le = a["losses"][0].clone()
    model.zero_grad(); stage(x, y); g.replay(); torch.cuda.synchronize()
    print("graph==eager grads:", torch.equal(ge, model.grads), "losses:", torch.equal(le, a["losses"][0]))
    def gstep(x, y):
        stage(x, y); g.replay()
        opt.step(lr=6e-4, grad_norm_squared=grad_norm_squared(model), max_grad_norm=1.0); model.zero_grad()
    w = []
    for _ in range(12):
        x, y = batch(); t0 = time.perf_counter(); gstep(x, y); torch.cuda.synchronize(); w.append(time.perf_counter() - t0)
    res["graph synced"] = statistics.median(w) * 1e3
    t0 = time.perf_counter()
    for x, y in bs: gstep(x, y)
    torch.cuda.synchronize(); res["graph back-to-back"] = (time.perf_counter() - t0) / 12 * 1e3
    del g
    return res

for det in (True, False):
    r = run(det)
    print(f"{name} B={B} deterministic={det}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in r.items()), flush=True)
    torch.cuda.empty_cache()
