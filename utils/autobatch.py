"""AutoBatch (`train.py --batch-size -1`): the largest training batch that fills a share of the CUDA device.

YOLOv5's procedure and numbers: train steps at batch 1, 2, 4, 8 and 16 measure the device memory each needs, a
straight line through those points is solved for `fraction` (0.8) of the memory available to this process (free
on the device, so a shared GPU's other users are left theirs), and the result is kept below the first batch size
that ran out of memory. Where the line cannot answer, one line says why: without CUDA, with memory that does not
grow with the batch or a model that alone exceeds the budget, `default`; above 1024, 1024; out of memory already
at batch 1 or 2, the largest size that ran (1 if none did).
"""

from copy import deepcopy
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from utils.logger import LOGGER, colorstr

PROBE_SIZES = (1, 2, 4, 8, 16)
LARGEST = 1024


def fit_batch_size(sizes: Sequence[int], used: Sequence[Optional[float]], budget: float,
                   default: int = 16) -> tuple:
    """(batch size, reason) from measured memory: `used[i]` bytes for batch `sizes[i]`, None where that batch
    ran out of memory. The batch whose fitted memory equals `budget` bytes, below the first failed size."""
    ok = [(b, m) for b, m in zip(sizes, used) if m is not None]
    failed = [b for b, m in zip(sizes, used) if m is None]
    if len(ok) < 2:
        if failed:  # out of memory at batch 1 or 2: the default would be too
            return (ok[-1][0] if ok else 1), f"batch {failed[0]} already ran out of memory"
        return default, f"too few batch sizes ran ({len(ok)} of {len(sizes)}) to fit memory per image"
    slope, intercept = np.polyfit([b for b, _ in ok], [m for _, m in ok], 1)
    if slope <= 0:
        return default, "measured memory does not grow with the batch size"
    b = int((budget - intercept) / slope)
    if failed and b >= failed[0]:  # the line overshoots where the device already ran out
        b = max(x for x, _ in ok if x < failed[0])
    if b < 1:
        return default, f"the model alone needs more than the budget of {budget / 2 ** 30:.1f} GiB"
    if b > LARGEST:
        return LARGEST, f"the fit gives {b}; capped at {LARGEST}"
    return b, f"{slope / 2 ** 20:.1f} MiB per image, {intercept / 2 ** 30:.2f} GiB fixed"


def train_step_memory(model, imgsz: int, batch: int, amp: bool) -> Optional[float]:
    """Peak CUDA bytes the caching allocator reserved for one forward and backward pass of `model` on a random
    batch (reserved, not allocated: what the process takes from the device, fragmentation included, as YOLOv5
    measures); None if it ran out of memory."""
    device = next(model.parameters()).device
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        x = torch.rand(batch, 3, imgsz, imgsz, device=device)
        with torch.autocast("cuda", enabled=amp):
            out = model(x)
            total = sum(o.float().sum() for o in (out if isinstance(out, (list, tuple)) else [out]))
        total.backward()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_reserved(device))
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one (torch >= 1.13); older torch raises it plain
        if "out of memory" not in str(e):
            raise
        return None
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def device_memory_available(device) -> float:
    """Bytes of the CUDA device this process can use: what the driver reports free (other processes' memory is
    not) plus what this process's allocator already holds; the card's total where the driver cannot say."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (AttributeError, RuntimeError):  # torch < 1.10, or a driver without the query
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(free + torch.cuda.memory_reserved(device))


def auto_batch_size(model, imgsz: int, amp: bool, fraction: float = 0.8, default: int = 16,
                    measure: Callable = train_step_memory) -> int:
    """The training batch size for `model` (on its device) at `imgsz` that fills `fraction` of the device's
    memory; `default` off CUDA. Logs one line with the answer and how it was found."""
    prefix = colorstr("AutoBatch: ")
    device = next(model.parameters()).device
    if device.type != "cuda":
        LOGGER.warning(f"{prefix}WARNING: needs a CUDA device (training on {device.type}); using --batch-size "
                       f"{default}")
        return default
    torch.cuda.empty_cache()
    available = device_memory_available(device)
    budget = available * fraction
    probe = deepcopy(model).train()
    used = []
    for b in PROBE_SIZES:
        used.append(measure(probe, imgsz, b, amp))
        if used[-1] is None:
            break
    del probe
    torch.cuda.empty_cache()
    sizes = PROBE_SIZES[:len(used)]
    b, why = fit_batch_size(sizes, used, budget, default)
    LOGGER.info(f"{prefix}--batch-size {b} for {fraction:.0%} of the {available / 2 ** 30:.1f} GiB available on "
                f"{torch.cuda.get_device_name(device)} at {imgsz} px ({why})")
    return b
