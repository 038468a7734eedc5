"""PyTorch helpers: device selection, seeding, distributed barriers, BN folding, weight init, model summaries."""

import contextlib
import math
import os
import platform
import random
import sys
import time
from copy import deepcopy
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.logger import LOGGER

LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))


def _device_spec(device) -> str:
    return str(device).strip().lower().replace("cuda:", "").replace("none", "")


def cuda_ids(device) -> list:
    """The CUDA indices a --device string names ('0', '0,1', 'cuda:0, 1'); [] for '', 'cpu' and 'mps'."""
    spec = _device_spec(device)
    return [] if spec in ("cpu", "mps") else [int(x) for x in spec.replace(" ", "").split(",") if x.isdigit()]


def select_device(device: str = "", batch_size: int = 0) -> torch.device:
    """Parse '' / 'cpu' / 'mps' / '0' / '0,1' into a torch.device, with a clear error for unavailable GPUs."""
    spec = _device_spec(device)
    if spec in ("cpu", "mps"):
        if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("--device mps: Apple MPS is not available on this machine; use --device cpu")
        LOGGER.info(f"Using device: {spec.upper()} (torch {torch.__version__})")
        return torch.device(spec)
    if spec:
        ids = [x for x in spec.replace(" ", "").split(",") if x]
        if not all(x.isdigit() for x in ids):
            raise ValueError(f"--device {device!r}: expected 'cpu', 'mps', or CUDA indices such as '0' or '0,1'")
        available = torch.cuda.device_count()
        bad = [x for x in ids if int(x) >= available]
        if bad:
            raise ValueError(f"--device {device!r}: CUDA device {','.join(bad)} not found; this machine has "
                             f"{available} CUDA device(s)" + ("; use --device cpu" if not available else ""))
        if batch_size > 0 and len(ids) > 1 and batch_size % len(ids):
            raise ValueError(f"--batch-size {batch_size} is not a multiple of the {len(ids)} devices in --device")
        LOGGER.info(f"Using device: CUDA:{','.join(ids)} ({torch.cuda.get_device_name(int(ids[0]))})")
        return torch.device(f"cuda:{ids[0]}")
    if torch.cuda.is_available():
        LOGGER.info(f"Using device: CUDA:0 ({torch.cuda.get_device_name(0)})")
        return torch.device("cuda:0")
    LOGGER.info(f"Using device: CPU (torch {torch.__version__})")
    return torch.device("cpu")


_ALLOCATOR_TUNED = False
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameter numbers from glibc's malloc.h


