"""llmc: llm.c's GPT-2 training kernels as a Python package.

`import llmc` stays light: the CUDA extension loads on the first CUDA op, and the model, trainer and
data tools load when first touched.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ops": ("llmc.ops", None),
    "reference": ("llmc.reference", None),
    "cuda_available": ("llmc.ops", "cuda_available"),
    "build_info": ("llmc.ops", "build_info"),
    "functional": ("llmc.functional", None),
    "nn": ("llmc.nn", None),
    "GPT": ("llmc.model", "GPT"),
    "GPTConfig": ("llmc.model", "GPTConfig"),
    "Trainer": ("llmc.trainer", "Trainer"),
    "TrainConfig": ("llmc.trainer", "TrainConfig"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'llmc' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
