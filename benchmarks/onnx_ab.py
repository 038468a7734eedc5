"""Time ONNX files against each other in ONNX Runtime, interleaved: an A/B of two exports of the same model.

    python export.py --weights yolov5n_shuffle.pt --include onnx --int8 --img 640     # then change something and
    python benchmarks/onnx_ab.py yolov5n_shuffle.onnx yolov5n_shuffle_int8.onnx other/yolov5n_shuffle_int8.onnx

Every file gets one session with the options of the runners detect.py, val.py and benchmarks.py use (sleeping
intra-op workers, --threads of them), fed one random image of its input's fixed shape. Each round takes the files in
a new, seeded random order and times --runs forwards of each after --warmup untimed ones, so that drift of a shared
machine hits all files alike. Printed: each file's median over the rounds of its per-round median (ms), every
round's median, and the median over the rounds of its per-round ratio to the first file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.backends import ort_session_options  # noqa: E402
from utils.torch_utils import cpu_description  # noqa: E402


def session(path: Path):
    """An ONNX Runtime CPU session for `path` with the runners' options, and a random input of its fixed shape."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("onnxruntime is not installed: pip install onnxruntime") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        s = ort.InferenceSession(str(path), ort_session_options(ort), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise ValueError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e
    inp = s.get_inputs()[0]
    if not all(isinstance(d, int) for d in inp.shape):
        raise ValueError(f"{path}: input {inp.name} has a dynamic shape {inp.shape}; export without --dynamic")
    x = np.random.default_rng(0).random(inp.shape, dtype=np.float32)
    return s, {inp.name: x}


def run(files, rounds: int = 10, runs: int = 40, warmup: int = 5, threads: int = 2, seed: int = 0) -> str:
    """Time `files` in `rounds` interleaved rounds; -> the markdown table (also printed)."""
    if len(files) < 1 or rounds < 1 or runs < 1:
        raise ValueError("give at least one file, --rounds >= 1 and --runs >= 1")
    torch.set_num_threads(threads)  # ort_session_options takes torch's thread count, as the runners do
    sessions = [session(Path(f)) for f in files]
    rng = np.random.default_rng(seed)
    times = np.zeros((rounds, len(files)))
    for r in range(rounds):
        for i in rng.permutation(len(files)):
            s, feed = sessions[i]
            for _ in range(warmup):
                s.run(None, feed)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feed)
                ts.append(time.perf_counter() - t0)
            times[r, i] = np.median(ts) * 1000
    ratios = np.median(times / times[:, :1], 0)
    lines = [f"ONNX Runtime, {threads} threads, {rounds} interleaved rounds of {runs} forwards ({cpu_description()})",
             "", "| file | ms (median of rounds) | ratio to the first | rounds (ms) |", "|---|---:|---:|---|"]
    for i, f in enumerate(files):
        lines.append(f"| {f} | {np.median(times[:, i]):.2f} | {ratios[i]:.3f} | "
                     f"{' '.join(f'{t:.2f}' for t in times[:, i])} |")
    md = "\n".join(lines)
    print(md)
    return md


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="ONNX files with a fixed input shape; ratios are to the first")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--runs", type=int, default=40, help="timed forwards per file and round")
    p.add_argument("--warmup", type=int, default=5, help="untimed forwards before each file's runs in a round")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the order of the files in each round")
    return p.parse_args(argv)


if __name__ == "__main__":
    opt = parse_opt()
    try:
        run(opt.files, opt.rounds, opt.runs, opt.warmup, opt.threads, opt.seed)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"ERROR: {e}")