def _glibc():
    """This process's C library through ctypes if it is glibc on Linux, else None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        libc = ctypes.CDLL(None)  # the C library this process already uses
        return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
    except (OSError, AttributeError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc maps large blocks (activations, Detect's output) fresh from the kernel and unmaps them when
    freed, and returns the free top of its heap once it exceeds a threshold, so every forward (and every training
    step) touches new pages: about 4,800 page faults (11 ms of 56 ms) per 640x640 forward of yolov5n on a 2-core
    CPU in a loop, 4 ms per image in detect.py; 22,000-64,000 faults per yolov5n training step at 320 (batch 16) and
    344,000 at 640. Here no block is mapped on its own (mmap off, so blocks over 32 MB, the largest threshold glibc
    accepts, come from the heap too) and the trim threshold is 1 GB: the next forward or step reuses the last one's
    memory (0 faults); the price is that up to that much freed memory stays with the process. detect.py, val.py,
    benchmarks.py and CPU training call it; DataLoader workers forked afterwards go back to bounded retention
    (release_inherited_memory). Process-wide and harmless to call again; False where the C library is not glibc,
    which changes nothing there.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _ALLOCATOR_TUNED = bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _ALLOCATOR_TUNED


def release_inherited_memory() -> bool:
    """In a process forked from one that called keep_freed_memory() (a DataLoader worker): give back the free memory
    inherited from the parent and keep at most 64 MB of freed memory from now on (blocks over 32 MB mapped on their
    own), about where glibc's adaptive thresholds settle by themselves. Without this each loader worker keeps
    hundreds of MB. True if the settings were changed; nothing happens in a process that did not tune them."""
    global _ALLOCATOR_TUNED
    libc = _glibc() if _ALLOCATOR_TUNED else None
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_MAX, 65536)  # glibc's default count
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    libc.malloc_trim(0)
    _ALLOCATOR_TUNED = False
    return True


def cpu_flags() -> set:
    """The instruction-set flags /proc/cpuinfo lists for this CPU (an empty set where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_description() -> str:
    """'<model name> (<the vector extensions that matter for CPU inference>)', for latency tables."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    flags = cpu_flags()
    return f"{model or platform.processor() or platform.machine()} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def cpu_bf16_status() -> tuple:
    """(True, why) where bf16 autocast makes CPU training faster: the CPU has bf16 instructions (AVX512-BF16 or
    AMX-BF16) and torch's oneDNN can use them. Elsewhere (False, why): oneDNN would emulate bf16, which is slower
    than fp32."""
    if not hasattr(torch, "autocast") or not hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported"):
        return False, f"torch {torch.__version__} has no CPU bf16 autocast"
    native = sorted(f for f in ("avx512_bf16", "amx_bf16") if f in cpu_flags())
    if not native:
        return False, "this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16), so bf16 would be emulated"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "this torch build's oneDNN cannot run bf16 on this CPU"
    return True, f"this CPU has {' and '.join(native)}"


def _set_cpu_autocast(enabled: bool) -> None:
    """Turn CPU autocast on or off in place (the enclosing torch.autocast block restores its state on exit)."""
    try:
        torch.set_autocast_enabled("cpu", enabled)
    except TypeError:  # torch < 2.4 has a CPU-only setter
        torch.set_autocast_cpu_enabled(enabled)


def is_depthwise(m: nn.Module) -> bool:
    """A conv with one group per input channel (a depth-wise conv, with or without a channel multiplier)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _depthwise_to_fp32(module, args):
    """Global forward pre-hook of cpu_bf16_autocast: autocast off and fp32 inputs for a depth-wise conv."""
    if is_depthwise(module):
        _set_cpu_autocast(False)
        return tuple(a.float() if torch.is_tensor(a) else a for a in args)
    return None


def _depthwise_done(module, args, output):
    """Global forward hook of cpu_bf16_autocast: autocast back on after a depth-wise conv."""
    if is_depthwise(module):
        _set_cpu_autocast(True)


@contextlib.contextmanager
def cpu_bf16_autocast():
    """CPU bf16 autocast in which depth-wise convs run in fp32. oneDNN's bf16 depth-wise kernels, the backward
    above all, are slower than its fp32 ones (a yolov5n_shuffle training step, batch 16 at 320: 0.80x of fp32 with
    them in bf16, 0.77x with them in fp32; benchmarks/train_step.py), while dense convs gain about 2x. Module hooks
    that exist only inside this block turn autocast off around each depth-wise conv; nothing is stored on the model,
    so checkpoints and the EMA are unaffected."""
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        pre = nn.modules.module.register_module_forward_pre_hook(_depthwise_to_fp32)
        post = nn.modules.module.register_module_forward_hook(_depthwise_done)
        try:
            yield
        finally:
            pre.remove()
            post.remove()


def time_sync() -> float:
    """time.time() after waiting for queued CUDA work, so GPU timings are real."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        skip_uninitialized_fill()
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        os.environ["PYTHONHASHSEED"] = str(seed)


def skip_uninitialized_fill() -> bool:
    """Keep deterministic mode from writing NaN into every new tensor. Since torch 2.1,
    use_deterministic_algorithms(True) also fills each uninitialised tensor (torch.empty and the outputs kernels
    allocate) so that a kernel reading memory it never wrote cannot differ between runs. No kernel in training reads
    such memory (the same weights bit for bit with and without the fill: tests/test_train_speed.py), and the fill
    took 13 % of a CPU training epoch's time (aten::fill_, about 2,400 calls a batch of 16 for yolov5n). The kernels
    stay the deterministic ones. False (and nothing changed) where torch has no such switch."""
    try:
        import torch.utils.deterministic as deterministic
        deterministic.fill_uninitialized_memory = False
    except (ImportError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def torch_distributed_zero_first(local_rank: int):
    """Let local rank 0 run the block first (e.g. caching a dataset) while the other ranks wait."""
    if local_rank not in (-1, 0):
        torch.distributed.barrier()
    yield
    if local_rank == 0:
        torch.distributed.barrier()


def smart_inference_mode():
    """torch.inference_mode as a decorator (no_grad for old torch)."""
    return torch.inference_mode() if hasattr(torch, "inference_mode") else torch.no_grad()


def is_parallel(model: nn.Module) -> bool:
    """True for DataParallel / DistributedDataParallel wrappers."""
    return isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The wrapped module of a DP/DDP model, else the model itself."""
    return model.module if is_parallel(model) else model


def copy_attr(a, b, include=(), exclude=()) -> None:
    """Copy b's public attributes onto a (only `include` if given, never `exclude`)."""
    for k, v in b.__dict__.items():
        if (include and k not in include) or k.startswith("_") or k in exclude:
            continue
        setattr(a, k, v)


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (with bias) equal to bn(conv(x)) in eval mode: w' = w·γ/σ, b' = (b − μ)·γ/σ + β.
    Computed in float32 (at least) and stored in the conv's own dtype and device, so a model made FP16 before
    fuse() stays FP16 (the new bias too)."""
    w = conv.weight
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode).requires_grad_(False).to(w.device, w.dtype)
    wide = torch.promote_types(w.dtype, torch.float32)
    mean, var, gamma, beta = (t.detach().to(wide) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    scale = gamma / torch.sqrt(var + bn.eps)  # γ/σ per output channel
    fused.weight.copy_(w.detach().to(wide) * scale.view(-1, 1, 1, 1))
    bias = conv.bias.detach().to(wide) if conv.bias is not None else torch.zeros_like(mean)
    fused.bias.copy_((bias - mean) * scale + beta)
    return fused


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's init: keep PyTorch's conv init, BN eps 1e-3 / momentum 0.03, activations in place."""
    for m in model.modules():
        t = type(m)
        if t is nn.BatchNorm2d:
            m.eps = 1e-3
            m.momentum = 0.03
        elif t in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU):
            m.inplace = True


