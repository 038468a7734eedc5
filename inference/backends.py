"""DetectMultiBackend: one inference interface over a PyTorch checkpoint or any file that export.py writes.

Backends: `.pt` (PyTorch), `.torchscript`, `.onnx` (ONNX Runtime), `<stem>_openvino_model/` (OpenVINO) and
`<stem>_ncnn_model/` (ncnn). Every backend takes the same input, a float (b, 3, h, w) RGB tensor in [0, 1], and
returns `(pred, None)` with pred (b, n, 5 + nc): xywh boxes in input pixels, objectness and class scores, as
Detect gives in eval mode, so detect.py and val.py run NMS and scaling the same way on every format.
The optional runtimes (onnxruntime, openvino, ncnn) are imported only when their format is loaded.
"""

import ast
import json
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from utils.checks import import_optional
from utils.files import yaml_load
from utils.logger import LOGGER
from utils.results import names_dict

ACCEPTED = ("a PyTorch checkpoint (.pt), a .torchscript or .onnx file, an <name>_openvino_model folder (or its .xml) "
            "or an <name>_ncnn_model folder, as written by export.py")


class MissingRuntime(ValueError):
    """The package that runs this format is not installed (a ValueError, so the scripts print one ERROR line)."""


def backend_kind(weights: Union[str, Path]) -> str:
    """'pytorch', 'torchscript', 'onnx', 'openvino' or 'ncnn', from the path's suffix or folder name."""
    p = Path(str(weights).rstrip("/\\"))
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth"):
        return "pytorch"
    if suffix in (".torchscript", ".onnx"):
        return suffix[1:]
    if suffix == ".xml" or p.name.endswith("_openvino_model"):
        return "openvino"
    if p.name.endswith("_ncnn_model"):
        return "ncnn"
    raise ValueError(f"--weights {weights}: unknown model format; expected {ACCEPTED}")


def _require(module: str, path: Path, what: str, install: str):
    return import_optional(module, MissingRuntime(f"{path}: running {what} models needs {module}: `{install}`"))


def _existing(path: Path, kind: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {kind} model not found. This project never downloads weights; pass the "
                                f"path export.py printed")
    return path


class _TorchScriptRunner:
    """A traced model from export.py; config.txt gives stride, names and the export shape."""

    def __init__(self, path: Path, device: torch.device, fp16: bool):
        extra = {"config.txt": ""}
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit as deprecated; it still loads fine
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.load(str(_existing(path, "TorchScript")), _extra_files=extra, map_location=device)
        self.model = (self.model.half() if fp16 else self.model.float()).eval()
        meta = json.loads(extra["config.txt"] or "{}")
        self.stride, self.names = meta.get("stride", 32), names_dict(meta.get("names"))
        self.fixed_shape, self.fp16 = None, fp16  # export.py traces TorchScript with a shape-dependent grid

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        y = self.model(im)
        return y[0] if isinstance(y, (list, tuple)) else y


