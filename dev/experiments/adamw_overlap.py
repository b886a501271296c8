# AdamW on a second stream against AdamW in line: how much of the update hides behind the next forward. Run: python dev/experiments/adamw_overlap.py
"""Probe: how much of AdamW's time hides behind the next step's forward when the update runs on a second stream.

AdamW is memory bound (28 bytes per parameter with master weights: 11.8 ms per step at d48 on an H200, ~7% of
the step at micro-batch 8) while the forward's GEMMs are compute bound. Variants, each timed as the Trainer
times a step (host wall time between two reads of the loss, median over --steps):
  serial      forward, backward, norm, AdamW (one launch), zero_grad, all on the current stream (today's step)
  overlap     AdamW in n_layer + 2 chunks on a second stream (embeddings first, then layer by layer, then lnf),
              zero_grad after them there; the next forward waits, per layer, only for the chunk it reads
  overlap-hi  the same with the step on a high-priority stream (its kernels' blocks are scheduled first)
The chunks here are contiguous slices of the flat buffers with the right sizes, not the real per-layer tensors
(llm.c's order interleaves layers), and the waits are placed by wrapping the ops the forward calls: enough to
time the overlap, not a training step's numerics. Also timed: AdamW alone, and the serial step with
deterministic=False (cuDNN's attention backward with atomics).

    python probe_adamw_overlap.py --models d48:8,d12:64 [--steps 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="d48:8,d24:32,d12:64")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--nondet", action="store_true", help="also time the serial step with deterministic=False")
    args = p.parse_args(argv)

    import llmc.ops as ops
    from llmc.model import DEFAULT_LOSS_CHUNK, GPT, GPTConfig
    from llmc.optim import AdamW, grad_norm_squared, step_seed

    torch.set_num_threads(1)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    for spec in args.models.split(","):
        name, B = spec.split(":")
        B, T = int(B), 1024
        cfg = GPTConfig.from_preset(name)
        for det in ([True, False] if args.nondet else [True]):
            model = GPT(cfg, device="cuda", loss_chunk=DEFAULT_LOSS_CHUNK, deterministic=det)
            opt = AdamW(model, lr=6e-4, weight_decay=0.1)
            g = torch.Generator().manual_seed(0)
            batches = []
            for _ in range(4):
                tok = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g, dtype=torch.int32)
                batches.append((tok[:, :-1].contiguous(), tok[:, 1:].contiguous()))

            L = cfg.n_layer
            sizes = model.param_sizes  # llm.c order: wte wpe, 12 per-layer arrays, lnfw lnfb
            n_embed, n_final = sizes[0] + sizes[1], sizes[-1] + sizes[-2]
            per_layer = (model.num_params - n_embed - n_final) // L
            bounds = [0, n_embed] + [n_embed + per_layer * (l + 1) for l in range(L - 1)] + \
                     [model.num_params - n_final, model.num_params]
            pt = model.param_tensors
            event_of = {pt["wte"].data_ptr(): 0, pt["wpe"].data_ptr(): 0,
                        pt["lnfw"].data_ptr(): L + 1, pt["lnfb"].data_ptr(): L + 1}
            for l in range(L):
                for key in ("ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb",
                            "fcprojw", "fcprojb"):
                    event_of[pt[key][l].data_ptr()] = l + 1
            state = {"events": None}
            originals = {}

            def wrap(fname):
                orig = getattr(ops, fname)
                originals[fname] = orig

                def wrapped(*a, **kw):
                    ev = state["events"]
                    if ev is not None:
                        k = max((event_of.get(t.data_ptr(), -1) for t in list(a) + list(kw.values())
                                 if isinstance(t, torch.Tensor)), default=-1)
                        if k >= 0:
                            torch.cuda.current_stream().wait_event(ev[k])
                    return orig(*a, **kw)
                setattr(ops, fname, wrapped)

            for fname in ("encoder_forward", "layernorm_forward", "matmul_forward", "fused_residual_layernorm_forward"):
                wrap(fname)

            side = torch.cuda.Stream()  # priority 0, CUDA's lowest, as the default stream's
            high = torch.cuda.Stream(priority=-1)

            def adamw_chunks(stream):
                main = torch.cuda.current_stream()
                norm = grad_norm_squared(model)
                ready = torch.cuda.Event()
                ready.record(main)
                events = []
                opt._sync_master()
                seed = step_seed(opt.seed, opt.step_count + 1)
                with torch.cuda.stream(stream):
                    stream.wait_event(ready)
                    for k in range(len(bounds) - 1):
                        s, e = bounds[k], bounds[k + 1]
                        ops.adamw_update(model.params[s:e], model.grads[s:e], opt.m[s:e], opt.v[s:e],
                                         opt.master[s:e], lr=6e-4, beta1=0.9, beta2=0.95, eps=1e-8,
                                         weight_decay=0.1, step=opt.step_count + 1, seed=seed,
                                         tensor_sizes=[e - s], tensor_decay=[True], grad_norm_squared=norm,
                                         max_grad_norm=1.0)
                        if k < len(bounds) - 2:
                            ev = torch.cuda.Event()
                            ev.record(stream)
                            events.append(ev)
                    model.grads.zero_()
                    ev = torch.cuda.Event()
                    ev.record(stream)
                    events.append(ev)
                opt.step_count += 1
                return events

            def run(variant, steps):
                with torch.cuda.stream(high if variant == "overlap-hi" else torch.cuda.current_stream()):
                    return run_on(variant, steps)

            def run_on(variant, steps):
                times, last = [], None
                for i in range(steps):
                    x, y = batches[i % len(batches)]
                    loss = model.forward(x, y, sync=False)
                    state["events"] = None
                    model.backward()
                    if variant == "serial":
                        opt.step(6e-4, grad_norm_squared=grad_norm_squared(model), max_grad_norm=1.0)
                        model.zero_grad()
                    else:
                        state["events"] = adamw_chunks(side)
                    loss.item()
                    now = time.perf_counter()
                    if last is not None:
                        times.append(now - last)
                    last = now
                # the next forward would wait; here the side stream must finish before another variant
                torch.cuda.synchronize()
                state["events"] = None
                return times

            tag = f"{name} B={B}" + ("" if det else " deterministic=False")
            run("serial", 4)
            run("overlap", 4)
            run("overlap-hi", 4)
            results = {}
            for variant in (["serial", "overlap", "overlap-hi", "serial"] if det else ["serial"]):
                t = run(variant, args.steps + 1)
                results.setdefault(variant, []).append(statistics.median(t) * 1e3)
            # AdamW alone
            torch.cuda.synchronize()
            ts = []
            for _ in range(10):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                opt.step(6e-4)
                b.record()
                torch.cuda.synchronize()
                ts.append(a.elapsed_time(b))
            tokens = B * T
            for variant, ms in results.items():
                for v in ms:
                    print(f"{tag:32s} {variant:11s} {v:8.2f} ms/step  {tokens / v * 1e3:10.0f} tokens/s")
            print(f"{tag:32s} adamw alone {statistics.median(ts):8.2f} ms")
            for fname, orig in originals.items():
                setattr(ops, fname, orig)
            del model, opt
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
