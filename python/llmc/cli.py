"""`llmc <command>`: train, prepare, eval, sample, export, plot.

`llmc train` takes llm.c train_gpt2cu's flags (-i -j -o -e -b -t -d -x -l -u -q -c -k -v -m -s -g -n -nk -y -r -z
-w -sl -sg -h -ge -a), so a train_gpt2cu command line runs with `./train_gpt2cu` replaced by `llmc train`, and
the same options under readable long names. With no arguments at all it runs the quickstart job
(TrainConfig.quickstart: the built-in corpus, d12 on a GPU, a tiny model on a CPU, output in runs/quickstart).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

from ._validate import FP8_MODES

COMMANDS = {
    "train": ("llmc.cli", "train_main", "train GPT-2 (llm.c's train_gpt2cu flags work)"),
    "prepare": ("llmc.prepare", "main", "tokenize a corpus into llm.c shards"),
    "eval": ("llmc.eval", "main", "validation loss / HellaSwag of a model file"),
    "sample": ("llmc.eval", "sample_main", "sample text from a model file"),
    "export": ("llmc.hf", "main", "export a model file to Hugging Face transformers"),
    "plot": ("llmc.plot", "main", "plot training curves from main.log files"),
}


def _flag(text: str) -> bool:
    """llm.c's 0/1 switches (also true/false, yes/no)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")


