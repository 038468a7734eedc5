"""Start a ShuffleNetV2 backbone from torchvision's ImageNet weights: key mapping, width checks, folded input norm.

The model must come from a config with torchvision's widths (models/shufflenetv2/*.yaml). Layers 0..6 (stem and
stages 2-4) take the weights; torchvision's conv5 and fc have no counterpart and are skipped.
"""

from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
import torch.nn as nn

from models.common import Conv_maxpool, ShuffleNetV2_InvertedResidual
from utils.logger import LOGGER

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for inputs in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_BN_EPS = 1e-5  # torchvision's BatchNorm2d default; our models use YOLOv5's 1e-3
STAGES = ("stage2", "stage3", "stage4")
# torchvision's ShuffleNetV2 sizes: stage widths -> config suffix (models/shufflenetv2/yolov5{n,s}_shufflenetv2_*)
TORCHVISION_WIDTHS = {(48, 96, 192): "x0_5", (116, 232, 464): "x1_0", (176, 352, 704): "x1_5",
                      (244, 488, 976): "x2_0"}
_DW_BIASES = ("branch1.0.bias", "branch2.3.bias")  # the seed's depth-wise conv biases; torchvision has none
_EXAMPLE_CFG = "models/shufflenetv2/yolov5s_shufflenetv2_{}.yaml"

StateDict = Dict[str, torch.Tensor]


def load_shufflenet_backbone(model: nn.Module, weights: Union[str, Path, dict], normalize: bool = True) -> int:
    """Copy a torchvision ShuffleNetV2 state_dict into the model's stem and stages; return the tensors copied.

    `weights` is a .pth path (a state_dict, or a dict with a 'state_dict'/'model' entry) or a state_dict.
    With `normalize`, ImageNet's mean/std is folded into the stem so the model keeps taking RGB/255 input.
    Raises ValueError when the file is not a ShuffleNetV2 state_dict or its widths/depths differ from the model's.
    """
    sd, name = read_state_dict(weights)
    cfg = _cfg_name(model)
    stem, stages = backbone_units(model)
    _check_shapes(sd, stem, stages, name, cfg)
    n = _load_module(stem.conv, _sub_dict(sd, "conv1."), name, "conv1")
    for stage, units in zip(STAGES, stages):
        for j, unit in enumerate(units):
            n += _load_module(unit, _sub_dict(sd, f"{stage}.{j}."), name, f"{stage}.{j}", zero=_DW_BIASES)
    loaded = [stem] + [unit for units in stages for unit in units]
    _match_bn_eps([m for layer in loaded for m in layer.modules() if isinstance(m, nn.BatchNorm2d)])
    if normalize:
        fold_input_normalization(stem.conv[0], stem.conv[1], IMAGENET_MEAN, IMAGENET_STD)
    rows = pretrained_backbone_layers(model)
    LOGGER.info(f"Transferred {n}/{len(sd)} tensors from {name} into layers 0-{rows - 1} "
                f"({len(sd) - n} unused: conv5, fc); depth-wise conv biases set to 0"
                + ("; ImageNet mean/std folded into the stem" if normalize else "")
                + f". --freeze {rows} freezes exactly these layers")
    return n


def read_state_dict(weights: Union[str, Path, dict]) -> Tuple[StateDict, str]:
    """(state_dict, display name) from a path or a dict; unwraps 'state_dict'/'model' entries and 'module.'."""
    if isinstance(weights, dict):
        sd, name = weights, "state_dict"
    else:
        path = Path(weights)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: backbone weights file not found. This project never downloads; copy "
                                    f"torchvision's shufflenetv2_*.pth to this machine and pass its path")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load fails in many ways on files that are not what we expect
            raise ValueError(f"{name}: not a plain state_dict (torch.load(weights_only=True) refused it: "
                             f"{str(e).splitlines()[0]}). --backbone-weights takes torchvision's ShuffleNetV2 .pth; "
                             f"a YOLOv5 checkpoint goes to --weights") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{name}: expected a state_dict (names -> tensors), got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DataParallel wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    required = ["conv1.0.weight"] + [f"{s}.0.branch1.0.weight" for s in STAGES]
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"{name}: not a torchvision ShuffleNetV2 state_dict: no {', '.join(missing)} "
                         f"(its first keys: {', '.join(list(sd)[:3]) or 'none'}). Expected the keys of "
                         f"torchvision.models.shufflenet_v2_x1_0().state_dict(): conv1.*, stage2-4.*, conv5.*, fc.*")
    return sd, name


def backbone_units(model: nn.Module) -> Tuple[Conv_maxpool, List[List[ShuffleNetV2_InvertedResidual]]]:
    """The stem (layer 0) and the ShuffleNetV2 units of the layers after it, split into stages at stride-2 units."""
    layers = _layers(model)
    if not isinstance(layers[0], Conv_maxpool):
        raise ValueError(f"{_cfg_name(model)}: layer 0 is {type(layers[0]).__name__}, not Conv_maxpool, so the model "
                         f"has no ShuffleNetV2 backbone to load; use e.g. {_EXAMPLE_CFG.format('x1_0')}")
    stages: List[List[ShuffleNetV2_InvertedResidual]] = []
    for layer in layers[1:pretrained_backbone_layers(model)]:
        for unit in (layer if isinstance(layer, nn.Sequential) else [layer]):
            if unit.stride == 2 or not stages:
                stages.append([])
            stages[-1].append(unit)
    return layers[0], stages


