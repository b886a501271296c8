"""The training loop: `Trainer(model_or_preset, TrainConfig(...)).fit()`, llm.c's train_gpt2cu in Python.

One step = grad_accum_steps micro-batches of B x T tokens (forward, backward, grads +=), the global gradient
norm, clipping to 1.0, the learning rate of the schedule, optional skipping of outlier updates (z-score of the
loss or grad norm over the last 64 steps, llm.c's -sl/-sg), one AdamW update. Every N steps, before the step
of that number: validation loss, HellaSwag, a text sample, a checkpoint (model file + optimizer, data-loader,
RNG and trainer state). Resuming restores all of it, so a resumed run continues with bit-identical losses.

Files in the output directory: main.log (llm.c's lines: `s:%d trl:%.4f lr:%.6f norm:%.2f`, `s:%d tel:%.4f`,
`s:%d eval:%.4f`), metrics.jsonl (every step at full precision), samples.txt, and the checkpoints.

Several processes (`torchrun --nproc_per_node=N -m llmc train ...`, or a Trainer inside any torchrun process):
data parallel over torch.distributed (llmc.distributed): each rank reads its slice of every batch, the gradients
are summed over the ranks after the last micro-step (the loss gradient is scaled by 1/(grad_accum*world_size)),
ZeRO-1 by default (each rank keeps the AdamW state of its shard and the parameters are all-gathered), ZeRO-0
with -z 0. The logged loss and val loss are averaged over the ranks; rank 0 logs, samples and writes the model
file; every rank writes its own state file; resuming needs the same number of processes.

MFU is llm.c's: model.flops_per_token(T) = 6*N + 6*L*C*T FLOPs per token against the GPU's dense bf16 peak
(PEAK_BF16_TFLOPS: 989.5 for H100 SXM/H200, 756 for H100 PCIe, 312 for A100); other GPUs and the CPU show none.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ._validate import FP8_MODES, check_fp8, check_int
from .distributed import ZERO_STAGES
from .rundir import RunDirectory
from .runlog import RunLog
from .schedule import OUTLIER_WINDOW, SCHEDULES, OutlierDetector, learning_rate
from .trackers import Trackers, parse_trackers, tracker_installed

PEAK_BF16_TFLOPS = {"H100 SXM": 989.5, "H100 80GB HBM3": 989.5, "H200": 989.5, "GH200": 989.5,
                    "H100 PCIe": 756.0, "H100 NVL": 835.0, "A100": 312.0}
GRAD_CLIP = 1.0
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
QUICKSTART_CPU_MODEL = "d4c128"  # 4 layers, 128 channels (see parse_model_spec)


@dataclass
class TrainConfig:
    """Options of `llmc train`, with llm.c's train_gpt2cu flag in brackets. Defaults are llm.c's except where
    noted; `TrainConfig.quickstart(device)` is the README job that `llmc train` with no arguments runs."""
    input_train: Optional[str] = None    # [-i] train shard glob; None: the built-in Python-docs corpus
    input_val: Optional[str] = None      # [-j] val shard glob; None: the built-in corpus's (if -i is not given)
    output_dir: Optional[str] = None     # [-o] log and checkpoint directory; None: no files written
    model: str = "d12"                   # [-e] preset (d6, d12, ...) or llm.c model file to start from
    batch_size: int = 4                  # [-b] micro-batch size B
    seq_len: int = 1024                  # [-t] sequence length T
    total_batch_size: int = -1           # [-d] tokens per step; -1: B*T*world_size (no accumulation)
    num_iterations: int = -1             # [-x] steps; -1: one epoch of the training data
    learning_rate: float = 3e-4          # [-l]
    warmup_iterations: int = 0           # [-u]
    final_lr_fraction: float = 1.0       # [-q] lr at the end = learning_rate * this
    lr_schedule: str = "cosine"          # [-k] cosine, linear, constant or wsd
    weight_decay: float = 0.0            # [-c] applied to the 2-D weights only
    val_every: int = 20                  # [-v] steps between validations (0: never)
    val_max_steps: int = 20              # [-m] val batches; -1: the whole val set
    sample_every: int = 20               # [-s] steps between samples (0: never)
    gen_tokens: int = 64                 # [-g] tokens per sample
    checkpoint_every: int = 0            # [-n] steps between checkpoints (0: never)
    keep_last: int = 0                   # [-nk] checkpoints kept (0: all)
    resume: bool = False                 # [-y] continue from the latest complete checkpoint in output_dir
    recompute: int = 1                   # [-r] 0 none, 1 GELU, 2 GELU and layernorms
    zero_stage: int = -1                 # [-z] 0 all-reduce, 1 sharded AdamW state; -1: 1 with several processes
    master_weights: bool = True          # [-w] fp32 master copy of the weights for AdamW
    gelu_fusion: int = -1                # [-ge] 0 GELU as its own kernel, 1 fused into fc's forward matmul, 2 also
                                         # into fcproj's backward (GPT gelu_fusion); -1: the model's default
    skip_update_lossz: float = 0.0       # [-sl] skip the update when the loss z-score exceeds this (0: off)
    skip_update_gradz: float = 0.0       # [-sg] same for the gradient norm
    hellaswag: bool = False              # [-h] HellaSwag accuracy at each validation
    overfit_single_batch: bool = False   # [-a] train on one batch (of the val data, as llm.c) for debugging
    restart: bool = False                # start over in an output_dir that holds an earlier run: its files move
                                         # to output_dir/earlier-<time>/ (without it such a run is refused)
    seed: int = 1337                     # model init, data order, stochastic rounding
    shuffle: bool = True                 # training rows in a random order (llmc.data); False: in order, as llm.c
                                         # reads them with its shuffling off
    device: str = "auto"                 # cuda, cpu or auto
    dist_timeout: float = 600.0          # seconds a collective waits for the other ranks before the job fails
    loss_chunk: Optional[int] = None     # positions per chunk of the output layer + loss (GPT loss_chunk; 0: all
                                         # at once); None: llmc.model.DEFAULT_LOSS_CHUNK for a model the Trainer
                                         # builds, a given GPT's own
    fp8: Union[bool, str] = False        # FP8 matmuls on an H100 (GPT fp8: True, "blocks" or "rows"; opt-in,
                                         # changes the numerics);
                                         # a GPT passed in keeps its own (True with a bf16 GPT is an error)
    deterministic: bool = True           # bit-reproducible backward (GPT deterministic); False: cuDNN's attention
                                         # backward with atomic dQ, faster, not reproducible bit for bit; a
                                         # GPT passed in keeps its own (False with a deterministic GPT is an error)
    save_on_interrupt: bool = False      # Ctrl-C finishes the step and checkpoints it (one process, needs -o)
    log: str = ""                        # trackers besides main.log/metrics.jsonl: "tensorboard", "wandb" or both,
                                         # comma-separated (llmc.trackers; optional extras)

    @classmethod
    def quickstart(cls, device: str) -> "TrainConfig":
        """The README job on the built-in corpus (~100k tokens of Python docs), writing to a new
        runs/quickstart-<date>-<time> folder each time (so no earlier run is touched): GPT-2 124M (d12) for 150
        steps of 4k tokens on a GPU (on an H100: 12-18 ms a step, val loss 10.73 -> 5.57; longer would only
        overfit the small corpus); on a CPU a 7M-parameter model (4 layers, 128 channels) for 100 steps of 512
        tokens (about a minute on two cores, val loss 10.8 -> ~5.7)."""
        common = dict(output_dir=time.strftime("runs/quickstart-%Y%m%d-%H%M%S"), keep_last=1, warmup_iterations=10, final_lr_fraction=0.1,
                      weight_decay=0.1, device=device)
        if device == "cuda":
            return cls(model="d12", batch_size=8, seq_len=512, num_iterations=150, learning_rate=6e-4, val_every=25,
                       val_max_steps=-1, sample_every=50, gen_tokens=64, checkpoint_every=150, **common)
        return cls(model=QUICKSTART_CPU_MODEL, batch_size=8, seq_len=64, num_iterations=100, learning_rate=3e-3,
                   val_every=25, val_max_steps=4, sample_every=100, gen_tokens=32, checkpoint_every=50, **common)


# ---------------------------------------------------------------------------------------------------------
# pieces of the loop
# ---------------------------------------------------------------------------------------------------------
def peak_flops(device) -> Optional[float]:
    """Dense bf16 peak FLOP/s of the CUDA device, or None when unknown (no MFU shown)."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


