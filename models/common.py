"""Network building blocks: YOLOv5's layers and the seed's two ShuffleNetV2 modules.

Class names, their module path (`models.common.X`) and attribute names (`conv`, `bn`, `act`, `cv1`, `m`,
`branch1`, ...) are a checkpoint format: YOLOv5 pickles whole modules, so renaming any of them breaks loading.
Each block declares how `parse_model` computes its channels through `channel_rule` (see models/yolo.py).
"""

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.torch_utils import fuse_conv_and_bn


def autopad(k: Union[int, Sequence[int]], p: Optional[Union[int, Sequence[int]]] = None, d: int = 1):
    """Padding that keeps the spatial size at stride 1 ('same' padding) for kernel k and dilation d."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across `groups`: (b, g·n, h, w) -> view (b, g, n, h, w) -> swap g, n -> (b, n·g, h, w).

    Sizes are read from `x.shape` so that traced/ONNX graphs keep a dynamic batch and spatial size.
    """
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def interleave_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """channel_shuffle(cat((a, b), 1), 2) in a single copy: output channels a0, b0, a1, b1, ... (a, b: (n, c, h, w)).

    cat + shuffle copies the activations twice; stacking on a new axis right after the channel axis writes the
    interleaved result directly. Channels-last inputs are stacked on the last axis of their NHWC view instead,
    so the result stays channels-last (a reshape of the NCHW-ordered stack would copy it back to NCHW).
    """
    if _is_channels_last(a) and _is_channels_last(b):
        y = torch.stack((a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)), 4)  # (n, h, w, c, 2)
        return y.flatten(3).permute(0, 3, 1, 2)
    return torch.stack((a, b), 2).flatten(1, 2)


def shuffle_unit_output(unit: nn.Module, x: torch.Tensor, stride: int) -> torch.Tensor:
    """A ShuffleNetV2 unit's output from its `branch1`/`branch2`, concat and channel shuffle as one interleave:
    stride 1 keeps x's first channel half beside branch2(second half); stride 2 interleaves both branches of x."""
    if stride == 1:
        x1, x2 = x.chunk(2, dim=1)
        return interleave_channels(x1, unit.branch2(x2))
    return interleave_channels(unit.branch1(x), unit.branch2(x))


def _is_channels_last(x: torch.Tensor) -> bool:
    """Channels are the fastest-moving axis (a channels-last tensor, or a channel slice of one)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation (SiLU by default). After fuse(): conv (with bias) -> act."""

    default_act = nn.SiLU()  # a yaml's `activation:` key replaces this class-wide, as in YOLOv5
    channel_rule = "conv"

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        if act is True:
            act = self.default_act
        elif not isinstance(act, nn.Module):  # False / None: linear
            act = nn.Identity()
        self.act = act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))

    def fuse(self) -> None:
        """Fold bn into conv; state_dict keys become conv.weight/conv.bias, as in YOLOv5."""
        if hasattr(self, "bn"):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            delattr(self, "bn")
            self.forward = self.forward_fuse


