"""Export a trained model for deployment: TorchScript, ONNX, OpenVINO and ncnn, written next to the weights.

Usage:
    python export.py --weights yolov5n_shuffle.pt --include torchscript onnx openvino ncnn
    python export.py --weights best.pt --include onnx --dynamic --simplify
    python export.py --weights best.pt --include onnx openvino --int8 --data my.yaml  # + <stem>_int8.onnx, ...
Every file it writes runs with `python detect.py --weights <file>` and `python val.py --weights <file>`.
OpenVINO needs `pip install openvino` and ncnn needs `pip install pnnx` (plus `ncnn` to run the result);
without them those formats are skipped with one line and the others are still written. --int8 adds INT8 models
calibrated on --data's train split (ONNX: onnxruntime; OpenVINO: `pip install nncf`).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.experimental import attempt_load  # noqa: E402
from models.yolo import Detect  # noqa: E402
from models.checkpoint import UntrustedCheckpointError  # noqa: E402
from utils.checks import check_img_size  # noqa: E402
from models.exporters import (MissingPackage, export_ncnn, export_onnx, export_openvino, export_torchscript,  # noqa: E402
                             model_metadata)
from utils.files import ROOT as REPO_ROOT  # noqa: E402
from models.int8 import (DEFAULT_IMAGES, INT8_FORMATS, REDUCE_RANGE, CalibrationImages, quantize_onnx,  # noqa: E402
                         quantize_openvino, weight_bits_to_try)
from utils.logger import LOGGER, colorstr, set_logging  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402

SUPPORTED = ("torchscript", "onnx", "openvino", "ncnn")
# YOLOv5's other formats: what to use instead (one line each when requested).
UNSUPPORTED = {
    "engine": "TensorRT engines are built on the target GPU: export onnx, then `trtexec --onnx=<file>.onnx`",
    "coreml": "export onnx or torchscript and convert with coremltools on macOS",
    "saved_model": "TensorFlow formats are not exported by this project: export onnx and convert it with onnx2tf",
    "pb": "TensorFlow formats are not exported by this project: export onnx and convert it with onnx2tf",
    "tflite": "export onnx and convert it with onnx2tf (it writes .tflite files)",
    "edgetpu": "export onnx, convert it to INT8 .tflite with onnx2tf, then run edgetpu_compiler on it",
    "tfjs": "export onnx, convert it with onnx2tf, then tensorflowjs_converter",
    "paddle": "export onnx and convert it with x2paddle",
}
TF_ONLY_FLAGS = ("keras", "nms", "agnostic_nms")  # YOLOv5 uses these for TensorFlow/CoreML formats only


def parse_include(include) -> list:
    """--include values, lower-cased; unknown names are an error listing every known one."""
    fmts = [x.lower().lstrip(".") for x in (include if isinstance(include, (list, tuple)) else [include])]
    known = SUPPORTED + tuple(UNSUPPORTED)
    bad = [x for x in fmts if x not in known]
    if bad:
        raise ValueError(f"--include {' '.join(bad)}: unknown format. Known: {', '.join(known)}")
    return fmts


def check_options(fmts: list, half: bool, dynamic: bool, device: torch.device, optimize: bool, opt: dict) -> None:
    """YOLOv5's rules on combining flags (errors), plus one line for each flag that does nothing here."""
    no_int8 = [f for f in fmts if f not in INT8_FORMATS]
    if opt.get("int8") and no_int8:
        raise ValueError(f"--int8 --include {' '.join(no_int8)}: INT8 export is available for "
                         f"{' and '.join(INT8_FORMATS)} only; export the other formats without --int8")
    if opt.get("int8") and half:
        raise ValueError("--int8 and --half: INT8 models are quantized from the fp32 model; use one or the other")
    if half and device.type == "cpu":
        raise ValueError("--half is only compatible with GPU export; use --device 0 (or drop --half)")
    if half and dynamic:
        raise ValueError("--half is not compatible with --dynamic; use one or the other")
    if optimize and device.type != "cpu":
        raise ValueError("--optimize (mobile TorchScript) is CPU-only; use --device cpu")
    for k in TF_ONLY_FLAGS:
        if opt.get(k):
            LOGGER.info(f"--{k.replace('_', '-')} applies to TensorFlow/CoreML formats, which this project does "
                        f"not export; ignored")
    for f in fmts:
        if f in UNSUPPORTED:
            LOGGER.info(f"{f}: not supported by this project; {UNSUPPORTED[f]}")


def load_for_export(weights, device, inplace: bool, dynamic: bool, trust: bool):
    """The checkpoint's model, fused, FP32, eval, with Detect set to export mode (single output tensor)."""
    w = Path(weights)
    if w.suffix.lower() not in (".pt", ".pth"):
        raise ValueError(f"--weights {weights}: export.py reads PyTorch checkpoints (.pt); {w.suffix or 'a folder'} "
                         f"is already an export format")
    if not w.is_file() and (REPO_ROOT / w).is_file():
        w = REPO_ROOT / w
    model = attempt_load(w, device=device, inplace=True, fuse=True, trust=trust).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace, m.export = inplace, True
    set_dynamic(model, dynamic)
    return model, w