@dataclass
class _Run:
    """What one Trainer.fit works with: made by _setup, start_step set by _resume."""
    device: object
    out_dir: Optional[Path]
    ckpt: object                         # CheckpointManager of out_dir, None without one
    resume_step: Optional[int]
    state: Optional[dict]                # the state file of the checkpoint resumed
    train_loader: object
    val_loader: object                   # None without val data
    total_batch: int                     # tokens per step, over all ranks
    grad_accum: int                      # micro-steps per step
    zero_stage: int
    num_steps: int
    model: object
    sync: object                         # llmc.distributed.GradientSync
    optimizer: object                    # llmc.optim.AdamW
    loss_detector: OutlierDetector
    norm_detector: OutlierDetector
    fixed_batch: Optional[tuple]         # -a: the one batch trained on
    hellaswag: Optional[list]            # -h 1: the HellaSwag examples
    peak: Optional[float]                # bf16 FLOP/s of all ranks for the MFU, None when unknown
    flops_per_step: int
    start_step: int = 0


# ---------------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------------
class Trainer:
    """`Trainer(model_or_preset, config).fit()`: model_or_preset is an llmc.GPT, a GPTConfig, a preset name
    ("d12"), an llm.c model file, or None for config.model. Under torchrun, rank and world size come from the
    environment and fit() joins (or reuses) the process group."""

    def __init__(self, model_or_preset=None, config: Optional[TrainConfig] = None):
        self.config = TrainConfig() if config is None else config
        if not isinstance(self.config, TrainConfig):
            raise TypeError(f"config must be an llmc.TrainConfig, got {type(self.config).__name__}")
        self.model_source = self.config.model if model_or_preset is None else model_or_preset
        from .distributed import dist_info_from_env

        self.dist = dist_info_from_env()
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self._validate()
        self.model = self.optimizer = None
        self.history: list[dict] = []
        self.val_history: list[tuple[int, float]] = []  # (step, val loss) of this fit

    def _validate(self) -> None:
        c = self.config
        positive = dict(batch_size=c.batch_size, seq_len=c.seq_len, gen_tokens=c.gen_tokens)
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        counts = dict(warmup_iterations=c.warmup_iterations, val_every=c.val_every, sample_every=c.sample_every,
                      checkpoint_every=c.checkpoint_every, keep_last=c.keep_last)
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name, smallest in (("num_iterations", 0), ("val_max_steps", 1), ("total_batch_size", 1)):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= smallest):
                raise ValueError(f"{name} must be an int >= {smallest} or -1 (automatic), got {value!r}")
        if c.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {c.lr_schedule!r}")
        if not c.learning_rate > 0 or not 0 <= c.final_lr_fraction <= 1 or c.weight_decay < 0:
            raise ValueError(f"need learning_rate > 0, 0 <= final_lr_fraction <= 1 and weight_decay >= 0; got "
                             f"{c.learning_rate}, {c.final_lr_fraction}, {c.weight_decay}")
        if c.recompute not in (0, 1, 2) or c.gelu_fusion not in (-1, 0, 1, 2):
            raise ValueError(f"recompute must be 0/1/2 and gelu_fusion -1/0/1/2; got {c.recompute}, {c.gelu_fusion}")
        if isinstance(c.zero_stage, bool) or not isinstance(c.zero_stage, int) or \
                c.zero_stage not in (-1,) + ZERO_STAGES:
            raise ValueError(f"zero_stage (-z) {c.zero_stage!r} is not implemented: use -z 0 (all-reduce) or -z 1 "
                             f"(ZeRO-1, sharded optimizer state), or leave it at -1 (1 with several processes)")
        if isinstance(c.dist_timeout, bool) or not isinstance(c.dist_timeout, (int, float)) or not c.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be a number of seconds > 0, got {c.dist_timeout!r}")
        if c.loss_chunk is not None:
            check_int(c.loss_chunk, "loss_chunk (positions per chunk; 0: the whole batch at once; None: the default)",
                      0)
        check_fp8(c.fp8)
        if not isinstance(c.restart, bool):
            raise TypeError(f"restart must be a bool, got {c.restart!r}")
        if c.restart and c.resume:
            raise ValueError("resume (-y 1) continues the run in output_dir and restart (--restart 1) moves it away: "
                             "pass one of them")
        if not isinstance(c.shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {c.shuffle!r}")
        if not isinstance(c.deterministic, bool):
            raise TypeError(f"deterministic must be a bool, got {c.deterministic!r}")
        if c.fp8 is True and c.device == "cpu":  # ("blocks" and "rows" run on the CPU too, in torch: for tests)
            raise ValueError("fp8 needs a CUDA GPU of compute capability 8.9 or more (H100-class); drop --fp8 to "
                             "train on the CPU")
        if c.skip_update_lossz < 0 or c.skip_update_gradz < 0:
            raise ValueError("skip_update_lossz and skip_update_gradz are z-score thresholds >= 0 (0: off)")
        if c.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {c.device!r}")
        if c.resume and c.output_dir is None:
            raise ValueError("resume needs the output directory (-o) that holds the checkpoints")
        if not isinstance(c.save_on_interrupt, bool):
            raise TypeError(f"save_on_interrupt must be a bool, got {c.save_on_interrupt!r}")
        if c.save_on_interrupt and (c.output_dir is None or self.world_size > 1):
            raise ValueError("save_on_interrupt (--save-on-interrupt 1) needs -o and one process; with several, "
                             "checkpoint with -n")
        trackers = parse_trackers(c.log)
        if "tensorboard" in trackers and c.output_dir is None:
            raise ValueError("--log tensorboard writes into the run directory: give -o")
        missing = [name for name in trackers if not tracker_installed(name)]
        if missing:
            raise ValueError(f"--log {','.join(missing)} needs the {' and '.join(missing)} package: pip install "
                             f"'llmc[{','.join(missing)}]'")
        tokens_per_micro_step = c.batch_size * c.seq_len * self.world_size
        if c.total_batch_size != -1 and c.total_batch_size % tokens_per_micro_step:
            raise ValueError(f"total_batch_size (-d) {c.total_batch_size} is not a multiple of B*T*world_size = "
                             f"{c.batch_size}*{c.seq_len}*{self.world_size} = {tokens_per_micro_step}; choose e.g. "
                             f"{max(1, c.total_batch_size // tokens_per_micro_step) * tokens_per_micro_step}")

    # -- building ---------------------------------------------------------------------------------------
    def _device(self):
        import torch

        from .ops import cuda_available

        if self.config.device == "auto":
            return torch.device("cuda" if cuda_available() else "cpu")
        if self.config.device == "cuda" and not cuda_available():
            raise RuntimeError("device 'cuda' was asked for but no GPU (or no CUDA build of llmc) is available")
        if self.config.device == "cuda" and self.world_size > 1:
            return torch.device("cuda", self.dist.local_rank)
        return torch.device(self.config.device)

    def _model_source(self):
        """(GPTConfig, fp32 params or None) that model_or_preset describes; params come from a model file."""
        from .checkpoint import read_model_file
        from .model import GPT, GPTConfig

        src = self.model_source
        if isinstance(src, GPT):
            return src.config, None
        if isinstance(src, GPTConfig):
            return src, None
        if isinstance(src, (str, os.PathLike)):
            if os.path.isfile(src):
                return read_model_file(src)
            return parse_model_spec(str(src)), None
        raise TypeError(f"model_or_preset must be an llmc.GPT, GPTConfig, preset name or model file path, got "
                        f"{type(src).__name__}")

    def _build_model(self, model_config, device, params):
        """The GPT on `device`, with `params` (fp32 flat) loaded when given (a model file or a checkpoint)."""
        from .model import DEFAULT_LOSS_CHUNK, GPT

        if isinstance(self.model_source, GPT):
            model = self.model_source
            chunk = self.config.loss_chunk
            if chunk is not None and chunk != model.loss_chunk:
                raise ValueError(f"loss_chunk={chunk} is a property of the model: the GPT passed to the Trainer has "
                                 f"loss_chunk={model.loss_chunk}; build it with GPT(..., loss_chunk={chunk}) "
                                 f"or leave TrainConfig.loss_chunk at None")
            if self.config.fp8 and self.config.fp8 != model.fp8:
                raise ValueError(f"fp8={self.config.fp8!r} is a property of the model: the GPT passed to the Trainer "
                                 f"was built with fp8={model.fp8!r}; build it with GPT(..., fp8={self.config.fp8!r})")
            if self.config.gelu_fusion not in (-1, model.gelu_fusion):
                raise ValueError(f"gelu_fusion={self.config.gelu_fusion} is a property of the model: the GPT passed to "
                                 f"the Trainer has gelu_fusion={model.gelu_fusion}; build it with GPT(..., "
                                 f"gelu_fusion={self.config.gelu_fusion}) or leave TrainConfig.gelu_fusion at -1")
            if not self.config.deterministic and model.deterministic:
                raise ValueError("deterministic=False is a property of the model: the GPT passed to the Trainer was "
                                 "built with deterministic=True; build it with GPT(..., deterministic=False)")
        else:
            chunk = DEFAULT_LOSS_CHUNK if self.config.loss_chunk is None else self.config.loss_chunk
            fusion = {} if self.config.gelu_fusion == -1 else {"gelu_fusion": self.config.gelu_fusion}
            model = GPT(model_config, device=device, recompute=self.config.recompute, seed=self.config.seed,
                        loss_chunk=chunk, fp8=self.config.fp8, deterministic=self.config.deterministic,
                        **fusion)
        if params is not None:
            model.load_params_(params)
        return model

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train; returns one record per step taken (step, loss, norm, lr, ms, tokens_per_s, skipped)."""
        with self._session() as device:
            run = self._setup(device)
            self._resume(run)
            self._announce(run)
            trackers = Trackers(parse_trackers(self.config.log) if self.rank == 0 else (), run.out_dir,
                                dataclasses.asdict(self.config))
            log = RunLog(run.out_dir if self.rank == 0 else None, total_steps=run.num_steps,
                         start_step=run.start_step, quiet=self.rank != 0, trackers=trackers)
            started = time.perf_counter()
            try:
                with _deferred_interrupt(self.config.save_on_interrupt) as interrupted:
                    for step in range(run.start_step, run.num_steps + 1):
                        if interrupted() and step > run.start_step:
                            self._save_interrupted(run, log, step)  # raises KeyboardInterrupt
                        self._evaluate(run, log, step)  # before the step of that number, and after the last
                        if self._checkpoint_due(run, step):
                            log.print(f"writing checkpoint at step {step}")
                            run.ckpt.save(step, run.model, self._checkpoint_state(run, step))
                        if step == run.num_steps:
                            break
                        record, zscores, seconds = self._train_step(run, log, step)
                        self._log_step(run, log, record, zscores, seconds, started)
            finally:
                log.close()
            if self.rank == 0:
                print(self._summary(run, time.perf_counter() - started), flush=True)
        return self.history

    @contextlib.contextmanager
    def _session(self):
        """The device to train on, inside the process group (joined here, or the one that exists). A collective
        that fails and running out of GPU memory are told in terms of the run's options; at the end the run
        directory is unlocked and a process group joined here is left."""
        import torch
        import torch.distributed as dist

        from .distributed import cleanup, init_distributed
        from .model import GPT

        device = self.model_source.device if isinstance(self.model_source, GPT) else self._device()
        own_group = self.world_size > 1 and not dist.is_initialized()
        init_distributed(device.type, self.config.dist_timeout)
        finished = False
        try:
            yield device
            finished = True
        except dist.DistError as e:
            raise RuntimeError(f"rank {self.rank} of {self.world_size}: a collective failed or waited longer than "
                               f"dist_timeout={self.config.dist_timeout:g} s (another rank died or hangs; its own "
                               f"log says why): {str(e).splitlines()[0]}") from e
        except torch.cuda.OutOfMemoryError as e:
            c = self.config
            total = c.batch_size * c.seq_len * self.world_size if c.total_batch_size == -1 else c.total_batch_size
            raise RuntimeError(f"out of GPU memory ({str(e).splitlines()[0]}); use a smaller micro-batch "
                               f"(-b {max(1, c.batch_size // 2)}; -d {total} keeps the tokens per step through "
                               f"gradient accumulation) or recompute activations (-r 1, or -r 2)") from None
        finally:
            if getattr(self, "_run_dir", None) is not None:
                self._run_dir.release(failed=not finished)
            if own_group:
                cleanup()

    def _setup(self, device) -> "_Run":
        """Everything before the first step: the data, the run directory, the model (from the checkpoint to resume,
        a model file or a preset), its gradient sync and optimizer, all activation memory, the number of steps."""
        from .distributed import GradientSync, print0
        from .optim import AdamW

        c = self.config
        B, T = c.batch_size, c.seq_len
        zero_stage = (1 if c.zero_stage == -1 else c.zero_stage) if self.world_size > 1 else 0
        self._run_dir = RunDirectory(c.output_dir, resume=c.resume, restart=c.restart, keep_last=c.keep_last,
                                     rank=self.rank, world_size=self.world_size)
        out_dir = self._run_dir.prepare()
        train_loader, val_loader, total_batch, grad_accum = self._data()
        ckpt, resume_step = self._run_dir.claim()
        model_config, params, state = self._starting_point(ckpt, resume_step, out_dir)
        if T > model_config.max_seq_len:
            raise ValueError(f"sequence length T={T} (-t) exceeds the model's context of {model_config.max_seq_len} "
                             f"tokens; use -t {model_config.max_seq_len} or less")
        self._set_cpu_threads(device, state)
        model = self.model = self._build_model(model_config, device, params)
        print0(f"llmc train | device {device} | model {model_config} | {model.num_params:,} parameters")
        sync = GradientSync(model, zero_stage)
        print0(model.memory_plan(B, T, master_weights=c.master_weights and device.type == "cuda",
                                 shard=sync.shard if zero_stage == 1 and self.world_size > 1 else None))
        optimizer = self.optimizer = AdamW(model, lr=c.learning_rate, betas=BETAS, eps=ADAM_EPS,
                                           weight_decay=c.weight_decay, master_weights=c.master_weights, seed=c.seed,
                                           shard=sync.shard)
        model.allocate(B, T)  # all activation memory now, so running out of memory happens before any work

        num_steps = c.num_iterations if c.num_iterations != -1 else train_loader.num_tokens // total_batch
        if num_steps < 1 and c.num_iterations == -1:
            raise ValueError(f"the training data ({train_loader.num_tokens} tokens) is less than one step of "
                             f"{total_batch} tokens; pass -x or a smaller -d")
        peak = peak_flops(device)
        return _Run(device=device, out_dir=out_dir, ckpt=ckpt, resume_step=resume_step, state=state,
                    train_loader=train_loader, val_loader=val_loader, total_batch=total_batch,
                    grad_accum=grad_accum, zero_stage=zero_stage, num_steps=num_steps,
                    model=model, sync=sync, optimizer=optimizer,
                    loss_detector=OutlierDetector(c.skip_update_lossz), norm_detector=OutlierDetector(c.skip_update_gradz),
                    fixed_batch=train_loader.next_batch() if c.overfit_single_batch else None,  # -a: the first batch
                    hellaswag=self._hellaswag_examples() if c.hellaswag else None,
                    peak=peak * self.world_size if peak else peak,  # flops_per_step counts the tokens of all ranks
                    flops_per_step=model.flops_per_token(T) * total_batch)

    def _data(self):
        """(train loader, val loader or None, tokens per step, micro-steps per step): the built-in corpus unless -i is given; -a trains on
        the first val batch (as llm.c). A step reads the same rows however it is split among GPUs."""
        from .data import DataLoader
        from .prepare import builtin_corpus

        c = self.config
        B, T = c.batch_size, c.seq_len
        train_pattern, val_pattern = c.input_train, c.input_val
        if train_pattern is None:
            train_pattern, builtin_val = builtin_corpus()
            val_pattern = builtin_val if val_pattern is None else val_pattern
        if c.overfit_single_batch and val_pattern is not None:
            train_pattern = val_pattern
        tokens_per_micro_step = B * T * self.world_size
        total_batch = tokens_per_micro_step if c.total_batch_size == -1 else c.total_batch_size
        grad_accum = total_batch // tokens_per_micro_step
        train_loader = DataLoader(train_pattern, B, T, self.rank, self.world_size, shuffle=c.shuffle, seed=c.seed,
                                  accum=grad_accum)
        val_loader = None if val_pattern is None else \
            DataLoader(val_pattern, B, T, self.rank, self.world_size, shuffle=False)
        return train_loader, val_loader, total_batch, grad_accum

    def _starting_point(self, ckpt, resume_step: Optional[int], out_dir: Optional[Path]):
        """(GPTConfig, fp32 params or None, checkpoint state or None): the latest complete checkpoint when resuming,
        else what model_or_preset describes."""
        model_config, params = self._model_source()
        if resume_step is None:
            return model_config, params, None
        saved_config, params, state = ckpt.load(resume_step)
        if saved_config != model_config:
            raise ValueError(f"the checkpoint at step {resume_step} in {out_dir} is a model {saved_config}, but "
                             f"this run asks for {model_config}; pass the same -e as the original run, or "
                             f"another -o to start a new run")
        check_state(state, ckpt.state_path(resume_step), resume_step, self.world_size)
        return model_config, params, state

    def _set_cpu_threads(self, device, state: Optional[dict]) -> None:
        import torch

        from .distributed import print0

        if device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
            # The host only launches kernels and checks token ids; torch's CPU thread pool (one thread per core)
            # made each step's host work slow on a 64-core machine (d12: 163 ms per micro-step instead of 118 ms
            # on an H100). torchrun sets OMP_NUM_THREADS=1 for the same reason.
            torch.set_num_threads(1)
        if device.type == "cpu":
            # torch starts with MKL's dynamic threading on, which may change a matrix product's thread count (and
            # its last bits) from call to call; set_num_threads turns it off. A resume keeps the count of the run it
            # continues (saved by a CPU run), unless OMP_NUM_THREADS says otherwise.
            threads = torch.get_num_threads()
            if state and state["cpu_threads"] and "OMP_NUM_THREADS" not in os.environ:
                threads = int(state["cpu_threads"])
            torch.set_num_threads(threads)
            if threads > 1:
                print0(f"note: {threads} CPU threads; a run repeats bit for bit with the same thread count on the same "
                       f"CPU (OMP_NUM_THREADS=1 repeats on any CPU)")

    def _resume(self, run: "_Run") -> None:
        """Restore the FP8 scaling, optimizer, data position, outlier windows, RNG and step of the checkpoint."""
        state = run.state
        if state is None:
            return
        saved_fp8 = state.get("train_config", {}).get("fp8", False)
        saved_fp8 = saved_fp8 if saved_fp8 in FP8_MODES else bool(saved_fp8)
        if saved_fp8 != run.model.fp8:
            flag = saved_fp8 if saved_fp8 in FP8_MODES else int(saved_fp8)
            raise ValueError(f"the checkpoint at step {run.resume_step} was trained with fp8={saved_fp8!r}; resume "
                             f"it with --fp8 {flag} (the FP8 matmuls change the numerics)")
        if run.model.fp8 and state.get("fp8") is not None:
            run.model._fp8.load_state_dict(state["fp8"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.train_loader.load_state_dict(state["train_loader"])
        run.loss_detector.load_state_dict(state["loss_detector"])
        run.norm_detector.load_state_dict(state["norm_detector"])
        restore_rng(state["rng"])
        run.start_step = state["step"]

    def _announce(self, run: "_Run") -> None:
        """Rank 0 prints what the run is about to do."""
        from .distributed import print0

        c = self.config
        print0(f"train {run.train_loader}\nval {run.val_loader}")
        print0(f"B={c.batch_size} T={c.seq_len} world_size={self.world_size} total_batch_size={run.total_batch} => "
               f"grad_accum_steps={run.grad_accum}; {run.num_steps} steps; lr {c.learning_rate:g} {c.lr_schedule} "
               f"warmup {c.warmup_iterations} final fraction {c.final_lr_fraction:g}; weight decay {c.weight_decay:g}; "
               f"recompute {c.recompute}; zero stage {run.zero_stage}" +
               ("" if self.world_size > 1 else " (sharding needs several processes)") +
               (f"; FP8 matmuls, fp8={run.model.fp8!r} (see GPT fp8)" if run.model.fp8 in FP8_MODES else
                "; FP8 matmuls (see GPT fp8)" if run.model.fp8 else ""))
        print0("MFU against " + (f"{run.peak / 1e12:.1f} TFLOP/s bf16 peak" if run.peak else
                                 "no known peak (not shown)"))
        if run.resume_step is not None:
            print0(f"resuming from the checkpoint at step {run.resume_step} in {run.out_dir}")
        if run.device.type == "cpu" and self.rank == 0:
            seconds = run.flops_per_step / _cpu_matmul_rate()
            if seconds > CPU_SLOW_STEP_S:
                print(f"WARNING: on this CPU a step of this model ({run.model.num_params / 1e6:.0f}M parameters, "
                      f"{run.total_batch} tokens) takes at least {seconds:.0f} s (its matrix products alone at the "
                      f"rate measured here), {_clock(seconds * (run.num_steps - run.start_step))} for "
                      f"{run.num_steps - run.start_step} steps. A CPU suits small models: e.g. -e "
                      f"{QUICKSTART_CPU_MODEL} -t 256 (the quickstart's size), or a GPU for GPT-2 sizes.",
                      file=sys.stderr, flush=True)

    def _evaluate(self, run: "_Run", log: "RunLog", step: int) -> None:
        """Validation loss (every -v steps), HellaSwag (with -h 1, at validation steps after the first) and a text
        sample (rank 0, every -s steps after the first); all three after the last step."""
        from .distributed import all_reduce_mean, all_reduce_sum
        from .eval import HellaSwagResult, hellaswag_eval, val_loss

        c, model, device = self.config, run.model, run.device
        B, T = c.batch_size, c.seq_len
        last_step = step == run.num_steps
        if run.val_loader is not None and c.val_every > 0 and (step % c.val_every == 0 or last_step):
            val_batches = None if c.val_max_steps == -1 else c.val_max_steps
            value = all_reduce_mean(val_loss(model, run.val_loader, B, T, val_batches, self.rank, self.world_size),
                                    device)
            log.val(step, value)
            self.val_history.append((step, value))
        if run.hellaswag and ((step > 0 and c.val_every > 0 and step % c.val_every == 0) or last_step):
            mine = hellaswag_eval(model, run.hellaswag, B, T, self.rank, self.world_size)
            result = HellaSwagResult(*all_reduce_sum([mine.correct, mine.correct_norm, mine.total], device))
            log.hellaswag(step, result.acc_norm, result.total)
        if self.rank == 0 and c.sample_every > 0 and ((step > 0 and step % c.sample_every == 0) or last_step):
            log.sample(step, self._sample(model))

    def _save_interrupted(self, run: "_Run", log: "RunLog", step: int) -> None:
        """Ctrl-C with save_on_interrupt: checkpoint the last completed step (unless it has one) and stop."""
        if run.ckpt is not None and step not in run.ckpt.steps():
            log.print(f"interrupted: writing checkpoint at step {step} (the last completed step; -y 1 resumes it)")
            run.ckpt.save(step, run.model, self._checkpoint_state(run, step))
        raise KeyboardInterrupt

    def _checkpoint_due(self, run: "_Run", step: int) -> bool:
        """Every -n steps, and at the end of every run that has an output directory (not the step resumed from)."""
        every = self.config.checkpoint_every
        return run.ckpt is not None and step != run.resume_step and \
            (step == run.num_steps or (every > 0 and step > 0 and step % every == 0))

    def _checkpoint_state(self, run: "_Run", step: int) -> dict:
        """This rank's state file of the checkpoint at `step`: what _resume restores, and what check_state checks."""
        import torch

        return {"step": step, "optimizer": run.optimizer.state_dict(), "train_loader": run.train_loader.state_dict(),
                "loss_detector": run.loss_detector.state_dict(), "norm_detector": run.norm_detector.state_dict(),
                "rng": rng_state(), "train_config": dataclasses.asdict(self.config), "world_size": self.world_size,
                "fp8": run.model._fp8.state_dict() if run.model.fp8 else None,
                "cpu_threads": torch.get_num_threads() if run.device.type == "cpu" else None}

    def _train_step(self, run: "_Run", log: "RunLog", step: int) -> tuple[dict, tuple[float, float], float]:
        """One optimization step over total_batch tokens: (its record, the loss's and norm's z-scores, its
        seconds). The host does not wait for the GPU until the step's loss and norm are read at its end (unless
        outlier skipping needs them before the update): tokens are checked on the host, clipping happens in the
        AdamW kernel."""
        from .distributed import wait_for_device

        c, model, sync = self.config, run.model, run.sync
        loss_detector, norm_detector = run.loss_detector, run.norm_detector
        t0 = time.perf_counter()
        loss_t = self._forward_backward(run, step)
        sync.reduce_gradients()
        loss_t = sync.mean_over_ranks(loss_t)
        norm_sq = sync.grad_norm_squared()
        lr = learning_rate(step, schedule=c.lr_schedule, max_lr=c.learning_rate, warmup=c.warmup_iterations,
                           total=run.num_steps, final_fraction=c.final_lr_fraction)
        checked = loss_detector.threshold or norm_detector.threshold
        if checked:  # the z-scores decide whether to update: they need the values now
            loss, norm = _read_loss_and_norm(loss_t, norm_sq, f"step {step + 1}")
            _check_finite(step, loss, norm, run.ckpt)
            zloss, znorm = loss_detector.update(loss), norm_detector.update(norm)
        skipped = bool(checked) and (loss_detector.is_outlier(zloss) or norm_detector.is_outlier(znorm))
        if skipped:
            log.print(f"skipping the update of step {step}: loss z-score {zloss:+.2f}, norm z-score {znorm:+.2f}")
        else:
            run.optimizer.step_count = step  # AdamW's t is step + 1, also after skipped updates (as llm.c)
            run.optimizer.step(lr, grad_norm_squared=norm_sq, max_grad_norm=GRAD_CLIP)
            sync.gather_params()
        model.zero_grad()
        if not checked:
            loss, norm = _read_loss_and_norm(loss_t, norm_sq, f"step {step + 1}")
            _check_finite(step, loss, norm, run.ckpt)
            zloss, znorm = loss_detector.update(loss), norm_detector.update(norm)
        if checked:  # the loss was read before the update: wait for the update and its collectives too
            wait_for_device(run.device, f"step {step + 1}")
        seconds = time.perf_counter() - t0
        record = {"step": step, "loss": loss, "norm": norm, "lr": lr, "ms": 1000 * seconds,
                  "tokens_per_s": run.total_batch / seconds, "skipped": skipped}
        return record, (zloss, znorm), seconds

    def _forward_backward(self, run: "_Run", step: int):
        """The micro-steps of a step: forward and backward of each micro-batch, gradients accumulated; the last
        backward sends its gradients to the other ranks as they become final. Returns the mean loss as a device
        tensor (no host sync)."""
        model, sync, loader, grad_accum = run.model, run.sync, run.train_loader, run.grad_accum
        loss_t = None
        for micro_step in range(grad_accum):
            x, y = run.fixed_batch if run.fixed_batch is not None else loader.next_batch()
            try:
                micro = model.forward(x, y, grad_scale=1.0 / (grad_accum * self.world_size), sync=False)
            except ValueError as e:  # token ids the model cannot take: say which data holds them
                raise ValueError(f"training batch of step {step + 1} (rows from {', '.join(loader.last_files)}): "
                                 f"{e}") from None
            loss_t = micro / grad_accum if loss_t is None else loss_t + micro / grad_accum
            if micro_step == grad_accum - 1:
                sync.start_overlap()
            try:
                model.backward()
            except BaseException:
                sync.abort_overlap()  # no stale hook on the model if it is trained again
                raise
        return loss_t

    def _log_step(self, run: "_Run", log: "RunLog", record: dict, zscores: tuple[float, float], seconds: float,
                  started: float) -> None:
        """The step's console line, main.log and metrics.jsonl lines, and its entry in self.history."""
        step = record["step"]
        mfu = f" | {100 * run.flops_per_step / seconds / run.peak:.1f}% bf16 MFU" if run.peak else ""
        elapsed = time.perf_counter() - started
        eta = elapsed / (step + 1 - run.start_step) * (run.num_steps - step - 1)
        log.train(record, f"step {step + 1:4d}/{run.num_steps} | loss {record['loss']:.6f}{_z(zscores[0])} | norm "
                          f"{record['norm']:.4f}{_z(zscores[1])} | lr {record['lr']:.2e} | {record['ms']:.2f} ms{mfu} | "
                          f"{record['tokens_per_s']:.0f} tok/s | {_clock(elapsed)} elapsed, eta {_clock(eta)}")
        if step == run.start_step:
            log.print(_memory_in_use(run.device))
        self.history.append(record)

    def _summary(self, run: "_Run", seconds: float) -> str:
        """The end-of-run report: what was trained, how it went, where everything is."""
        vals, out_dir, ckpt = self.val_history, run.out_dir, run.ckpt
        steps = run.num_steps - run.start_step
        lines = [f"done: {steps} steps ({run.start_step} -> {run.num_steps}) in {_clock(seconds)}, "
                 f"{steps * run.total_batch:,} tokens"
                 + (f" ({steps * run.total_batch / seconds:,.0f} tokens/s)" if seconds > 0 else "")]
        if self.history:
            lines.append(f"final train loss {self.history[-1]['loss']:.4f}")
        if vals:
            best = min(vals, key=lambda v: v[1])
            lines.append(f"val loss {vals[-1][1]:.4f} at step {vals[-1][0]} (best {best[1]:.4f} at step {best[0]})")
        if out_dir is not None:
            lines.append(f"run directory {out_dir}: main.log (llm.c's lines), metrics.jsonl (every step)"
                         + (", samples.txt" if (out_dir / "samples.txt").exists() else ""))
            latest = ckpt.latest() if ckpt is not None else None
            if latest is not None:
                lines.append(f"model {ckpt.model_path(latest)} (llm.c format: llmc sample / eval / export take it; "
                             f"-y 1 resumes from its checkpoint)")
        return "\n".join(lines)

    # -- evaluation helpers -----------------------------------------------------------------------------
    def _sample(self, model) -> str:
        from .tokenizer import EOT, decode

        start = EOT if EOT < model.config.vocab_size else 0  # tiny test vocabularies lack GPT-2's EOT
        return decode(model.generate([start], self.config.gen_tokens, seed=self.config.seed)[1:])

    def _hellaswag_examples(self):
        """HellaSwag val examples (cached download), or None with a note when they cannot be had (as llm.c)."""
        from .eval import fetch_hellaswag, load_hellaswag

        try:
            return load_hellaswag(fetch_hellaswag("val"))
        except (RuntimeError, ValueError) as e:
            print(f"HellaSwag is not available, skipping its evaluation: {e}")
            return None


def _z(z: float) -> str:
    """A z-score for the step line, once the outlier window is full (nothing before)."""
    return f" ({z:+.2f}z)" if math.isfinite(z) else ""


CPU_SLOW_STEP_S = 10.0  # a CPU run whose steps take longer than this (at least) gets a warning before it starts


def _cpu_matmul_rate() -> float:
    """FLOP/s of an fp32 matrix product on this CPU with torch's current threads (best of three 512^3 products)."""
    import torch

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 512 ** 3 / max(best, 1e-9)


def _memory_in_use(device) -> str:
    """What the process holds after its first step, next to the memory plan printed before it: on the CPU its peak
    resident memory (the plan's buffers plus the reference ops' temporaries, torch and Python); on a GPU the most
    torch has reserved on the device."""
    import resource

    import torch

    if device.type == "cuda":
        return f"memory after the first step: {torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB reserved by " \
               f"torch on {device} at most (the plan above, plus temporaries and allocator slack)"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return f"memory after the first step: {peak / 2**30:.2f} GiB peak resident (the plan above, plus the reference " \
           f"ops' temporaries, torch and Python)"


@contextlib.contextmanager
def _deferred_interrupt(enabled: bool):
    """Yields a function that tells whether Ctrl-C (SIGINT) came. When enabled (and in the main thread), the first
    SIGINT only sets that flag, so the loop can finish the step and checkpoint it; a second one interrupts at
    once. Disabled, SIGINT interrupts as usual and the function stays False."""
    import signal
    import threading

    came = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if came:
            raise KeyboardInterrupt
        came.append(True)
        print("\nCtrl-C: finishing this step and writing its checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(came)
    finally:
        signal.signal(signal.SIGINT, previous)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _check_finite(step: int, loss: float, norm: float, ckpt) -> None:
    """Stop the run when the step's loss or gradient norm is not finite (nothing of this step is written)."""
    if math.isfinite(loss) and math.isfinite(norm):
        return
    last = ckpt.latest() if ckpt is not None else None
    raise RuntimeError(f"step {step + 1}: the loss is {loss} and the gradient norm {norm}: training diverged or the "
                       f"data is bad, so the run stops here without writing a checkpoint of it; "
                       + (f"resume from the checkpoint at step {last} (-y 1) with a lower learning rate (-l) or "
                          f"outlier skipping (-sl/-sg)" if last is not None else
                          "try a lower learning rate (-l) or outlier skipping (-sl/-sg)"))


def check_state(state: dict, path, step: int, world_size: int) -> None:
    """Check what a checkpoint's state file holds against the run and plain bounds (ValueError naming the file).
    The optimizer and the data loader check their own parts when they load them."""
    import torch

    def bad(what: str):
        raise ValueError(f"{path}: {what}; the state file is damaged or not from this run: use another checkpoint")

    required = ("step", "optimizer", "train_loader", "loss_detector", "norm_detector", "rng", "train_config",
                "world_size", "fp8", "cpu_threads")
    missing = [k for k in required if k not in state]
    if missing:
        bad(f"it lacks {missing}")
    if state["step"] != step or isinstance(state["step"], bool):
        bad(f"it holds step {state['step']!r}, but belongs to the checkpoint of step {step}")
    if state["world_size"] != world_size:
        bad(f"it was written by {state['world_size']!r} processes, this run has {world_size}")
    threads = state["cpu_threads"]
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or
                                not 1 <= threads <= max(1, os.cpu_count() or 1)):
        bad(f"cpu_threads is {threads!r}, not a thread count of this machine (1..{os.cpu_count()})")
    for name in ("loss_detector", "norm_detector"):
        d = state[name]
        ok = isinstance(d, dict) and isinstance(d.get("window"), list) and len(d["window"]) <= OUTLIER_WINDOW and \
            all(isinstance(v, float) and math.isfinite(v) for v in d["window"]) and \
            isinstance(d.get("outliers_in_a_row"), int) and 0 <= d["outliers_in_a_row"] < 3
        if not ok:
            bad(f"{name} is not a window of at most {OUTLIER_WINDOW} finite values")
    rng = state["rng"]
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
            and rng["torch"].shape == torch.get_rng_state().shape):
        bad("its random number generator state is not torch's")
    if not isinstance(state["train_config"], dict):
        bad("train_config is not a dict")


