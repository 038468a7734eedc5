"""Accuracy per millisecond: train several configs with one recipe, then time them all in one run.

    python benchmarks/pareto.py                       # the default list on the built-in dataset (about 50-80 min)
    python benchmarks/pareto.py --quick               # two models, 3 epochs, a few minutes: see it work
    python benchmarks/pareto.py --cfg yolov5n.yaml yolov5n_shuffle_cpu.yaml --data my.yaml --epochs 36

Every config trains in its own child process (train.py, same --img, --epochs, --batch, --hyp, --optimizer and
--seed; wall time measured around the process). Each best.pt is validated at the trained size, and the stock model
named by --smaller-cfg (yolov5n) also at the smaller --smaller sizes: shrinking the input is the first thing a user
who needs speed tries, so those points are the baseline a faster model has to beat (name more configs there to see
them shrunk too: `--smaller-cfg yolov5n.yaml yolov5n_shuffle_cpu_bufpn_k3.yaml`). Latency is then measured in
this one process, after all training, with benchmarks.py's method (batch 1, median of --runs, every model and
backend taking turns), at each point's input size and at --latency-size (640). Written to --project/--name:
pareto.md (the table), pareto.png (mAP50-95 against latency, one panel per backend), results.json and the
training logs. Latency figures are only comparable within one run: the machines drift by up to 30 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks as bench  # noqa: E402  (benchmarks.py, the single-run latency table)
from models.checkpoint import UntrustedCheckpointError  # noqa: E402
from utils.files import check_yaml, increment_path  # noqa: E402
from utils.logger import LOGGER, set_logging  # noqa: E402
from utils.torch_utils import cpu_description, keep_freed_memory, model_info  # noqa: E402

# stock models, the seed's n model, the shipped designs and the README's training recommendations at n and s
DEFAULT_CFGS = ("yolov5n.yaml", "yolov5n_shuffle.yaml", "yolov5n_shuffle_cpu.yaml",
                "models/experiments/yolov5n_shuffle_cpu_bufpn_k3.yaml", "yolov5s.yaml", "yolov5s_shuffle_cpu.yaml",
                "models/experiments/yolov5s_shuffle_cpu_fpn_k3_w128_u1.yaml")
QUICK = {"cfg": ["yolov5n.yaml", "yolov5n_shuffle_cpu.yaml"], "epochs": 3, "runs": 5, "smaller": [256]}


def train_command(cfg: str, opt: argparse.Namespace, project: Path, name: str) -> list:
    """train.py's command line for one config with the recipe in opt (also benchmarks/seeds.py's)."""
    return ([sys.executable, str(ROOT / "train.py"), "--cfg", cfg, "--data", opt.data, "--img", str(opt.img),
             "--epochs", str(opt.epochs), "--batch", str(opt.batch), "--seed", str(opt.seed),
             "--optimizer", opt.optimizer, "--workers", str(opt.workers), "--project", str(project),
             "--name", name, "--exist-ok"] + (["--hyp", opt.hyp] if opt.hyp else []) +
            (["--device", opt.device] if getattr(opt, "device", "") else []))


def train(cfg: str, opt: argparse.Namespace, save_dir: Path) -> dict:
    """Train one config in a child process; -> {'weights', 'train_s', 'log'}. A failed run raises, naming its log."""
    name = Path(cfg).stem
    log = save_dir / "train" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(cfg, opt, save_dir / "train", name)
    LOGGER.info(f"pareto: training {cfg} ({opt.epochs} epochs at {opt.img}), log {log}")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    seconds = time.perf_counter() - t0
    weights = save_dir / "train" / name / "weights" / "best.pt"
    if rc != 0 or not weights.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"pareto: training {cfg} failed (exit {rc}); last lines of {log}:\n{tail}")
    return {"weights": str(weights), "train_s": seconds, "log": str(log)}


def validate(weights: str, data: str, imgsz: int, save_dir: Path, device: str = "") -> tuple:
    """(mAP50, mAP50-95) of a checkpoint on data's val split at imgsz (val.py's defaults otherwise)."""
    import val
    r = val.run(data=data, weights=weights, imgsz=imgsz, batch_size=16, workers=0, plots=False, device=device,
                project=save_dir / "val", name=f"{Path(weights).parents[1].name}_{imgsz}", exist_ok=True)[0]
    return float(r[2]), float(r[3])


def points_of(opt: argparse.Namespace, save_dir: Path) -> list:
    """Train every config and validate it: one point per (model, input size)."""
    points, shrink = [], {Path(c).name for c in opt.smaller_cfg}
    for cfg in opt.cfg:
        run = train(cfg, opt, save_dir)
        sizes = [opt.img] + ([s for s in opt.smaller if s != opt.img] if Path(cfg).name in shrink else [])
        for s in sizes:
            map50, map_ = validate(run["weights"], opt.data, s, save_dir)
            points.append({"config": Path(cfg).stem, "img": s, "trained_img": opt.img, "map50": map50,
                           "map": map_, **run})
    return points


def measure_latency(points: list, opt: argparse.Namespace, tmp: Path) -> None:
    """Add params, GFLOPs and ms per backend, at each point's size ('ms') and at --latency-size ('ms_big'). Per
    input size, every network and backend takes turns in one timing loop (benchmarks.time_all); the resized points
    of a network share its --latency-size figure."""
    for s in sorted({p["img"] for p in points} | {opt.latency_size}):
        jobs = {}  # weights -> the points it serves at this size
        for p in points:
            if s in (p["img"], opt.latency_size):
                jobs.setdefault(p["weights"], []).append(p)
        im = torch.zeros(1, 3, s, s)
        runners = {}
        for i, (weights, served) in enumerate(jobs.items()):
            _, model = bench.load_unfused(weights, trust=False)
            _, params, _, gflops = model_info(model, imgsz=s)
            for p in served:
                if p["img"] == s:
                    p["params"], p["gflops"] = params, gflops
            built, _ = bench.build_runners(model, im, opt.backends, tmp / f"{i}_{s}")
            runners.update({(weights, b): f for b, f in built.items()})
        for (weights, b), v in bench.time_all(runners, im, opt.warmup, opt.runs).items():
            for p in jobs[weights]:
                if p["img"] == s:
                    p.setdefault("ms", {})[b] = v
                if s == opt.latency_size:
                    p.setdefault("ms_big", {})[b] = v


def label(p: dict) -> str:
    return p["config"] if p["img"] == p["trained_img"] else f"{p['config']} @{p['img']}"


def stock_of(p: dict, points: list):
    """The stock YOLOv5 point of the same scale at the same input size (yolov5n for yolov5n_*), if trained."""
    stock = p["config"].split("_")[0]
    if stock == p["config"]:
        return None
    return next((q for q in points if q["config"] == stock and q["img"] == p["img"]), None)


def table(points: list, opt: argparse.Namespace) -> str:
    names = [bench.BACKENDS[b] for b in opt.backends]
    big = opt.latency_size
    head = (["model", "img", "params", "GFLOPs"] + [f"{n} ms" for n in names] + [f"{n} ms @{big}" for n in names] +
            ["train s", "mAP50", "mAP50-95"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        trained = f"{p['train_s']:.0f}" if p["img"] == p["trained_img"] else f"({p['train_s']:.0f}, at {p['trained_img']})"
        cells = [label(p), str(p["img"]), f"{p.get('params', 0):,}", bench.gflops_cell(p.get("gflops"))]
        cells += [f"{p.get(k, {}).get(b, float('nan')):.1f}" for k in ("ms", "ms_big") for b in opt.backends]
        out.append("| " + " | ".join(cells + [trained, f"{p['map50']:.3f}", f"{p['map']:.3f}"]) + " |")
    for p in points:
        q = stock_of(p, points)
        if q is None:
            continue
        cells = [f"{label(p)} / {q['config']}", "", f"{p.get('params', 0) / max(q.get('params', 1), 1):.2f}",
                 f"{p['gflops'] / q['gflops']:.2f}" if p.get("gflops") and q.get("gflops") else "-"]
        cells += [f"{p[k][b] / q[k][b]:.2f}" if b in p.get(k, {}) and b in q.get(k, {}) else "-"
                  for k in ("ms", "ms_big") for b in opt.backends]
        cells += [f"{p['train_s'] / q['train_s']:.2f}", f"{p['map50'] - q['map50']:+.3f}", f"{p['map'] - q['map']:+.3f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(points: list, opt: argparse.Namespace, file: Path) -> None:
    """mAP50-95 against latency at each point's input size, one panel per backend; stock models drawn as squares,
    a model's resized points joined by a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(opt.backends), figsize=(6.5 * len(opt.backends), 5), squeeze=False)
    for ax, b in zip(axes[0], opt.backends):
        for cfg in dict.fromkeys(p["config"] for p in points):
            pts = sorted((p for p in points if p["config"] == cfg and b in p.get("ms", {})), key=lambda p: p["img"])
            if not pts:
                continue
            stock = "_" not in cfg
            xs, ys = [p["ms"][b] for p in pts], [p["map"] for p in pts]
            ax.plot(xs, ys, "s--" if stock else "o-", label=cfg, markersize=7)
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(f"{p['img']}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set_xlabel(f"{bench.BACKENDS[b]} ms, batch 1 (at the input size marked)")
        ax.set_ylabel("mAP50-95")
        ax.set_title(f"{Path(opt.data).stem}: {opt.epochs} epochs at {opt.img}, {bench.BACKENDS[b]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def run(**kwargs) -> str:
    """Train, validate and time every --cfg; -> the markdown table (also printed and saved)."""
    opt = parse_opt([])
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt)


def parse_opt(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train configs with one recipe; table and plot of mAP vs latency.")
    parser.add_argument("--cfg", nargs="+", default=list(DEFAULT_CFGS), help="model yamls to train and compare")
    parser.add_argument("--data", default="shapes.yaml", help="dataset.yaml (default: the built-in dataset)")
    parser.add_argument("--img", "--imgsz", type=int, default=320, help="training and validation size")
    parser.add_argument("--epochs", type=int, default=36)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hyp", default="hyp.adamw-short.yaml", help="hyperparameters for every run")
    parser.add_argument("--optimizer", default="AdamW", choices=["auto", "SGD", "Adam", "AdamW"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers of each training")
    parser.add_argument("--smaller-cfg", nargs="+", default=["yolov5n.yaml"],
                        help="configs (of --cfg) also validated and timed at the --smaller sizes")
    parser.add_argument("--smaller", nargs="*", type=int, default=[256, 224], help="its extra input sizes")
    parser.add_argument("--latency-size", type=int, default=640, help="second latency size (all models)")
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnx"], help=", ".join(bench.BACKENDS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help="timed forwards per model, backend and size")
    parser.add_argument("--project", default=str(ROOT / "runs" / "pareto"))
    parser.add_argument("--name", default="exp")
    parser.add_argument("--quick", action="store_true",
                        help=f"see it work in minutes: {' '.join(QUICK['cfg'])}, {QUICK['epochs']} epochs "
                             f"(explicit --cfg/--epochs win)")
    opt = parser.parse_args(argv)
    if opt.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        for k, v in QUICK.items():
            if f"--{k}" not in given:
                setattr(opt, k, v)
    return opt


def check(opt: argparse.Namespace) -> None:
    """Refuse bad flags before anything trains: unknown backends, missing configs, nothing to compare."""
    bad = [b for b in opt.backends if b not in bench.BACKENDS]
    if bad:
        raise ValueError(f"--backends {' '.join(bad)}: unknown; known: {', '.join(bench.BACKENDS)}")
    for cfg in opt.cfg:
        check_yaml(cfg)  # raises naming the file when it is found nowhere
    if opt.hyp:
        opt.hyp = str(check_yaml(opt.hyp))
    if opt.epochs < 1 or opt.img < 32:
        raise ValueError(f"--epochs {opt.epochs} / --img {opt.img}: need at least 1 epoch and 32 px")


def recipe_text(opt: argparse.Namespace) -> str:
    """'shapes.yaml: 36 epochs at 320, batch 16, --optimizer AdamW, --hyp hyp.adamw-short.yaml' (tables' headers)."""
    return (f"{Path(opt.data).name}: {opt.epochs} epochs at {opt.img}, batch {opt.batch}, --optimizer {opt.optimizer}, "
            f"--hyp {Path(opt.hyp).name if opt.hyp else 'default'}")


def main(opt: argparse.Namespace) -> str:
    set_logging(verbose=True)
    keep_freed_memory()
    check(opt)
    save_dir = increment_path(Path(opt.project) / opt.name)
    save_dir.mkdir(parents=True)
    points = points_of(opt, save_dir)
    with tempfile.TemporaryDirectory() as tmp:
        load0 = os.getloadavg()
        measure_latency(points, opt, Path(tmp))
        load1 = os.getloadavg()
    md = table(points, opt)
    header = (f"{recipe_text(opt)}, seed {opt.seed}. Latency: batch 1, "
              f"{torch.get_num_threads()} threads, median of {opt.runs}, torch {torch.__version__}, {cpu_description()}; "
              f"load average {load0[0]:.2f} before timing, {load1[0]:.2f} after.")
    text = f"{header}\n\n{md}\n"
    (save_dir / "pareto.md").write_text(text)
    (save_dir / "results.json").write_text(json.dumps({"opt": vars(opt), "points": points}, indent=1))
    plot(points, opt, save_dir / "pareto.png")
    print(f"\n{text}\nSaved {save_dir / 'pareto.md'}, {save_dir / 'pareto.png'}, {save_dir / 'results.json'}")
    return md


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, RuntimeError, UntrustedCheckpointError) as err:
        sys.exit(f"ERROR: {err}")
