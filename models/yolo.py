"""The YOLOv5 detector: the Detect head, DetectionModel (built from a model yaml) and `parse_model`.

Usage: python models/yolo.py --cfg yolov5_shuffle.yaml   (prints the layer table and the model summary)
"""

import argparse
import math
import sys
from copy import deepcopy
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

if __name__ == "__main__":  # run as a script: make `models` and `utils` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.common import (C3, SPP, SPPF, Add, Bottleneck, Concat, Conv, Conv_maxpool, DWConv, Focus,  # noqa: E402
                           DWSepConv, ShuffleNetV2_InvertedResidual, ShuffleUnit)
from utils.autoanchor import check_anchor_order  # noqa: E402
from utils.files import check_keys, check_yaml, yaml_load  # noqa: E402
from utils.logger import LOGGER, set_logging  # noqa: E402
from utils.torch_utils import (initialize_weights, model_info, scale_img, select_device,  # noqa: E402
                               time_sync)

# Module names a model yaml may use. Built explicitly (no eval); YOLOv5-Lite's spellings are accepted as aliases.
MODULES = {c.__name__: c for c in (Conv, DWConv, Bottleneck, C3, SPP, SPPF, Focus, Concat, Add, Conv_maxpool,
                                   DWSepConv, ShuffleNetV2_InvertedResidual, ShuffleUnit)}
MODULES.update({"Shuffle_Block": ShuffleNetV2_InvertedResidual, "conv_bn_relu_maxpool": Conv_maxpool,
                "nn.Upsample": nn.Upsample, "nn.BatchNorm2d": nn.BatchNorm2d, "nn.ConvTranspose2d": nn.ConvTranspose2d,
                "nn.Identity": nn.Identity, "nn.MaxPool2d": nn.MaxPool2d,
                "nn.Hardswish": nn.Hardswish, "nn.ReLU": nn.ReLU, "nn.SiLU": nn.SiLU})  # the last three: after an Add
# Channel rules of torch.nn classes (our own blocks carry a `channel_rule` attribute).
NN_CHANNEL_RULES = {nn.BatchNorm2d: "bn", nn.ConvTranspose2d: "conv"}
REQUIRED_KEYS = ("nc", "anchors", "backbone", "head")
KNOWN_KEYS = REQUIRED_KEYS + ("depth_multiple", "width_multiple", "activation", "ch", "channel_multiple",
                              "inplace", "yaml_file")


