"""AdamW over a GPT's flat buffers, llm.c style, and the global gradient norm.

The optimizer owns fp32 m and v for every parameter and, on CUDA, fp32 master weights (the bf16 parameters
are written from them with stochastic rounding); on the CPU the parameters are fp32 already and are updated in
place. One step is ONE llmc.ops.adamw_update launch over the whole flat range, with weight decay only on the
tensors the model flags (GPT.param_decay). The stochastic-rounding seed of step t is a hash of (seed, t), so a
run resumed from state_dict() rounds exactly like an uninterrupted one. In data-parallel training every rank
must use the same seed, or their bf16 parameters drift apart.

ZeRO-1 (llmc.distributed): AdamW(model, shard=(start, end)) keeps m, v and master for that slice of the flat
range only and updates only model.params[start:end], with the weight-decay flags of the tensors the slice cuts
(llmc.sharding.shard_partition); its rounding seed also mixes in `start`, so the shards round independently.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import ops
from .sharding import check_shard, shard_partition

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int) -> int:
    """A 64-bit seed for stochastic rounding at `step`, mixed from (seed, step) with splitmix64's finaliser."""
    z = (seed * 0x9E3779B97F4A7C15 + step) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _check_hyper(lr, betas, eps, weight_decay) -> None:
    for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")


class AdamW:
    """AdamW for an llmc.GPT (decoupled weight decay, bias correction; torch.optim.AdamW's math)."""

    def __init__(self, model, lr: float = 6e-4, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 master_weights: bool = True, seed: int = 13371337, shard: Optional[tuple[int, int]] = None):
        from .model import GPT

        if not isinstance(model, GPT):
            raise TypeError(f"AdamW takes an llmc.GPT, got {type(model).__name__}")
        _check_hyper(lr, betas, eps, weight_decay)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.model = model
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(float(b) for b in betas), float(eps), \
            float(weight_decay)
        self.seed = seed
        self.step_count = 0
        start, end = (0, model.num_params) if shard is None else check_shard(shard, model.num_params)
        self.shard = (start, end)
        self.tensor_sizes, self.tensor_decay = shard_partition(model.param_sizes, model.param_decay, start, end)
        n, device = end - start, model.device
        self.m = torch.zeros(n, dtype=torch.float32, device=device)
        self.v = torch.zeros(n, dtype=torch.float32, device=device)
        # fp32 parameters need no master copy. It is filled from the parameters at the first step (or by
        # load_state_dict), so weights loaded into the model after construction are picked up.
        use_master = bool(master_weights) and model.params.dtype != torch.float32
        self.master: Optional[torch.Tensor] = torch.empty(n, dtype=torch.float32, device=device) if use_master else None
        self._master_synced = False

    def _sync_master(self) -> None:
        if self.master is not None and not self._master_synced:
            self.master.copy_(self._slice(self.model.params))
            self._master_synced = True

    def _slice(self, flat: torch.Tensor) -> torch.Tensor:
        start, end = self.shard
        return flat[start:end]

    def step(self, lr: Optional[float] = None, grad_scale: float = 1.0, *,
             grad_norm_squared: Optional[torch.Tensor] = None, max_grad_norm: Optional[float] = None) -> None:
        """One update from model.grads (multiplied by grad_scale, e.g. a clipping factor); lr defaults to the
        constructor's. Clipping without waiting for the GPU: pass the squared global norm as a device tensor
        (grad_norm_squared(), or GradientSync.grad_norm_squared() across ranks) and max_grad_norm; the kernel
        scales the gradients by max_grad_norm / norm when the norm is larger."""
        lr = self.lr if lr is None else lr
        _check_hyper(lr, self.betas, self.eps, self.weight_decay)
        self._sync_master()
        model = self.model
        seed = step_seed(self.seed, self.step_count + 1)
        if self.shard[0]:
            seed = step_seed(seed, self.shard[0])
        with model._device_scope():
            ops.adamw_update(self._slice(model.params), self._slice(model.grads), self.m, self.v, self.master, lr=lr,
                             beta1=self.betas[0], beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay,
                             step=self.step_count + 1, seed=seed, grad_scale=grad_scale,
                             tensor_sizes=self.tensor_sizes, tensor_decay=self.tensor_decay,
                             grad_norm_squared=grad_norm_squared, max_grad_norm=max_grad_norm)
        model.params_updated()
        self.step_count += 1

    def state_dict(self) -> dict:
        """Step count, hyperparameters, the shard and the live m, v and master buffers (not copies: torch.save
        them)."""
        self._sync_master()
        return {"step": self.step_count, "lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "seed": self.seed, "shard": self.shard, "m": self.m, "v": self.v,
                "master": self.master}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned (tensors may be on any device)."""
        missing = {"step", "lr", "betas", "eps", "weight_decay", "seed", "m", "v", "master"} - set(state)
        if missing:
            raise ValueError(f"optimizer state lacks {sorted(missing)}; was it written by llmc.optim.AdamW.state_dict?")
        for name in ("m", "v"):
            if not isinstance(state[name], torch.Tensor) or state[name].numel() != self.m.numel():
                raise ValueError(f"optimizer state {name!r} does not hold {self.m.numel()} values for this model")
        shard = tuple(state.get("shard", (0, self.model.num_params)))
        if shard != self.shard:
            raise ValueError(f"optimizer state covers parameters {list(shard)} but this optimizer updates "
                             f"{list(self.shard)}; ZeRO-1 state loads only into the same rank of the same world size "
                             f"and zero stage")
        master = state["master"]
        if self.master is not None:
            if master is None:
                raise ValueError("this optimizer keeps fp32 master weights but the state has none (it was saved "
                                 "with master_weights=False or on the CPU); construct AdamW(master_weights=False)")
            if master.numel() != self.master.numel():
                raise ValueError(f"optimizer state 'master' does not hold {self.master.numel()} values")
        _check_hyper(state["lr"], state["betas"], state["eps"], state["weight_decay"])
        for name in ("m", "v", "master"):
            t = state[name]
            if t is not None and (not t.is_floating_point() or not bool(torch.isfinite(t).all())):
                raise ValueError(f"optimizer state {name!r} holds values that are not finite (nan or inf): the state "
                                 f"comes from a diverged run or is damaged; resume from an earlier checkpoint")
        if (v := state["v"]).is_floating_point() and bool((v < 0).any()):
            raise ValueError("optimizer state 'v' holds negative second moments: the state is damaged")
        for name in ("step", "seed"):
            if isinstance(state[name], bool) or not isinstance(state[name], int) or state[name] < 0:
                raise ValueError(f"optimizer state {name!r} is {state[name]!r}, not an int >= 0: the state is damaged")
        self.m.copy_(state["m"].reshape(-1))
        self.v.copy_(state["v"].reshape(-1))
        if self.master is not None:
            self.master.copy_(master.reshape(-1))
            self._master_synced = True
        self.step_count = int(state["step"])
        self.lr, self.betas, self.eps = float(state["lr"]), tuple(state["betas"]), float(state["eps"])
        self.weight_decay, self.seed = float(state["weight_decay"]), int(state["seed"])


def grad_norm_squared(model) -> torch.Tensor:
    """Squared global L2 norm of model.grads as a one-element fp32 tensor on the model's device, accumulated
    deterministically; no host sync (AdamW.step(grad_norm_squared=...) reads it on the device)."""
    with model._device_scope():
        return ops.global_norm_squared(model.grads)


def grad_norm(model) -> float:
    """Global L2 norm of model.grads, accumulated in fp32 deterministically (one host sync)."""
    return math.sqrt(grad_norm_squared(model).item())