class DWConv(Conv):
    """Depth-wise Conv: groups = gcd(c1, c2)."""

    def __init__(self, c1, c2, k=1, s=1, d=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    """1x1 Conv (c2·e) -> 3x3 Conv, with a residual add when `shortcut` and c1 == c2."""

    channel_rule = "conv"

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs: cv3(cat(m(cv1(x)), cv2(x))), m = n Bottlenecks."""

    channel_rule = "csp"  # parse_model passes the repeat count n as the third argument

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling: parallel max-pools of kernels k, concatenated with the input."""

    channel_rule = "conv"

    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: one k×k max-pool applied three times in series; same output as SPP(k=(5, 9, 13)) for k=5."""

    channel_rule = "conv"

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(nn.Module):
    """Space-to-depth (every second pixel into channels, 4·c1) followed by a Conv."""

    channel_rule = "conv"

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x):
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along `dimension`."""

    channel_rule = "concat"

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Add(nn.Module):
    """Element-wise sum of a list of same-shaped tensors (an FPN-style merge: half the channels of a Concat, so the
    conv after it costs half as much). parse_model checks that the inputs have one width."""

    channel_rule = "add"

    def forward(self, x):
        return sum(x[1:], x[0])


class Conv_maxpool(nn.Module):
    """ShuffleNetV2 stem: 3x3 s2 conv (no bias) -> BN -> ReLU -> 3x3 s2 max-pool; output at stride 4.

    The name and the attributes `conv` (Sequential: conv, bn, relu) and `maxpool` are the seed's checkpoint format.
    """

    channel_rule = "conv"

    def __init__(self, c1, c2):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        return self.maxpool(self.conv(x))

    def forward_fuse(self, x):
        """Inference: the same values with ReLU after the pool (ReLU commutes with max), on a 4x smaller map."""
        conv, _, relu = self.conv  # after fuse(): conv (with the BN folded in), identity, ReLU
        return relu(max_pool_3x3_s2(conv(x)))

    def fuse(self) -> None:
        """Fold the BN into the conv; the Sequential keeps its indices (0 conv, 1 identity, 2 relu)."""
        _fuse_sequential(self.conv)
        self.forward = self.forward_fuse


def max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 3, stride=2, padding=1), computed as four element-wise maxima of strided views.

    Same values (max is exact). PyTorch's CPU max-pool also finds the argmax of every window, which makes it the
    slowest part of the ShuffleNet stem on the 320x320 map of a 640 input; this is 1.5-2x faster there. Odd sizes,
    where the last window has no right neighbour, and traced exports (one MaxPool node for the runtimes) take
    F.max_pool2d.
    """
    if x.shape[-1] % 2 or x.shape[-2] % 2 or torch.jit.is_tracing():
        return F.max_pool2d(x, 3, 2, 1)
    even, odd = x[..., 0::2], x[..., 1::2]  # output column j covers input columns 2j-1, 2j, 2j+1
    cols = torch.maximum(even, odd)
    cols[..., 1:] = torch.maximum(cols[..., 1:], odd[..., :-1])
    even, odd = cols[..., 0::2, :], cols[..., 1::2, :]  # the same over rows
    out = torch.maximum(even, odd)
    out[..., 1:, :] = torch.maximum(out[..., 1:, :], odd[..., :-1, :])
    return out


class ShuffleNetV2_InvertedResidual(nn.Module):
    """ShuffleNetV2 unit (the seed's module; name, `stride`, `branch1`, `branch2` are its checkpoint format).

    stride 2: out = shuffle(cat(branch1(x), branch2(x))), both branches halve the resolution.
    stride 1: x is split in halves x1, x2; out = shuffle(cat(x1, branch2(x2))), which needs inp == oup (even).
    Both are computed as one interleaving copy (interleave_channels), in training too: the same values and
    gradients as cat + channel_shuffle, which copied a channels-last tensor twice, the second time with a transpose
    that trains slowly on NHWC (benchmarks/train_step.py, batch 16 at 320, fp32 step of yolov5n_shuffle on an
    AVX2-only EPYC: NHWC 495 ms with cat + shuffle against 450 ms NCHW; interleaved, NHWC 393 against 437 ms NCHW).
    The two depth-wise convs keep nn.Conv2d's default bias, as the seed writes them (torchvision's have none).
    """

    channel_rule = "conv"

    def __init__(self, inp, oup, stride):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleNetV2_InvertedResidual: stride must be 1 or 2, got {stride}")
        branch_features = oup // 2
        if stride == 1 and inp != 2 * branch_features:
            raise ValueError(
                f"ShuffleNetV2_InvertedResidual(inp={inp}, oup={oup}, stride=1): a stride-1 unit splits its input "
                f"into two equal halves and keeps the channel count, so it needs inp == oup and an even number "
                f"of channels; give this row the previous layer's output channels, or use stride 2")
        self.stride = stride
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, kernel_size=3, stride=2, padding=1, groups=inp),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        c_in = inp if stride == 2 else branch_features
        self.branch2 = nn.Sequential(
            nn.Conv2d(c_in, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch_features, branch_features, kernel_size=3, stride=stride, padding=1,
                      groups=branch_features),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return shuffle_unit_output(self, x, self.stride)

    forward_fuse = forward  # the same code runs on the folded branches; fused modules pickled earlier name this one

    @staticmethod
    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        """The seed's shuffle method, kept for code that calls it; it is the module-level channel_shuffle."""
        return channel_shuffle(x, groups)

    def fuse(self) -> None:
        """Fold every BN into the conv before it; Sequential indices (and so state_dict keys) stay put."""
        _fuse_sequential(self.branch1)
        _fuse_sequential(self.branch2)


