"""CPU (or CUDA) benchmark: parameters, GFLOPs, latency per backend and (with weights) mAP, as a markdown table.

Usage:
    python benchmarks.py --cfg yolov5n.yaml yolov5n_shuffle.yaml yolov5l.yaml yolov5l_shuffle.yaml --imgsz 640
    python benchmarks.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml
Latency is the median of --runs single-image forwards (batch 1) after --warmup, measured round-robin over every
model and backend so that load from other processes hits them alike. A config gets random weights (speed only);
a stock/shuffle pair (yolov5n.yaml and yolov5n_shuffle.yaml) also gets a ratio row. The int8 backends run the
models export.py --int8 writes, calibrated on --data's train split (default: the built-in dataset); with --data and
--weights every backend also gets an mAP50-95 column (val.py on that export), so fp32 and int8 sit side by side.
Rows are labelled by model config; rows that share one also show their file. --ort-profile then prints ONNX
Runtime's own profile of every ONNX and ONNX int8 model: ms per forward by op type, to see where a graph spends it.
--device 0 [--half] times the PyTorch backend on that GPU instead (the other backends are CPU runtimes here).
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from inference.backends import DetectMultiBackend, ort_session_options  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.yolo import Detect, DetectionModel  # noqa: E402
from models.checkpoint import UntrustedCheckpointError  # noqa: E402
from models.exporters import MissingPackage, export_onnx, export_openvino, export_torchscript, model_metadata  # noqa: E402
from models.int8 import DEFAULT_IMAGES, REDUCE_RANGE, CalibrationImages  # noqa: E402
from utils.logger import LOGGER, set_logging  # noqa: E402
from utils.torch_utils import cpu_description, keep_freed_memory, model_info, select_device  # noqa: E402

BACKENDS = {"pytorch": "PyTorch", "torchscript": "TorchScript", "onnx": "ONNX Runtime",  # fp32 next to int8
            "onnx_int8": "ONNX Runtime int8", "openvino": "OpenVINO", "openvino_int8": "OpenVINO int8"}


def load_unfused(source: str, trust: bool) -> tuple:
    """(config name, unfused eval model) from a model yaml (random init, seed 0) or a checkpoint."""
    if str(source).endswith((".yaml", ".yml")):
        torch.manual_seed(0)
        return Path(source).stem, DetectionModel(source).eval()
    model = attempt_load(source, fuse=False, trust=trust).eval()
    return Path(getattr(model, "yaml_file", "") or source).stem, model


def row_labels(rows: list) -> list:
    """Each row's config name; names that occur more than once get the row's source path, so rows stay apart."""
    names = [r["config"] for r in rows]
    return [f"{n} ({r['source']})" if names.count(n) > 1 else n for n, r in zip(names, rows)]


def export_files(model, im: torch.Tensor, backends: list, folder: Path, calib, reduce_range: str = "auto") -> dict:
    """{backend: exported file} for one model, written to its own `folder`; missing packages cost one line."""
    ex = _export_copy(model)
    file = folder / "model.pt"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    try:
        if "torchscript" in backends:
            _set_dynamic(ex, True)
            files["torchscript"] = export_torchscript(ex, im, file)
        _set_dynamic(ex, False)
        if {"onnx", "openvino"} & set(backends):
            files["onnx"] = export_onnx(ex, im, file)
        if "openvino" in backends:
            files["openvino"] = export_openvino(files["onnx"], model_metadata(ex, im), file)
    except MissingPackage as e:
        LOGGER.info(f"{e}")
    int8 = [b[:-5] for b in backends if b.endswith("_int8")]
    if int8:
        import export
        for f in export.export_int8(ex, im, file, int8, calib, 13, False, reduce_range):
            files[("onnx" if f.suffix == ".onnx" else "openvino") + "_int8"] = f
    return files


def build_runners(model, im: torch.Tensor, backends: list, folder: Path, calib=None,
                  reduce_range: str = "auto") -> tuple:
    """({backend: callable(im) -> pred}, {backend: file}) for one model. Missing packages are skipped."""
    fused = model.fuse() if hasattr(model, "fuse") else model
    runners = {"pytorch": lambda x, m=fused: m(x)[0]} if "pytorch" in backends else {}
    exported = [b for b in backends if b != "pytorch"]
    files = export_files(fused, im, exported, folder, calib, reduce_range) if exported else {}
    for b in exported:
        if b in files:
            try:
                runners[b] = lambda x, m=DetectMultiBackend(files[b]): m(x)[0]
            except ValueError as e:  # a runtime that is not installed
                LOGGER.info(f"{BACKENDS[b]} skipped: {e}")
    return runners, files


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
def time_all(runners: dict, im: torch.Tensor, warmup: int, runs: int, block: int = 1, seed: int = 0) -> dict:
    """Median ms per (model, backend) over `runs` forwards, taken in turns of `block` so that load from other
    processes hits every runner alike. Each turn starts with one untimed forward: the previous runtime's worker
    threads (OpenMP, ONNX Runtime, OpenVINO) may still be spinning and would be billed to this one. One timed
    forward per turn spreads every runner's samples over the whole run: on a shared virtual machine whose speed
    drifts by 30 % over tens of seconds, turns of 5 gave yolov5l_shuffle / yolov5l ratios from 0.39 to 0.48.

    The untimed forward is not always enough: OpenVINO's threads can spin for longer than a small model's forward.
    On the 2-core Zen 4 machine (2026-12-05, scratch script, trained yolov5n_shuffle at 640, 30 forwards each) an
    ONNX Runtime forward took 13.1 ms after itself, 19.7 ms right after OpenVINO forwards and 12.3 ms (but 19.7 at
    the 90th percentile) with one untimed forward in between. With a fixed order the same runner always came right
    after the last OpenVINO one (the first model's fp32 ONNX Runtime: 16.0 and 24.6 ms in two runs of the same
    command, 15.4 and 15.5 ms without the OpenVINO backends), so every turn takes the runners in a new order,
    shuffled with `seed`: whatever one runner leaves behind falls on all of them alike."""
    for f in runners.values():
        for _ in range(warmup):
            f(im)
    times = {k: [] for k in runners}
    order, rng = list(runners.items()), random.Random(seed)
    while min(len(v) for v in times.values()) < runs:
        rng.shuffle(order)
        for k, f in order:
            f(im)
            for _ in range(min(block, runs - len(times[k]))):
                t = time.perf_counter()
                f(im)
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def map_of(weights: str, data: str, imgsz: int, trust: bool, device=torch.device("cpu"), half=False) -> str:
    """mAP50-95 of a checkpoint or exported file on `data` through val.run (fixed-shape exports run batch 1)."""
    import val
    r = val.run(data=data, weights=str(weights), imgsz=imgsz, batch_size=16, workers=0, plots=False,
                device=str(device.index if device.type == "cuda" else device.type), half=half,
                project=Path(tempfile.gettempdir()) / "yolov5_benchmarks", exist_ok=True, trust_weights=trust)[0]
    return f"{r[3]:.3f}"


def map_header(b: str) -> str:
    return "mAP50-95" if b == "pytorch" else f"{BACKENDS[b]} mAP50-95"


def gflops_cell(gflops) -> str:
    """A GFLOPs table cell: '-' where thop is not installed (model_info then has no count)."""
    return f"{gflops:.2f}" if gflops else "-"


def table(rows: list, ms: dict, backends: list, map_backends: list) -> str:
    """The markdown table: one row per model (ms keyed by (row index, backend)), then a ratio row per stock/shuffle
    pair (every yolov5X_shuffle* row against yolov5X), and a ratio row int8 / fp32 per model when both of a runtime
    ran."""
    head = ["model", "params", "GFLOPs"] + [f"{BACKENDS[b]} ms" for b in backends] + [map_header(b) for b in
                                                                                       map_backends]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labels = row_labels(rows)
    for i, (r, name) in enumerate(zip(rows, labels)):
        cells = [name, f"{r['params']:,}", gflops_cell(r["gflops"])]
        cells += [f"{ms[(i, b)]:.1f}" if (i, b) in ms else "-" for b in backends]
        out.append("| " + " | ".join(cells + [r.get("map", {}).get(b, "-") for b in map_backends]) + " |")
    index = {name: i for i, name in enumerate(labels)}
    for i, name in enumerate(labels):
        stock = name.split("_shuffle")[0]  # yolov5n_shuffle, yolov5n_shuffle_cpu, ...: against yolov5n
        if stock != name and stock in index:
            j = index[stock]
            cells = [f"ratio {name} / {stock}", "%.2f" % (rows[i]["params"] / rows[j]["params"]),
                     "%.2f" % (rows[i]["gflops"] / rows[j]["gflops"]) if rows[i]["gflops"] and rows[j]["gflops"]
                     else "-"]
            cells += ["%.2f" % (ms[(i, b)] / ms[(j, b)]) if (i, b) in ms and (j, b) in ms else "-" for b in backends]
            out.append("| " + " | ".join(cells + ["-"] * len(map_backends)) + " |")
    for i, name in enumerate(labels):
        pairs = {f"{b}_int8": b for b in ("onnx", "openvino") if (i, b) in ms and (i, f"{b}_int8") in ms}
        if pairs:
            cells = [f"ratio {name} int8 / fp32", "-", "-"]
            cells += ["%.2f" % (ms[(i, b)] / ms[(i, pairs[b])]) if b in pairs else "-" for b in backends]
            out.append("| " + " | ".join(cells + ["-"] * len(map_backends)) + " |")
    return "\n".join(out)


def collect(cfg, weights, data, imgsz: int, backends: list, tmp: Path, trust: bool, int8_images: int,
            int8_reduce_range: str = "auto", device=torch.device("cpu"), half: bool = False) -> tuple:
    """(rows, runners): one row dict per model, in --cfg then --weights order, and {(row index, backend): runner}.
    Each model exports into its own folder, so files that share a name (a/best.pt, b/best.pt) stay apart.
    On a CUDA `device` (PyTorch backend only) the models run there, in FP16 if `half`, and each forward waits
    for the GPU to finish, so that the time is the GPU's."""
    im = torch.zeros(1, 3, imgsz, imgsz, device=device, dtype=torch.float16 if half else torch.float32)
    int8 = any(b.endswith("_int8") for b in backends)
    calib = CalibrationImages(data, (imgsz, imgsz), int8_images) if int8 else None
    rows, runners = [], {}
    for i, src in enumerate(list(cfg) + list(weights)):
        config, model = load_unfused(src, trust)
        _, n_p, _, gflops = model_info(model, imgsz=imgsz)
        model = model.to(device).half() if half else model.to(device)
        rows.append({"config": config, "source": str(src), "params": n_p, "gflops": gflops, "map": {}})
        row_runners, files = build_runners(model, im, backends, tmp / str(i), calib, int8_reduce_range)
        rows[-1]["onnx_files"] = {b: files[b] for b in ("onnx", "onnx_int8") if b in row_runners}
        if data and src in weights:
            files["pytorch"] = src
            for b in backends:
                if b in files and b in row_runners:
                    rows[-1]["map"][b] = map_of(files[b], data, imgsz, trust, device, half)
        for b, f in row_runners.items():
            runners[(i, b)] = _synced(f) if device.type == "cuda" else f
    return rows, runners


