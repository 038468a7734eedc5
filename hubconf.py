"""torch.hub entry points: `custom` for any local checkpoint, and one per model config in models/*.yaml.

    model = torch.hub.load('.', 'custom', path='best.pt', source='local')         # this project's or YOLOv5's .pt
    model = torch.hub.load('.', 'yolov5n_shuffle', source='local')                 # the repo's yolov5n_shuffle.pt
    model = torch.hub.load('.', 'yolov5s', pretrained=False, classes=3, source='local')  # random init from yaml
    results = model(['img.jpg', rgb_array, pil_image]); results.print(); results.save(); results.tolist()

Nothing is downloaded: pretrained weights are the local file <config>.pt in the repo root (WEIGHTS_DIR).
"""

import logging
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from inference.autoshape import AutoShape
from inference.backends import DetectMultiBackend, backend_kind
from models.experimental import attempt_load
from models.yolo import DetectionModel
from utils.logger import LOGGER
from utils.torch_utils import select_device

dependencies = ["torch", "torchvision", "yaml", "cv2", "numpy", "PIL"]  # checked by torch.hub before loading

ROOT = Path(__file__).resolve().parent
WEIGHTS_DIR = ROOT  # where pretrained=True looks for <config>.pt


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else select_device("" if device is None else str(device))


def _nc(model: nn.Module) -> int:
    """Class count of a model (older objects lack the `nc` attribute; the Detect head always has it)."""
    return int(getattr(model, "nc", None) or model.model[-1].nc)


def _transfer(model: nn.Module, cfg: Path, channels: int, classes: Optional[int], source: Path) -> nn.Module:
    """A new model from cfg with `channels`/`classes`, given every pretrained tensor whose name and shape match."""
    new = DetectionModel(cfg, ch=channels, nc=classes or _nc(model))
    if _nc(new) == _nc(model):
        new.names = model.names
    own = new.state_dict()
    matched = {k: v for k, v in model.float().state_dict().items() if k in own and v.shape == own[k].shape}
    new.load_state_dict(matched, strict=False)
    LOGGER.info(f"Transferred {len(matched)}/{len(own)} items from {source}")
    return new


def _create(name: str, pretrained: bool = True, channels: int = 3, classes: Optional[int] = None,
            autoshape: bool = True, verbose: bool = True, device=None, trust: bool = False) -> nn.Module:
    """Model `name` (a models/<name>.yaml): pretrained from WEIGHTS_DIR/<name>.pt, else randomly initialised.

    classes: None keeps the checkpoint's (or the yaml's) class count; another value rebuilds the head and keeps
    every matching pretrained tensor. autoshape wraps the model for file/array/PIL inputs (see inference/autoshape.py).
    """
    if not verbose:
        LOGGER.setLevel(logging.WARNING)
    cfg = ROOT / "models" / f"{name}.yaml"
    if Path(name).name != name or name in ("", ".", "..") or not cfg.is_file():  # a bare config name, no path
        known = ", ".join(sorted(p.stem for p in (ROOT / "models").glob("*.yaml")))
        raise ValueError(f"unknown model '{name}'. Known: {known}; or use custom(path='your.pt')")
    device = _device(device)
    if pretrained:
        weights = Path(WEIGHTS_DIR) / f"{name}.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"{name}: pretrained=True needs the local file {weights}, and this project never "
                                    f"downloads weights. Use pretrained=False for a randomly initialised {name}, "
                                    f"or custom(path='your.pt') for a checkpoint you have")
        model = attempt_load(weights, device=device, fuse=autoshape, trust=trust)
        if channels != 3 or (classes and classes != _nc(model)):
            model = _transfer(attempt_load(weights, fuse=False, trust=trust), cfg, channels, classes, weights)
    else:
        model = DetectionModel(cfg, ch=channels, nc=classes)
    model = model.to(device)
    return AutoShape(model, verbose=verbose) if autoshape else model


def custom(path: Union[str, Path] = "path/to/model.pt", autoshape: bool = True, _verbose: bool = True, device=None,
           trust: bool = False) -> nn.Module:
    """A local checkpoint (this project's or YOLOv5's; legacy pickles need trust=True or YOLOV5_TRUST_WEIGHTS=1), or
    any file export.py writes (.torchscript, .onnx, _int8.onnx, *_openvino_model/, *_ncnn_model/)."""
    if not _verbose:
        LOGGER.setLevel(logging.WARNING)
    if backend_kind(path) != "pytorch":
        model = DetectMultiBackend(path, device=_device(device))
        return AutoShape(model, verbose=_verbose) if autoshape else model
    model = attempt_load(path, device=_device(device), fuse=autoshape, trust=trust)
    return AutoShape(model, verbose=_verbose) if autoshape else model


# One entry point per shipped config: torch.hub.load('.', name, ...) and hubconf.<name>(...) look them up by name.
CONFIGS = {
    "yolov5n": "YOLOv5-nano (models/yolov5n.yaml)",
    "yolov5s": "YOLOv5-small (models/yolov5s.yaml)",
    "yolov5m": "YOLOv5-medium (models/yolov5m.yaml)",
    "yolov5l": "YOLOv5-large (models/yolov5l.yaml)",
    "yolov5x": "YOLOv5-xlarge (models/yolov5x.yaml)",
    "yolov5_shuffle": "The seed design: YOLOv5l head on a ShuffleNetV2 backbone (models/yolov5_shuffle.yaml)",
    "yolov5n_shuffle": "ShuffleNetV2 backbone at YOLOv5n scale; the repo ships yolov5n_shuffle.pt",
    "yolov5s_shuffle": "ShuffleNetV2 backbone at YOLOv5s scale (models/yolov5s_shuffle.yaml)",
    "yolov5m_shuffle": "ShuffleNetV2 backbone at YOLOv5m scale (models/yolov5m_shuffle.yaml)",
    "yolov5l_shuffle": "ShuffleNetV2 backbone at YOLOv5l scale (models/yolov5l_shuffle.yaml = yolov5_shuffle.yaml)",
    "yolov5x_shuffle": "ShuffleNetV2 backbone at YOLOv5x scale (models/yolov5x_shuffle.yaml)",
    "yolov5n_shuffle_cpu": "ShuffleNetV2-style model designed for CPU latency, scale n; the repo ships yolov5n_shuffle_cpu.pt",
    "yolov5s_shuffle_cpu": "ShuffleNetV2-style model designed for CPU latency, scale s (models/yolov5s_shuffle_cpu.yaml)",
}


def _entry_point(name: str, doc: str):
    def entry(pretrained=True, channels=3, classes=None, autoshape=True, _verbose=True, device=None, trust=False):
        return _create(name, pretrained, channels, classes, autoshape, _verbose, device, trust)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{doc}. See _create() for the arguments."
    return entry


globals().update({name: _entry_point(name, doc) for name, doc in CONFIGS.items()})