def pretrained_backbone_layers(model: nn.Module) -> int:
    """How many leading layers (stem + ShuffleNetV2 rows) a backbone file fills: the N of `--freeze N` (7 here)."""
    layers = _layers(model)
    n = 1 if isinstance(layers[0], Conv_maxpool) else 0
    while n and n < len(layers) and _is_unit_row(layers[n]):
        n += 1
    return n


def fold_input_normalization(conv: nn.Conv2d, bn: nn.BatchNorm2d, mean, std) -> None:
    """Make conv+bn on x give what they gave on (x − mean) / std, per input channel (in place).

    conv((x − m)/s) = conv'(x) − Σ w·m/s with w' = w/s; the constant moves into bn.running_mean. Exact in eval
    mode away from the image border (zero padding of x is not zero padding of (x − m)/s); in train mode the
    batch mean absorbs the constant anyway.
    """
    with torch.no_grad():
        w = conv.weight.double()
        m = torch.tensor(mean, dtype=torch.float64, device=w.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float64, device=w.device).view(1, -1, 1, 1)
        offset = (w * m / s).sum((1, 2, 3))
        conv.weight.copy_(w / s)
        bn.running_mean.copy_(bn.running_mean.double() + offset)


def _match_bn_eps(bns: List[nn.BatchNorm2d]) -> None:
    """Rescale γ so each BN gives in eval mode with its own eps what torchvision's gave with eps 1e-5.

    Keeping our eps (rather than setting 1e-5) keeps the fix in the state_dict, so it survives rebuilding the
    model from its yaml (resume, --weights), which resets eps to YOLOv5's 1e-3.
    """
    with torch.no_grad():
        for bn in bns:
            var = bn.running_var.double()
            bn.weight.copy_(bn.weight.double() * torch.sqrt((var + bn.eps) / (var + TORCHVISION_BN_EPS)))


def _check_shapes(sd: StateDict, stem, stages, name: str, cfg: str) -> None:
    """Stem and stage widths, then units per stage, of the file against the model, with a clear message."""
    file_widths = [_stage_width(sd, s) for s in STAGES]
    hint = TORCHVISION_WIDTHS.get(tuple(file_widths))
    example = _EXAMPLE_CFG.replace("yolov5s", "yolov5n") if cfg.startswith("yolov5n") else _EXAMPLE_CFG
    fix = (f"use a config with torchvision's widths, e.g. {example.format(hint)}" if hint else
           f"use a copy of {_EXAMPLE_CFG.format('x1_0')} with the file's stage widths {file_widths}")
    if len(stages) != len(STAGES):
        raise ValueError(f"{name}: the file has {len(STAGES)} stages (strides 8, 16, 32) but {cfg} has "
                         f"{len(stages)} ShuffleNetV2 stages after its stem: {fix}")
    w = sd["conv1.0.weight"]
    checks = [("the stem (conv1)", w.shape[1], stem.conv[0].in_channels, "input channels"),
              ("the stem (conv1)", w.shape[0], stem.conv[0].out_channels, "channels")]
    checks += [(s, fw, 2 * units[0].branch2[5].out_channels, "channels")
               for s, fw, units in zip(STAGES, file_widths, stages)]
    checks += [(s, _stage_units(sd, s), len(units), "units") for s, units in zip(STAGES, stages)]
    for where, in_file, in_model, what in checks:
        if in_file != in_model:
            raise ValueError(f"{name}: {where} has {in_file} {what} in the file but {in_model} in {cfg}: {fix}")


def _stage_width(sd: StateDict, stage: str) -> int:
    """Output channels of a torchvision stage: its first unit concatenates two branches of equal width."""
    return 2 * sd[f"{stage}.0.branch1.2.weight"].shape[0] if f"{stage}.0.branch1.2.weight" in sd else -1


def _stage_units(sd: StateDict, stage: str) -> int:
    idx = {k.split(".")[1] for k in sd if k.startswith(f"{stage}.")}
    return 1 + max(int(i) for i in idx if i.isdigit())


def _load_module(module: nn.Module, sub: StateDict, name: str, prefix: str, zero: Tuple[str, ...] = ()) -> int:
    """load_state_dict with torchvision's names; keys in `zero` that the file lacks are set to 0. Returns # copied."""
    own = module.state_dict()
    missing = [k for k in own if k not in sub and k not in zero]
    extra = [k for k in sub if k not in own]
    if missing or extra:
        raise ValueError(f"{name}: {prefix} does not match a ShuffleNetV2 unit: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    full = {k: sub[k] if k in sub else torch.zeros_like(v) for k, v in own.items()}
    module.load_state_dict(full, strict=True)
    return len(sub)


def _sub_dict(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_unit_row(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Sequential):
        return len(layer) > 0 and all(isinstance(u, ShuffleNetV2_InvertedResidual) for u in layer)
    return isinstance(layer, ShuffleNetV2_InvertedResidual)


def _layers(model: nn.Module) -> nn.Sequential:
    model = getattr(model, "module", model)  # DDP / DataParallel
    return model.model if isinstance(getattr(model, "model", None), nn.Sequential) else model


def _cfg_name(model: nn.Module) -> str:
    return getattr(getattr(model, "module", model), "yaml_file", "the model")
