"""Writers for each export format: TorchScript, ONNX, OpenVINO (from the ONNX file) and ncnn (through pnnx).

Each writer takes a model already prepared by export.py (fused, eval, Detect in export mode) and an example input
(b, 3, h, w), writes its output next to the weights under a temporary name and renames it into place, so an
interrupted export never leaves a half-written file. Optional packages are imported inside the writer that needs
them; a missing one raises MissingPackage, which export.py turns into one line saying what to install.
"""

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from models.onnx_layout import for_blocked_layout
from utils.files import atomic_write, yaml_save
from utils.checks import import_optional
from utils.logger import LOGGER
from utils.results import names_dict


class MissingPackage(ImportError):
    """An optional exporter's package is not installed; `install` is the pip command that fixes it."""

    def __init__(self, fmt: str, install: str):
        super().__init__(f"{fmt}: export skipped, needs `{install}`")
        self.install = install


def require(module: str, fmt: str, install: str):
    """Import an optional package or raise MissingPackage naming the pip command."""
    return import_optional(module, MissingPackage(fmt, install))


def model_metadata(model: nn.Module, im: torch.Tensor) -> dict:
    """What every exported file carries: max stride (int), class names {id: name} and the input shape."""
    return {"stride": int(max(model.stride)), "names": names_dict(model.names), "shape": list(im.shape)}


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Tracing warns about Python-side shape checks in Detect that are constant for a given input; hide that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch >= 2.9 marks torch.jit as deprecated
        yield


@contextlib.contextmanager
def plain_layout(model: nn.Module) -> Iterator[nn.Module]:
    """Trace with NCHW conv weights: fuse() makes them channels-last, and a trace of that records the channels-last
    branch of the shuffle (extra Transpose nodes) that ONNX runtimes and pnnx gain nothing from."""
    from models.yolo import set_conv_memory_format
    cl = any(isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1 and m.kernel_size != (1, 1) and
             m.weight.is_contiguous(memory_format=torch.channels_last) for m in model.modules())  # unambiguous ones
    set_conv_memory_format(model, torch.contiguous_format)
    try:
        yield model
    finally:
        if cl:
            set_conv_memory_format(model, torch.channels_last)


def trace(model: nn.Module, im: torch.Tensor) -> torch.jit.ScriptModule:
    """torch.jit.trace the model on `im` (check_trace off: Detect's grid cache makes the second call differ)."""
    with _quiet_tracing(), torch.no_grad():
        return torch.jit.trace(model, im, strict=False, check_trace=False)


def export_torchscript(model: nn.Module, im: torch.Tensor, file: Path, optimize: bool = False) -> Path:
    """<stem>.torchscript with an extra file config.txt = JSON {shape, stride, names}; --optimize: mobile passes."""
    f = file.with_suffix(".torchscript")
    ts = trace(model, im)
    xnnpack = getattr(getattr(torch.backends, "xnnpack", None), "enabled", False)
    if optimize and not xnnpack:
        LOGGER.info("TorchScript: --optimize skipped, this torch build has no XNNPACK (mobile builds have it)")
    elif optimize:  # CPU-only mobile optimisation passes (conv/BN folding, prepacking), as YOLOv5's --optimize
        from torch.utils.mobile_optimizer import optimize_for_mobile
        with _quiet_tracing():
            ts = optimize_for_mobile(ts)
    extra = {"config.txt": json.dumps(model_metadata(model, im))}
    with _quiet_tracing():
        atomic_write(f, lambda fo: torch.jit.save(ts, fo, _extra_files=extra))
    return f


