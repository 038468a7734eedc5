"""Benchmark: detection mAP from scratch vs from a torchvision-ShuffleNetV2-initialised backbone, on shapes.

No ImageNet file exists offline, so step 1 makes stand-in "pretrained" weights: a torchvision ShuffleNetV2
(weights=None) briefly trained to classify crops of the shapes train set's objects (ImageNet mean/std input,
like torchvision's). Step 2 trains the same detector twice with the same schedule, with and without them.

Usage: python benchmarks/pretrained_backbone.py --size x0_5 --epochs 10 --imgsz 320
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.pretrained import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def object_crops(root: Path, split: str, size: int) -> tuple:
    """(uint8 crops (n, 3, size, size) RGB, int64 classes (n,)) of every labelled object, box grown by 20%."""
    crops, classes = [], []
    for img_file in sorted((root / "images" / split).iterdir()):
        label_file = root / "labels" / split / (img_file.stem + ".txt")
        if not label_file.is_file():
            continue
        im = cv2.imread(str(img_file))[:, :, ::-1]
        h, w = im.shape[:2]
        for c, x, y, bw, bh in np.loadtxt(label_file, ndmin=2):
            side = max(bw * w, bh * h) * 1.2
            x1, y1 = int(max(x * w - side / 2, 0)), int(max(y * h - side / 2, 0))
            x2, y2 = int(min(x * w + side / 2, w)), int(min(y * h + side / 2, h))
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            crops.append(cv2.resize(np.ascontiguousarray(im[y1:y2, x1:x2]), (size, size)))
            classes.append(int(c))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(), torch.tensor(classes)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (n, 3, h, w) -> float, ImageNet mean/std (torchvision's classification convention)."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x.float() / 255 - mean) / std


def augment(x: torch.Tensor, out: int) -> torch.Tensor:
    """Random out×out crop of each image and a random left-right flip (whole batch at once)."""
    n, _, h, _ = x.shape
    i, j = np.random.randint(0, h - out + 1, 2)
    x = x[..., i:i + out, j:j + out]
    flip = torch.rand(n) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def pretrain_classifier(size: str, data: Path, out_file: Path, minutes: float, seed: int = 0) -> float:
    """Train torchvision's ShuffleNetV2 `size` on object crops for `minutes`; save its state_dict; val accuracy."""
    import torchvision
    torch.manual_seed(seed)
    np.random.seed(seed)
    xt, yt = object_crops(data, "train", 72)
    xv, yv = object_crops(data, "val", 72)
    net = getattr(torchvision.models, f"shufflenet_v2_{size}")(weights=None, num_classes=int(yt.max()) + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    t0, epoch = time.time(), 0
    while time.time() - t0 < minutes * 60:
        net.train()
        for idx in torch.randperm(len(xt)).split(64):
            loss = F.cross_entropy(net(normalise(augment(xt[idx], 64))), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        acc = accuracy(net, xv, yv)
        print(f"classifier epoch {epoch}: loss {loss.item():.3f}, val accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
    torch.save(net.state_dict(), out_file)
    print(f"{len(xt)} train / {len(xv)} val crops; saved {out_file}")
    return acc


@torch.no_grad()
def accuracy(net, x, y) -> float:
    net.eval()
    pred = torch.cat([net(normalise(b[..., 4:68, 4:68])).argmax(1) for b in x.split(256)])
    return float((pred == y).float().mean())


def detect_run(name: str, args, extra: list) -> list:
    """python train.py ... ; returns the final results.csv row [P, R, mAP50, mAP50-95]."""
    project = ROOT / "runs" / "bench_pretrained"
    cmd = [sys.executable, str(ROOT / "train.py"), "--cfg", f"yolov5n_shufflenetv2_{args.size}.yaml",
           "--data", "shapes.yaml", "--imgsz", str(args.imgsz), "--epochs", str(args.epochs), "--batch-size",
           str(args.batch), "--workers", "2", "--noplots", "--noval", "--project", str(project), "--name", name,
           "--exist-ok", "--device", "cpu", *extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    row = (project / name / "results.csv").read_text().strip().splitlines()[-1].split(",")
    print(f"{name}: {time.time() - t0:.0f} s")
    return [float(v) for v in row[4:8]]


def main(args):
    torch.set_num_threads(args.threads)
    data = (ROOT / "../datasets/shapes").resolve()
    weights = ROOT / "runs" / "bench_pretrained" / f"shufflenetv2_{args.size}_shapes_crops.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    if not weights.is_file():
        pretrain_classifier(args.size, data, weights, args.pretrain_minutes)
    results = {"scratch": detect_run("scratch", args, []),
               "pretrained": detect_run("pretrained", args, ["--backbone-weights", str(weights)])}
    print("\n| start | P | R | mAP@0.5 | mAP@0.5:0.95 |\n|---|---|---|---|---|")
    for k, (p, r, m50, m) in results.items():
        print(f"| {k} | {p:.3f} | {r:.3f} | {m50:.3f} | {m:.3f} |")


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="x0_5", choices=["x0_5", "x1_0", "x1_5", "x2_0"], help="ShuffleNetV2 size")
    p.add_argument("--pretrain-minutes", type=float, default=4.0, help="classifier training time")
    p.add_argument("--epochs", type=int, default=10, help="detector epochs (both runs)")
    p.add_argument("--imgsz", type=int, default=320, help="detector image size")
    p.add_argument("--batch", type=int, default=16, help="detector batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_opt())
