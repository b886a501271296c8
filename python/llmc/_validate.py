"""Argument checks shared by the modules (no torch import: llmc.data and llmc.prepare stay light)."""
from __future__ import annotations

import operator
from typing import Optional


def check_int(value, name: str, low: int, high: Optional[int] = None) -> int:
    """An integer (Python or numpy, not a bool) in [low, high); TypeError / ValueError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if high is None and value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    if high is not None and not low <= value < high:
        raise ValueError(f"{name} = {value} is outside [{low}, {high})")
    return value


FP8_MODES = ("blocks", "rows")  # fp8 values (besides False and True) that run all four linears of a block in FP8


def check_fp8(value, name: str = "fp8"):
    """GPT's and TrainConfig's fp8: False, True or one of FP8_MODES; TypeError otherwise."""
    if not (isinstance(value, bool) or value in FP8_MODES):
        raise TypeError(f"{name} must be False, True, " + ", ".join(repr(m) for m in FP8_MODES) + f", got {value!r}")
    return value
