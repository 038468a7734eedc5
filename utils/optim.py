"""Optimizer with YOLOv5's three parameter groups, the per-epoch LR lambdas (linear, cosine) and EarlyStopping."""

from __future__ import annotations

import inspect
import math
from typing import Callable, List

import torch
import torch.nn as nn

from utils.logger import LOGGER, colorstr

OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSProp")
NORM_TYPES = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))  # BatchNorm2d, ...
# The list ('foreach') form of each optimizer's update: the same per-tensor arithmetic, so the same bits, with one
# dispatch per op for all tensors instead of one per tensor: AdamW's step over yolov5n_shuffle's 178 tensors takes
# 13.6 -> 7.4 ms on a 2-core CPU (torch picks it by itself on CUDA, but not on CPUs). Torch < 1.12 lacks the argument.
FOREACH = "foreach" in inspect.signature(torch.optim.AdamW).parameters


def _param_groups(model: nn.Module) -> tuple:
    """Split parameters into (biases, decayed weights, norm-layer weights), each a list, in module order."""
    biases: List[nn.Parameter] = []
    decayed: List[nn.Parameter] = []
    norm_weights: List[nn.Parameter] = []
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES) or "Norm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(p)
            elif name == "weight" and is_norm:
                norm_weights.append(p)
            else:
                decayed.append(p)
    return biases, decayed, norm_weights


def smart_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.001, momentum: float = 0.9,
                    decay: float = 1e-5) -> torch.optim.Optimizer:
    """Build `name` over three param groups in this order: [0] biases (no decay), [1] other weights (weight decay
    `decay`), [2] norm-layer weights (no decay). Group 0 is the one warmed up from warmup_bias_lr."""
    biases, decayed, norm_weights = _param_groups(model)
    fe = {"foreach": True} if FOREACH else {}
    if name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True, **fe)
    elif name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999), **fe)
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0, **fe)
    elif name == "RMSProp":
        optimizer = torch.optim.RMSprop(biases, lr=lr, momentum=momentum, **fe)
    else:
        raise ValueError(f"--optimizer {name!r} is not supported; choose one of {', '.join(OPTIMIZERS)}")
    optimizer.add_param_group({"params": decayed, "weight_decay": decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    LOGGER.info(f"{colorstr('optimizer:')} {type(optimizer).__name__}(lr={lr}) with parameter groups "
                f"{len(norm_weights)} weight(decay=0.0), {len(decayed)} weight(decay={decay}), {len(biases)} bias")
    return optimizer


class CosineLR:
    """Cosine ramp from y1 at epoch 0 to y2 at epoch `steps`: ((1 - cos(pi e / steps)) / 2) (y2 - y1) + y1."""

    def __init__(self, y1: float = 0.0, y2: float = 1.0, steps: int = 100):
        self.y1, self.y2, self.steps = y1, y2, steps

    def __call__(self, epoch: float) -> float:
        return ((1 - math.cos(epoch * math.pi / self.steps)) / 2) * (self.y2 - self.y1) + self.y1


class LinearLR:
    """Linear decay of the LR factor from 1 at epoch 0 to lrf at epoch `epochs`: (1 - e/E)(1 - lrf) + lrf."""

    def __init__(self, lrf: float, epochs: int):
        self.lrf, self.epochs = lrf, epochs

    def __call__(self, epoch: float) -> float:
        return (1 - epoch / self.epochs) * (1.0 - self.lrf) + self.lrf


def one_cycle(y1: float = 0.0, y2: float = 1.0, steps: int = 100) -> CosineLR:
    """YOLOv5's name for the cosine ramp; train.py uses one_cycle(1, lrf, epochs) for --cos-lr."""
    return CosineLR(y1, y2, steps)


def lr_lambda(cos_lr: bool, lrf: float, epochs: int) -> Callable[[float], float]:
    """The picklable LambdaLR factor for a run: cosine 1 -> lrf if cos_lr, else linear 1 -> lrf, over `epochs`."""
    return CosineLR(1.0, lrf, epochs) if cos_lr else LinearLR(lrf, epochs)


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs; fitness equal to the best counts as improvement
    (YOLOv5 v7.0). patience 0 (or None) never stops."""

    def __init__(self, patience: int = 30):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience or float("inf")
        self.possible_stop = False  # True one epoch before a stop, so a caller can save a last checkpoint

    def __call__(self, epoch: int, fitness: float) -> bool:
        """Record this epoch's fitness; True when training should stop."""
        if fitness >= self.best_fitness:
            self.best_epoch = epoch
            self.best_fitness = fitness
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= (self.patience - 1)
        stop = delta >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early: no improvement in the last {self.patience} epochs. The best "
                        f"results were at epoch {self.best_epoch} and are saved as best.pt. Pass --patience N to "
                        "change the patience, or --patience 0 to disable early stopping.")
        return stop
