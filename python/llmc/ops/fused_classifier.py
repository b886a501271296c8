"""The output layer's loss: cross-entropy per position and its gradient in one pass over the logits, which it
overwrites with dlogits."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .._validate import check_int
from .common import (check_bool, check_float, check_index, check_multiple_of, check_real, check_same_device,
                     extension, output, stream_handle)


def fused_classifier(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, dloss: Optional[float] = None,
                     losses: Optional[torch.Tensor] = None, *, validate: bool = True) -> torch.Tensor:
    """Cross-entropy per position and its gradient in one pass. `logits` (N, Vp) (or (B, T, Vp)) is OVERWRITTEN
    with dlogits = (softmax - onehot(target)) * dloss over the first `vocab_size` columns, 0 in the padding
    columns vocab_size..Vp-1. `targets` (N) (or (B, T)) int32, -1 = ignore: loss 0 and a zero gradient row.
    `dloss` defaults to 1 / (number of non-ignored targets), so sum(losses) * dloss is the mean loss and dlogits
    its gradient. Returns the per-position losses, fp32. The targets' range is checked on their device, which
    waits for it (one host synchronisation); validate=False (only with an explicit dloss) skips that check for
    callers that validated the targets already: an out-of-range target then reads outside its row."""
    check_float(logits, "logits")
    check_index(targets, "targets")
    check_bool(validate, "validate")
    device = check_same_device(logits=logits, targets=targets, losses=losses)
    cuda = device.type == "cuda"
    if logits.dim() < 2 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match: expected "
                         f"logits (N, Vp) with targets (N), or logits (B, T, Vp) with targets (B, T)")
    Vp, N = logits.shape[-1], targets.numel()
    V = check_int(vocab_size, "vocab_size", 1)
    if V > Vp:
        raise ValueError(f"vocab_size={V} is larger than logits.shape[-1]={Vp}, the padded vocabulary; the logits "
                         f"need at least vocab_size columns")
    if dloss is not None:
        dloss = check_real(dloss, "dloss")
    losses = output(losses, "losses", targets.shape, torch.float32, device)
    if cuda:
        check_multiple_of(Vp, 8, "the padded vocabulary size logits.shape[-1]")
        if N >= 2**31:
            raise ValueError(f"{N} positions is too many for one call (the kernel runs one block per position); "
                             f"split the rows into chunks below 2**31")
    if not validate and dloss is None:
        raise ValueError("validate=False needs an explicit dloss (the default dloss counts the targets)")
    bad, count = torch.stack([((targets < -1) | (targets >= V)).sum(), (targets >= 0).sum()]).tolist() \
        if validate or not cuda else (0, 0)
    if bad:
        raise ValueError(f"targets has {bad} entries outside [0, {V}) that are not -1 (ignore); every target must "
                         f"be a token id below vocab_size={V} or -1")
    if dloss is None:
        dloss = 1.0 / max(count, 1)
    if cuda:
        extension().fused_classifier(logits.data_ptr(), losses.data_ptr(), targets.data_ptr(), dloss, N, V, Vp,
                                     stream_handle(device))
    else:
        row_losses, dlogits = reference.fused_classifier(logits, targets, V, dloss)
        logits.copy_(dlogits)
        losses.copy_(row_losses)
    return losses