def export_onnx(model: nn.Module, im: torch.Tensor, file: Path, opset: int = 12, dynamic: bool = False,
                simplify: bool = False) -> Path:
    """<stem>.onnx: input `images`, output `output0` (b, anchors, 5+nc), metadata props stride and names.

    The traced graph gets models/onnx_layout.py's exact rewrites, which let ONNX Runtime keep its blocked CPU layout
    (no effect on models without a channel shuffle or an odd-width conv, such as YOLOv5's own).

    Uses torch's TorchScript-based exporter (dynamo=False), which needs no onnxscript and keeps YOLOv5's node
    names. --dynamic makes batch/height/width (and batch/anchors of the output) symbolic; Detect then builds its
    grid from the input's shape inside the graph.
    """
    onnx = require("onnx", "ONNX", "pip install onnx")
    f = file.with_suffix(".onnx")
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}} if dynamic else None
    with tempfile.TemporaryDirectory(dir=f.parent, prefix=f".{f.stem}_onnx_") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with _quiet_tracing(), torch.no_grad(), plain_layout(model):
            torch.onnx.export(model, im, str(raw), opset_version=opset, do_constant_folding=True,
                              input_names=["images"], output_names=["output0"], dynamic_axes=axes, dynamo=False)
        proto = onnx.load(str(raw))
    onnx.checker.check_model(proto)
    if simplify:
        proto = simplify_onnx(proto)
    for_blocked_layout(proto)
    onnx.checker.check_model(proto)
    meta = model_metadata(model, im)
    for k in ("stride", "names"):  # YOLOv5's keys, values as str(): '32', "{0: 'person', ...}"
        prop = proto.metadata_props.add()
        prop.key, prop.value = k, str(meta[k])
    atomic_write(f, lambda fo: fo.write(proto.SerializeToString()))
    return f


def simplify_onnx(proto):
    """Simplify with onnxslim (preferred) or onnxsim; without either, say so in one line and return as is."""
    try:
        import onnxslim
        return onnxslim.slim(proto)
    except ImportError:
        pass
    try:
        import onnxsim
        simplified, ok = onnxsim.simplify(proto)
        return simplified if ok else proto
    except ImportError:
        LOGGER.info("ONNX: --simplify skipped, needs `pip install onnxslim` (or onnxsim)")
        return proto


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` (any old one is removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes the folder private; the result should look like any other folder
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            target.rename(old / target.name)
        tmp.rename(target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_openvino(onnx_file: Path, meta: dict, file: Path, half: bool = False) -> Path:
    """<stem>_openvino_model/ with <stem>.xml/.bin (converted from the ONNX file) and metadata.yaml."""
    ov = require("openvino", "OpenVINO", "pip install openvino")
    d = file.parent / f"{file.stem}_openvino_model"
    ov_model = ov.convert_model(str(onnx_file))
    with atomic_dir(d) as tmp:
        ov.save_model(ov_model, str(tmp / f"{file.stem}.xml"), compress_to_fp16=half)
        yaml_save(tmp / "metadata.yaml", meta)
    return d


def export_ncnn(model: nn.Module, im: torch.Tensor, file: Path, half: bool = False) -> Path:
    """<stem>_ncnn_model/ with model.ncnn.param/.bin and metadata.yaml, converted by the pnnx tool.

    pnnx reads a TorchScript file; it gets a static trace (fixed input shape, batch 1), the shape ncnn runs.
    """
    pnnx = require("pnnx", "ncnn", "pip install pnnx")
    d = file.parent / f"{file.stem}_ncnn_model"
    meta = model_metadata(model, im)
    with atomic_dir(d) as tmp:
        work = tmp / "pnnx"
        work.mkdir()
        ts = work / "model.torchscript"
        with _quiet_tracing(), plain_layout(model):
            torch.jit.save(trace(model, im), str(ts))
        shape = ",".join(str(int(x)) for x in im.shape)
        outputs = {"ncnnparam": tmp / "model.ncnn.param", "ncnnbin": tmp / "model.ncnn.bin",
                   "ncnnpy": work / "model_ncnn.py", "pnnxparam": work / "model.pnnx.param",
                   "pnnxbin": work / "model.pnnx.bin", "pnnxpy": work / "model_pnnx.py",
                   "pnnxonnx": work / "model.pnnx.onnx"}
        cmd = [pnnx.EXEC_PATH, str(ts), f"inputshape=[{shape}]f32", f"fp16={int(half)}",
               *(f"{k}={v}" for k, v in outputs.items())]
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if proc.returncode or not outputs["ncnnparam"].is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pnnx failed (exit {proc.returncode}): {' / '.join(tail)}")
        shutil.rmtree(work)
        yaml_save(tmp / "metadata.yaml", meta)
    return d