def _read_loss_and_norm(loss, norm_squared, what: str) -> tuple[float, float]:
    """The step's mean loss and global gradient norm as floats: the host waits for the GPU here (one sync; in an
    NCCL job with the collective timeout, see distributed.wait_for_device)."""
    import torch

    from .distributed import wait_for_device

    wait_for_device(loss.device, what)
    loss_value, norm_sq = torch.stack([loss.reshape(()), norm_squared.reshape(()).double()]).tolist()
    return loss_value, math.sqrt(norm_sq)


def rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def parse_model_spec(spec: str):
    """GPTConfig of a preset name (d6, d12, d24, ...) or of a custom size "d<layers>c<channels>[h<heads>][t<context>]"
    (e.g. d4c128: heads default to channels // 64, as GPT-2's head size 64, context to 1024)."""
    import re

    from .model import GPTConfig

    m = re.fullmatch(r"d(\d+)c(\d+)(?:h(\d+))?(?:t(\d+))?", spec)
    if m is None:
        try:
            return GPTConfig.from_preset(spec)
        except (KeyError, ValueError) as e:
            raise ValueError(f"model {spec!r} is neither a model file nor a preset ({e}); give a preset like d12, "
                             f"a custom size like d4c128 (layers, channels[, heads][, context]) or a model file") from None
    layers, channels = int(m.group(1)), int(m.group(2))
    heads = int(m.group(3)) if m.group(3) else max(1, channels // 64)
    context = int(m.group(4)) if m.group(4) else 1024
    return GPTConfig(n_layer=layers, n_head=heads, n_embd=channels, max_seq_len=context)