def set_dynamic(model, dynamic: bool) -> None:
    """Detect builds its grid from the input shape inside the traced graph (dynamic) or uses cached constants."""
    for m in model.modules():
        if isinstance(m, Detect):
            m.dynamic = dynamic


def export_one(prefix: str, fn, *args, **kwargs):
    """Run one writer with YOLOv5-style log lines; a missing optional package or a failure costs one line."""
    t = time.time()
    try:
        f = fn(*args, **kwargs)
    except MissingPackage as e:
        LOGGER.info(f"{colorstr(prefix)} export skipped, `{e.install}` to enable it")
        return None
    except Exception as e:  # one format failing must not stop the others
        LOGGER.info(f"{colorstr(prefix)} export failure ({time.time() - t:.1f}s): {type(e).__name__}: {e}")
        return None
    size = sum(p.stat().st_size for p in ([f] if f.is_file() else f.rglob("*"))) / 1e6
    LOGGER.info(f"{colorstr(prefix)} export success ({time.time() - t:.1f}s), saved as {f} ({size:.1f} MB)")
    return f


@torch.no_grad()
def run(data=None, weights=ROOT / "yolov5s.pt", imgsz=(640, 640), batch_size=1, device="cpu",
        include=("torchscript",), half=False, inplace=False, keras=False, optimize=False, int8=False, dynamic=False,
        simplify=False, opset=12, verbose=False, workspace=4, nms=False, agnostic_nms=False, topk_per_class=100,
        topk_all=100, iou_thres=0.45, conf_thres=0.25, trust_weights=False, int8_images=DEFAULT_IMAGES,
        int8_reduce_range="auto") -> list:
    """Export `weights` to each format in `include`; -> list of written paths (files or folders).

    int8: also write INT8 ONNX/OpenVINO models calibrated on `int8_images` images of `data`'s train split (None:
    the built-in dataset); int8_reduce_range: auto, on or off, the ONNX INT8 model's weights in 7 bits (see
    models.int8.weight_bits_to_try)."""
    t = time.time()
    fmts = parse_include(include)
    device = select_device(device)
    check_options(fmts, half, dynamic, device, optimize, {"keras": keras, "nms": nms, "agnostic_nms": agnostic_nms,
                                                          "int8": int8})
    todo = [f for f in fmts if f in SUPPORTED]
    if not todo:
        return []
    model, w = load_for_export(weights, device, inplace, dynamic, trust_weights)
    gs = int(max(model.stride.max(), 32))
    imgsz = [int(x) for x in (imgsz if isinstance(imgsz, (list, tuple)) else [imgsz])]
    imgsz = check_img_size(imgsz * 2 if len(imgsz) == 1 else imgsz, s=gs)
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1")
    im = torch.zeros(batch_size, 3, *imgsz, device=device)
    calib = CalibrationImages(data, imgsz, int8_images, gs,  # refuses before anything is written
                              batch=1 if dynamic else batch_size) if int8 else None
    if int8:
        weight_bits_to_try(int8_reduce_range)  # refuses an unknown choice before anything is written
    if half:
        im, model = im.half(), model.half()
    for _ in range(2):  # dry runs build Detect's grids and catch shape errors before any file is written
        y = model(im)
    LOGGER.info(f"\n{colorstr('PyTorch:')} starting from {w} with output shape {tuple(y[0].shape)}")

    written = []
    if "torchscript" in todo:  # always traced with an in-graph grid, so it runs at any batch and image size
        set_dynamic(model, True)
        written.append(export_one("TorchScript:", export_torchscript, model, im, w, optimize))
        set_dynamic(model, dynamic)
    onnx_file = None
    if "onnx" in todo or "openvino" in todo:  # OpenVINO converts the ONNX file, as YOLOv5 does
        onnx_file = export_one("ONNX:", export_onnx, model, im, w, opset, dynamic, simplify)
        written.append(onnx_file)
    if "openvino" in todo and onnx_file:
        written.append(export_one("OpenVINO:", export_openvino, onnx_file, model_metadata(model, im), w,
                                  half))
    if "ncnn" in todo:  # ncnn runs a fixed shape; a static grid keeps the graph simple
        set_dynamic(model, False)
        written.append(export_one("ncnn:", export_ncnn, model, im[:1], w, half))
    if calib:
        written += export_int8(model, im, w, todo, calib, opset, dynamic, int8_reduce_range)
    written = [f for f in written if f]
    report(written, time.time() - t, w)
    return written