def ort_session_options(ort):
    """The SessionOptions every ONNX Runtime session here runs with: torch's thread count, and idle intra-op workers
    that sleep instead of spinning (no CPU stolen from the rest of the process)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class _OnnxRunner:
    """ONNX Runtime session (CUDA provider when the device is a GPU); metadata props give stride and names."""

    def __init__(self, path: Path, device: torch.device, fp16: bool):
        ort = _require("onnxruntime", path, "ONNX", "pip install onnxruntime")
        so = ort_session_options(ort)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(_existing(path, "ONNX")), so, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.stride = int(meta.get("stride", 32))
        self.names = names_dict(ast.literal_eval(meta["names"])) if "names" in meta else {}
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        self.fixed_shape = tuple(inp.shape) if all(isinstance(d, int) for d in inp.shape) else None
        self.fp16 = inp.type == "tensor(float16)"

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        x = im.cpu().numpy().astype(np.float16 if self.fp16 else np.float32)
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: x})[0])


class _OpenVinoRunner:
    """OpenVINO CPU model (FP32 inference precision unless exported --half); metadata.yaml gives stride and names."""

    def __init__(self, path: Path, device: torch.device, fp16: bool):
        ov = _require("openvino", path, "OpenVINO", "pip install openvino")
        path = _existing(path, "OpenVINO")
        xml = path if path.suffix.lower() == ".xml" else next(iter(sorted(path.glob("*.xml"))), None)
        if xml is None:
            raise FileNotFoundError(f"{path}: no .xml model in this folder; re-export with --include openvino")
        meta_file = xml.parent / "metadata.yaml"
        meta = yaml_load(meta_file) if meta_file.is_file() else {}
        core = ov.Core()
        model = core.read_model(str(xml))
        shape = model.input(0).get_partial_shape()
        self.fixed_shape = tuple(shape.to_shape()) if shape.is_static else None
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                  "INFERENCE_PRECISION_HINT": "f16" if fp16 else "f32"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.stride, self.names, self.fp16 = meta.get("stride", 32), names_dict(meta.get("names")), False

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        y = self.compiled(im.cpu().numpy().astype(np.float32))
        return torch.from_numpy(np.asarray(y[self.compiled.output(0)]))


class _NcnnRunner:
    """ncnn network converted by pnnx (input in0, output out0), one image per extractor run."""

    def __init__(self, path: Path, device: torch.device, fp16: bool):
        ncnn = _require("ncnn", path, "ncnn", "pip install ncnn")
        path = _existing(path, "ncnn")
        param, weights = path / "model.ncnn.param", path / "model.ncnn.bin"
        if not (param.is_file() and weights.is_file()):
            raise FileNotFoundError(f"{path}: expected model.ncnn.param and model.ncnn.bin; re-export with "
                                    f"--include ncnn")
        meta = yaml_load(path / "metadata.yaml") if (path / "metadata.yaml").is_file() else {}
        self.ncnn, self.net = ncnn, ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = torch.get_num_threads()
        self.net.opt.use_fp16_storage = self.net.opt.use_fp16_arithmetic = self.net.opt.use_fp16_packed = fp16
        self.net.load_param(str(param))
        self.net.load_model(str(weights))
        self.stride, self.names, self.fp16 = meta.get("stride", 32), names_dict(meta.get("names")), False
        self.fixed_shape = (1, *meta["shape"][1:]) if meta.get("shape") else None

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        out = []
        for x in im.cpu().float().numpy():
            with self.net.create_extractor() as ex:
                ex.input("in0", self.ncnn.Mat(np.ascontiguousarray(x)))
                _, y = ex.extract("out0")
            out.append(np.array(y))
        return torch.from_numpy(np.stack(out))


RUNNERS = {"torchscript": _TorchScriptRunner, "onnx": _OnnxRunner, "openvino": _OpenVinoRunner, "ncnn": _NcnnRunner}


class DetectMultiBackend(nn.Module):
    """The same detector interface for every format: stride, names, nc, pt, batch_one_only, fp16, forward, warmup.

    forward(im (b, 3, h, w) float in [0, 1]) -> (pred (b, n, 5 + nc), None). Fixed-shape exports (ONNX/OpenVINO
    without --dynamic, ncnn) take exactly their export image size and report batch_one_only when their batch is 1;
    any number of images runs on them, in batches of their export batch (the last one padded with zeros).
    """

    def __init__(self, weights: Union[str, Path, Sequence], device: Union[str, torch.device] = "cpu", dnn: bool = False,
                 data=None, fp16: bool = False, fuse: bool = True, trust: bool = False):
        super().__init__()
        w = weights[0] if isinstance(weights, (list, tuple)) and len(weights) == 1 else weights
        self.device = torch.device(device) if isinstance(device, str) else device
        kinds = {backend_kind(x) for x in (w if isinstance(w, (list, tuple)) else [w])}
        if len(kinds) > 1 or (isinstance(w, (list, tuple)) and kinds != {"pytorch"}):
            raise ValueError(f"--weights {' '.join(map(str, w))}: only PyTorch checkpoints (.pt) can run together "
                             f"as an ensemble; pass one exported file")
        self.backend = kinds.pop()
        self.pt = self.backend == "pytorch"
        self.file, self._warned, self._warned_padding = w, False, False
        if self.pt:
            from models.experimental import attempt_load
            model = attempt_load(w, device=self.device, inplace=True, fuse=fuse, trust=trust)
            self.model = model.half() if fp16 else model.float()
            self.runner, self.fixed_shape, self.fp16 = None, None, fp16
            stride, names = int(model.stride.max()), getattr(model, "names", {})
        else:
            if dnn:
                LOGGER.warning(f"WARNING: --dnn (OpenCV DNN) is not supported; running {w} with its own runtime")
            self.runner = RUNNERS[self.backend](Path(w), self.device, fp16)
            self.fixed_shape, self.fp16 = self.runner.fixed_shape, self.runner.fp16
            stride, names = self.runner.stride, self.runner.names
        self.stride = torch.tensor([float(stride)])
        self.batch_one_only = bool(self.fixed_shape) and self.fixed_shape[0] == 1
        self.names = names_dict(names) or self._names_from(data)
        self.nc = len(self.names)

    def _names_from(self, data) -> dict:
        """Names for a model file without metadata: the dataset yaml's, else class0, class1, ... (from a probe)."""
        if data:
            try:
                from utils.files import check_yaml
                names = yaml_load(check_yaml(data)).get("names")
                if names:
                    return names_dict(names)
            except (FileNotFoundError, ValueError):
                pass
        shape = self.fixed_shape or (1, 3, 64, 64)
        nc = self.forward(torch.zeros(shape, device=self.device))[0].shape[-1] - 5
        return {i: f"class{i}" for i in range(nc)}

    def forward(self, im: torch.Tensor, augment: bool = False, visualize=False, profile: bool = False):
        """im (b, 3, h, w) float in [0, 1] -> (pred (b, n, 5 + nc) float on im's device, None). profile: PyTorch
        layer timings (the hub API's flag); exported models ignore it."""
        if self.pt:
            flags = augment or visualize or profile
            y = self.model(im, augment=augment, visualize=visualize, profile=profile) if flags else self.model(im)
            return (y[0] if isinstance(y, (list, tuple)) else y), None
        if (augment or visualize) and not self._warned:
            LOGGER.warning(f"WARNING: --augment/--visualize need a PyTorch model; ignored for {self.backend}")
            self._warned = True
        if not self.fixed_shape:
            return self._run(im), None
        if tuple(im.shape[1:]) != tuple(self.fixed_shape[1:]):
            h, w = self.fixed_shape[2:]
            raise ValueError(f"{self.file}: exported for input shape {tuple(self.fixed_shape)}, got {tuple(im.shape)}. "
                             f"Run it with --imgsz {h} {w}, or export again with --dynamic (ONNX/OpenVINO) for "
                             "any size")
        b = self.fixed_shape[0]
        if im.shape[0] == b:
            return self._run(im), None
        if im.shape[0] % b and not self._warned_padding:
            LOGGER.warning(f"WARNING: {self.file} was exported for batch {b}; {im.shape[0]} image(s) run padded with "
                           f"zeros to a multiple of {b} (export with --batch-size 1 or --dynamic to run fewer)")
            self._warned_padding = True
        out = []  # export.py --batch-size b without --dynamic: b images per call, zeros fill the last call
        for chunk in im.split(b):
            n = chunk.shape[0]
            out.append(self._run(torch.cat([chunk, chunk.new_zeros(b - n, *chunk.shape[1:])]) if n < b else chunk)[:n])
        return torch.cat(out), None

    def _run(self, im: torch.Tensor) -> torch.Tensor:
        y = self.runner(im.half() if self.fp16 else im)
        return y.to(im.device).float()

    def warmup(self, imgsz: Optional[Sequence[int]] = (1, 3, 640, 640)) -> None:
        """One forward on zeros (at the export shape for fixed-shape formats) so the first real call is not slow."""
        shape = self.fixed_shape or tuple(imgsz)
        with torch.inference_mode():
            self.forward(torch.zeros(shape, device=self.device))


def load_model(weights, device: torch.device, half: bool = False, trust: bool = False, data=None) -> nn.Module:
    """The model detect.py and val.py run: attempt_load for PyTorch checkpoints (several make an ensemble),
    DetectMultiBackend for the files export.py writes; FP16 when `half`."""
    weights = [str(w) for w in weights] if isinstance(weights, (list, tuple)) else [str(weights)]
    one = weights[0] if len(weights) == 1 else weights
    if any(backend_kind(w) != "pytorch" for w in weights):
        return DetectMultiBackend(one, device=device, data=data, fp16=half, trust=trust)
    from models.experimental import attempt_load  # the PyTorch path only: exported models need no model code
    model = attempt_load(one, device=device, trust=trust)
    return model.half() if half else model.float()
