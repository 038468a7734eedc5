"""Fused conv + activation for CPU inference: one oneDNN call instead of a conv and a separate activation pass.

Used by the fused (inference) forwards of the blocks in models/common.py and by Detect. The fused kernel is the
one torch.compile's CPU backend calls (`torch.ops.mkldnn._convolution_pointwise`); it applies the activation while
the conv output is still in cache, and it always takes oneDNN's path, where eager PyTorch sends batch-1 1x1 convs
on one thread to a slower im2col GEMM. Anything else (training, autograd, tracing for export, GPUs, FP16, a torch
without the op) takes the plain `act(conv(x))`, so exported graphs keep standard operators.
"""

from typing import Optional

import torch
import torch.nn as nn

# Activation module -> (oneDNN post-op name, scalar arguments read from the module).
_POST_OPS = {nn.SiLU: ("swish", lambda m: []), nn.ReLU: ("relu", lambda m: []), nn.Identity: ("none", lambda m: []),
             nn.Hardswish: ("hardswish", lambda m: []),
             nn.LeakyReLU: ("leaky_relu", lambda m: [m.negative_slope])}
_available: Optional[bool] = None


def fused_kernels_available() -> bool:
    """True when this torch build has the oneDNN pointwise conv (torch >= 2.0 with MKLDNN), checked once."""
    global _available
    if _available is None:
        _available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    return _available


def _eligible(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and fused_kernels_available()
            and not conv._forward_hooks and not conv._forward_pre_hooks)  # hooked convs (thop, profilers) run as modules


def conv_act(conv: nn.Conv2d, x: torch.Tensor, act: Optional[nn.Module] = None) -> torch.Tensor:
    """act(conv(x)) for x (b, c, h, w); act None means no activation. Same values within float tolerance."""
    post = _POST_OPS.get(type(act if act is not None else nn.Identity()))
    if post is None or not _eligible(x, conv):
        y = conv(x)
        return act(y) if act is not None else y
    name, scalars = post
    try:
        return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, list(conv.padding),
                                                       list(conv.stride), list(conv.dilation), conv.groups, name,
                                                       scalars(act), "")
    except RuntimeError:  # a shape or build oneDNN rejects: remember, and use the plain ops from now on
        global _available
        _available = False
        y = conv(x)
        return act(y) if act is not None else y


def run_sequential(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A fused Sequential of Conv2d / Identity (folded BN) / activation layers, each conv with its activation."""
    layers = [m for m in seq if not isinstance(m, nn.Identity)]
    i = 0
    while i < len(layers):
        m = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(m, nn.Conv2d) and type(nxt) in _POST_OPS:
            x, i = conv_act(m, x, nxt), i + 2
        elif isinstance(m, nn.Conv2d):
            x, i = conv_act(m, x), i + 1
        else:
            x, i = m(x), i + 1
    return x
