"""The ONNX INT8 export with and without its channel shuffles carried by the weights, timed in ONNX Runtime.

    python benchmarks/int8_unshuffle.py --weights yolov5n_shuffle.pt --img 640
    python benchmarks/int8_unshuffle.py --weights yolov5n_shuffle.pt --img 320 --rounds 12 --runs 100

Writes, into --out (a temporary folder by default, removed afterwards), the fp32 ONNX export (as export.py writes
it), the INT8 export (as export.py --int8 writes it) and the INT8 export quantized from the same fp32 graph after
models/channel_order.py removed its ShuffleNetV2 channel shuffles (quantize_onnx(unshuffle=True)); then times the
three in interleaved rounds (benchmarks/onnx_ab.py) and prints the table: ratios are to the fp32 file. The two INT8
files are calibrated on the same images (--data's train split, the built-in dataset by default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import onnx_ab  # noqa: E402
from export import load_for_export  # noqa: E402
from models.exporters import export_onnx  # noqa: E402
from models.int8 import CalibrationImages, quantize_onnx  # noqa: E402


def run(weights="yolov5n_shuffle.pt", imgsz: int = 640, data=None, images: int = 32, out=None, rounds: int = 10,
        runs: int = 40, threads: int = 2) -> str:
    """Export, quantize both ways and time; -> onnx_ab's markdown table."""
    model, w = load_for_export(weights, torch.device("cpu"), inplace=False, dynamic=False, trust=False)
    gs = int(max(model.stride.max(), 32))
    im = torch.zeros(1, 3, imgsz, imgsz)
    calib = CalibrationImages(data, (imgsz, imgsz), images, gs)
    for _ in range(2):  # builds Detect's grids, as export.py's dry runs do
        model(im)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = export_onnx(model, im, folder / f"{w.stem}.onnx")
        (Path(tmp) / "opset13").mkdir()
        src = export_onnx(model, im, Path(tmp) / "opset13" / f"{w.stem}.onnx", 13)
        files = [fp32, quantize_onnx(src, calib, len(model.model), folder / f"{w.stem}_int8.onnx"),
                 quantize_onnx(src, calib, len(model.model), folder / f"{w.stem}_int8_unshuffled.onnx",
                               unshuffle=True)]
        return onnx_ab.run([str(f) for f in files], rounds, runs, threads=threads)


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="yolov5n_shuffle.pt", help="a checkpoint of a model with ShuffleNetV2 units")
    p.add_argument("--img", "--imgsz", type=int, default=640, dest="imgsz", help="export size (square)")
    p.add_argument("--data", default=None, help="dataset yaml to calibrate on (default: the built-in one)")
    p.add_argument("--int8-images", type=int, default=32, dest="images", help="calibration images")
    p.add_argument("--out", default=None, help="keep the three files in this folder")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--runs", type=int, default=40, help="timed forwards per file and round")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    return p.parse_args(argv)


if __name__ == "__main__":
    opt = parse_opt()
    try:
        run(**vars(opt))
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"ERROR: {e}")
