"""The FP8 policy of GPT(fp8=True): which matmuls run in FP8, how their operands are scaled (delayed scaling
state, saved in checkpoints), and the scratch the casts write."""
from __future__ import annotations

from typing import Optional

import torch

from . import ops


class _Fp8:
    """The FP8 matmuls of GPT(fp8=True): what they cast, how they scale, and the scratch they use.

    Which matmuls, by default: fc's forward only, at every width (its output is 4C wide, so the FP8 GEMM's saving
    outgrows the cast of its (N, C) input). The class can also run fcproj's forward (FCPROJ_FWD_FROM) and the
    input gradients of fc and qkv (DINP_FROM; the e5m2 cast of their 4C- or 3C-wide output gradient also sums the
    bias gradient, ops.fp8_cast with dbias) in FP8 from a given width, both off by default: in 300-step loss
    curves on an H100 (dev/experiments/fp8_loss_curve.py) the input gradients in FP8 move d12's validation loss
    from 0.011 to 0.034 above bf16's, and at d48 the three together end 0.071 above bf16 against 0.034 with fc's
    forward alone, the gap growing over the run, for a step 4% faster; fcproj's forward added to fc's is no faster
    at d48 and ends 0.051 above bf16. qkv's forward stays bf16: in FP8 the attention scores' error moved
    qkv's and wte's gradients past FP8_MODEL's bound (tests/conftest.py; cosine 0.975 against bf16 at C=1024, on
    an H100 and in a CPU simulation). The attention projection (C to C)
    stays bf16: its GEMM is small next to its casts. fcproj's input gradient stays bf16: it carries the GELU
    backward, and cuBLASLt runs FP8 with the dGELU epilogue as a GEMM plus a separate epilogue kernel that took
    1.3 ms per call at d12 (0.56 ms at d48) on an H100 (benchmarks/profile_step.py), far more than FP8 saves.
    Weight gradients and everything else stay bf16, so the
    optimizer, the checkpoints and the bf16 copies of every activation are unchanged.

    Formats: activations and weights e4m3, gradients e5m2, one scale per tensor (ops.fp8_cast). Weights are cast for
    each use with their exact amax (current scaling: they are small), taken for all layers in one launch per weight
    family at the start of each forward (the weights do not change until the optimizer's step). Activations and
    gradients are big, so they are cast in one pass with a scale from the largest amax of their last HISTORY casts
    (delayed scaling, the history advanced once per forward), and the cast records their amax for the next; the
    first cast of each uses its exact amax. Values beyond the history's amax saturate at the format's max. Forward
    GEMMs use Hopper's fast accumulation, gradient GEMMs the precise one. Every cast and GEMM is deterministic. A
    forward without backward (evaluation, sampling) leaves the gradients' histories as they were. The Trainer saves
    this state (state_dict) in its checkpoints, so a resumed FP8 run scales as the uninterrupted one."""

    HISTORY = 16
    # the delayed-scaling slots of each layer (slot(layer, which)): the inputs of fc's and fcproj's forward
    # matmuls, the output gradients of fc and qkv
    FC_IN, FCPROJ_IN, FC_DOUT, QKV_DOUT = 0, 1, 2, 3
    PER_LAYER = 4
    # n_embd from which fcproj's forward, and the input gradients of fc and qkv, run in FP8 too; None: never (the
    # default, see the class docstring). Class attributes: dev/experiments/fp8_loss_curve.py and test_fp8 set them.
    FCPROJ_FWD_FROM: Optional[int] = None
    DINP_FROM: Optional[int] = None

    def __init__(self, config, device: torch.device):
        slots = self.PER_LAYER * config.n_layer
        f = dict(dtype=torch.float32, device=device)
        self.amax, self.amax_ref = torch.zeros(slots, **f), torch.zeros(slots, **f)
        self.history = torch.zeros(slots, self.HISTORY, **f)
        self.x_scale_inv, self.w_scale_inv = torch.zeros(1, **f), torch.zeros(1, **f)
        self.w_amax = {name: torch.zeros(config.n_layer, **f) for name in ("qkvw", "fcw", "fcprojw")}
        self.seen = [False] * slots  # which slots were cast before
        self.forwards = 0
        self.fcproj_fwd = self.FCPROJ_FWD_FROM is not None and config.n_embd >= self.FCPROJ_FWD_FROM
        self.dinp = self.DINP_FROM is not None and config.n_embd >= self.DINP_FROM

    @staticmethod
    def check_supported(config, device: torch.device) -> None:
        """A ValueError unless GPT(config, device, fp8=True) can run (config: a GPTConfig): an FP8-capable GPU and
        n_embd a multiple of 16."""
        if not (device.type == "cuda" and ops.fp8_supported(device)):
            where = "the CPU" if device.type != "cuda" else torch.cuda.get_device_name(device)
            raise ValueError(f"fp8=True needs a CUDA GPU of compute capability 8.9 or more (H100-class) and llmc "
                             f"built with CUDA; {where} has none. Use fp8=False (bf16)")
        if config.n_embd % 16:
            raise ValueError(f"fp8=True needs n_embd to be a multiple of 16 (FP8 matmul rows are 16-byte aligned), "
                             f"got {config.n_embd}")

    @staticmethod
    def scratch_specs(N: int, C: int, enabled: bool) -> list:
        """The activation-arena entries (name, copies, shape, dtype) the casts write, for N positions of C
        channels: the FP8 copy of one matmul input at a time (up to (N, 4C)) and of one weight (4C x C); no
        copies when FP8 is off."""
        copies = 1 if enabled else 0
        return [("fp8_x", copies, (N * 4 * C,), torch.uint8), ("fp8_w", copies, (4 * C * C,), torch.uint8)]

    def slot(self, layer: int, which: int) -> int:
        return self.PER_LAYER * layer + which

    def state_dict(self) -> dict:
        return {"amax": self.amax.cpu(), "amax_ref": self.amax_ref.cpu(), "history": self.history.cpu(),
                "seen": list(self.seen), "forwards": self.forwards}

    def load_state_dict(self, state: dict) -> None:
        if len(state["seen"]) != len(self.seen) or tuple(state["history"].shape) != tuple(self.history.shape):
            raise ValueError(f"FP8 state for {len(state['seen'])} slots / history {tuple(state['history'].shape)}, "
                             f"this model has {len(self.seen)} / {tuple(self.history.shape)}")
        for name in ("amax", "amax_ref", "history"):
            getattr(self, name).copy_(state[name])
        self.seen = [bool(v) for v in state["seen"]]
        self.forwards = int(state["forwards"])

    def next_step(self, params: dict) -> None:
        """Start of every forward: fold the last forward's (and backward's) amaxes into the history, and take the
        FP8 weights' amax per layer."""
        if self.forwards:
            ops.fp8_update_scales(self.amax_ref, self.history, self.amax, (self.forwards - 1) % self.HISTORY)
        self.forwards += 1
        ops.fp8_amax_rows(params["fcw"], out=self.w_amax["fcw"])
        if self.dinp:  # the weights only the wider policies cast
            ops.fp8_amax_rows(params["qkvw"], out=self.w_amax["qkvw"])
        if self.fcproj_fwd:
            ops.fp8_amax_rows(params["fcprojw"], out=self.w_amax["fcprojw"])

    def _cast(self, a, x: torch.Tensor, slot: int, dtype: torch.dtype, dbias=None):
        amax = self.amax[slot:slot + 1]
        q = a["fp8_x"][0][:x.numel()].view(dtype).view(x.shape)
        if not self.seen[slot]:  # first cast: the exact amax, which also starts the history
            ops.fp8_amax(x, out=amax)
            self.seen[slot] = True
            return ops.fp8_cast(x, amax, dtype, out=q, scale_inv=self.x_scale_inv, dbias=dbias)
        return ops.fp8_cast(x, self.amax_ref[slot:slot + 1], dtype, out=q, scale_inv=self.x_scale_inv,
                            amax_out=amax, dbias=dbias)

    def _weight(self, a, w: torch.Tensor, amax: torch.Tensor, transpose: bool):
        shape = (w.shape[1], w.shape[0]) if transpose else tuple(w.shape)
        q = a["fp8_w"][0][:w.numel()].view(ops.FP8_E4M3).view(shape)
        return ops.fp8_cast(w, amax, ops.FP8_E4M3, out=q, scale_inv=self.w_scale_inv, transpose=transpose)

    def linear(self, a, x, w, w_amax, bias, out, slot: int, pre_gelu=None) -> None:
        """out = x @ w.T + bias (then GELU, keeping pre_gelu, when pre_gelu is given), in FP8; w_amax: the weight's
        one-element slot of w_amax."""
        x8, xs = self._cast(a, x, slot, ops.FP8_E4M3)
        w8, ws = self._weight(a, w, w_amax, transpose=False)
        ops.matmul_fp8(x8, w8, xs, ws, bias, out=out, gelu=pre_gelu is not None, pre_gelu=pre_gelu,
                       fast_accum=True)

    def linear_dinp(self, a, dout, w, w_amax, dinp, slot: int, dbias=None) -> None:
        """dinp = dout @ w in FP8 (dout e5m2); dbias, when given, += dout's column sums (in the cast's pass)."""
        d8, ds = self._cast(a, dout, slot, ops.FP8_E5M2, dbias)
        wt8, ws = self._weight(a, w, w_amax, transpose=True)
        ops.matmul_fp8(d8, wt8, ds, ws, out=dinp)


