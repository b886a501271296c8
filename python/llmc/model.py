"""GPT-2 built from llmc ops, llm.c style: one flat buffer each for parameters, gradients and activations.

`GPT` keeps its parameters in ONE flat tensor in llm.c's order (wte wpe ln1w ln1b qkvw qkvb attprojw attprojb
ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb; per-layer tensors stacked over layers), so the flat buffer is the
payload of an llm.c model file. Gradients live in a second flat buffer of the same layout; AdamW's state lives in
`llmc.optim.AdamW`. Activations are views into one byte buffer sized for (B, T) on the first forward (or by
`allocate`), and the backward pass has its own scratch for activation gradients.

forward() and backward() are written out op by op (no autograd): the fused classifier turns the logits buffer
into dlogits during the forward pass, the MLP keeps its pre-GELU values for the fused GELU backward, and the
layernorm backward accumulates (+=) into the residual-stream gradient. Parameter gradients are accumulated (+=)
across backward() calls until zero_grad(). On CUDA everything is bf16 with fp32 statistics; on the CPU it is
fp32 through `llmc.reference`.

Choices taken from llm.c's train_gpt2.cu (checked there):
  * init: weights N(0, 0.02), including wte and wpe (llm.c draws wpe with 0.02 too); attprojw and fcprojw
    N(0, 0.02/sqrt(2*n_layer)); biases 0; layernorm weights 1; padded wte rows 0. Drawn on the CPU from
    torch.Generator(seed) in llm.c's order (wte, wpe, then per layer qkvw, attprojw, fcw, fcprojw).
  * weight decay applies to the 2-D tensors: wte, wpe, qkvw, attprojw, fcw, fcprojw (llm.c decays wpe too).
  * FLOPs per token = 6*N + 6*L*C*T with N = every parameter of the flat buffer (padded wte rows included).
  * presets dX as in llm.c's gpt2_set_hyperparameters, max_seq_len 1024, vocab 50257 padded to 50304.
  * attproj and fcproj outputs are only needed to form the residual sums, so (like current llm.c) they share
    one (B*T, C) scratch instead of being stored per layer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from . import ops
from ._validate import FP8_MODES, check_fp8
from ._validate import check_int as _check_int
from .fp8 import _Fp8, _Fp8Blocks, _Fp8Rows
from .sharding import PARAM_NAMES, check_shard

DECAYED_PARAMS = frozenset({"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"})
# llm.c's GPT-2 presets: name -> (n_layer, n_head, n_embd).
PRESETS = {
    "d6": (6, 6, 384),
    "d12": (12, 12, 768),
    "d24": (24, 16, 1024),
    "d36": (36, 20, 1280),
    "d48": (48, 25, 1600),
    "d60": (60, 30, 1920),
    "d72": (72, 30, 2880),
    "d84": (84, 36, 3456),
}
MAX_HEAD_SIZE = 128  # the CUDA attention kernels' limit (cuDNN: 64 and 128; the plain kernel: up to 128)
INIT_STD = 0.02
GELU_FUSION_DEFAULT = 2  # GPT(gelu_fusion=...): the MLP's GELU fused into fc's and fcproj's matmuls
# GPT(loss_chunk=...) of the Trainer and `llmc eval`: the output layer and the loss run this many positions at a
# time, so the logits buffer is 0.8 GB instead of 6.6 GB at d12, B=64, and on an H100 the step is no slower.
DEFAULT_LOSS_CHUNK = 8192
LN_EPS = 1e-5


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2 shape. Any depth/width/heads with n_embd % n_head == 0, head size a multiple of 8 (at most 128) and
    n_embd a multiple of 8 (the kernels' 128-bit loads); padded_vocab_size >= vocab_size, a multiple of 8."""
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = 50257
    padded_vocab_size: int = 50304
    max_seq_len: int = 1024

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _check_int(getattr(self, field.name), f"GPTConfig.{field.name}", 1)
        if self.n_embd % 8 != 0:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of 8 (the kernels load 8 bf16 at a time)")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; pick n_head among the "
                             f"divisors of n_embd")
        if self.head_size % 8 != 0 or self.head_size > MAX_HEAD_SIZE:
            raise ValueError(f"head size n_embd/n_head = {self.head_size} is not supported: it must be a multiple of 8 "
                             f"and at most {MAX_HEAD_SIZE} (64 and 128 use cuDNN)")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size={self.padded_vocab_size} is smaller than vocab_size={self.vocab_size}")
        if self.padded_vocab_size % 8 != 0:
            raise ValueError(f"padded_vocab_size={self.padded_vocab_size} must be a multiple of 8 (llm.c pads to 128, "
                             f"e.g. {pad_vocab(self.vocab_size)})")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """llm.c's presets: "d6", "d12", "d24", "d36", "d48", "d60", "d72", "d84" (also spelled "gpt2:d12");
        keyword arguments override fields, e.g. max_seq_len=256."""
        if not isinstance(name, str):
            raise TypeError(f"preset must be a str like 'd12', got {type(name).__name__}")
        key = name[len("gpt2:"):] if name.startswith("gpt2:") else name
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        n_layer, n_head, n_embd = PRESETS[key]
        return cls(**{"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, **overrides})

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter tensor, in llm.c's order."""
        L, C, Vp, maxT = self.n_layer, self.n_embd, self.padded_vocab_size, self.max_seq_len
        return {
            "wte": (Vp, C), "wpe": (maxT, C),
            "ln1w": (L, C), "ln1b": (L, C),
            "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
            "attprojw": (L, C, C), "attprojb": (L, C),
            "ln2w": (L, C), "ln2b": (L, C),
            "fcw": (L, 4 * C, C), "fcb": (L, 4 * C),
            "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
            "lnfw": (C,), "lnfb": (C,),
        }

    def param_sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.param_shapes().values()]

    @property
    def num_params(self) -> int:
        return sum(self.param_sizes())


def pad_vocab(vocab_size: int, multiple: int = 128) -> int:
    """llm.c's padding of the vocabulary (50257 -> 50304)."""
    return (vocab_size + multiple - 1) // multiple * multiple


def split_params(config: GPTConfig, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named views into a flat parameter (or gradient) tensor laid out in llm.c's order."""
    if flat.dim() != 1 or flat.numel() != config.num_params:
        raise ValueError(f"a flat parameter tensor for this config has {config.num_params} elements (1-D), "
                         f"got shape {tuple(flat.shape)}")
    views, offset = {}, 0
    for name, shape in config.param_shapes().items():
        n = math.prod(shape)
        views[name] = flat[offset:offset + n].view(shape)
        offset += n
    return views


# ---------------------------------------------------------------------------------------------------------
# one byte buffer carved into named, aligned views
# ---------------------------------------------------------------------------------------------------------
_ALIGN = 256  # bytes; every view (and every layer's slice) starts here so 128-bit kernel loads are aligned


def _layout(specs):
    """specs: (name, copies, shape, dtype). Returns ([(name, [byte offsets], shape, dtype)], total bytes)."""
    placed, offset = [], 0
    for name, copies, shape, dtype in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        offsets = []
        for _ in range(copies):
            offsets.append(offset)
            offset += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        placed.append((name, offsets, shape, dtype))
    return placed, offset


class _Arena:
    """Views for `specs` inside one uint8 buffer; re-carved in place when a later layout fits."""

    def __init__(self, device: torch.device, what: str):
        self.device, self.what = device, what
        self.buffer: Optional[torch.Tensor] = None
        self.key = None
        self.views: dict[str, list[torch.Tensor]] = {}

    def carve(self, key, specs) -> dict[str, list[torch.Tensor]]:
        if key == self.key:
            return self.views
        placed, total = _layout(specs)
        with torch.inference_mode(False):  # buffers and views first made under inference_mode stay trainable
            return self._carve(key, placed, total)

    def _carve(self, key, placed, total) -> dict[str, list[torch.Tensor]]:
        if self.buffer is None or self.buffer.numel() < total:
            self.buffer = None  # free the old buffer before asking for the new one
            self.views, self.key = {}, None
            try:
                self.buffer = torch.empty(total, dtype=torch.uint8, device=self.device)
            except torch.cuda.OutOfMemoryError as e:
                raise torch.cuda.OutOfMemoryError(
                    f"out of memory allocating {total / 2**20:.0f} MiB of {self.what} for {key}: use a smaller "
                    f"micro-batch (-b) or recompute (-r 1 or -r 2). {e}") from e
        self.views = {
            name: [self.buffer[o:o + math.prod(shape) * dtype.itemsize].view(dtype).view(shape) for o in offsets]
            for name, offsets, shape, dtype in placed
        }
        self.key = key
        return self.views

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel()


def _resolve_device(device) -> torch.device:
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device {device!r} is not a device name; use 'cuda', 'cuda:N' or 'cpu'") from e
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu' (llmc has no {device.type!r} kernels)")
    if not ops.cuda_available():
        raise RuntimeError("a CUDA model was requested but the llmc CUDA kernels or a GPU are not available "
                           f"(build info: {ops.build_info()}); use device='cpu'")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def _token_tensor(t, name: str, shape=None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an int32 (or int64) tensor of token ids, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)} but idx has shape {tuple(shape)}")
    return t


class GPT:
    """GPT-2 on llmc ops. See the module docstring for the memory layout and the conventions."""

    def __init__(self, config: GPTConfig, device="cuda", recompute: int = 0, seed: int = 42,
                 deterministic: bool = True, loss_chunk: int = 0, fp8=False,
                 gelu_fusion: int = GELU_FUSION_DEFAULT):
        """deterministic: bit-reproducible backward (cuDNN's ordered attention backward, which needs more
        workspace and time); False lets cuDNN sum dQ with atomics.
        loss_chunk: run the output layer and the loss over this many positions (rows of B*T) at a time, so the
        logits buffer holds (loss_chunk, padded_vocab) instead of (B*T, padded_vocab) (6.6 GB at d12, B=64). Its
        backward then runs in forward, chunk by chunk, while the logits are at hand: forward(idx, targets) with
        gradients enabled already adds the output layer's share to grads["wte"] (and needs backward() next, as
        always); under torch.no_grad() it only computes the loss. On a GPU the chunks' wte gradients are summed
        in bf16 (one rounding per chunk, as per micro-step of accumulation), so use chunks of thousands of
        positions (DEFAULT_LOSS_CHUNK, what the Trainer uses), not tens. Rounded up to a multiple of 8 positions
        (each chunk's targets and losses must start 16-byte aligned). 0 (the default): the whole batch at once.
        fp8: True runs the MLP's first matmul (fc's forward) in FP8 on an H100-class GPU with per-tensor scales;
            "blocks" runs all four linear layers of every block in FP8, forward and backward, with block scales
            (llmc.fp8._Fp8Blocks; after changing `params` in place by other means than torch ops, call
            params_updated()); "rows" the same with one scale per row of each operand (llmc.fp8._Fp8Rows). All
            are opt-in and change the numerics; see llmc.fp8.
        gelu_fusion (llm.c's -ge): 0 runs the MLP's GELU as its own kernel in forward and backward; 1 fuses the
            forward GELU into fc's matmul (cuBLASLt epilogue); 2 also fuses the GELU backward into fcproj's
            input-gradient matmul. With fusion the forward's GELU is taken from fc's fp32 output, while a
            recomputed GELU (recompute >= 1) comes from its bf16 copy, so fcproj's weight gradient sees slightly
            other activations than the forward did."""
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        if isinstance(recompute, bool) or recompute not in (0, 1, 2):
            raise ValueError(f"recompute must be 0 (none), 1 (GELU) or 2 (GELU and layernorms), got {recompute!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        _check_int(loss_chunk, "loss_chunk (positions per chunk; 0: the whole batch at once)", 0)
        if isinstance(gelu_fusion, bool) or gelu_fusion not in (0, 1, 2):
            raise ValueError(f"gelu_fusion must be 0 (none), 1 (forward) or 2 (forward and backward), got "
                             f"{gelu_fusion!r}")
        self.gelu_fusion = gelu_fusion
        self.config = config
        self.recompute = recompute
        self.loss_chunk = loss_chunk
        self._chunk_rows = _round_up(loss_chunk, 8)  # 0: the whole batch
        self.deterministic = bool(deterministic)
        self.device = _resolve_device(device)
        check_fp8(fp8)
        policy = {True: _Fp8, "blocks": _Fp8Blocks, "rows": _Fp8Rows}.get(fp8) if fp8 else None
        if policy is not None:
            policy.check_supported(config, self.device)
        self.fp8 = fp8
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.param_sizes = config.param_sizes()
        self.param_decay = [name in DECAYED_PARAMS for name in PARAM_NAMES]
        self.num_params = config.num_params
        self.params = torch.empty(self.num_params, dtype=self.dtype, device=self.device)
        self.param_tensors = split_params(config, self.params)
        self._grads: Optional[torch.Tensor] = None
        self._acts = _Arena(self.device, "activations")
        self._dacts = _Arena(self.device, "activation gradients")
        self._shape: Optional[tuple[int, int]] = None  # (B, T) of the last forward
        self._backward_ready = False
        self._dlogits: Optional[torch.Tensor] = None  # the classifier's gradient for backward (None: consumed)
        # Called during backward() as parameter gradients become final (data-parallel reduction overlaps the rest
        # of backward, llmc.distributed.GradientSync): with n_layer after lnf's, with l = n_layer-1 .. 0 after
        # layer l's, with -1 after wte's and wpe's. Runs on the host as the kernels are enqueued.
        self.grad_ready_hook: Optional[Callable[[int], None]] = None
        self._staging: Optional[torch.Tensor] = None  # pinned host buffer for token uploads (_upload)
        self._staging_done = None  # CUDA event: the last upload from _staging finished
        self._fp8 = policy(config, self.device) if policy is not None else None
        self._params_epoch = 0  # bumped by params_updated()
        self._blocks = False  # this forward's linears run fp8="blocks" or "rows" (see forward)
        self._init_weights(seed)

    def __repr__(self) -> str:
        c = self.config
        return (f"GPT(n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, vocab={c.vocab_size}/"
                f"{c.padded_vocab_size}, max_seq_len={c.max_seq_len}, params={self.num_params:,}, "
                f"device={self.device}, dtype={self.dtype}, recompute={self.recompute}, gelu_fusion={self.gelu_fusion})")

    # -----------------------------------------------------------------------------------------------------
    # parameters and gradients
    # -----------------------------------------------------------------------------------------------------
    def _init_weights(self, seed: int) -> None:
        c, p = self.config, self.param_tensors
        gen = torch.Generator().manual_seed(seed)

        def normal_(view: torch.Tensor, std: float) -> None:
            view.copy_(torch.empty(view.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))

        self.params.zero_()
        for name in ("ln1w", "ln2w", "lnfw"):
            p[name].fill_(1.0)
        residual_std = INIT_STD / math.sqrt(2 * c.n_layer)
        normal_(p["wte"][:c.vocab_size], INIT_STD)
        normal_(p["wpe"], INIT_STD)
        for layer in range(c.n_layer):
            normal_(p["qkvw"][layer], INIT_STD)
            normal_(p["attprojw"][layer], residual_std)
            normal_(p["fcw"][layer], INIT_STD)
            normal_(p["fcprojw"][layer], residual_std)

    def load_params_(self, flat: torch.Tensor) -> "GPT":
        """Copy a flat parameter tensor in llm.c's order (e.g. an llm.c model file's payload) into the model."""
        if not isinstance(flat, torch.Tensor) or not flat.is_floating_point():
            raise TypeError(f"load_params_ takes a floating point torch.Tensor, got "
                            f"{type(flat).__name__ if not isinstance(flat, torch.Tensor) else flat.dtype}")
        if flat.numel() != self.num_params:
            raise ValueError(f"got {flat.numel()} parameters, this model ({self.config}) has {self.num_params}")
        self.params.copy_(flat.reshape(-1))
        self.params_updated()
        return self

    def params_updated(self) -> None:
        """Tell the model that `params` changed in place by means torch does not record (llmc's optimizers and
        loaders call it): copies made from them (the FP8 weights of fp8="blocks" or "rows") are made again."""
        self._params_epoch += 1

    def _params_version(self) -> tuple:
        return self._params_epoch, self.params._version

    def _allocate_grads(self) -> torch.Tensor:
        if self._grads is None:
            with torch.inference_mode(False):
                self._grads = torch.zeros_like(self.params)
        return self._grads

    @property
    def grads(self) -> torch.Tensor:
        """Flat parameter gradients (llm.c order, params' dtype); allocated, zeroed, on first use."""
        return self._allocate_grads()

    @property
    def grad_tensors(self) -> dict[str, torch.Tensor]:
        """Named views into `grads`, like `param_tensors`."""
        return split_params(self.config, self.grads)

    def zero_grad(self) -> None:
        self.grads.zero_()

    # -----------------------------------------------------------------------------------------------------
    # activations
    # -----------------------------------------------------------------------------------------------------
    def _activation_specs(self, B: int, T: int):
        c, x, f, r = self.config, self.dtype, torch.float32, self.recompute
        L, C, N = c.n_layer, c.n_embd, B * T
        return [
            ("inputs", 1, (B, T), torch.int32), ("targets", 1, (B, T), torch.int32),
            ("encoded", 1, (N, C), x),
            ("ln1", L if r < 2 else 0, (N, C), x), ("ln1_mean", L, (N,), f), ("ln1_rstd", L, (N,), f),
            ("qkv", L, (N, 3 * C), x), ("atty", L, (N, C), x), ("att_stats", L, (B, c.n_head, T), f),
            ("residual2", L, (N, C), x),
            ("ln2", L if r < 2 else 0, (N, C), x), ("ln2_mean", L, (N,), f), ("ln2_rstd", L, (N,), f),
            ("fch", L, (N, 4 * C), x), ("fch_gelu", L if r < 1 else 1, (N, 4 * C), x),
            ("residual3", L, (N, C), x), ("proj", 1, (N, C), x),
            ("lnf", 1, (N, C), x), ("lnf_mean", 1, (N,), f), ("lnf_rstd", 1, (N,), f),
            ("losses", 1, (N,), f), ("logits", 1, (min(N, self._chunk_rows or N), c.padded_vocab_size), x),
            *_Fp8.scratch_specs(N, C, self.fp8 is True),
        ]

    def _grad_scratch_specs(self, B: int, T: int):
        N, C, x = B * T, self.config.n_embd, self.dtype
        return [("dresidual", 1, (N, C), x), ("dbtc", 1, (N, C), x), ("dbt4c", 1, (N, 4 * C), x)]

    def _check_shape(self, B: int, T: int) -> None:
        _check_int(B, "B", 1)
        _check_int(T, "T", 1)
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len={self.config.max_seq_len}")

    def allocate(self, B: int, T: int, training: bool = True) -> None:
        """Allocate activations (and, for training, the activation-gradient scratch) for (B, T) up front."""
        self._check_shape(B, T)
        self._acts.carve((B, T), self._activation_specs(B, T))
        if training:
            self._dacts.carve((B, T), self._grad_scratch_specs(B, T))
            self._allocate_grads()

    def _layer_ln(self, acts, name: str, layer: int) -> torch.Tensor:
        """ln1/ln2 of a layer; with recompute=2 they all share the lnf buffer (recomputed in backward)."""
        return acts[name][layer] if self.recompute < 2 else acts["lnf"][0]

    def _fch_gelu(self, acts, layer: int) -> torch.Tensor:
        return acts["fch_gelu"][layer if self.recompute < 1 else 0]

    def _device_scope(self):
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    # -----------------------------------------------------------------------------------------------------
    # forward / backward
    # -----------------------------------------------------------------------------------------------------
    def _stage_tokens(self, acts, idx: torch.Tensor, targets: Optional[torch.Tensor]) -> int:
        """Validate the tokens and copy them into the model's int32 buffers. Returns the number of targets that are
        not -1 (0 without targets). The ids are checked where they are, before the int32 copy: CPU tensors (what
        DataLoader gives) on the host, then uploaded through pinned memory without waiting for the GPU; tokens
        already on a GPU are checked there, with one host sync."""
        V = self.config.vocab_size
        checks = [((idx < 0) | (idx >= V)).sum()]
        if targets is not None:
            checks += [((targets < -1) | (targets >= V)).sum(), (targets != -1).sum()]
        counts = torch.stack([n.to(idx.device) for n in checks]).tolist()  # on the CPU no wait; on a GPU one sync
        if counts[0]:
            raise ValueError(f"idx has {counts[0]} token ids outside [0, vocab_size={V})")
        if targets is not None:
            if counts[1]:
                raise ValueError(f"targets has {counts[1]} ids outside [0, vocab_size={V}) (use -1 to ignore a "
                                 f"position)")
            if counts[2] == 0:
                raise ValueError("every target is -1 (ignored): a batch needs at least one target to define a loss")
        buffers = [acts["inputs"][0]] + ([acts["targets"][0]] if targets is not None else [])
        self._upload(buffers, [idx] if targets is None else [idx, targets])
        return counts[2] if targets is not None else 0

    def _upload(self, buffers, tensors) -> None:
        """Copy token tensors into the model's int32 buffers. From the CPU to a GPU the copy goes through a pinned
        staging buffer (a copy from pageable memory would wait for the GPU); the staging buffer is reused once the
        previous upload from it has finished."""
        if self.device.type != "cuda" or any(t.device.type != "cpu" for t in tensors):
            for buf, t in zip(buffers, tensors):
                buf.copy_(t)
            return
        n = sum(t.numel() for t in tensors)
        if self._staging is None or self._staging.numel() < n:
            self._staging = torch.empty(n, dtype=torch.int32, pin_memory=True)
        elif self._staging_done is not None:
            self._staging_done.synchronize()
        offset = 0
        for buf, t in zip(buffers, tensors):
            stage = self._staging[offset:offset + t.numel()].view(t.shape)
            stage.copy_(t)
            buf.copy_(stage, non_blocking=True)
            offset += t.numel()
        self._staging_done = torch.cuda.Event()
        self._staging_done.record()

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, *, grad_scale: float = 1.0,
                return_logits: bool = False, sync: bool = True):
        """Run the model on idx (B, T) token ids (int32/int64, any device; copied to the model's device).

        With targets (B, T) (-1 = ignored) returns the mean loss over the non-ignored positions as a Python float
        and leaves the gradient of grad_scale * mean_loss w.r.t. the logits ready for backward(). Without targets
        the loss is None. With return_logits=True returns (loss, logits (B, T, padded_vocab_size)); the first
        vocab_size columns are real. Without targets the logits are a view of the model's buffer, valid until the
        next forward; with targets they are a copy taken before the classifier overwrites the buffer.
        sync=False returns the loss as a 0-dim float64 tensor on the model's device instead of a float, so the
        host does not wait for the GPU (with token ids on the CPU; ids already on a GPU are validated there with
        one sync); its .item() is the float sync=True returns. With loss_chunk (see __init__) and targets, the
        logits are formed chunk by chunk (return_logits then uses a temporary full-size buffer).
        """
        c = self.config
        idx = _token_tensor(idx, "idx")
        B, T = idx.shape
        self._check_shape(B, T)
        if targets is not None:
            _token_tensor(targets, "targets", (B, T))
        if not isinstance(grad_scale, (int, float)) or isinstance(grad_scale, bool) or not math.isfinite(grad_scale):
            raise TypeError(f"grad_scale must be a finite float, got {grad_scale!r}")
        # fp8="blocks" or "rows" on a GPU needs B*T a multiple of 16 (the weight gradient's FP8 GEMM sums over the
        # tokens); a forward that cannot train (no targets, or no gradients) runs other sizes in bf16
        self._blocks = self.fp8 in FP8_MODES and (self.device.type == "cpu" or (B * T) % 16 == 0)
        if self.fp8 in FP8_MODES and not self._blocks and targets is not None and torch.is_grad_enabled():
            raise ValueError(f"fp8={self.fp8!r} trains on B*T positions that are a multiple of 16, got B={B}, T={T} "
                             f"(B*T={B * T}); change B or T")
        self._backward_ready = False
        self._dlogits = None
        with self._device_scope():
            a = self._acts.carve((B, T), self._activation_specs(B, T))
            self._shape = (B, T)
            n_valid = self._stage_tokens(a, idx, targets)
            self._forward_trunk(a, B, T)
            loss, out_logits = None, None
            if targets is not None and self.loss_chunk and not return_logits:
                with_grad = torch.is_grad_enabled()
                self._chunked_loss(a, B * T, grad_scale / n_valid, with_grad)
                self._backward_ready = with_grad
            else:
                logits = a["logits"][0]
                if logits.shape[0] < B * T:  # loss_chunk: a full-size buffer for this call only
                    logits = torch.empty(B * T, c.padded_vocab_size, dtype=self.dtype, device=self.device)
                ops.matmul_forward(a["lnf"][0], self.param_tensors["wte"], None, out=logits)
                if return_logits:
                    out_logits = logits.view(B, T, c.padded_vocab_size)
                    if targets is not None:
                        out_logits = out_logits.clone()
                if targets is not None:
                    ops.fused_classifier(logits, a["targets"][0].view(-1), c.vocab_size, dloss=grad_scale / n_valid,
                                         losses=a["losses"][0], validate=False)  # _stage_tokens checked the targets
                    self._dlogits = logits
                    self._backward_ready = True
            if targets is not None:
                losses = a["losses"][0]
                loss = losses.sum().item() / n_valid if sync else losses.sum().double() / n_valid
        return (loss, out_logits) if return_logits else loss

    __call__ = forward

    def position_losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The cross-entropy at every position, (B, T) fp32 on the model's device (0 where the target is -1), as
        the fused classifier computes it: no gradient kept, and with loss_chunk no full-size logits either
        (scoring, e.g. HellaSwag, without the B*T x vocab buffer)."""
        with torch.no_grad():
            self.forward(idx, targets)
        B, T = idx.shape
        return self._acts.views["losses"][0].view(B, T).clone()

    def _chunked_loss(self, a, N: int, dloss: float, with_grad: bool) -> None:
        """Output layer, loss and (with_grad) the output layer's backward, loss_chunk positions at a time: the
        chunk's logits, its losses and dlogits in place (fused classifier), then dlnf of those rows into the
        activation-gradient scratch that backward() continues from, and the chunk's share of dwte (+=)."""
        c, wte = self.config, self.param_tensors["wte"]
        lnf, targets, losses, buffer = a["lnf"][0], a["targets"][0].view(-1), a["losses"][0], a["logits"][0]
        if with_grad:
            dlnf = self._dacts.carve(self._shape, self._grad_scratch_specs(*self._shape))["dbtc"][0]
            dwte = self.grad_tensors["wte"]
        for start in range(0, N, buffer.shape[0]):
            end = min(N, start + buffer.shape[0])
            logits = buffer[:end - start]
            ops.matmul_forward(lnf[start:end], wte, None, out=logits)
            ops.fused_classifier(logits, targets[start:end], c.vocab_size, dloss=dloss, losses=losses[start:end],
                                 validate=False)  # _stage_tokens checked the targets
            if with_grad:
                ops.matmul_backward(logits, lnf[start:end], wte, dwte, None, dinp=dlnf[start:end])

    def _forward_trunk(self, a, B: int, T: int) -> None:
        """Embeddings and every layer, up to the final layernorm's output a["lnf"]."""
        c, p = self.config, self.param_tensors
        L, NH, HS = c.n_layer, c.n_head, c.head_size
        encoded = a["encoded"][0]
        blocks = self._fp8 if self._blocks else None
        if blocks is not None:
            blocks.next_step(p, self._params_version())
        elif self.fp8 is True:
            self._fp8.next_step(p)
        ops.encoder_forward(a["inputs"][0], p["wte"], p["wpe"], out=encoded.view(B, T, c.n_embd), validate=False)
        ops.layernorm_forward(encoded, p["ln1w"][0], p["ln1b"][0], out=self._layer_ln(a, "ln1", 0),
                              mean=a["ln1_mean"][0], rstd=a["ln1_rstd"][0], eps=LN_EPS)
        proj = a["proj"][0]
        for l in range(L):
            residual = encoded if l == 0 else a["residual3"][l - 1]
            qkv, atty = a["qkv"][l], a["atty"][l]
            ln2, fch_gelu = self._layer_ln(a, "ln2", l), self._fch_gelu(a, l)
            if blocks is not None:
                blocks.linear(self._layer_ln(a, "ln1", l), "qkvw", l, p["qkvb"][l], qkv)
            else:
                ops.matmul_forward(self._layer_ln(a, "ln1", l), p["qkvw"][l], p["qkvb"][l], out=qkv)
            ops.attention_forward(qkv.view(B, T, 3, NH, HS), out=atty.view(B, T, NH, HS), stats=a["att_stats"][l])
            if blocks is not None:
                blocks.linear(atty, "attprojw", l, p["attprojb"][l], proj)
            else:
                ops.matmul_forward(atty, p["attprojw"][l], p["attprojb"][l], out=proj)
            ops.fused_residual_layernorm_forward(residual, proj, p["ln2w"][l], p["ln2b"][l], residual=a["residual2"][l],
                                                 out=ln2, mean=a["ln2_mean"][l], rstd=a["ln2_rstd"][l], eps=LN_EPS)
            if blocks is not None:
                blocks.linear(ln2, "fcw", l, p["fcb"][l], fch_gelu, pre_gelu=a["fch"][l])
            elif self.fp8 is True:
                self._fp8.linear(a, ln2, p["fcw"][l], self._fp8.w_amax["fcw"][l:l + 1], p["fcb"][l], fch_gelu,
                                 self._fp8.slot(l, _Fp8.FC_IN),
                                 pre_gelu=a["fch"][l])
            elif self.gelu_fusion:
                ops.matmul_forward(ln2, p["fcw"][l], p["fcb"][l], out=fch_gelu, gelu=True, pre_gelu=a["fch"][l])
            else:
                ops.matmul_forward(ln2, p["fcw"][l], p["fcb"][l], out=a["fch"][l])
                ops.gelu_forward(a["fch"][l], out=fch_gelu)
            if blocks is not None:
                blocks.linear(fch_gelu, "fcprojw", l, p["fcprojb"][l], proj)
            elif self.fp8 is True and self._fp8.fcproj_fwd:
                self._fp8.linear(a, fch_gelu, p["fcprojw"][l], self._fp8.w_amax["fcprojw"][l:l + 1], p["fcprojb"][l],
                                 proj, self._fp8.slot(l, _Fp8.FCPROJ_IN))
            else:
                ops.matmul_forward(fch_gelu, p["fcprojw"][l], p["fcprojb"][l], out=proj)
            if l + 1 < L:  # the next layer's first layernorm, fused with this layer's last residual add
                weight, bias, ln = p["ln1w"][l + 1], p["ln1b"][l + 1], self._layer_ln(a, "ln1", l + 1)
                mean, rstd = a["ln1_mean"][l + 1], a["ln1_rstd"][l + 1]
            else:
                weight, bias, ln, mean, rstd = p["lnfw"], p["lnfb"], a["lnf"][0], a["lnf_mean"][0], a["lnf_rstd"][0]
            ops.fused_residual_layernorm_forward(a["residual2"][l], proj, weight, bias, residual=a["residual3"][l],
                                                 out=ln, mean=mean, rstd=rstd, eps=LN_EPS)

    def backward(self) -> None:
        """Backpropagate the loss of the last forward(idx, targets); parameter gradients are accumulated (+=)."""
        if not self._backward_ready:
            raise RuntimeError("backward() needs a forward(idx, targets) first (once per forward: the classifier "
                               "gradient is consumed)")
        self._backward_ready = False
        c, p = self.config, self.param_tensors
        B, T = self._shape
        L, NH, HS, C = c.n_layer, c.n_head, c.head_size, c.n_embd
        with self._device_scope():
            g = self.grad_tensors
            a = self._acts.views
            d = self._dacts.carve((B, T), self._grad_scratch_specs(B, T))
            dres, dbtc, dbt4c = d["dresidual"][0], d["dbtc"][0], d["dbt4c"][0]
            dqkv = dbt4c.view(-1)[:B * T * 3 * C].view(B, T, 3, NH, HS)
            if self._dlogits is not None:  # else the chunked forward did it (dbtc holds dlnf)
                ops.matmul_backward(self._dlogits, a["lnf"][0], p["wte"], g["wte"], None, dinp=dbtc)
                self._dlogits = None
            # The residual stream's gradient dres is the output gradient of the attention's and the MLP's
            # projections, so each layernorm backward that writes dres also sums its columns into the bias gradient
            # of the projection that reads it next (fewer passes over dres than matmul_backward's dbias).
            ops.layernorm_backward(dbtc, a["residual3"][L - 1], p["lnfw"], a["lnf_mean"][0], a["lnf_rstd"][0],
                                   g["lnfw"], g["lnfb"], dinp=dres, dinp_colsum=g["fcprojb"][L - 1])
            self._grads_ready(L)
            for l in reversed(range(L)):
                residual = a["encoded"][0] if l == 0 else a["residual3"][l - 1]
                ln1, ln2, fch_gelu = self._layer_ln(a, "ln1", l), self._layer_ln(a, "ln2", l), self._fch_gelu(a, l)
                if self.recompute >= 1:
                    ops.gelu_forward(a["fch"][l], out=fch_gelu)
                # bf16 with fp8=True: see llmc.fp8 (cuBLASLt's FP8 GEMM with the dGELU epilogue is slow)
                fused = self.gelu_fusion == 2 and not self._blocks
                if self._blocks:
                    self._fp8.linear_backward(dres, fch_gelu, "fcprojw", l, g["fcprojw"][l], None, dbt4c)
                else:
                    ops.matmul_backward(dres, fch_gelu, p["fcprojw"][l], g["fcprojw"][l], None, dinp=dbt4c,
                                        pre_gelu=a["fch"][l] if fused else None)
                if not fused:
                    ops.gelu_backward(dbt4c, a["fch"][l], dinp=dbt4c)
                if self.recompute >= 2:
                    ops.layernorm_forward(a["residual2"][l], p["ln2w"][l], p["ln2b"][l], out=ln2,
                                          mean=a["ln2_mean"][l], rstd=a["ln2_rstd"][l], eps=LN_EPS)
                self._linear_backward(a, dbt4c, ln2, "fc", l, dbtc, _Fp8.FC_DOUT)
                ops.layernorm_backward(dbtc, a["residual2"][l], p["ln2w"][l], a["ln2_mean"][l], a["ln2_rstd"][l],
                                       g["ln2w"][l], g["ln2b"][l], dinp=dres, accumulate=True,
                                       dinp_colsum=g["attprojb"][l])
                if self._blocks:
                    self._fp8.linear_backward(dres, a["atty"][l], "attprojw", l, g["attprojw"][l], None, dbtc)
                else:
                    ops.matmul_backward(dres, a["atty"][l], p["attprojw"][l], g["attprojw"][l], None, dinp=dbtc)
                ops.attention_backward(dbtc.view(B, T, NH, HS), a["qkv"][l].view(B, T, 3, NH, HS),
                                       a["atty"][l].view(B, T, NH, HS), a["att_stats"][l], dqkv=dqkv,
                                       deterministic=self.deterministic)
                if self.recompute >= 2:
                    ops.layernorm_forward(residual, p["ln1w"][l], p["ln1b"][l], out=ln1, mean=a["ln1_mean"][l],
                                          rstd=a["ln1_rstd"][l], eps=LN_EPS)
                self._linear_backward(a, dqkv.view(B * T, 3 * C), ln1, "qkv", l, dbtc, _Fp8.QKV_DOUT)
                ops.layernorm_backward(dbtc, residual, p["ln1w"][l], a["ln1_mean"][l], a["ln1_rstd"][l],
                                       g["ln1w"][l], g["ln1b"][l], dinp=dres, accumulate=True,
                                       dinp_colsum=g["fcprojb"][l - 1] if l > 0 else None)
                self._grads_ready(l)
            ops.encoder_backward(dres.view(B, T, C), a["inputs"][0], g["wte"], g["wpe"], validate=False)
            self._grads_ready(-1)

    def _linear_backward(self, a, dout, inp, name: str, l: int, dinp, fp8_slot: int) -> None:
        """Gradients of layer l's linear `name` ("fc" or "qkv"): weight and bias accumulated, dinp written. Where
        the FP8 policy has input gradients in FP8, dinp comes from an FP8 matmul whose e5m2 cast of dout also sums
        the bias gradient (fp8_slot: the cast's delayed-scaling slot, _Fp8.FC_DOUT or QKV_DOUT)."""
        g = self.grad_tensors
        w, gw, gb = self.param_tensors[name + "w"][l], g[name + "w"][l], g[name + "b"][l]
        if self._blocks:
            self._fp8.linear_backward(dout, inp, name + "w", l, gw, gb, dinp)
        elif self.fp8 is True and self._fp8.dinp:
            ops.matmul_backward(dout, inp, w, gw, None, compute_dinp=False)
            self._fp8.linear_dinp(a, dout, w, self._fp8.w_amax[name + "w"][l:l + 1], dinp,
                                  self._fp8.slot(l, fp8_slot), dbias=gb)
        else:
            ops.matmul_backward(dout, inp, w, gw, gb, dinp=dinp)

    def _grads_ready(self, layer: int) -> None:
        if self.grad_ready_hook is not None:
            self.grad_ready_hook(layer)

    # -----------------------------------------------------------------------------------------------------
    # sampling, accounting
    # -----------------------------------------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, seed: Optional[int] = None) -> list[int]:
        """prompt_ids followed by max_new_tokens sampled tokens (see `stream`)."""
        new = self.stream(prompt_ids, max_new_tokens, temperature, top_k, seed)  # checks the arguments
        return [int(t) for t in prompt_ids] + list(new)

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
               top_k: Optional[int] = None, seed: Optional[int] = None) -> Iterator[int]:
        """Yield max_new_tokens sampled tokens that continue prompt_ids, one at a time as each is drawn. Keys and
        values are cached (the parameters' dtype: bf16 on a GPU, fp32 on the CPU), so each new token runs one
        position through the model. The context is at most max_seq_len tokens: when it is full, the cache is
        rebuilt from the newest half, which then sit at positions 0.. as in a fresh forward. temperature 0 means
        greedy; top_k keeps the k most likely tokens. Sampling uses a torch.Generator seeded with `seed` (random
        when None)."""
        c = self.config
        if isinstance(prompt_ids, (str, bytes)) or isinstance(prompt_ids, torch.Tensor) and prompt_ids.dim() != 1:
            raise TypeError("prompt_ids must be a sequence of token ids (use llmc.tokenizer.encode for text)")
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("prompt_ids is empty; start from [llmc.tokenizer.EOT] for an unconditional sample")
        if any(not 0 <= t < c.vocab_size for t in ids):
            raise ValueError(f"prompt_ids must lie in [0, vocab_size={c.vocab_size})")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k):
            raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")
        return self._stream(ids, max_new_tokens, temperature, top_k, seed)

    def _stream(self, ids: list[int], max_new_tokens: int, temperature, top_k, seed) -> Iterator[int]:
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else seed)
        decoder = _KVDecoder(self)
        maxT = self.config.max_seq_len
        context = ids[-maxT:]
        with torch.no_grad():
            logits = decoder.prefill(context)
            for i in range(max_new_tokens):
                token = _sample(logits, temperature, top_k, gen)
                yield token
                if i + 1 == max_new_tokens:
                    return
                context.append(token)
                if len(context) > maxT:
                    context = context[-(maxT // 2 + 1):]
                    logits = decoder.prefill(context)
                else:
                    logits = decoder.step(token)

    def memory_plan(self, B: Optional[int] = None, T: Optional[int] = None, master_weights: Optional[bool] = None,
                    shard: Optional[tuple[int, int]] = None) -> str:
        """What the model's buffers take: parameters, gradients, AdamW state (m, v and, by default on CUDA, fp32
        master weights, as llmc.optim.AdamW allocates them), activations for (B, T) (default: the last forward's
        or allocate()'s shape) and the activation-gradient scratch. shard=(start, end): the ZeRO-1 range of the
        flat parameters this rank owns (llmc.distributed.GradientSync.shard); the AdamW state covers only it."""
        if (B is None) != (T is None):
            raise ValueError("pass both B and T, or neither")
        start, end = (0, self.num_params) if shard is None else check_shard(shard, self.num_params)
        if B is None and self._acts.key is not None:
            B, T = self._acts.key
        if master_weights is None:
            master_weights = self.device.type == "cuda"
        mib = 2 ** 20
        param_bytes = self.params.numel() * self.params.element_size()
        opt_bytes = (end - start) * 4 * (3 if master_weights else 2)
        sharded = "" if shard is None else \
            f"; this rank's ZeRO-1 shard: {end - start:,} of {self.num_params:,} parameters"
        lines = [f"model: {self!r}",
                 f"parameters:           {param_bytes / mib:10.1f} MiB ({self.num_params:,} x {self.dtype})",
                 f"gradients:            {param_bytes / mib:10.1f} MiB",
                 f"optimizer state:      {opt_bytes / mib:10.1f} MiB (AdamW m, v{', master weights' if master_weights else ''}"
                 f"; fp32{sharded})"]
        total = 2 * param_bytes + opt_bytes
        if B is None:
            lines.append("activations:          allocated at the first forward (pass B, T to see them)")
        else:
            self._check_shape(B, T)
            act = _layout(self._activation_specs(B, T))[1]
            dact = _layout(self._grad_scratch_specs(B, T))[1]
            total += act + dact
            lines += [f"activations:          {act / mib:10.1f} MiB for B={B}, T={T}, recompute={self.recompute} "
                      f"({act / B / mib:.1f} MiB per sequence)",
                      f"activation gradients: {dact / mib:10.1f} MiB"]
        lines.append(f"total:                {total / mib:10.1f} MiB")
        return "\n".join(lines)

    def flops_per_token(self, T: int) -> int:
        """llm.c's estimate for one training token (forward + backward): 6*N + 6*L*C*T, N = all parameters."""
        self._check_shape(1, T)
        return 6 * self.num_params + 6 * self.config.n_layer * self.config.n_embd * T


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class _KVDecoder:
    """GPT-2 inference with a key/value cache, in plain torch on the model's parameter views (the parameters'
    dtype; LayerNorm statistics, softmax and the logits in fp32). prefill(ids) runs a context from position 0 and
    step(token) one more position; both return the last position's logits (fp32, the real vocabulary)."""

    def __init__(self, model: "GPT"):
        c = model.config
        self.p, self.c = model.param_tensors, c
        self.hs = c.n_embd // c.n_head
        shape = (c.n_layer, c.n_head, c.max_seq_len, self.hs)
        self.k = torch.empty(shape, dtype=model.params.dtype, device=model.params.device)
        self.v = torch.empty_like(self.k)
        self.pos = 0

    def _ln(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), w.float(), b.float(), LN_EPS).to(x.dtype)

    def _run(self, tokens: list[int]) -> torch.Tensor:
        F, p, c, hs = torch.nn.functional, self.p, self.c, self.hs
        T, start = len(tokens), self.pos
        idx = torch.tensor(tokens, dtype=torch.long, device=self.k.device)
        x = p["wte"][idx] + p["wpe"][start:start + T]
        for l in range(c.n_layer):
            q, k, v = F.linear(self._ln(x, p["ln1w"][l], p["ln1b"][l]), p["qkvw"][l], p["qkvb"][l]).split(
                c.n_embd, dim=-1)
            self.k[l, :, start:start + T] = k.view(T, c.n_head, hs).transpose(0, 1)
            self.v[l, :, start:start + T] = v.view(T, c.n_head, hs).transpose(0, 1)
            y = F.scaled_dot_product_attention(q.view(T, c.n_head, hs).transpose(0, 1).float(),
                                               self.k[l, :, :start + T].float(), self.v[l, :, :start + T].float(),
                                               is_causal=T > 1)  # T > 1 only in prefill, which starts at 0
            x = x + F.linear(y.transpose(0, 1).reshape(T, c.n_embd).to(x.dtype), p["attprojw"][l], p["attprojb"][l])
            h = F.gelu(F.linear(self._ln(x, p["ln2w"][l], p["ln2b"][l]), p["fcw"][l], p["fcb"][l]),
                       approximate="tanh")
            x = x + F.linear(h, p["fcprojw"][l], p["fcprojb"][l])
        self.pos = start + T
        last = self._ln(x[-1:], p["lnfw"], p["lnfb"])
        return F.linear(last, p["wte"][:c.vocab_size]).float()[0].cpu()

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        self.pos = 0
        return self._run(tokens)

    def step(self, token: int) -> torch.Tensor:
        return self._run([token])


def _sample(logits: torch.Tensor, temperature: float, top_k: Optional[int], gen: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))
