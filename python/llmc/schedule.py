"""The learning-rate schedules of llm.c (cosine, linear, constant, wsd) and the z-score outlier detector behind
-sl/-sg (skip an update whose loss or gradient norm is an outlier over the last OUTLIER_WINDOW steps)."""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant", "wsd")
OUTLIER_WINDOW = 64


def learning_rate(step: int, *, schedule: str, max_lr: float, warmup: int, total: int, final_fraction: float) -> float:
    """llm.c's schedules: linear warmup over `warmup` steps to max_lr, then cosine / linear decay to
    max_lr*final_fraction at step `total`, or wsd (constant, then 1-sqrt decay over the last 20%); constant is
    max_lr at every step, without warmup (as llm.c's)."""
    if schedule == "constant":
        return max_lr
    if step < warmup:
        return max_lr * (step + 1) / warmup
    min_lr = max_lr * final_fraction
    if schedule == "wsd":
        decay_start = int(0.8 * total)
        if step < decay_start:
            return max_lr
        ratio = (step - decay_start) / max(1, total - decay_start)
        return min_lr + (1.0 - math.sqrt(ratio)) * (max_lr - min_lr)
    ratio = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max_lr - ratio * (max_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


class OutlierDetector:
    """z-score of each new value against the previous OUTLIER_WINDOW values (nan until the window is full).
    With a threshold, a value above it is kept out of the window (so outliers do not loosen the detector),
    except on the third outlier in a row, so a lasting change of level is eventually accepted (as llm.c)."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = threshold
        self.window: list[float] = []
        self.outliers_in_a_row = 0

    def update(self, value: float) -> float:
        if len(self.window) < OUTLIER_WINDOW:
            self.window.append(value)
            return float("nan")
        mean = math.fsum(self.window) / OUTLIER_WINDOW
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in self.window) / OUTLIER_WINDOW)
        z = 0.0 if std == 0.0 else (value - mean) / std
        if self.threshold and z > self.threshold:
            self.outliers_in_a_row += 1
            if self.outliers_in_a_row < 3:
                return z
        else:
            self.outliers_in_a_row = 0
        self.window = self.window[1:] + [value]
        return z

    def is_outlier(self, z: float) -> bool:
        return bool(self.threshold) and math.isfinite(z) and z > self.threshold

    def state_dict(self) -> dict:
        return {"window": list(self.window), "outliers_in_a_row": self.outliers_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.window = list(state["window"])
        self.outliers_in_a_row = int(state["outliers_in_a_row"])