def export_int8(model, im: torch.Tensor, w: Path, fmts: list, calib: CalibrationImages, opset: int,
                dynamic: bool, reduce_range: str = "auto") -> list:
    """<stem>_int8.onnx and/or <stem>_int8_openvino_model/, both quantized from one fp32 ONNX traced into a temporary
    folder at opset >= 13 (per-channel QuantizeLinear/DequantizeLinear need 13; the fp32 .onnx keeps --opset).
    reduce_range: --int8-reduce-range, for the ONNX model (NNCF handles OpenVINO's kernels itself)."""
    out = []
    with tempfile.TemporaryDirectory(dir=w.parent, prefix=f".{w.stem}_int8_") as tmp:
        try:
            src = export_onnx(model, im, Path(tmp) / w.name, max(opset, 13), dynamic)
        except Exception as e:  # the fp32 ONNX export above has already said why
            LOGGER.info(f"{colorstr('INT8:')} export skipped, no ONNX model to quantize ({type(e).__name__}: {e})")
            return []
        if "onnx" in fmts:
            out.append(export_one("ONNX INT8:", quantize_onnx, src, calib, len(model.model),
                                  w.parent / f"{w.stem}_int8.onnx", reduce_range))
        if "openvino" in fmts:
            out.append(export_one("OpenVINO INT8:", quantize_openvino, src, calib, len(model.model),
                                  model_metadata(model, im), w.parent / f"{w.stem}_int8_openvino_model"))
    return [f for f in out if f]


def report(files: list, seconds: float, weights: Path) -> None:
    """Closing lines: where the files are and how to use them."""
    if not files:
        LOGGER.info(f"\nExport finished ({seconds:.1f}s): no format was written (see the lines above)")
        return
    LOGGER.info(f"\nExport complete ({seconds:.1f}s)\nResults saved to {colorstr('bold', weights.parent.resolve())}")
    for f in files:
        LOGGER.info(f"Detect:          python detect.py --weights {f}\n"
                    f"Validate:        python val.py --weights {f}")


def parse_opt(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a model to TorchScript, ONNX, OpenVINO or ncnn.")
    parser.add_argument("--data", type=str, default=None,
                        help="dataset.yaml whose train split calibrates --int8 (default: built-in data/shapes.yaml)")
    parser.add_argument("--weights", nargs="+", type=str, default=ROOT / "yolov5s.pt", help="model.pt path(s)")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640, 640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size")
    parser.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--half", action="store_true", help="FP16 half-precision export (GPU only)")
    parser.add_argument("--inplace", action="store_true", help="set YOLOv5 Detect() inplace=True")
    parser.add_argument("--keras", action="store_true", help="TF: use Keras (not supported here)")
    parser.add_argument("--optimize", action="store_true", help="TorchScript: optimize for mobile")
    parser.add_argument("--int8", action="store_true",
                        help="ONNX/OpenVINO: also write INT8 models calibrated on --data (<stem>_int8.onnx, ...)")
    parser.add_argument("--int8-images", type=int, default=DEFAULT_IMAGES, help="--int8: calibration images (max)")
    parser.add_argument("--int8-reduce-range", default="auto", choices=REDUCE_RANGE,
                        help="--int8 ONNX: 7-bit weights (auto: on a CPU with AVX2 but no VNNI, where 8-bit ones can "
                             "saturate ONNX Runtime's int8 sums, tries both and keeps the closer to fp32; else off)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    parser.add_argument("--simplify", action="store_true", help="ONNX: simplify model (onnxslim or onnxsim)")
    parser.add_argument("--opset", type=int, default=12, help="ONNX: opset version")
    parser.add_argument("--verbose", action="store_true", help="TensorRT: verbose log (not supported here)")
    parser.add_argument("--workspace", type=int, default=4, help="TensorRT: workspace size (GB) (not supported here)")
    parser.add_argument("--nms", action="store_true", help="TF: add NMS to model (not supported here)")
    parser.add_argument("--agnostic-nms", action="store_true", help="TF: add agnostic NMS to model (not supported)")
    parser.add_argument("--topk-per-class", type=int, default=100, help="TF.js NMS: topk per class to keep")
    parser.add_argument("--topk-all", type=int, default=100, help="TF.js NMS: topk for all classes to keep")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="TF.js NMS: IoU threshold")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="TF.js NMS: confidence threshold")
    parser.add_argument("--include", nargs="+", default=["torchscript"],
                        help="torchscript, onnx, openvino, ncnn (engine, coreml, saved_model, pb, tflite, edgetpu, "
                             "tfjs, paddle: not supported, each says what to use instead)")
    parser.add_argument("--trust-weights", action="store_true",
                        help="allow checkpoints that are arbitrary pickles, e.g. YOLOv5 last.pt (only files you trust)")
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> list:
    set_logging()
    LOGGER.info(colorstr("export: ") + ", ".join(f"{k}={v}" for k, v in vars(opt).items()))
    files = []
    for opt.weights in (opt.weights if isinstance(opt.weights, list) else [opt.weights]):
        files += run(**vars(opt))
    return files


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, UntrustedCheckpointError) as err:
        sys.exit(f"ERROR: {err}")