class _Fp8Blocks:
    """The FP8 matmuls of GPT(fp8="blocks"): all four linear layers of every block (qkv, attproj, fc, fcproj) in
    FP8, forward, input gradient and weight gradient, with block scales taken from each tensor as it is cast
    (ops.fp8_quantize_blocks; no scaling state, nothing to save in checkpoints).

    Operands, all e4m3 with power-of-two scales:
      - forward: out = x @ w.T, x in 1x128 runs of each row (per token, 128 channels), w in 128x128 tiles;
      - input gradient: dinp = dout @ w, dout in 1x128 runs of each row, w's transposed copy (the same tiles);
      - weight gradient: dw += dout.T @ x, both transposed copies in 1x128 runs along the tokens.
    x's transposed copy is made again from the bf16 activation in the backward, so the FP8 mode keeps no more
    activations than bf16. The weights' two copies (all layers, one launch per weight family) are made at the first
    forward after the parameters change (GPT.params_updated, or any in-place write torch records), so once per
    optimizer step. The bias gradients, the GELU and everything outside the four linears stay as in bf16; so do
    the output layer (lm_head) and attention. GEMMs accumulate in fp32 (cuBLASLt has no fast accumulation for
    block scales); the FP8 weight copies take 2 bytes per weight of the four families."""

    FAMILIES = ("qkvw", "attprojw", "fcw", "fcprojw")
    MODE = "blocks"
    FAST_ACCUM = (False, False, False)  # forward, input gradient, weight gradient (block scales: never)
    SCALES = "block-scaled"

    @staticmethod
    def _quantize(x: torch.Tensor, **kw) -> tuple:
        """Activations and gradients: rows of x (and/or its transposed copy) as the GEMMs take them."""
        return ops.fp8_quantize_blocks(x, **kw)

    @staticmethod
    def _quantize_weight(w: torch.Tensor) -> tuple:
        """A stacked weight family: (q, scale_inv, qt, scale_inv_t) for all layers."""
        return ops.fp8_quantize_blocks(w, tile=True, transpose=True)

    def __init__(self, config, device: torch.device):
        self.weights: dict = {}  # family -> (q, scale_inv, qt, scale_inv_t) for all layers
        self.version = None  # GPT._params_version() the copies were made from; None: not made yet

    @classmethod
    def check_supported(cls, config, device: torch.device) -> None:
        """A ValueError unless GPT(config, device, fp8=cls.MODE) can run: a Hopper GPU (or the CPU, where the
        reference runs the same math slowly, for tests) and n_embd a multiple of 16."""
        if device.type == "cuda" and not ops.fp8_block_supported(device):
            raise ValueError(f"fp8={cls.MODE!r} needs a Hopper GPU (compute capability 9.x: cuBLASLt's "
                             f"{cls.SCALES} FP8 GEMMs); {torch.cuda.get_device_name(device)} is not one. Use "
                             f"fp8=False (bf16) or fp8=True")
        if config.n_embd % 16:
            raise ValueError(f"fp8={cls.MODE!r} needs n_embd to be a multiple of 16 (FP8 matmul rows are 16-byte "
                             f"aligned), got {config.n_embd}")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"fp8={self.MODE!r} keeps no scaling state, got one with {sorted(state)}")

    def next_step(self, params: dict, version) -> None:
        """Start of every forward: quantize the weights if they changed since their copies were made."""
        if version == self.version:
            return
        for name in self.FAMILIES:
            self.weights[name] = self._quantize_weight(params[name])
        self.version = version

    def linear(self, x, name: str, l: int, bias, out, pre_gelu=None) -> None:
        """out = x @ w.T + bias (then GELU, keeping pre_gelu, when pre_gelu is given) for layer l's weight of
        family `name`."""
        q, s, _, _ = self.weights[name]
        xq, xs = self._quantize(x)
        ops.matmul_fp8(xq, q[l], xs, s[l], bias, out=out, gelu=pre_gelu is not None, pre_gelu=pre_gelu,
                       fast_accum=self.FAST_ACCUM[0])

    def linear_backward(self, dout, inp, name: str, l: int, dweight, dbias, dinp) -> None:
        """dinp = dout @ w, dweight += dout.T @ inp and dbias += dout's column sums (when not None) for layer l's
        weight of family `name`."""
        _, _, qt, st = self.weights[name]
        dq, ds, dtq, dts = self._quantize(dout, transpose=True)
        ops.matmul_fp8(dq, qt[l], ds, st[l], out=dinp, fast_accum=self.FAST_ACCUM[1])
        xtq, xts = self._quantize(inp, transpose=True, rows=False)
        ops.matmul_fp8(dtq, xtq, dts, xts, out=dweight, accumulate=True, fast_accum=self.FAST_ACCUM[2])
        if dbias is not None:
            ops.bias_grad(dout, dbias)


class _Fp8Rows(_Fp8Blocks):
    """The FP8 matmuls of GPT(fp8="rows"): the same four linears and GEMMs as _Fp8Blocks, with one scale per row
    of every operand instead of per block (cuBLASLt's outer-vector scaling, applied to the product, as torchao's
    rowwise recipe): x and dout per token, w per output channel (forward) and its transposed copy per input
    channel (input gradient), dout's and x's transposed copies per channel along the tokens (weight gradient).
    Scaling after the product lets the GEMMs run at per-tensor FP8's rate; one outlier costs precision in its
    row (and column) only. The forward and input-gradient GEMMs (inner dimension C to 4C) use Hopper's fast
    accumulation; the weight gradient sums over every token and accumulates precisely."""

    MODE = "rows"
    FAST_ACCUM = (True, True, False)
    SCALES = "per-row (outer-vector) scaled"

    @staticmethod
    def _quantize(x: torch.Tensor, **kw) -> tuple:
        return ops.fp8_quantize_rows(x, **kw)

    @staticmethod
    def _quantize_weight(w: torch.Tensor) -> tuple:
        return ops.fp8_quantize_rows(w, transpose=True)