@contextlib.contextmanager
def out_of_place_activations(model: nn.Module):
    """Inside the block (a training forward) the model's in-place SiLU and Hardswish run out of place, then are in
    place again. Their gradients need the input, so in place autograd first copies every such activation's input: one
    extra copy of each activation per step (a yolov5n fp32 step at 320, batch 16, 2 cores: 2-7 % of its time,
    benchmarks/train_step.py). The values are the same bit for bit; ReLU and LeakyReLU are left in place (their
    gradients use the output)."""
    acts = [m for m in model.modules() if type(m) in (nn.SiLU, nn.Hardswish) and m.inplace]
    for m in acts:
        m.inplace = False
    try:
        yield
    finally:
        for m in acts:
            m.inplace = True


def count_flops(model: nn.Module, imgsz=640) -> Optional[float]:
    """GFLOPs of one forward at imgsz (int or (h, w)), measured by thop at stride size and scaled; None if absent."""
    try:
        import thop
    except ImportError:
        return None
    p = next(model.parameters())
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    ch = model.yaml.get("ch", 3) if hasattr(model, "yaml") else 3
    im = torch.empty((1, ch, stride, stride), device=p.device, dtype=p.dtype)
    with _quiet_thop():
        macs = thop.profile(deepcopy(model), inputs=(im,), verbose=False)[0]
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    return macs / 1e9 * 2 * (h / stride) * (w / stride)


@contextlib.contextmanager
def _quiet_thop():
    """thop registers counting hooks that print nothing when verbose=False, but may warn; keep logs clean."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def model_info(model: nn.Module, verbose: bool = False, imgsz=640) -> tuple:
    """Log 'N layers, P parameters, G gradients, F GFLOPs'; return (layers, params, grads, gflops)."""
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} {'mu':>10} {'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            LOGGER.info(f"{i:5g} {name:>40} {str(p.requires_grad):>9} {p.numel():12g} {str(list(p.shape)):>20} "
                        f"{p.mean():10.3g} {p.std() if p.numel() > 1 else 0:10.3g}")
    try:
        gflops = count_flops(model, imgsz)
    except Exception as e:  # FLOPs are informative only; never fail a run for them
        LOGGER.debug(f"FLOPs count failed: {e}")
        gflops = None
    fs = f", {gflops:.1f} GFLOPs" if gflops is not None else ""
    name = getattr(model, "yaml_file", "") or "Model"
    layers = len(list(model.modules()))
    LOGGER.info(f"{os.path.basename(str(name)).rsplit('.', 1)[0]} summary: {layers} layers, {n_p:,} parameters, "
                f"{n_g:,} gradients{fs}")
    return layers, n_p, n_g, gflops


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Resize a (b, 3, h, w) batch by `ratio` and pad with 0.447 (114/255) to a gs-multiple (for TTA)."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode="bilinear", align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)