def _fp8_mode(text: str):
    """--fp8: a 0/1 switch, or one of FP8_MODES."""
    if text.strip().lower() in FP8_MODES:
        return text.strip().lower()
    try:
        return _flag(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("expected 0, 1, " + ", ".join(FP8_MODES) + f"; got {text!r}") from None


# (llm.c flag, long option, TrainConfig field, type, help); the defaults are TrainConfig's.
TRAIN_OPTIONS = [
    ("-i", "--input-train", "input_train", str, "train shard glob (default: the built-in Python-docs corpus)"),
    ("-j", "--input-val", "input_val", str, "val shard glob (default: the built-in corpus's, when -i is not given)"),
    ("-o", "--output-dir", "output_dir", str, "log and checkpoint directory (default: none, no files)"),
    ("-e", "--model", "model", str, "preset (d6 d12 d24 d36 d48 ...), custom size like d4c128[h4][t256], or an "
                                    "llm.c model file (default d12)"),
    ("-b", "--batch-size", "batch_size", int, "micro-batch size B per GPU (default 4)"),
    ("-t", "--seq-len", "seq_len", int, "sequence length T (default 1024)"),
    ("-d", "--total-batch-size", "total_batch_size", int, "tokens per step; gradient accumulation makes up the "
                                                          "rest (default B*T, no accumulation)"),
    ("-x", "--num-iterations", "num_iterations", int, "optimization steps (default -1: one epoch)"),
    ("-l", "--learning-rate", "learning_rate", float, "peak learning rate (default 3e-4)"),
    ("-u", "--warmup-iterations", "warmup_iterations", int, "linear warmup steps (default 0)"),
    ("-q", "--final-lr-fraction", "final_lr_fraction", float, "final lr as a fraction of the peak (default 1.0)"),
    ("-k", "--lr-schedule", "lr_schedule", str, "cosine, linear, constant or wsd (default cosine)"),
    ("-c", "--weight-decay", "weight_decay", float, "AdamW weight decay of the 2-D weights (default 0)"),
    ("-v", "--val-every", "val_every", int, "validate every N steps, 0: never (default 20)"),
    ("-m", "--val-max-steps", "val_max_steps", int, "validation batches, -1: all (default 20)"),
    ("-s", "--sample-every", "sample_every", int, "sample text every N steps, 0: never (default 20)"),
    ("-g", "--gen-tokens", "gen_tokens", int, "tokens per sample (default 64)"),
    ("-n", "--checkpoint-every", "checkpoint_every", int, "checkpoint every N steps, 0: only the final one "
                                                         "(a run with -o always ends with one; default 0)"),
    ("-nk", "--keep-last", "keep_last", int, "checkpoints to keep, 0: all (default 0)"),
    ("-y", "--resume", "resume", _flag, "1: continue from the latest complete checkpoint in -o (default 0)"),
    ("-r", "--recompute", "recompute", int, "0: none, 1: recompute GELU, 2: GELU and layernorms (default 1)"),
    ("-z", "--zero-stage", "zero_stage", int, "ZeRO stage with several GPUs: 0 all-reduce, 1 sharded optimizer "
                                              "state (default -1: 1 with several processes, else 0)"),
    ("-w", "--master-weights", "master_weights", _flag, "keep fp32 master weights (default 1)"),
    ("-sl", "--skip-update-lossz", "skip_update_lossz", float, "skip updates whose loss z-score exceeds this, "
                                                               "0: off (default 0)"),
    ("-sg", "--skip-update-gradz", "skip_update_gradz", float, "same for the gradient norm (default 0)"),
    ("-h", "--hellaswag", "hellaswag", _flag, "1: HellaSwag accuracy at each validation (default 0)"),
    ("-ge", "--gelu-fusion", "gelu_fusion", int, "0: GELU as its own kernel, 1: fused into fc's forward matmul, "
                                                 "2: also into fcproj's backward (default -1: the model's)"),
    ("-a", "--overfit-single-batch", "overfit_single_batch", _flag, "1: train on one batch, for debugging"),
    (None, "--seed", "seed", int, "seed of init, data order and rounding (default 1337)"),
    (None, "--restart", "restart", _flag, "1: start over in an -o that holds an earlier run, whose files move to "
                                          "-o/earlier-<time>/ (default 0: such a run is refused)"),
    (None, "--shuffle", "shuffle", _flag, "0: read the training rows in order, as llm.c without shuffling "
                                          "(default 1: a random order from --seed)"),
    (None, "--device", "device", str, "cuda, cpu or auto (default)"),
    (None, "--dist-timeout", "dist_timeout", float, "seconds a collective may wait for the other ranks before the "
                                                    "job fails (default 600)"),
    (None, "--loss-chunk", "loss_chunk", int, "positions per chunk of the output layer and loss: the logits buffer "
                                              "holds that many rows instead of B*T (default {loss_chunk}; 0: all at "
                                              "once)"),
    (None, "--fp8", "fp8", _fp8_mode, "1: the MLP's first matmul (fc's forward) in FP8 on an H100-class GPU; "
                                      "blocks: all four linear layers of every block in FP8, forward and backward, "
                                      "with block scales; rows: the same with one scale per row (opt-in; default "
                                      "0, bf16)"),
    (None, "--save-on-interrupt", "save_on_interrupt", _flag, "1: Ctrl-C finishes the step and writes its "
                                                              "checkpoint before stopping (one process, with -o)"),
    (None, "--log", "log", str, "also log to tensorboard (into -o/tensorboard/), wandb, or both: "
                                "'tensorboard,wandb' (optional extras; WANDB_MODE=offline works without a network)"),
    (None, "--deterministic", "deterministic", _flag, "0: cuDNN's faster attention backward, whose dQ sums in "
                                                      "atomic order (not bit-reproducible; default 1)"),
]


def train_parser() -> argparse.ArgumentParser:
    from .model import DEFAULT_LOSS_CHUNK

    # add_help=False: -h is llm.c's HellaSwag switch; --help stays. allow_abbrev=False: -s must not match -sl.
    p = argparse.ArgumentParser(prog="llmc train", add_help=False, allow_abbrev=False,
                                description="Train GPT-2 on llm.c token shards. Takes llm.c train_gpt2cu's flags; "
                                            "with no arguments runs the quickstart job on the built-in corpus.")
    p.add_argument("--help", action="help", help="show this help and exit")
    for short, long, field, kind, text in TRAIN_OPTIONS:
        names = [short, long] if short else [long]
        p.add_argument(*names, dest=field, type=kind, default=None, metavar=field.upper(),
                       help=text.format(loss_chunk=DEFAULT_LOSS_CHUNK))
    return p


def train_config(argv: list[str]):
    """The TrainConfig that `llmc train argv` runs."""
    from .trainer import TrainConfig

    if not argv:
        from .ops import cuda_available

        return TrainConfig.quickstart("cuda" if cuda_available() else "cpu")
    parser = train_parser()
    for i, arg in enumerate(argv):  # -h without a value asks for help; -h 0/1 is llm.c's HellaSwag switch
        if arg == "-h" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            parser.print_help()
            raise SystemExit(0)
    args = parser.parse_args(argv)
    return TrainConfig(**{k: v for k, v in vars(args).items() if v is not None})


def train_main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[2:] if argv is None else list(argv)
    config = train_config(argv)
    try:
        from .trainer import Trainer

        Trainer(None, config).fit()
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        print(f"llmc train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llmc train: interrupted", file=sys.stderr)
        return 130
    return 0


def _usage() -> str:
    lines = ["usage: llmc <command> [options]   (llmc <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"llmc {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"llmc: unknown command {command!r}\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"llmc {command}: this installation of llmc has no {module_name} module yet", file=sys.stderr)
        return 2
    return int(getattr(module, function)(rest) or 0)
