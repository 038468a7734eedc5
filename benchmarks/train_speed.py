"""Training speed benchmark: seconds per epoch and peak memory for yolov5n and yolov5n_shuffle on the built-in data.

    python benchmarks/train_speed.py                                 # both models, --img 320, 3 epochs, batch 16
    python benchmarks/train_speed.py --cfg yolov5n_shuffle.yaml --img 320 --epochs 2 --workers 2
    python benchmarks/train_speed.py --cfg yolov5n.yaml --epochs 6 --workers 2 --optimizer AdamW --malloc both
    python benchmarks/train_speed.py --cfg yolov5n.yaml --epochs 4 --workers 2 --optimizer AdamW --bf16 off   # fp32
    python benchmarks/train_speed.py --cfg yolov5n.yaml --epochs 4 --workers 2 --optimizer AdamW --nan-fill both

Each model trains in its own child process (so peak memory is its own): train.py's real loop, validation every
epoch, no plots. Reported per model: the first epoch (includes start-up effects), the median of the later ones
split into loader wait (the training loop blocked on the next batch), forward+backward (with the loss), optimizer
steps (unscale, clip, step, EMA) and validation+checkpoint time, the main process's peak RSS and the peak PSS of the whole
process tree (main + dataloader workers, sampled every 2 s: one reading of a 2 GB process costs ~60 ms of kernel time,
so sampling every 0.1 s slowed the training it measured by a third; PSS counts memory shared after fork once). The load
average is printed because the numbers are only comparable on an otherwise idle machine.

On a CPU train.py calls utils.torch_utils.keep_freed_memory() (glibc keeps freed memory for reuse, as in detect.py
and val.py, instead of page-faulting on fresh memory every step). `--malloc glibc` trains without that call (glibc's
defaults); `--malloc both` runs each model with glibc's defaults, then as train.py does. "faults" is the main
process's page faults per epoch (thousands; median of the later epochs); with train.py's call they settle within two
epochs, so compare with --epochs 6 or more.

train.py asks torch for deterministic kernels (as YOLOv5 does) but turns off the NaN fill of every new tensor that
deterministic mode adds since torch 2.1 (utils.torch_utils.skip_uninitialized_fill). `--nan-fill on` trains with
that fill (what YOLOv5 v7.0's training gets from torch >= 2.1); `--nan-fill both` runs each model with it, then as
train.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "TRAIN_SPEED_JSON "


def tree_pss_mb(pid: int) -> float:
    """Proportional set size (MB) of pid plus all its descendants, from /proc (Linux). PSS splits pages shared
    with forked dataloader workers among them, so the sum is the memory the run really occupies."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


class PeakSampler(threading.Thread):
    """Background thread keeping the maximum of tree_pss_mb(this process)."""

    def __init__(self, interval: float = 2.0):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, tree_pss_mb(os.getpid()))
            time.sleep(self.interval)


class TimedLoader:
    """The training DataLoader with the time the loop waits for each batch added to running['loader']."""

    def __init__(self, loader, running: dict):
        self.loader, self.running = loader, running

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.running["loader"] += time.perf_counter() - t
            yield batch


