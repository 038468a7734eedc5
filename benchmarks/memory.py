"""Peak memory of detect.py and val.py against the number of images: a flat curve means nothing piles up per image.

Usage:
    python benchmarks/memory.py                                  # detect over 200/1000/3000, val over 250/1000/3000
    python benchmarks/memory.py --detect 100 500 --val 100 --imgsz 128
Each measurement runs in a fresh process (a random-init yolov5n_shuffle, saved in this project's checkpoint format)
and prints its peak RSS, its RSS once the first images were processed, and the growth from there to the end.
detect should stay flat. val keeps every detection above conf 0.001 (at most max_det per image) until the end to
compute mAP, as YOLOv5 does: expect a small, steady growth per image from that, and a peak in the final AP step.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_pool(folder: Path, n: int) -> list:
    """n small JPEGs (varied sizes, 1-3 boxes) under folder/images with YOLO labels under folder/labels."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        h, w = int(rng.integers(96, 160)), int(rng.integers(96, 160))
        im = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        rows = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cv2.rectangle(im, (x, y), (x + bw, y + bh), tuple(int(c) for c in rng.integers(120, 255, 3)), -1)
            cls = int(rng.integers(0, 2))
            rows.append(f"{cls} {(x + bw / 2) / w:.5f} {(y + bh / 2) / h:.5f} {bw / w:.5f} {bh / h:.5f}")
        f = folder / "images" / f"{i:05d}.jpg"
        cv2.imwrite(str(f), im)
        (folder / "labels" / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")
        files.append(f)
    return files


def make_weights(path: Path) -> Path:
    """A random-init yolov5n_shuffle (nc=2) in this project's checkpoint layout."""
    from models.yolo import DetectionModel
    from models.checkpoint import save_checkpoint
    model = DetectionModel("yolov5n_shuffle.yaml", nc=2)
    model.names = {0: "a", 1: "b"}
    save_checkpoint({"epoch": -1, "best_fitness": None, "model": model.half(), "ema": None, "updates": None,
                     "optimizer": None}, path)
    return path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler(threading.Thread):
    """Records (seconds, RSS MB) every `every` seconds until stopped."""

    def __init__(self, every: float = 0.05):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop, self.t0 = every, [], threading.Event(), time.time()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.time() - self.t0, rss_mb()))
            time.sleep(self.every)


def child(task: str, listing: str, weights: str, imgsz: int, out: str) -> None:
    """Run detect or val over the images of `listing` in this process; write the memory figures as json."""
    sys.path.insert(0, str(ROOT))
    import torch
    torch.set_num_threads(1)
    import logging

    from utils.logger import LOGGER
    LOGGER.setLevel(logging.WARNING)  # a log line per image is not what is being measured
    progress = []  # (seconds, images done) as reported by the run
    sampler = Sampler()
    if task == "detect":
        import detect
        real = detect.ResultSaver.process

        def process(self, *a, **k):
            progress.append((time.time() - sampler.t0, len(progress) + 1))
            return real(self, *a, **k)

        detect.ResultSaver.process = process
        sampler.start()
        detect.run(weights=weights, source=listing, imgsz=(imgsz, imgsz), project=Path(out).parent / "runs")
    else:
        import val
        real = val.non_max_suppression

        def nms(pred, *a, **k):
            x = pred[0] if isinstance(pred, (list, tuple)) else pred  # (decoded, raw) from an eval forward
            done = (progress[-1][1] if progress else 0) + x.shape[0]
            progress.append((time.time() - sampler.t0, done))
            return real(pred, *a, **k)

        val.non_max_suppression = nms
        data = {"path": str(Path(listing).parent), "train": listing, "val": listing, "names": ["a", "b"]}
        sampler.start()
        val.run(data=data, weights=weights, imgsz=imgsz, batch_size=32, workers=0, plots=False,
                project=Path(out).parent / "runs")
    sampler.stop.set()
    sampler.join()
    Path(out).write_text(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                     "samples": sampler.samples, "progress": progress}))


def rss_at(samples: list, t: float) -> float:
    """RSS of the last sample taken at or before t."""
    before = [r for s, r in samples if s <= t]
    return before[-1] if before else samples[0][1]


def measure(task: str, files: list, n: int, weights: Path, imgsz: int, work: Path) -> dict:
    listing = work / f"{task}_{n}.txt"
    listing.write_text("\n".join(str(f) for f in files[:n]) + "\n")
    out = work / f"{task}_{n}.json"
    t = time.time()
    p = subprocess.run([sys.executable, __file__, "--child", task, str(listing), str(weights), str(imgsz), str(out)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{task} over {n} images failed:\n{p.stderr[-3000:]}")
    r = json.loads(out.read_text())
    first = next(p for p in r["progress"] if p[1] >= min(50, n))  # after 50 images: model, buffers, pools warm
    start, end = rss_at(r["samples"], first[0]), r["samples"][-1][1]
    return {"task": task, "images": n, "seconds": time.time() - t, "peak_mb": r["peak"], "rss_after_50_mb": start,
            "rss_end_mb": end, "growth_kb_per_image": (end - start) * 1024 / max(n - first[1], 1)}


def main(opt) -> None:
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="yolov5_memory_"))
    try:
        files = make_pool(work / "pool", max(opt.detect + opt.val))
        weights = make_weights(work / "random.pt")
        print(f"{'task':>7} {'images':>7} {'seconds':>8} {'peak MB':>8} {'RSS@50':>8} {'RSS end':>8} {'KB/image':>9}")
        for task, sizes in (("detect", opt.detect), ("val", opt.val)):
            for n in sizes:
                r = measure(task, files, n, weights, opt.imgsz, work)
                print(f"{task:>7} {n:>7} {r['seconds']:>8.1f} {r['peak_mb']:>8.1f} {r['rss_after_50_mb']:>8.1f} "
                      f"{r['rss_end_mb']:>8.1f} {r['growth_kb_per_image']:>9.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Peak memory of detect.py and val.py against the number of images.")
    p.add_argument("--detect", type=int, nargs="*", default=[200, 1000, 3000], help="image counts for detect")
    p.add_argument("--val", type=int, nargs="*", default=[250, 1000, 3000], help="image counts for val")
    p.add_argument("--imgsz", type=int, default=64, help="inference size (small: memory, not speed, is measured)")
    return p.parse_args(argv)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # one measurement, started by measure()
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        main(parse_opt())