def _synced(f):
    def run(x):
        y = f(x)
        torch.cuda.synchronize()
        return y
    return run


def ort_op_times(path: Path, im: torch.Tensor, runs: int, folder: Path) -> dict:
    """{op type: ms per forward} of an ONNX file from ONNX Runtime's own profiler over `runs` forwards after one
    untimed one, with the session options of the runner benchmarks.py times. The op types are those of the graph
    ONNX Runtime runs after its optimizations (QLinearConv, not DequantizeLinear + Conv + QuantizeLinear; layout
    changes show as ReorderInput/ReorderOutput and Transpose). 'forward' is the median whole forward."""
    import onnxruntime as ort
    options = ort_session_options(ort)  # as the timed runner's session
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort_profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: im.numpy()}
    for _ in range(runs + 1):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    forwards = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                      key=lambda e: e["ts"])
    start = forwards[0]["ts"] + forwards[0]["dur"]  # the untimed first forward ends here
    times = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"].get("op_name", "?")
            times[op] = times.get(op, 0.0) + e["dur"] / 1e3 / runs
    times["forward"] = statistics.median(e["dur"] for e in forwards[1:]) / 1e3
    return times


def ort_op_table(columns: dict, share: float = 0.02) -> str:
    """Markdown table of ort_op_times results ({column label: times}): a row per op type that takes at least `share`
    of some column's summed op time, largest first, then the rest, the sum of all ops and the whole forward."""
    sums = {c: sum(v for k, v in t.items() if k != "forward") for c, t in columns.items()}
    ops = {k for c, t in columns.items() for k, v in t.items() if k != "forward" and v >= share * sums[c]}
    ops = sorted(ops, key=lambda k: -max(t.get(k, 0.0) for t in columns.values()))
    cell = "{:.2f}".format
    out = ["| op type | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    out += [f"| {k} | " + " | ".join(cell(t[k]) if k in t else "-" for t in columns.values()) + " |" for k in ops]
    out.append("| other ops | " + " | ".join(cell(sums[c] - sum(t.get(k, 0.0) for k in ops))
                                           for c, t in columns.items()) + " |")
    out.append("| all ops | " + " | ".join(cell(sums[c]) for c in columns) + " |")
    out.append("| forward (median, profiled) | " + " | ".join(cell(t["forward"]) for t in columns.values()) + " |")
    return "\n".join(out)


def run(cfg=(), weights=(), data=None, imgsz=640, warmup=3, runs=20, backends=tuple(BACKENDS), threads=0,
        trust_weights=False, int8_images=DEFAULT_IMAGES, int8_reduce_range="auto", ort_profile=False, device="cpu",
        half=False) -> str:
    """Benchmark every --cfg and --weights model on every backend; -> the markdown table (also printed).
    ort_profile: then also print ONNX Runtime's time per op type for every ONNX (and ONNX int8) model.
    device: 'cpu' or a CUDA index (PyTorch backend only there); half: FP16 on CUDA."""
    if threads:
        torch.set_num_threads(threads)
    backends = [b.lower() for b in backends]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not (cfg or weights):
        raise ValueError(f"--backends {' '.join(bad)}: unknown; known: {', '.join(BACKENDS)}" if bad
                         else "give at least one --cfg or --weights")
    device = check_device(device, half, backends, ort_profile)
    im, profiles = torch.zeros(1, 3, imgsz, imgsz, device=device, dtype=torch.float16 if half else None), {}
    with tempfile.TemporaryDirectory() as tmp:
        rows, runners = collect(cfg, weights, data, imgsz, backends, Path(tmp), trust_weights, int8_images,
                                int8_reduce_range, device, half)
        load0 = os.getloadavg()
        ms = time_all(runners, im, warmup, runs)
        if ort_profile:
            labels = row_labels(rows)
            profiles = {f"{label} {BACKENDS[b]}": ort_op_times(f, im, runs, Path(tmp))
                        for label, r in zip(labels, rows) for b, f in r["onnx_files"].items()}
    ran = [b for b in backends if any(k[1] == b for k in ms)]
    md = table(rows, ms, ran, [b for b in ran if any(b in r["map"] for r in rows)])
    load1 = os.getloadavg()
    where = "CPU latency" if device.type == "cpu" else \
        f"CUDA latency ({torch.cuda.get_device_name(device)}, {'FP16' if half else 'FP32'})"
    print(f"\n{where}, batch 1, {imgsz}x{imgsz}, {torch.get_num_threads()} threads, median of {runs} runs "
          f"(torch {torch.__version__}, {cpu_description()}); load average {load0[0]:.2f} before, {load1[0]:.2f} after\n\n{md}")
    if profiles:
        print(f"\nONNX Runtime time per op type, ms per forward (its profiler, {runs} forwards after the table's; op "
              f"types of the optimized graph; rows: at least 2 % of a column's op time; profiling adds a cost per "
              f"node, so compare the columns' shares, not their times with the table's)\n\n{ort_op_table(profiles)}")
    return md


def check_device(device, half: bool, backends: list, ort_profile: bool) -> torch.device:
    """--device/--half as a torch.device, or a one-line error for a combination that cannot run."""
    device = select_device(device)
    if half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (--device 0); on a CPU the fp32 and int8 backends are timed")
    if device.type == "mps":
        raise ValueError("--device mps: not supported by benchmarks.py; use --device cpu or a CUDA index")
    others = [b for b in backends if b != "pytorch"]
    if device.type == "cuda" and (others or ort_profile):
        raise ValueError(f"--device {device.index}: only the pytorch backend runs on CUDA here (pass --backends "
                         f"pytorch); {', '.join(others) or '--ort-profile'} are CPU runtimes")
    return device


def parse_opt(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPU (or CUDA) latency / size / mAP table for configs and weights.")
    parser.add_argument("--cfg", nargs="*", default=[], help="model yaml(s), random weights: speed only")
    parser.add_argument("--weights", nargs="*", default=[], help="checkpoint(s): speed and, with --data, mAP")
    parser.add_argument("--data", type=str, default=None, help="dataset.yaml for mAP of --weights")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="square inference size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards per model and backend")
    parser.add_argument("--runs", type=int, default=20, help="timed forwards per model and backend (median)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), help=", ".join(BACKENDS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--trust-weights", action="store_true", help="allow legacy pickled checkpoints")
    parser.add_argument("--int8-images", type=int, default=DEFAULT_IMAGES,
                        help="calibration images for the int8 backends (from --data's train split)")
    parser.add_argument("--int8-reduce-range", default="auto", choices=REDUCE_RANGE,
                        help="onnx_int8: 7-bit weights, as export.py --int8-reduce-range")
    parser.add_argument("--ort-profile", action="store_true",
                        help="also print ONNX Runtime's time per op type for the onnx and onnx_int8 backends")
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA device such as 0 (pytorch backend only)")
    parser.add_argument("--half", action="store_true", help="FP16 on the CUDA device")
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> str:
    set_logging(verbose=False)
    keep_freed_memory()  # as detect.py and val.py: freed activations are reused, no page faults per forward
    return run(**vars(opt))


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, UntrustedCheckpointError) as err:
        sys.exit(f"ERROR: {err}")
