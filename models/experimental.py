"""Loading trained weights for inference: `attempt_load` (one checkpoint or an ensemble of several)."""

from pathlib import Path
from typing import List, Union

import torch
import torch.nn as nn

from models.yolo import Detect, DetectionModel
from models.checkpoint import load_checkpoint
from utils.logger import LOGGER
from utils.results import names_dict


class Ensemble(nn.ModuleList):
    """Several models run on the same input; their decoded predictions are concatenated for NMS."""

    def forward(self, x, augment=False, profile=False, visualize=False):
        y = [m(x, augment, profile, visualize)[0] for m in self]
        return torch.cat(y, 1), None


def model_from_checkpoint(ckpt, source="checkpoint") -> nn.Module:
    """The network inside a loaded checkpoint dict (EMA preferred), as FP32 in eval mode, YOLOv5-compatible."""
    if isinstance(ckpt, nn.Module):
        model = ckpt
    elif isinstance(ckpt, dict) and (ckpt.get("ema") or ckpt.get("model")) is not None:
        model = ckpt.get("ema") or ckpt["model"]
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{source}: this is a bare state_dict (tensors only, no model). Build the model from its "
                         f"yaml and load it with model.load_state_dict(), or start training with --cfg and --weights")
    else:
        raise ValueError(f"{source}: not a YOLOv5 checkpoint (expected a dict with a 'model' or 'ema' entry)")
    if not isinstance(model, nn.Module) or not hasattr(model, "model"):
        raise ValueError(f"{source}: the 'model' entry is a {type(model).__name__}, not a YOLOv5 DetectionModel")
    model = model.float()
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    if not hasattr(model, "nc") and isinstance(model.model[-1], Detect):  # set by train.py; absent on fresh models
        model.nc = model.model[-1].nc
    if isinstance(getattr(model, "names", None), (list, tuple)):
        model.names = names_dict(model.names)
    return _upgrade(model)


def _upgrade(model: nn.Module) -> nn.Module:
    """Patch modules pickled by older torch/YOLOv5 versions so today's forward runs on them."""
    for m in model.modules():
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
        elif isinstance(m, Detect):
            if not isinstance(m.anchor_grid, list):  # v5.0-era checkpoints kept it as a buffer
                delattr(m, "anchor_grid")
                m.anchor_grid = [torch.zeros(1)] * m.nl
            m.grid = [torch.empty(0)] * m.nl
    return model


def attempt_load(weights: Union[str, Path, List], device=None, inplace=True, fuse=True, trust=False) -> nn.Module:
    """Load one checkpoint (or a list, as an Ensemble) for inference: EMA preferred, FP32, eval, optionally fused."""
    paths = weights if isinstance(weights, (list, tuple)) else [weights]
    models = []
    for w in paths:
        model = model_from_checkpoint(load_checkpoint(w, trust=trust), source=str(w)).to(device or "cpu")
        if fuse and hasattr(model, "fuse"):
            model.fuse()
        models.append(model.eval())
        for m in model.modules():
            if isinstance(m, Detect):
                m.inplace = inplace
    if len(models) == 1:
        return models[0]
    ensemble = Ensemble(models)
    for k in ("names", "nc", "yaml"):
        setattr(ensemble, k, getattr(models[0], k))
    ensemble.stride = models[int(torch.argmax(torch.tensor([m.stride.max() for m in models])))].stride
    if len({m.nc for m in models}) > 1:
        raise ValueError(f"ensemble members have different class counts: {[m.nc for m in models]}")
    LOGGER.info(f"Ensemble created with {[str(w) for w in paths]}")
    return ensemble


__all__ = ["attempt_load", "Ensemble", "model_from_checkpoint", "DetectionModel"]