def child(opt) -> None:
    """Train one model with timing hooks around train.py's epoch steps; print one JSON line."""
    sys.path.insert(0, str(ROOT))
    import train

    times = {"train": [], "end": [], "loader": [], "optim": [], "faults": []}
    running = {"loader": 0.0, "optim": 0.0}  # summed inside the current epoch

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            times[key].append(time.perf_counter() - t)
            return out
        return wrapper

    def epoch(fn):
        def wrapper(*args, **kwargs):
            running.update(loader=0.0, optim=0.0)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            out = fn(*args, **kwargs)
            times["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
            times["loader"].append(running["loader"])
            times["optim"].append(running["optim"])
            return out
        return timed(wrapper, "train")

    def optim(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            running["optim"] += time.perf_counter() - t
            return out
        return wrapper

    def loaders(fn):
        def wrapper(*args, **kwargs):
            train_loader, dataset, val_loader = fn(*args, **kwargs)
            return TimedLoader(train_loader, running), dataset, val_loader
        return wrapper

    train.train_one_epoch = epoch(train.train_one_epoch)
    train.optimizer_step = optim(train.optimizer_step)
    train.build_loaders = loaders(train.build_loaders)
    train.end_epoch = timed(train.end_epoch, "end")
    if opt.malloc == "glibc":
        train.keep_freed_memory = lambda: False  # train.py's own call does nothing: glibc's default thresholds
    if opt.nan_fill == "on":
        import utils.torch_utils
        utils.torch_utils.skip_uninitialized_fill = lambda: False  # init_seeds leaves torch's fill on
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as project:
        train.run(cfg=opt.cfg, data=opt.data, imgsz=opt.imgsz, epochs=opt.epochs, batch_size=opt.batch_size,
                  workers=opt.workers, project=project, noplots=True, device="cpu", seed=0,
                  optimizer=opt.optimizer, bf16=opt.bf16)
    sampler.running = False
    sampler.join()
    print(MARK + json.dumps({
        "cfg": opt.cfg, "train_s": times["train"], "val_save_s": times["end"], "loader_s": times["loader"],
        "optim_s": times["optim"], "faults": times["faults"], "total_s": time.perf_counter() - t0,
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "pss_tree_mb": sampler.peak,
        "threads": __import__("torch").get_num_threads()}), flush=True)


def median(x: list) -> float:
    x = sorted(x)
    return x[len(x) // 2] if len(x) % 2 else (x[len(x) // 2 - 1] + x[len(x) // 2]) / 2


def child_args(opt, cfg: str, malloc: str, nan_fill: str = "off") -> list:
    """The command-line arguments of the child process that trains `cfg` with the parent's settings."""
    return ["--child", "--cfg", cfg, "--data", opt.data, "--imgsz", str(opt.imgsz), "--epochs", str(opt.epochs),
            "--batch-size", str(opt.batch_size), "--workers", str(opt.workers), "--optimizer", opt.optimizer,
            "--malloc", malloc, "--bf16", opt.bf16, "--nan-fill", nan_fill]


def variants(opt) -> list:
    """(cfg, malloc, nan_fill) per child run: each `both` runs the plain-torch setting first, then train.py's."""
    mallocs = ["glibc", "default"] if opt.malloc == "both" else [opt.malloc]
    fills = ["on", "off"] if opt.nan_fill == "both" else [opt.nan_fill]
    return [(c, m, f) for c in opt.cfg for m in mallocs for f in fills]


def parent(opt) -> None:
    """Run one child per model and print a table."""
    rows = []
    for cfg, mode, fill in variants(opt):
        load0 = os.getloadavg()[0]
        p = subprocess.run([sys.executable, __file__] + child_args(opt, cfg, mode, fill), capture_output=True,
                           text=True, cwd=ROOT)
        line = next((x for x in p.stdout.splitlines() if x.startswith(MARK)), None)
        if p.returncode or line is None:
            sys.exit(f"{cfg}: benchmark run failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        r = json.loads(line[len(MARK):])
        r["load"] = (load0, os.getloadavg()[0])
        r["label"] = (Path(cfg).stem + (" (glibc malloc)" if mode == "glibc" else "")
                      + (" (NaN fill)" if fill == "on" else ""))
        rows.append(r)
    print(f"\ntrain.py --img {opt.imgsz} --batch-size {opt.batch_size} --epochs {opt.epochs} --workers {opt.workers} "
          f"--optimizer {opt.optimizer} --bf16 {opt.bf16} --data {opt.data} on {os.cpu_count()} CPUs "
          f"(torch threads {rows[0]['threads']})")
    print("seconds per epoch: median of the epochs after the first; fwd+bwd = train loop - loader wait - optimizer")
    print(("%-44s" + "%11s" * 11) % ("model", "epoch1 s", "train s", "loader", "fwd+bwd", "optimizer", "val+save",
                                      "total s", "faults k", "RSS MB", "tree PSS", "load avg"))
    for r in rows:
        later = slice(1, None) if len(r["train_s"]) > 1 else slice(None)
        tr, va = median(r["train_s"][later]), median(r["val_save_s"][later])
        ld, op = median(r["loader_s"][later]), median(r["optim_s"][later])
        print(("%-44s" + "%11.1f" * 10 + "%11s") % (
            r["label"], r["train_s"][0] + r["val_save_s"][0], tr, ld, tr - ld - op, op, va, tr + va,
            median(r["faults"][later]) / 1000, r["rss_main_mb"], r["pss_tree_mb"], "%.1f-%.1f" % r["load"]))


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", nargs="+", default=["yolov5n.yaml", "yolov5n_shuffle.yaml"], help="model yaml(s)")
    p.add_argument("--data", default="shapes.yaml", help="dataset yaml (default: the built-in shapes dataset)")
    p.add_argument("--imgsz", "--img", type=int, default=320)
    p.add_argument("--epochs", type=int, default=3, help="epochs per model (the first one is reported apart)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=8, help="dataloader workers (capped by the CPU count)")
    p.add_argument("--optimizer", default="auto", help="train.py --optimizer (the speed issue's recipe: AdamW)")
    p.add_argument("--malloc", choices=("default", "glibc", "both"), default="default",
                   help="default: as train.py (freed memory kept for reuse); glibc: glibc's defaults; both: glibc, then default")
    p.add_argument("--bf16", choices=("auto", "off"), default="auto",
                   help="train.py --bf16: auto (bf16 autocast where the CPU runs it natively) or off (fp32)")
    p.add_argument("--nan-fill", choices=("off", "on", "both"), default="off",
                   help="off: as train.py (deterministic kernels without torch's NaN fill of new tensors); on: with it "
                        "(YOLOv5 v7.0 under torch >= 2.1); both: on, then off")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    o = parse_opt()
    if o.child:
        o.cfg = o.cfg[0]
        child(o)
    else:
        parent(o)
