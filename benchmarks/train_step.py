"""One CPU training step (forward, loss, backward, SGD) in each memory layout and precision train.py can use.

    python benchmarks/train_step.py --cfg yolov5n.yaml yolov5n_shuffle.yaml yolov5n_shuffle_cpu.yaml

Per model, five variants share one batch of random images and labels: NCHW and NHWC (channels-last) in fp32, the
same two under train.py's bf16 autocast (depth-wise convs in fp32, utils.torch_utils.cpu_bf16_autocast), and
NCHW under plain bf16 autocast (every conv in bf16); all five run SiLU out of place in the forward, as train.py
does (utils.torch_utils.out_of_place_activations). A sixth, NHWC fp32 with YOLOv5's in-place SiLU, shows what that
saves. The variants take turns, one timed step each, so that a
drifting machine slows them alike; printed are median milliseconds and the ratio to NCHW fp32, with the CPU named.
bf16 on a CPU without bf16 instructions is emulated and slow: read those columns only where train.py would use it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.yolo import Model, set_conv_memory_format  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.torch_utils import cpu_bf16_autocast, cpu_description, out_of_place_activations  # noqa: E402
from utils.train_utils import load_hyp  # noqa: E402

VARIANTS = {  # name: (channels-last, forward context, SiLU in place)
    "NCHW fp32": (False, contextlib.nullcontext, False),
    "NHWC fp32": (True, contextlib.nullcontext, False),
    "NCHW bf16": (False, cpu_bf16_autocast, False),
    "NHWC bf16": (True, cpu_bf16_autocast, False),
    "NCHW bf16, depth-wise too": (False, lambda: torch.autocast("cpu", dtype=torch.bfloat16), False),
    "NHWC fp32, SiLU in place": (True, contextlib.nullcontext, True),
}


def make_step(cfg: str, nhwc: bool, context, in_place: bool, imgs: torch.Tensor, targets: torch.Tensor):
    """A closure running one training step of a fresh `cfg` model (seed 0) in the given layout and context, with
    SiLU in place (YOLOv5) or out of place (train.py)."""
    torch.manual_seed(0)
    model = Model(cfg, nc=8).train()
    model.hyp, model.nc = load_hyp(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"), 8
    if nhwc:
        set_conv_memory_format(model, torch.channels_last)
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    compute_loss = ComputeLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        with context(), contextlib.nullcontext() if in_place else out_of_place_activations(model):
            pred = model(imgs)
        loss, _ = compute_loss([p.float() for p in pred], targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def run(cfg=("yolov5n.yaml", "yolov5n_shuffle.yaml"), batch=16, imgsz=320, steps=6, threads=2) -> str:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    targets = torch.tensor([[i, (i * 5 + j) % 8, 0.15 + 0.7 * ((i + j) % 5) / 4, 0.2 + 0.15 * j, 0.1 + 0.05 * j, 0.2]
                            for i in range(batch) for j in range(4)])
    lines = [f"Training step, batch {batch} at {imgsz}, {threads} threads, median of {steps} (ms, ratio to NCHW fp32); "
             f"torch {torch.__version__}, {cpu_description()}",
             "| model | " + " | ".join(VARIANTS) + " |", "|---|" + "---:|" * len(VARIANTS)]
    for c in cfg:
        fns = {k: make_step(c, *v, imgs, targets) for k, v in VARIANTS.items()}
        for f in fns.values():  # first steps build oneDNN primitives
            f()
            f()
        times = {k: [] for k in fns}
        for _ in range(steps):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        base = ms["NCHW fp32"]
        lines.append(f"| {Path(c).stem} | " + " | ".join(f"{v:.0f} ({v / base:.2f})" for v in ms.values()) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfg", nargs="+", default=["yolov5n.yaml", "yolov5n_shuffle.yaml"], help="model yamls")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img", type=int, default=320, help="square image size")
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p.parse_args(argv)


if __name__ == "__main__":
    o = parse_opt()
    run(o.cfg, o.batch, o.img, o.steps, o.threads)
