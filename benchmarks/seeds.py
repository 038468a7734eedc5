"""Accuracy over seeds: train configs at several seeds with pareto.py's recipe, several runs at a time.

    python benchmarks/seeds.py --cfg yolov5n.yaml models/experiments/yolov5n_shuffle_cpu_bu.yaml --seeds 0 1 2
    python benchmarks/seeds.py --cfg ... --seeds 0 1 2 3 4 --device 0 --parallel 8 --workers 1   # on one GPU

On a few hundred images another seed moves mAP50-95 by 0.01-0.03, as much as many design changes, so one pareto.py
run cannot tell such designs apart. This trains every (config, seed) pair in its own train.py child process
(pareto.py's recipe: the same flags and defaults), --parallel of them at a time, validates each best.pt at --img as
pareto.py does, and writes to --project/--name: seeds.md (mAP50-95 per seed with the mean, min and max per config;
each config minus the first, per seed, with the mean and the smallest difference), results.json and the training
logs. A failed run is marked in the table, its log named, and the others go on; the exit status is then 1.
No latency here (parallel runs share the machine, and train wall times with it): time with pareto.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from copy import copy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pareto  # noqa: E402  (benchmarks/pareto.py: its recipe, train.py command and validation)
from utils.files import check_yaml, increment_path  # noqa: E402
from utils.logger import LOGGER, set_logging  # noqa: E402


def parse_opt(argv=None) -> argparse.Namespace:
    recipe = pareto.parse_opt([])
    parser = argparse.ArgumentParser(description="Train configs at several seeds with one recipe; mAP per seed.")
    parser.add_argument("--cfg", nargs="+", required=True, help="model yamls; the first is the one others are "
                                                                "compared with")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    for k in ("data", "img", "epochs", "batch", "hyp", "workers"):
        parser.add_argument(f"--{k}", default=getattr(recipe, k), type=type(getattr(recipe, k)),
                            help=f"as pareto.py (default {getattr(recipe, k)})")
    parser.add_argument("--optimizer", default=recipe.optimizer, choices=["auto", "SGD", "Adam", "AdamW"])
    parser.add_argument("--device", default="", help="train.py's --device for every run (cpu, 0, ...)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--project", default=str(ROOT / "runs" / "seeds"))
    parser.add_argument("--name", default="exp")
    return parser.parse_args(argv)


def check(opt: argparse.Namespace) -> None:
    """Refuse bad flags before anything trains."""
    for cfg in opt.cfg:
        check_yaml(cfg)  # raises naming the file when it is found nowhere
    names = [Path(c).stem for c in opt.cfg]
    if len(set(names)) < len(names):
        raise ValueError(f"--cfg {' '.join(opt.cfg)}: two configs with one name; their runs would share a folder")
    if len(set(opt.seeds)) < len(opt.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, opt.seeds))}: a seed given twice")
    if opt.parallel < 1:
        raise ValueError(f"--parallel {opt.parallel}: need at least 1")
    if opt.epochs < 1 or opt.img < 32:
        raise ValueError(f"--epochs {opt.epochs} / --img {opt.img}: need at least 1 epoch and 32 px")
    if opt.hyp:
        opt.hyp = str(check_yaml(opt.hyp))


def train_all(opt: argparse.Namespace, save_dir: Path) -> list:
    """Every (config, seed) run, --parallel at a time, each validated as it ends; -> one dict per run."""
    todo = [{"config": Path(c).stem, "cfg": c, "seed": s} for s in opt.seeds for c in opt.cfg]
    queue, running = list(todo), []
    while queue or running:
        while queue and len(running) < opt.parallel:
            r = queue.pop(0)
            name = f"{r['config']}_seed{r['seed']}"
            r["log"] = str(save_dir / "train" / f"{name}.log")
            cmd = pareto.train_command(r["cfg"], _with_seed(opt, r["seed"]), save_dir / "train", name)
            LOGGER.info(f"seeds: training {r['cfg']} at seed {r['seed']}, log {r['log']}")
            log = open(r["log"], "w")
            running.append((r, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log, time.time()))
        time.sleep(1)
        for job in [job for job in running if job[1].poll() is not None]:
            running.remove(job)
            r, proc, log, t0 = job
            r["train_s"] = time.time() - t0
            log.close()
            rc = proc.returncode
            weights = save_dir / "train" / Path(r["log"]).stem / "weights" / "best.pt"
            if rc != 0 or not weights.is_file():
                r["error"] = f"exit {rc}"
                LOGGER.info(f"seeds: {r['cfg']} at seed {r['seed']} failed (exit {rc}); see {r['log']}")
                continue
            r["weights"] = str(weights)
            r["map50"], r["map"] = pareto.validate(r["weights"], opt.data, opt.img, save_dir, opt.device)
            LOGGER.info(f"seeds: {r['config']} seed {r['seed']}: mAP50 {r['map50']:.3f}, mAP50-95 {r['map']:.3f}")
    return todo


def _with_seed(opt: argparse.Namespace, seed: int) -> argparse.Namespace:
    one = copy(opt)
    one.seed = seed
    return one


def table(runs: list, opt: argparse.Namespace) -> str:
    """mAP50-95 per seed, mean/min/max and mean mAP50 per config; then each config minus the first."""
    configs = list(dict.fromkeys(r["config"] for r in runs))
    got = {(r["config"], r["seed"]): r for r in runs}

    def cell(c, s):
        r = got[c, s]
        return f"{r['map']:.3f}" if "map" in r else "failed"

    head = ["model"] + [f"seed {s}" for s in opt.seeds] + ["mean", "min", "max", "mean mAP50"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        done = [got[c, s] for s in opt.seeds if "map" in got[c, s]]
        maps = [r["map"] for r in done]
        stats = ([f"{sum(maps) / len(maps):.3f}", f"{min(maps):.3f}", f"{max(maps):.3f}",
                  f"{sum(r['map50'] for r in done) / len(done):.3f}"] if done else ["-"] * 4)
        out.append("| " + " | ".join([c] + [cell(c, s) for s in opt.seeds] + stats) + " |")
    base = configs[0]
    for c in configs[1:]:
        diffs = {s: got[c, s]["map"] - got[base, s]["map"] for s in opt.seeds
                 if "map" in got[c, s] and "map" in got[base, s]}
        cells = [f"{diffs[s]:+.3f}" if s in diffs else "-" for s in opt.seeds]
        stats = ([f"{sum(diffs.values()) / len(diffs):+.3f}", f"{min(diffs.values()):+.3f}",
                  f"{max(diffs.values()):+.3f}", ""] if diffs else ["-"] * 3 + [""])
        out.append("| " + " | ".join([f"{c} - {base}"] + cells + stats) + " |")
    return "\n".join(out)


def main(opt: argparse.Namespace) -> str:
    set_logging(verbose=True)
    check(opt)
    save_dir = increment_path(Path(opt.project) / opt.name)
    (save_dir / "train").mkdir(parents=True)
    runs = train_all(opt, save_dir)
    md = table(runs, opt)
    header = (f"{pareto.recipe_text(opt)}, seeds {' '.join(map(str, opt.seeds))}, device {opt.device or 'default'}, "
              f"{opt.parallel} at a time. mAP50-95 on the val split at {opt.img}.")
    text = f"{header}\n\n{md}\n"
    (save_dir / "seeds.md").write_text(text)
    (save_dir / "results.json").write_text(json.dumps({"opt": vars(opt), "runs": runs}, indent=1))
    print(f"\n{text}\nSaved {save_dir / 'seeds.md'}, {save_dir / 'results.json'}")
    failed = [r for r in runs if "error" in r]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} runs failed: " +
                           ", ".join(f"{r['config']} seed {r['seed']} ({r['log']})" for r in failed))
    return md


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, RuntimeError) as err:
        sys.exit(f"ERROR: {err}")