def _fuse_sequential(seq: nn.Sequential) -> None:
    """In a Sequential, fold each BatchNorm2d into the Conv2d just before it and leave an Identity in its slot."""
    for i in range(1, len(seq)):
        if isinstance(seq[i], nn.BatchNorm2d) and isinstance(seq[i - 1], nn.Conv2d):
            seq[i - 1] = fuse_conv_and_bn(seq[i - 1], seq[i])
            seq[i] = nn.Identity()


# Blocks of the `*_shuffle_cpu` configs (accuracy per millisecond on CPUs). Built from Conv, so fuse() folds every
# BN, the yaml's `activation:` key applies to them, and they export like any YOLOv5 conv.
class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit with a choice of kernel, of activation (the model's) and of the branch's conv.

    stride 1: the input's two channel halves are x1, x2; out = interleave(x1, branch2(x2)), channels kept.
    stride 2: out = interleave(branch1(x), branch2(x)), resolution halved; c2 may differ from c1.
    The interleave is ShuffleNetV2's concat + channel shuffle in one copy.
    dense=False: ShuffleNetV2's branches (1x1 -> k x k depth-wise -> 1x1; stride 2: k x k depth-wise -> 1x1).
    dense=True: 1x1 -> dense k x k conv (stride 2: one dense k x k conv). Fewer conv calls, and on x86 CPUs a
    dense 3x3 conv runs far above a depth-wise one's FLOP rate and trains faster (see yolov5n_shuffle_cpu.yaml).
    """

    channel_rule = "conv"

    def __init__(self, c1, c2, s=1, k=5, dense=False):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"ShuffleUnit: stride must be 1 or 2, got {s}")
        if k not in (3, 5, 7):
            raise ValueError(f"ShuffleUnit: kernel must be 3, 5 or 7, got {k}")
        if c2 % 2 or (s == 1 and c1 != c2):
            raise ValueError(f"ShuffleUnit(c1={c1}, c2={c2}, s={s}): the output is two equal halves, so c2 must be "
                             f"even, and a stride-1 unit keeps its channel count (c1 == c2); give this row the "
                             f"previous layer's output channels, or use stride 2")
        c_ = c2 // 2
        c_in = c1 if s == 2 else c_  # branch2 sees the whole input (stride 2) or its second half (stride 1)
        self.s = s
        if dense:
            if s == 2:
                self.branch1 = Conv(c1, c_, k, 2)
            self.branch2 = nn.Sequential(Conv(c_in, c_, 1), Conv(c_, c_, k, s))
        else:
            if s == 2:
                self.branch1 = nn.Sequential(Conv(c1, c1, k, 2, g=c1, act=False), Conv(c1, c_, 1))
            self.branch2 = nn.Sequential(Conv(c_in, c_, 1), Conv(c_, c_, k, s, g=c_, act=False), Conv(c_, c_, 1))

    def forward(self, x):
        return shuffle_unit_output(self, x, self.s)


class DWSepConv(nn.Module):
    """Depth-wise separable conv: k x k depth-wise conv (stride s) -> BN -> act, then 1x1 conv to c2 -> BN -> act."""

    channel_rule = "conv"

    def __init__(self, c1, c2, k=5, s=1):
        super().__init__()
        self.dw = DWConv(c1, c1, k, s)
        self.pw = Conv(c1, c2, 1)

    def forward(self, x):
        return self.pw(self.dw(x))