class Detect(nn.Module):
    """Per-level 1x1 convs to na·(nc+5) channels; at inference, decodes boxes to input-image pixels.

    Train mode returns a list of nl tensors (bs, na, ny, nx, nc+5) of raw logits. Eval returns
    (cat(z, 1), x) with z (bs, na·ny·nx, nc+5) holding xywh in pixels, then objectness and class scores.
    Attribute names and the `anchors` buffer (nl, na, 2, in grid units) are the checkpoint format.
    """

    stride = None  # set by DetectionModel from a probe forward
    dynamic = False  # rebuild grids on every call (dynamic-shape exports)
    export = False  # return only the decoded tensor

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x):
        if self.export:
            return (self._forward_export(x),)
        if not (self.training or self.dynamic or torch.is_grad_enabled() or torch.jit.is_tracing()):
            return self._forward_infer(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.training:
                continue
            if self.dynamic or self.grid[i].shape[2:4] != x[i].shape[2:4]:
                self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
            xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + self.grid[i]) * self.stride[i]  # grid holds cell − 0.5
            wh = (wh * 2) ** 2 * self.anchor_grid[i]  # anchor_grid holds anchors in pixels
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return x if self.training else (torch.cat(z, 1), x)

    def _forward_export(self, x):
        """The graph export.py traces: forward()'s values, in an order exported runtimes run faster.

        Each level's 1x1 conv runs as two convs over the same input (export_head_convs): one for the box channels
        (x, y, w, h of every anchor), decoded while still (bs, na, 4, ny, nx) planes, and one for the score channels
        (objectness and classes), the large part. The scores are put in YOLOv5's row order (level, anchor, y, x)
        straight from channels-last, the layout CPU runtimes compute convs in, so the runtime's own transpose back
        to channels-first cancels; the levels' boxes and scores are then joined once, by one concat. INT8 exports
        quantize the score path up to that concat (models/int8.py), so the score rows are moved as bytes and turned
        into floats once; the box convs and the decode stay float: one 8-bit scale cannot resolve box logits finely.
        """
        boxes, scores = [], []
        for i in range(self.nl):
            bs, _, ny, nx = x[i].shape
            (wb, bb), (ws, bsc) = self.export_head_convs(i)
            box = F.conv2d(x[i], wb, bb).sigmoid().view(bs, self.na, 4, ny, nx)
            xy, wh = box.split((2, 2), 2)
            xy = (xy * 2 + self._cell_offsets(nx, ny, 0).view(1, 1, 2, ny, nx)) * self.stride[i]
            wh = (wh * 2) ** 2 * (self.anchors[i] * self.stride[i]).view(1, self.na, 2, 1, 1)
            boxes.append(torch.cat((xy, wh), 2).permute(0, 1, 3, 4, 2).reshape(bs, -1, 4))
            score = F.conv2d(x[i], ws, bsc).sigmoid().permute(0, 2, 3, 1)  # (bs, ny, nx, na·(nc+1))
            score = score.reshape(bs, ny * nx, self.na, self.nc + 1).transpose(1, 2)
            scores.append(score.reshape(bs, -1, self.nc + 1))
        return torch.cat((torch.cat(boxes, 1), torch.cat(scores, 1)), 2)

    def export_head_convs(self, i: int) -> tuple:
        """((weight, bias) of the box rows, (weight, bias) of the score rows) of level i's conv, anchor-major."""
        conv = self.m[i]
        w = conv.weight.view(self.na, self.no, *conv.weight.shape[1:])
        b = conv.bias.view(self.na, self.no)
        return ((w[:, :4].reshape(self.na * 4, *w.shape[2:]), b[:, :4].reshape(-1)),
                (w[:, 4:].reshape(self.na * (self.nc + 1), *w.shape[2:]), b[:, 4:].reshape(-1)))

    def _forward_infer(self, x):
        """Eval forward without autograd, same values as the general path with fewer copies of the predictions.

        Each level's conv output is copied once into its rows of the result (bs, Σ na·ny·nx, no), where the
        sigmoid and the xy/wh decoding run in place. The general path copies every prediction four times (permute,
        sigmoid, per-level cat, final cat), which costs milliseconds at 640 on a CPU. The raw per-level outputs
        are returned as permuted views (bs, na, ny, nx, no).
        """
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
        bs = x[0].shape[0]
        rows = [self.na * xi.shape[2] * xi.shape[3] for xi in x]
        out = torch.empty(bs, sum(rows), self.no, device=x[0].device, dtype=x[0].dtype)
        for i, y in enumerate(out.split(rows, 1)):
            _, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            if self.grid[i].shape[2:4] != x[i].shape[2:4]:
                self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
            y = y.view(bs, self.na, ny, nx, self.no)
            y.copy_(x[i])  # a strided sigmoid would run PyTorch's scalar kernel, several times slower
            y.sigmoid_()
            y[..., :2].mul_(2).add_(self.grid[i]).mul_(self.stride[i])  # same operation order as forward()
            y[..., 2:4].mul_(2).pow_(2).mul_(self.anchor_grid[i])
        return out, x

    def _cell_offsets(self, nx: int, ny: int, dim: int) -> torch.Tensor:
        """Each cell's (x, y) minus 0.5, stacked on `dim` of the (ny, nx) index planes, in the anchors' dtype.
        Counted in float32 and then cast (exact in FP16 below 1024 cells): the ONNX exporter of torch 2.14 fails on
        an FP16 arange ('tensor does not have a device'), which an export --half traces."""
        d, f = self.anchors.device, torch.float32
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=f), torch.arange(nx, device=d, dtype=f),
                                indexing="ij")
        return (torch.stack((xv, yv), dim) - 0.5).to(self.anchors.dtype)

    def _make_grid(self, nx: int, ny: int, i: int):
        """Cell offsets (1, na, ny, nx, 2) minus 0.5, and the level's anchors in pixels, same shape."""
        shape = 1, self.na, ny, nx, 2
        grid = self._cell_offsets(nx, ny, 2).expand(shape)
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class BaseModel(nn.Module):
    """Layer-by-layer forward over `self.model` (an nn.Sequential built by parse_model), fusing and summary."""

    def forward(self, x, profile=False, visualize=False):
        return self._forward_once(x, profile, visualize)

    def _forward_once(self, x, profile=False, visualize=False):
        y, dt = [], []  # saved outputs, per-layer times
        for m in self.model:
            if m.f != -1:  # input from earlier layers
                x = _layer_input(m.f, x, y)
            if profile:
                self._profile_one_layer(m, x, dt)
            x = m(x)
            y.append(x if m.i in self.save else None)
            if visualize:
                from utils.plots import feature_visualization
                feature_visualization(x, m.type, m.i, save_dir=visualize)
        return x

    def _profile_one_layer(self, m, x, dt):
        """Log one layer's GFLOPs and time (ms) over 10 runs."""
        last = m == self.model[-1]
        try:
            import thop
            flops = thop.profile(m, inputs=(x.copy() if last else x,), verbose=False)[0] / 1e9 * 2
        except Exception:
            flops = 0
        t = time_sync()
        for _ in range(10):
            m(x.copy() if last else x)
        dt.append((time_sync() - t) * 100)
        if m == self.model[0]:
            LOGGER.info(f"{'time (ms)':>10s} {'GFLOPs':>10s} {'params':>10s}  module")
        LOGGER.info(f"{dt[-1]:10.2f} {flops:10.2f} {m.np:10.0f}  {m.type}")
        if last:
            LOGGER.info(f"{sum(dt):10.2f} {'-':>10s} {'-':>10s}  Total")

    def fuse(self, verbose: bool = True):
        """Prepare for inference: every block that can fuse itself folds its BatchNorms, then the conv weights go
        channels-last (see set_conv_memory_format); same outputs within float tolerance, and the unfused
        model's checkpoint format is untouched. Process-wide settings are left alone: the scripts opt in to
        utils.torch_utils.keep_freed_memory themselves. verbose=False skips the log lines (train.py fuses a
        copy of the EMA for every epoch's validation)."""
        if verbose:
            LOGGER.info("Fusing layers... ")
        for m in self.model.modules():
            if hasattr(m, "fuse") and callable(m.fuse):
                m.fuse()
        set_conv_memory_format(self, torch.channels_last)
        if verbose:
            self.info()
        return self

    def info(self, verbose=False, img_size=640):
        return model_info(self, verbose, img_size)

    def _apply(self, fn):
        # Detect keeps stride and its grids outside the state_dict; move/cast them with the module.
        self = super()._apply(fn)
        m = self.model[-1]
        if isinstance(m, Detect):
            m.stride = fn(m.stride)
            m.grid = list(map(fn, m.grid))
            if isinstance(m.anchor_grid, list):
                m.anchor_grid = list(map(fn, m.anchor_grid))
        return self


