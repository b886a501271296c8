"""Encoder (token + position embedding) forward/backward: llmc vs torch eager vs torch.compile at GPT-2 124M
and 1.5B shapes (B*T random token ids in a 50304-row table).

Bytes counted (what the op must move at least, each byte once):
  forward:  ids (4 N) + the N gathered wte rows (2 N C) + wpe (2 T C, read once) + out (2 N C).
  backward: ids (4 N) + dout (2 N C) + dwte rows of the U distinct ids (read + write, 4 U C)
            + dwpe (read + write, 4 T C).
The llmc backward reads dout twice (once per gradient, see encoder.cu); that second read is not counted.
torch's backward (aten.embedding_dense_backward, what autograd of F.embedding runs, plus dout.sum(0)) writes
fresh gradients instead of accumulating; its timing is for the same math.
Provider "llmc" is the default call, which checks the ids against V with one device sync: a sync cannot be
captured in a CUDA graph, so it is timed per call ("llmc (per call)", host time and the GPU's idling included).
"llmc validate=False" skips that check, like torch, which checks ids with device asserts, and is timed from
graph replays like the torch providers.
"""
import torch
import torch.nn.functional as F

import llmc.ops as ops
from common import GPT2_SHAPES, Recorder, compiled, copies_for, parse_args, require_cuda, time_cuda

PADDED_VOCAB = 50304
VOCAB = 50257


def main():
    args = parse_args(__doc__)
    require_cuda()
    rec = Recorder(args.csv)

    def fwd_eager(ids, wte, wpe):
        return F.embedding(ids, wte) + wpe

    def bwd_eager(dout, ids):
        B, T, C = dout.shape
        dwte = torch.ops.aten.embedding_dense_backward(dout.view(B * T, C), ids.view(-1), PADDED_VOCAB, -1, False)
        return dwte, dout.sum(0)

    fwd_comp, bwd_comp = compiled(fwd_eager), compiled(bwd_eager)
    for name in args.shapes.split(","):
        s = GPT2_SHAPES[name]
        B, T, C = s["B"], s["T"], s["C"]
        N = B * T
        label = f"{name} (B={B},T={T},C={C})"
        k = copies_for(3 * 2 * N * C)
        dev = dict(device="cuda")
        ids = [torch.randint(0, VOCAB, (B, T), dtype=torch.int32, **dev) for _ in range(k)]
        ids64 = [i.long() for i in ids]
        wte = torch.randn(PADDED_VOCAB, C, dtype=torch.bfloat16, **dev)
        wpe = torch.randn(T, C, dtype=torch.bfloat16, **dev)
        douts = [torch.randn(B, T, C, dtype=torch.bfloat16, **dev) for _ in range(k)]
        out = torch.empty(B, T, C, dtype=torch.bfloat16, **dev)
        dwte, dwpe = torch.zeros_like(wte), torch.zeros_like(wpe)
        distinct = ids[0].unique().numel()

        fwd_bytes = 4 * N + 2 * N * C + 2 * T * C + 2 * N * C
        rec.add("encoder_forward", label, "llmc",
                time_cuda(lambda i: ops.encoder_forward(ids[i], wte, wpe, out=out), k, graph=False), fwd_bytes)
        rec.add("encoder_forward", label, "llmc validate=False",
                time_cuda(lambda i: ops.encoder_forward(ids[i], wte, wpe, out=out, validate=False), k), fwd_bytes)
        rec.add("encoder_forward", label, "torch", time_cuda(lambda i: fwd_eager(ids64[i], wte, wpe), k), fwd_bytes)
        if not args.no_compile:
            rec.add("encoder_forward", label, "torch.compile",
                    time_cuda(lambda i: fwd_comp(ids64[i], wte, wpe), k), fwd_bytes)

        bwd_bytes = 4 * N + 2 * N * C + 4 * distinct * C + 4 * T * C
        rec.add("encoder_backward", label, "llmc",
                time_cuda(lambda i: ops.encoder_backward(douts[i], ids[i], dwte, dwpe), k, graph=False), bwd_bytes)
        rec.add("encoder_backward", label, "llmc validate=False",
                time_cuda(lambda i: ops.encoder_backward(douts[i], ids[i], dwte, dwpe, validate=False), k),
                bwd_bytes)
        rec.add("encoder_backward", label, "torch", time_cuda(lambda i: bwd_eager(douts[i], ids64[i]), k), bwd_bytes)
        if not args.no_compile:
            rec.add("encoder_backward", label, "torch.compile",
                    time_cuda(lambda i: bwd_comp(douts[i], ids64[i]), k), bwd_bytes)
        del ids, ids64, douts, wte, dwte
    rec.save()


if __name__ == "__main__":
    main()
