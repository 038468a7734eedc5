"""Data pipeline benchmark: training-loader throughput (mosaic on) and label-scan time for many label files.

    python benchmarks/dataloader.py                      # 640 and 320 on the built-in shapes dataset, 10k scan
    python benchmarks/dataloader.py --imgsz 640 --workers 2 --batches 20 --scan-files 10000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.dataloaders import LoadImagesAndLabels, create_dataloader  # noqa: E402
from utils.datasets_yaml import check_dataset  # noqa: E402
from utils.files import yaml_load  # noqa: E402
from utils.logger import set_logging  # noqa: E402


def loader_throughput(train: str, imgsz: int, batch: int, workers: int, batches: int, cache) -> float:
    """Images per second delivered by the training loader (after a warm-up of 3 batches)."""
    hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
    loader, _ = create_dataloader(train, imgsz, batch, 32, hyp=hyp, augment=True, workers=workers, shuffle=True,
                                  cache=cache, prefix="bench: ")
    it = iter(loader)
    n, t0 = 0, None
    for i in range(3 + batches):
        try:
            imgs = next(it)[0]
        except StopIteration:  # one epoch done: start the next
            it = iter(loader)
            imgs = next(it)[0]
        if i == 2:
            t0 = time.perf_counter()
        elif i > 2:
            n += len(imgs)
    return n / (time.perf_counter() - t0)


def make_label_corpus(root: Path, n: int) -> Path:
    """n tiny JPEGs in root/images and n label files (1-5 rows) in root/labels; returns the images folder."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    jpg = cv2.imencode(".jpg", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))[1].tobytes()
    for i in range(n):
        (root / "images" / f"{i:06d}.jpg").write_bytes(jpg)
        rows = rng.uniform(0.05, 0.95, (int(rng.integers(1, 6)), 4))
        (root / "labels" / f"{i:06d}.txt").write_text(
            "".join(f"{i % 80} {a:.5f} {b:.5f} {c / 4:.5f} {d / 4:.5f}\n" for a, b, c, d in rows))
    return root / "images"


def scan_time(n: int) -> tuple[float, float]:
    """(seconds for a fresh scan + cache write, seconds to reuse the cache) for n image/label pairs."""
    tmp = Path(tempfile.mkdtemp(prefix="scan-bench-"))
    try:
        images = make_label_corpus(tmp, n)
        t = time.perf_counter()
        ds = LoadImagesAndLabels(str(images), 640)
        fresh = time.perf_counter() - t
        assert ds.n == n
        t = time.perf_counter()
        LoadImagesAndLabels(str(images), 640)
        return fresh, time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="shapes.yaml", help="dataset yaml (default: the built-in shapes)")
    parser.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batches", type=int, default=20, help="timed batches per image size")
    parser.add_argument("--cache", default=None, choices=[None, "ram", "disk"])
    parser.add_argument("--scan-files", type=int, default=10_000)
    opt = parser.parse_args()
    set_logging(verbose=False)
    train = check_dataset(opt.data)["train"]
    print(f"{os.cpu_count()} CPUs, workers={opt.workers}, batch={opt.batch}, cache={opt.cache}, data={opt.data}")
    for s in opt.imgsz:
        ips = loader_throughput(train, s, opt.batch, opt.workers, opt.batches, opt.cache)
        print(f"train loader, mosaic on, imgsz {s}: {ips:.1f} images/s")
    if opt.scan_files:
        fresh, cached = scan_time(opt.scan_files)
        print(f"label scan, {opt.scan_files} image/label pairs: {fresh:.2f}s fresh scan + cache write, "
              f"{cached:.2f}s from cache")


if __name__ == "__main__":
    main()
