"""CPU benchmark: parameters, GFLOPs, latency per backend and (with weights) mAP, printed as a markdown table.

Usage:
    python benchmarks.py --cfg yolov5n.yaml yolov5n_shuffle.yaml yolov5l.yaml yolov5l_shuffle.yaml --imgsz 640
    python benchmarks.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml
Latency is the median of --runs single-image forwards (batch 1) after --warmup, measured round-robin over every
model and backend so that load from other processes hits them alike. A config gets random weights (speed only);
a stock/shuffle pair (yolov5n.yaml and yolov5n_shuffle.yaml) also gets a ratio row.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from inference.backends import DetectMultiBackend  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.yolo import Detect, DetectionModel  # noqa: E402
from models.checkpoint import UntrustedCheckpointError  # noqa: E402
from models.exporters import MissingPackage, export_onnx, export_openvino, export_torchscript, model_metadata  # noqa: E402
from utils.logger import LOGGER, set_logging  # noqa: E402
from utils.torch_utils import model_info  # noqa: E402

BACKENDS = {"pytorch": "PyTorch", "torchscript": "TorchScript", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}


def load_unfused(source: str, trust: bool) -> tuple:
    """(name, unfused eval model) from a model yaml (random init, seed 0) or a checkpoint."""
    if str(source).endswith((".yaml", ".yml")):
        torch.manual_seed(0)
        return Path(source).stem, DetectionModel(source).eval()
    return Path(source).stem, attempt_load(source, fuse=False, trust=trust).eval()


def build_runners(name: str, model, im: torch.Tensor, backends: list, tmp: Path) -> dict:
    """{backend: callable(im) -> pred} for one model; exported files go to `tmp`. Missing packages are skipped."""
    fused = model.fuse() if hasattr(model, "fuse") else model
    runners = {"pytorch": lambda x, m=fused: m(x)[0]} if "pytorch" in backends else {}
    exported = [b for b in backends if b != "pytorch"]
    if not exported:
        return runners
    ex = _export_copy(fused)
    file = tmp / f"{name}.pt"
    files = {}
    try:
        if "torchscript" in exported:
            _set_dynamic(ex, True)
            files["torchscript"] = export_torchscript(ex, im, file)
        _set_dynamic(ex, False)
        if "onnx" in exported or "openvino" in exported:
            files["onnx"] = export_onnx(ex, im, file)
        if "openvino" in exported:
            files["openvino"] = export_openvino(files["onnx"], model_metadata(ex, im), file)
    except MissingPackage as e:
        LOGGER.info(f"{name}: {e}")
    for b in exported:
        if b in files:
            try:
                runners[b] = lambda x, m=DetectMultiBackend(files[b]): m(x)[0]
            except ValueError as e:  # a runtime that is not installed
                LOGGER.info(f"{name}: {BACKENDS[b]} skipped: {e}")
    return runners


def _export_copy(fused):
    """The fused model with Detect in export mode (the shape export.py traces)."""
    from copy import deepcopy
    ex = deepcopy(fused)
    for m in ex.modules():
        if isinstance(m, Detect):
            m.export = True
    return ex


def _set_dynamic(model, dynamic: bool) -> None:
    for m in model.modules():
        if isinstance(m, Detect):
            m.dynamic = dynamic


@torch.inference_mode()
def time_all(runners: dict, im: torch.Tensor, warmup: int, runs: int, block: int = 1) -> dict:
    """Median ms per (model, backend) over `runs` forwards, taken in turns of `block` so that load from other
    processes hits every runner alike. Each turn starts with one untimed forward: the previous runtime's worker
    threads (OpenMP, ONNX Runtime, OpenVINO) may still be spinning and would be billed to this one. One timed
    forward per turn spreads every runner's samples over the whole run: on a shared virtual machine whose speed
    drifts by 30 % over tens of seconds, turns of 5 gave yolov5l_shuffle / yolov5l ratios from 0.39 to 0.48."""
    for f in runners.values():
        for _ in range(warmup):
            f(im)
    times = {k: [] for k in runners}
    while min(len(v) for v in times.values()) < runs:
        for k, f in runners.items():
            f(im)
            for _ in range(min(block, runs - len(times[k]))):
                t = time.perf_counter()
                f(im)
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def map_of(weights: str, data: str, imgsz: int, trust: bool) -> str:
    """mAP50-95 of a checkpoint on `data` through val.run (PyTorch backend)."""
    import val
    r = val.run(data=data, weights=weights, imgsz=imgsz, batch_size=16, workers=0, plots=False,
                project=Path(tempfile.gettempdir()) / "yolov5_benchmarks", exist_ok=True, trust_weights=trust)[0]
    return f"{r[3]:.3f}"


def table(rows: list, ms: dict, backends: list, with_map: bool) -> str:
    """The markdown table: one row per model, then one ratio row per stock/shuffle pair."""
    head = ["model", "params", "GFLOPs"] + [f"{BACKENDS[b]} ms" for b in backends] + (["mAP50-95"] if with_map else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['params']:,}", f"{r['gflops']:.2f}"]
        cells += [f"{ms[(r['name'], b)]:.1f}" if (r["name"], b) in ms else "-" for b in backends]
        out.append("| " + " | ".join(cells + ([r.get("map", "-")] if with_map else [])) + " |")
    names = {r["name"]: r for r in rows}
    for r in rows:
        stock = r["name"].replace("_shuffle", "")
        if stock != r["name"] and stock in names:
            s = names[stock]
            cells = [f"ratio {r['name']} / {stock}", "%.2f" % (r["params"] / s["params"]),
                     "%.2f" % (r["gflops"] / s["gflops"])]
            cells += ["%.2f" % (ms[(r["name"], b)] / ms[(stock, b)]) if (r["name"], b) in ms and (stock, b) in ms
                      else "-" for b in backends]
            out.append("| " + " | ".join(cells + (["-"] if with_map else [])) + " |")
    return "\n".join(out)


def run(cfg=(), weights=(), data=None, imgsz=640, warmup=3, runs=20, backends=("pytorch", "torchscript", "onnx",
        "openvino"), threads=0, trust_weights=False) -> str:
    """Benchmark every --cfg and --weights model on every backend; -> the markdown table (also printed)."""
    if threads:
        torch.set_num_threads(threads)
    backends = [b.lower() for b in backends]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not (cfg or weights):
        raise ValueError(f"--backends {' '.join(bad)}: unknown; known: {', '.join(BACKENDS)}" if bad
                         else "give at least one --cfg or --weights")
    im = torch.zeros(1, 3, imgsz, imgsz)
    rows, runners = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in list(cfg) + list(weights):
            name, model = load_unfused(src, trust_weights)
            _, n_p, _, gflops = model_info(model, imgsz=imgsz)
            rows.append({"name": name, "params": n_p, "gflops": gflops or 0.0})
            if data and src in weights:
                rows[-1]["map"] = map_of(src, data, imgsz, trust_weights)
            for b, f in build_runners(name, model, im, backends, Path(tmp)).items():
                runners[(name, b)] = f
        load0 = os.getloadavg()
        ms = time_all(runners, im, warmup, runs)
    md = table(rows, ms, [b for b in backends if any(k[1] == b for k in ms)], bool(data and weights))
    load1 = os.getloadavg()
    print(f"\nCPU latency, batch 1, {imgsz}x{imgsz}, {torch.get_num_threads()} threads, median of {runs} runs "
          f"(torch {torch.__version__}); load average {load0[0]:.2f} before, {load1[0]:.2f} after\n\n{md}")
    return md


def parse_opt(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPU latency / size / mAP table for model configs and weights.")
    parser.add_argument("--cfg", nargs="*", default=[], help="model yaml(s), random weights: speed only")
    parser.add_argument("--weights", nargs="*", default=[], help="checkpoint(s): speed and, with --data, mAP")
    parser.add_argument("--data", type=str, default=None, help="dataset.yaml for mAP of --weights")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="square inference size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards per model and backend")
    parser.add_argument("--runs", type=int, default=20, help="timed forwards per model and backend (median)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), help=", ".join(BACKENDS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--trust-weights", action="store_true", help="allow legacy pickled checkpoints")
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> str:
    set_logging(verbose=False)
    return run(**vars(opt))


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, UntrustedCheckpointError) as err:
        sys.exit(f"ERROR: {err}")