class DetectionModel(BaseModel):
    """A YOLOv5 detector built from a model yaml (path, bare name or dict), with optional nc/anchors override."""

    def __init__(self, cfg: Union[str, Path, dict] = "yolov5s.yaml", ch: int = 3, nc: Optional[int] = None,
                 anchors=None):
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml = cfg
            self.yaml_file = cfg.get("yaml_file", "model.yaml")
        else:
            file = check_yaml(cfg)
            self.yaml_file = Path(file).name
            self.yaml = yaml_load(file)
            self.yaml["yaml_file"] = str(file)

        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml.get("nc"):
            LOGGER.info(f"Overriding model.yaml nc={self.yaml.get('nc')} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = round(anchors)
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch])
        self.names = [str(i) for i in range(self.yaml["nc"])]  # YOLOv5's default; train.py sets a dict
        self.inplace = self.yaml.get("inplace", True)

        m = self.model[-1]
        if isinstance(m, Detect):
            s = 256  # probe size: stride = s / output height per level
            m.inplace = self.inplace
            m.stride = torch.tensor([s / x.shape[-2] for x in self._probe(torch.zeros(1, ch, s, s))])
            check_anchor_order(m)
            m.anchors /= m.stride.view(-1, 1, 1)  # pixels -> grid units
            self.stride = m.stride
            self._initialize_biases()
        initialize_weights(self)

    def _probe(self, x):
        """Forward used for stride detection; a shape error names the yaml layer that caused it."""
        y = []
        for m in self.model:
            if m.f != -1:
                x = _layer_input(m.f, x, y)
            try:
                x = m(x)
            except RuntimeError as e:
                raise ValueError(f"{self.yaml_file}, layer {m.i} ({m.type.rsplit('.', 1)[-1]}, from {m.f}): "
                                 f"does not run on a 256x256 probe input: {e}. Check this row's `from` "
                                 f"indices and channel counts") from None
            y.append(x if m.i in self.save else None)
        return x

    def forward(self, x, augment=False, profile=False, visualize=False):
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile, visualize)

    def _forward_augment(self, x):
        """Test-time augmentation: scales 1, 0.83, 0.67 with a left-right flip at 0.83, merged predictions."""
        img_size = x.shape[-2:]
        gs = int(self.stride.max())
        y = []
        for si, fi in zip((1, 0.83, 0.67), (None, 3, None)):
            xi = scale_img(x.flip(fi) if fi else x, si, gs=gs)
            yi = self._forward_once(xi)[0]
            y.append(self._descale_pred(yi, fi, si, img_size))
        y = self._clip_augmented(y)
        return torch.cat(y, 1), None

    def _descale_pred(self, p, flips, scale, img_size):
        """Undo a TTA scale and flip on decoded predictions (bs, n, no)."""
        x, y, wh = p[..., 0:1] / scale, p[..., 1:2] / scale, p[..., 2:4] / scale
        if flips == 2:
            y = img_size[0] - y
        elif flips == 3:
            x = img_size[1] - x
        return torch.cat((x, y, wh, p[..., 4:]), -1)

    def _clip_augmented(self, y):
        """Drop the large-object tail of the full-scale pass and the small-object head of the smallest one."""
        nl = self.model[-1].nl
        g = sum(4 ** x for x in range(nl))  # grid cells per anchor, in units of the P5 grid
        e = 1
        i = (y[0].shape[1] // g) * sum(4 ** x for x in range(e))
        y[0] = y[0][:, :-i]
        i = (y[-1].shape[1] // g) * sum(4 ** (nl - 1 - x) for x in range(e))
        y[-1] = y[-1][:, i:]
        return y

    def _initialize_biases(self, cf=None):
        """Detect bias priors: objectness log(8/(640/s)²) (~8 objects per 640 image), classes log(0.6/(nc−0.99999))."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999)) if cf is None else torch.log(cf / cf.sum())
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)


Model = DetectionModel  # older YOLOv5 checkpoints pickle the class under this name


def set_conv_memory_format(model: nn.Module, memory_format=torch.channels_last) -> nn.Module:
    """Store every Conv2d weight in `memory_format`; activations then follow the weights through the network.

    On CPUs channels-last (NHWC) is much faster for this network: oneDNN's depth-wise and 3x3 convs, and above
    all PyTorch's max-pool (the NCHW kernel also computes argmax indices and is several times slower), which the
    ShuffleNet stem and SPPF use. Only weights change, not values, so exports may switch back (ONNX graphs do
    not carry memory formats, but a traced graph records the channels-last branches). Module.to(memory_format=)
    is not used because it would also try to convert Detect's cached 5-D grids.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.dim() == 4:
            m.weight.data = m.weight.data.contiguous(memory_format=memory_format)
    return model


def _layer_input(f, x, y):
    """The input of a layer whose `from` is f: an earlier output y[f], or a list of them (-1 = previous x)."""
    return y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]


def _as_list(f):
    return [f] if isinstance(f, int) else list(f)


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of divisor that is >= x (YOLOv5's width rounding)."""
    return math.ceil(x / divisor) * divisor


def parse_model(d: dict, ch: list):
    """Build nn.Sequential layers from a model dict; return (model, sorted save-list of reused outputs).

    Follows YOLOv5's rules: depth n = max(round(n·gd), 1) for n > 1, width c2 = make_divisible(c2·gw, 8),
    the input channel count inserted for conv-like blocks, n passed into C3. Errors name the file and layer.
    """
    file = d.get("yaml_file", "model.yaml")
    _check_keys(d, file)
    nc, anchors = d["nc"], d["anchors"]
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    ch_mul = d.get("channel_multiple", 8)
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    act = _parse_activation(d.get("activation"), file)
    LOGGER.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")

    layers, save, c2 = [], [], ch[-1]
    saved_act = Conv.default_act
    if act is not None:
        Conv.default_act = act  # only while building: the model keeps its own act instances
    try:
        for i, row in enumerate(d["backbone"] + d["head"]):
            f, n, name, args = _check_row(row, i, file)
            cls = _resolve_module(name, i, file)
            args = [_resolve_arg(a, nc, anchors) for a in args]
            n = n_ = max(round(n * gd), 1) if n > 1 else n
            try:
                args, c2, n = _channel_args(cls, args, f, ch, n, gw, ch_mul, no, i)
            except ValueError as e:
                raise ValueError(f"{file}, layer {i} ({name}): {e}") from None
            try:
                m_ = nn.Sequential(*(cls(*args) for _ in range(n))) if n > 1 else cls(*args)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{file}, layer {i} ({name} {args}): {e}") from None
            m_.i, m_.f, m_.type = i, f, f"{cls.__module__}.{cls.__name__}".replace("__main__.", "")
            m_.np = sum(x.numel() for x in m_.parameters())
            LOGGER.info(f"{i:>3}{str(f):>18}{n_:>3}{m_.np:10.0f}  {m_.type:<45}{str(args):<30}")
            save += [j % i for j in _as_list(f) if j != -1]  # absolute indices of outputs reused later
            layers.append(m_)
            if i == 0:
                ch = []  # from here on, ch indexes layer outputs, not the image channels
            ch.append(c2)
    finally:
        Conv.default_act = saved_act
    return nn.Sequential(*layers), sorted(save)


def _check_keys(d: dict, file) -> None:
    check_keys(d, file, REQUIRED_KEYS, KNOWN_KEYS, kind="top-level",
               need=f"A model yaml needs {', '.join(REQUIRED_KEYS)} (and usually depth_multiple, width_multiple)")
    for k in ("backbone", "head"):
        if not isinstance(d[k], list):
            raise ValueError(f"{file}: `{k}` must be a list of [from, number, module, args] rows")


def _check_row(row, i: int, file):
    """Validate one [from, number, module, args] row; `from` must point at an earlier layer."""
    if not (isinstance(row, (list, tuple)) and len(row) == 4):
        raise ValueError(f"{file}, layer {i}: expected a row [from, number, module, args], got {row!r}")
    f, n, name, args = row
    for j in (_as_list(f) if isinstance(f, (int, list)) else [None]):
        if not isinstance(j, int) or not (j == -1 or -i <= j < i) or (i == 0 and j != -1):
            raise ValueError(f"{file}, layer {i}: `from` {f!r} must be -1 or the index of an earlier layer "
                             f"(0..{i - 1}); it points forward or out of range")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{file}, layer {i}: `number` must be a positive integer, got {n!r}")
    if not isinstance(args, list):
        raise ValueError(f"{file}, layer {i}: `args` must be a list, got {args!r}")
    return f, n, str(name), args


def _resolve_module(name: str, i: int, file):
    if name == "Detect":
        return Detect
    if name in MODULES:
        return MODULES[name]
    known = ", ".join(sorted(set(MODULES) | {"Detect"}))
    raise ValueError(f"{file}, layer {i}: unknown module '{name}'. Known: {known}")


def _resolve_arg(a, nc, anchors):
    """yaml strings that name values: nc, anchors, None/True/False; other strings stay strings ('nearest')."""
    if not isinstance(a, str):
        return a
    return {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}.get(a, a)


def _channel_args(cls, args, f, ch, n, gw, ch_mul, no, i):
    """Apply the block's channel rule: returns (args, output channels, repeats)."""
    rule = "detect" if cls is Detect else NN_CHANNEL_RULES.get(cls, getattr(cls, "channel_rule", "same"))
    if rule in ("conv", "csp"):
        c1, c2 = ch[f], args[0]
        if c2 != no:  # the Detect-sized output count is never width-scaled
            c2 = make_divisible(c2 * gw, ch_mul)
        args = [c1, c2, *args[1:]]
        if rule == "csp":
            args.insert(2, n)
            n = 1
        return args, c2, n
    if rule == "bn":
        return [ch[f]], ch[f], n
    if rule == "concat":
        return args, sum(ch[x] for x in f), n
    if rule == "add":
        widths = [ch[x] for x in _as_list(f)]
        if len(widths) < 2 or len(set(widths)) != 1:
            raise ValueError(f"Add sums two or more outputs of one width; `from` {f} gives widths {widths} "
                             "(make the inputs equal with a 1x1 Conv, or use Concat)")
        return args, widths[0], n
    if rule == "detect":
        args.append([ch[x] for x in f])
        if isinstance(args[1], int):  # anchors given as a count per level: placeholders for AutoAnchor
            args[1] = [list(range(args[1] * 2))] * len(f)
        return args, ch[f[-1]] if isinstance(f, list) else ch[f], n
    return args, ch[f], n


def _parse_activation(spec, file):
    """`activation: nn.LeakyReLU(0.1)` -> that module, built from literal arguments only (no eval)."""
    if spec is None:
        return None
    import ast
    import re
    match = re.fullmatch(r"\s*nn\.(\w+)\((.*)\)\s*", str(spec))
    cls = getattr(nn, match.group(1), None) if match else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{file}: activation {spec!r} is not a torch.nn module such as nn.SiLU() or nn.LeakyReLU(0.1)")
    try:
        args = ast.literal_eval(f"({match.group(2)},)") if match.group(2).strip() else ()
    except (ValueError, SyntaxError):
        raise ValueError(f"{file}: activation {spec!r}: arguments must be literal values") from None
    return cls(*args)


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Build a model from its yaml and print its layers and size.")
    parser.add_argument("--cfg", type=str, default="yolov5_shuffle.yaml", help="model.yaml (path or bare name)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the test forward")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="image size for GFLOPs")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--profile", action="store_true", help="profile model speed")
    parser.add_argument("--line-profile", action="store_true", help="profile model speed layer by layer")
    parser.add_argument("--table", action="store_true", help="print a markdown table of every models/*.yaml")
    return parser.parse_args(argv)


def model_table(imgsz: int = 640) -> str:
    """Markdown table of parameters and GFLOPs (thop, unfused, at imgsz) for every yaml in models/."""
    rows = ["| config | params | GFLOPs |", "|---|---:|---:|"]
    for f in sorted(Path(__file__).parent.glob("*.yaml")):
        m = DetectionModel(f)
        _, n_p, _, gflops = model_info(m, imgsz=imgsz)
        rows.append(f"| {f.name} | {n_p:,} | {gflops:.2f} |")
    return "\n".join(rows)


def main(opt):
    if opt.table:
        print(model_table(opt.imgsz))
        return
    set_logging()
    device = select_device(opt.device)
    im = torch.rand(opt.batch_size, 3, opt.imgsz, opt.imgsz).to(device)
    model = DetectionModel(opt.cfg).to(device)
    model.info(img_size=opt.imgsz)
    if opt.line_profile:
        model.eval()
        with torch.no_grad():
            model(im, profile=True)
    elif opt.profile:
        model.eval()
        with torch.no_grad():
            model(im)  # warm-up
            t = time_sync()
            for _ in range(10):
                model(im)
        LOGGER.info(f"Forward at {opt.imgsz}x{opt.imgsz}, batch {opt.batch_size}: "
                    f"{(time_sync() - t) * 100:.1f} ms per batch")


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"ERROR: {err}")
