"""export.py --int8: calibrated INT8 ONNX and OpenVINO models that load and run in DetectMultiBackend, detect.py,
val.py and the hub API with outputs close to fp32's; the refusals (empty dataset, undecodable images, a format
without INT8) cost one line each; nothing half-written is left behind."""

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
import detect
import export
import hubconf
import val
from detect_helpers import captured_log
from inference.backends import DetectMultiBackend
from models.int8 import CalibrationImages
from utils.synthetic import generate_shapes_dataset


IMGSZ = 128
N_TRAIN = 8
# int8 vs fp32 of the same runtime on the calibration images, over the rows the fp32 model is confident about
# (objectness > 0.25): mean |error| of the xywh boxes in pixels and of the objectness/class scores. Measured with
# the shipped yolov5n_shuffle.pt at 128 px on these 8 generated images (275 rows): ONNX Runtime 0.22 px / 0.012,
# OpenVINO 0.16 px / 0.009. (ONNX Runtime with the extremes over all images instead of their average and Detect all
# float: 0.15 px / 0.005; the averaged ranges clip the rare extremes, which costs here, on the calibration images
# themselves, and gains on unseen ones: see the README.) The bounds leave ~3x margin. Int8 box convs move boxes by
# pixels; a calibration on BGR or 0-255 inputs breaks the ranges entirely.
TOL = {"onnx": (0.7, 0.04), "openvino": (1.5, 0.04)}
# ONNX Runtime's fused int8 model against its QDQ graph run as written (dequantize, float conv, quantize), mean
# |error| of boxes (px) and scores over all rows of the same 8 images: with 7-bit weights 0.052 / 0.0006 on an
# AVX2-only EPYC; with 8-bit weights there 0.44 / 0.0045 (16-bit sums saturate). Bounds ~3x the 7-bit figures.
BOX_EXACT, SCORE_EXACT = 0.15, 0.002


def _installed(*modules) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _dataset_yaml(root: Path, train: str = "images/train", val_: str = "images/val") -> Path:
    names = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())["names"]
    f = root / "data.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": train, "val": val_, "names": names}))
    return f


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A few images of the built-in shapes dataset (same generator, another seed), with labels."""
    root = tmp_path_factory.mktemp("int8data")
    generate_shapes_dataset(root, n_train=N_TRAIN, n_val=4, seed=1)
    return _dataset_yaml(root)


def _weights(folder: Path) -> Path:
    """The shipped yolov5n_shuffle.pt (a trained model: its activations are what int8 is for), copied to folder."""
    w = folder / "tiny.pt"
    shutil.copy(ROOT / "yolov5n_shuffle.pt", w)
    return w


EXPORT_LOGS: dict = {}  # weights path -> what its export.py child printed (stdout + stderr)


def _export_int8(w: Path, data, fmts, reduce_range: str = "off", extra: tuple = ()) -> None:
    # The CLI in a child process, as users run it. Quantizing in the test process itself left it crashing with
    # SIGSEGV at the next subprocess spawn, once earlier tests had run multi-worker DataLoaders. 8-bit weights unless
    # told (the default, auto, depends on the CPU; TOL was measured with 8 bits).
    done = subprocess.run([sys.executable, str(ROOT / "export.py"), "--weights", str(w), "--img", str(IMGSZ),
                           "--include", *fmts, "--int8", "--data", str(data), "--int8-images", str(N_TRAIN),
                           "--int8-reduce-range", reduce_range, *extra],
                          check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    EXPORT_LOGS[w] = done.stdout + done.stderr


@pytest.fixture(scope="module")
def hardswish_export(data, tmp_path_factory):
    """fp32 + int8 ONNX at 128 px of the shipped default yolov5n_shuffle_cpu.pt (Hardswish activations)."""
    w = tmp_path_factory.mktemp("int8_hardswish") / "cpu.pt"
    shutil.copy(ROOT / "yolov5n_shuffle_cpu.pt", w)
    _export_int8(w, data, ["onnx"])
    return w.parent


@pytest.fixture(scope="module")
def reduced_export(data, tmp_path_factory):
    """fp32 + int8 ONNX at 128 px of the shipped yolov5n_shuffle.pt with --int8-reduce-range on (7-bit weights)."""
    w = _weights(tmp_path_factory.mktemp("int8_7bit"))
    _export_int8(w, data, ["onnx"], reduce_range="on")
    return w.parent


@pytest.fixture(scope="module")
def batch2_export(data, tmp_path_factory):
    """fp32 + int8 ONNX at 128 px of the shipped yolov5n_shuffle.pt, exported with --batch-size 2."""
    w = _weights(tmp_path_factory.mktemp("int8_batch2"))
    _export_int8(w, data, ["onnx"], extra=("--batch-size", "2"))
    return w.parent


@pytest.fixture(scope="module")
def exports(data, tmp_path_factory, hardswish_export, reduced_export, batch2_export):
    """fp32 + int8 ONNX (and OpenVINO when nncf is installed) at 128 px, calibrated on the generated images.
    Takes the other export fixtures so that all the exports' child processes start before any int8 model runs in
    this process: after that, starting one crashed the test process (see conftest.py)."""
    w = _weights(tmp_path_factory.mktemp("int8"))
    _export_int8(w, data, ["onnx", "openvino"] if _installed("openvino", "nncf") else ["onnx"])
    return w, {f.name: f for f in w.parent.iterdir() if f.name != w.name}


def _calibration_batch(data) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(list(CalibrationImages(str(data), (IMGSZ, IMGSZ), N_TRAIN))))


def test_calibration_images_are_prepared_as_val_prepares_them(data):
    from utils.dataloaders import create_dataloader
    calib = CalibrationImages(str(data), (IMGSZ, IMGSZ), 3)
    assert len(calib) == 3
    xs = list(calib)
    assert all(x.shape == (1, 3, IMGSZ, IMGSZ) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1 for x in xs)
    # val.py on a fixed-shape export: batch 1, square letterbox (rect off); its images / 255 are the same arrays
    loader = create_dataloader(str(data.parent / "images" / "train"), IMGSZ, 1, 32, rect=False, workers=0)[0]
    ref = {Path(p).name: (im[0].float() / 255).numpy() for im, _, (p,), _ in loader}  # val.py's division
    files = [Path(calib.dataset.im_files[i]).name for i in calib.indices]
    assert files == ["train_00000.jpg", "train_00004.jpg", "train_00007.jpg"]  # spread over the split
    for f, x in zip(files, xs):
        np.testing.assert_array_equal(x[0], ref[f])


def test_calibration_batches_hold_the_export_batch_and_fill_the_last_from_the_first(data):
    single = list(CalibrationImages(str(data), (IMGSZ, IMGSZ), 5))
    calib = CalibrationImages(str(data), (IMGSZ, IMGSZ), 5, batch=3)
    batches = list(calib)
    assert len(calib) == len(batches) == 2 and all(x.shape == (3, 3, IMGSZ, IMGSZ) for x in batches)
    images = np.concatenate(batches)
    np.testing.assert_array_equal(images[:5], np.concatenate(single))
    np.testing.assert_array_equal(images[5], single[0][0])
    assert len(calib.sample(1)) == 1 and calib.sample(1)[0].shape == (3, 3, IMGSZ, IMGSZ)


def test_int8_export_with_a_fixed_batch_calibrates_in_that_batch(batch2_export, exports, data):
    """export.py --batch-size 2 (no --dynamic) traces batch 2 into the graph: calibration feeds pairs of images, and
    the int8 file takes the fp32 file's input and stays as close to it as the batch-1 export (TOL; measured here
    0.14 px / 0.007 on the 275 confident rows of the 8 images)."""
    import onnxruntime as ort
    assert "in batches of 2" in EXPORT_LOGS[batch2_export / "tiny.pt"]
    x = _calibration_batch(data).numpy()
    fp32, int8 = (ort.InferenceSession(str(batch2_export / f), providers=["CPUExecutionProvider"])
                  for f in ("tiny.onnx", "tiny_int8.onnx"))
    assert [i.shape for i in int8.get_inputs()] == [i.shape for i in fp32.get_inputs()] == [[2, 3, IMGSZ, IMGSZ]]
    y, yq = (np.concatenate([s.run(None, {"images": x[k:k + 2]})[0] for k in range(0, len(x), 2)])
             for s in (fp32, int8))
    sure = y[..., 4] > 0.25
    err = np.abs(yq - y)[sure]
    assert sure.sum() > 50 and err[:, :4].mean() < TOL["onnx"][0] and err[:, 4:].mean() < TOL["onnx"][1], (
        err[:, :4].mean(), err[:, 4:].mean())


def test_int8_files_load_with_fp32_metadata_and_stay_close(exports, data):
    w, files = exports
    assert {"tiny.onnx", "tiny_int8.onnx"} <= set(files)
    x = _calibration_batch(data)
    for fmt, (fp32_name, int8_name) in {"onnx": ("tiny.onnx", "tiny_int8.onnx"),
                                        "openvino": ("tiny_openvino_model", "tiny_int8_openvino_model")}.items():
        if int8_name not in files:
            continue
        fp32, int8 = DetectMultiBackend(files[fp32_name]), DetectMultiBackend(files[int8_name])
        assert (int8.names, int8.stride, int8.fixed_shape) == (fp32.names, fp32.stride, (1, 3, IMGSZ, IMGSZ))
        assert int8.batch_one_only and len(int8.names) == 8
        y0 = torch.cat([fp32(xi[None])[0] for xi in x])
        y1 = torch.cat([int8(xi[None])[0] for xi in x])
        assert y1.shape == y0.shape
        sure = y0[..., 4] > 0.25
        assert sure.sum() > 50, "the model should be confident about some rows"
        err_box, err_score = (y1 - y0)[sure].abs().split((4, y0.shape[-1] - 4), 1)
        box_tol, score_tol = TOL[fmt]
        assert 0 < float(err_box.mean()) < box_tol and float(err_score.mean()) < score_tol, (
            fmt, float(err_box.mean()), float(err_score.mean()))
    assert not [p for p in w.parent.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def _onnx_int8_graph(files) -> tuple:
    """(graph, {tensor name: the node that makes it}) of the int8 ONNX export."""
    import onnx
    graph = onnx.load(str(files["tiny_int8.onnx"])).graph
    return graph, {o: n for n in graph.node for o in n.output}


def _detect_convs_in_int8(exports) -> dict:
    """{runtime: sorted [(output channels, how it runs) for each of Detect's convs]} of the int8 exports: "int8"
    (quantized input and weights), "float", or "integer matmul" (ONNX: quantized input and weights, int32 sums turned
    into float outputs that no QuantizeLinear reads)."""
    w, files = exports
    last = f"/model.{len(torch.load(w, map_location='cpu', weights_only=False)['model'].model) - 1}/"
    graph, made_by = _onnx_int8_graph(files)
    dims = {t.name: list(t.dims) for t in graph.initializer if t.dims}
    readers = {}
    for n in graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    found = {"onnx": []}
    for n in [n for n in graph.node if n.name.startswith(last)]:
        if n.op_type == "Conv":
            q = n.input[1] in made_by and made_by[n.input[1]].op_type == "DequantizeLinear"  # via Q/DQ
            found["onnx"].append((dims[made_by[n.input[1]].input[0] if q else n.input[1]][0], "int8" if q else "float"))
        elif n.op_type == "MatMulInteger":
            after, out = n, n.output[0]
            while after.op_type in ("MatMulInteger", "Transpose", "Cast", "Mul", "Add") and len(readers[out]) == 1:
                after = readers[out][0]
                out = after.output[0]
            assert after.op_type not in ("QuantizeLinear", "MatMulInteger"), (n.name, after.op_type)
            found["onnx"].append((dims[n.input[1]][1], "integer matmul"))
    found["onnx"].sort()
    if "tiny_int8_openvino_model" in files:
        import openvino as ov
        model = ov.Core().read_model(str(files["tiny_int8_openvino_model"] / "tiny.xml"))
        found["openvino"] = sorted((op.get_output_partial_shape(0)[1].get_length(),
                                    "int8" if op.input_value(0).get_node().get_type_name() == "FakeQuantize"
                                    else "float")
                                   for op in model.get_ordered_ops()
                                   if op.get_type_name() == "Convolution" and op.get_friendly_name().startswith(last))
    return found


def test_openvino_int8_export_does_not_pass_on_torchs_no_cuda_warning(exports):
    """nncf.quantize imports torch.utils.cpp_extension, whose import logs 'No CUDA runtime is found' wherever a
    CUDA build of torch runs without a GPU (as in CI): a line about C++ extensions the export never builds."""
    w, files = exports
    if "tiny_int8_openvino_model" not in files:
        pytest.skip("openvino / nncf not installed")
    log = EXPORT_LOGS[w]
    assert "export success" in log and "_int8_openvino_model" in log
    assert "No CUDA runtime" not in log


def test_detect_score_convs_are_int8_and_box_outputs_float(exports):
    # Detect traces a box conv (na·4 = 12 channels) and a score conv (na·(nc+1) = 27) per level: int8 box outputs
    # lose pixels, int8 scores lose nothing measurable. ONNX runs the box convs as integer matmuls with float outputs,
    # and the score convs with zero filters up to 32 channels (ONNX Runtime's int8 convs want blocks of 16).
    found = _detect_convs_in_int8(exports)
    assert found["onnx"] == [(12, "integer matmul")] * 3 + [(32, "int8")] * 3
    if "openvino" in found:
        assert found["openvino"] == [(12, "float")] * 3 + [(27, "int8")] * 3


def test_onnx_score_rows_are_joined_as_bytes(exports):
    # The levels' score rows meet in one concat inside the int8 part, all at the probability scale 1/255 (zero point
    # 0): ONNX Runtime then copies bytes; with one calibrated scale per level it requantizes every level first.
    from onnx import numpy_helper
    graph, made_by = _onnx_int8_graph(exports[1])
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    joins = [n for n in graph.node if n.op_type == "Concat" and len(n.input) == 3
             and all(t in made_by and made_by[t].op_type == "DequantizeLinear" for t in n.input)]
    assert len(joins) == 1, [n.name for n in joins]
    for t in joins[0].input:
        scale, zero = (init[i] for i in made_by[t].input[1:3])
        assert float(scale) == pytest.approx(1 / 255) and int(zero) == 0, (t, scale, zero)


def test_detect_val_and_hub_run_the_int8_files(exports, data, tmp_path):
    w, files = exports
    images = data.parent / "images" / "val"
    for name in [n for n in files if "int8" in n]:
        save_dir = detect.run(weights=str(files[name]), source=str(images), imgsz=(IMGSZ, IMGSZ), project=tmp_path,
                              name=name, save_txt=True, nosave=True)
        assert list((save_dir / "labels").glob("*.txt")), f"{name}: detect.py found nothing"
        maps = [val.run(data=str(data), weights=str(files[f]), imgsz=IMGSZ, workers=0, plots=False,
                        project=tmp_path, name=f"val_{f}")[0][3] for f in (name.replace("_int8", ""), name)]
        # 4 images at 128 px: a few boxes more or less move mAP50-95 by hundredths (the real check is in the README)
        assert maps[0] > 0 and abs(maps[1] - maps[0]) < 0.1, maps
        api = hubconf.custom(path=str(files[name]), _verbose=False)
        results = api([str(p) for p in sorted(images.glob("*.jpg"))[:2]], size=IMGSZ)
        assert len(results.xyxy) == 2 and sum(len(d) for d in results.xyxy) > 0


def _image_dataset(root: Path, images: dict) -> Path:
    """A dataset whose only split holds `images` ({file name: bytes})."""
    (root / "images").mkdir(parents=True)
    for name, content in images.items():
        (root / "images" / name).write_bytes(content)
    return _dataset_yaml(root, "images", "images")


def test_refusals_are_one_line_and_write_nothing(data, tmp_path, monkeypatch):
    w = _weights(tmp_path)
    empty = _image_dataset(tmp_path / "empty", {})
    broken = _image_dataset(tmp_path / "broken", {f"{i}.jpg": b"\xff\xd8 not a jpeg" * 20 for i in range(3)})
    cases = [({"data": str(empty), "include": ["onnx"]}, FileNotFoundError, "no images found"),
             ({"data": str(broken), "include": ["onnx"]}, ValueError, "none of the 3 images is usable"),
             ({"data": str(data), "include": ["onnx", "torchscript"]}, ValueError,
              r"--int8 --include torchscript: INT8 export is available for onnx and openvino only")]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            export.run(weights=str(w), imgsz=[IMGSZ], int8=True, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty", "tiny.pt"]
    # The CLI: one ERROR line and exit status 1 (run in-process, as the script's __main__ block runs it).
    monkeypatch.setattr(sys, "argv", ["export.py", "--weights", str(w), "--img", str(IMGSZ), "--include", "onnx",
                                      "--int8", "--data", str(empty)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "export.py"), run_name="__main__")
    message = str(e.value.code)
    assert message.startswith("ERROR: ") and "no images found" in message and "\n" not in message


def test_missing_nncf_is_one_line_and_onnx_int8_still_written(data, tmp_path, monkeypatch):
    w = _weights(tmp_path)
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    with captured_log() as log:
        files = export.run(weights=str(w), imgsz=[IMGSZ], include=["onnx", "openvino"], int8=True, data=str(data),
                           int8_images=2)
    assert [f.name for f in files if "int8" in f.name] == ["tiny_int8.onnx"]
    lines = [m for m in log if "pip install nncf" in m]
    assert len(lines) == 1 and "OpenVINO INT8" in lines[0]
    assert not (tmp_path / "tiny_int8_openvino_model").exists()


def test_a_failed_quantization_leaves_no_file(data, tmp_path, monkeypatch):
    import onnxruntime.quantization as ortq
    w = _weights(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("quantizer crashed")
    monkeypatch.setattr(ortq, "quantize_static", broken)
    with captured_log() as log:
        files = export.run(weights=str(w), imgsz=[IMGSZ], include=["onnx"], int8=True, data=str(data), int8_images=2)
    assert [f.name for f in files] == ["tiny.onnx"]
    assert any("ONNX INT8" in m and "quantizer crashed" in m for m in log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.pt"]


def test_no_data_calibrates_on_the_built_in_dataset_with_one_line(monkeypatch, data):
    import models.int8 as int8
    monkeypatch.setattr(int8, "DEFAULT_DATA", data)  # stands in for data/shapes.yaml (whose first use generates it)
    with captured_log() as log:
        calib = CalibrationImages(None, (IMGSZ, IMGSZ), 2)
    assert len(calib) == 2
    assert sum("no --data given, calibrating on the built-in dataset" in m for m in log) == 1


def test_weight_bits_auto_tries_7_bits_only_on_avx2_without_int8_dot_products():
    from models.int8 import weight_bits_to_try
    assert weight_bits_to_try("auto", {"avx2", "fma"}) == (8, 7)
    for flags in ({"avx2", "avx512_vnni"}, {"avx2", "avx_vnni"}, {"avx2", "amx_int8"}, {"asimd"}, set()):
        assert weight_bits_to_try("auto", flags) == (8,), flags  # VNNI or AMX, ARM, flags unknown
    assert weight_bits_to_try("on", {"avx512_vnni"}) == (7,) and weight_bits_to_try("off", {"avx2"}) == (8,)
    with pytest.raises(ValueError, match="--int8-reduce-range 7: use one of auto, on, off"):
        weight_bits_to_try("7")


def _int8_weights(f: Path) -> np.ndarray:
    """Every int8 initializer of an ONNX file (the quantized conv weights and their zero points), flattened."""
    import onnx
    from onnx import numpy_helper
    return np.concatenate([numpy_helper.to_array(t).ravel() for t in onnx.load(str(f)).graph.initializer
                           if t.data_type == onnx.TensorProto.INT8])


def _ort_outputs(f: Path, level, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"images": xi[None].numpy()})[0] for xi in x])


def test_reduce_range_on_writes_7bit_weights_that_the_int8_kernels_run_as_written(reduced_export, exports, data):
    import onnxruntime as ort
    w8, w7 = _int8_weights(exports[1]["tiny_int8.onnx"]), _int8_weights(reduced_export / "tiny_int8.onnx")
    assert len(w7) == len(w8) and np.abs(w8).max() == 127 and np.abs(w7).max() == 64  # per channel, symmetric
    # ONNX Runtime's fused int8 convolutions (all optimizations) against the graph as written (none: dequantize,
    # float conv, quantize), on the calibration images. With 7-bit weights no 16-bit sum can saturate, on any CPU,
    # so the two differ by rounding only (BOX_EXACT); its outputs stay as close to fp32 as 8-bit ones (TOL).
    x = _calibration_batch(data)
    fused, written = (_ort_outputs(reduced_export / "tiny_int8.onnx", level, x) for level in
                      (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
    diff = np.abs(fused - written)
    assert float(diff[..., :4].mean()) < BOX_EXACT and float(diff[..., 4:].mean()) < SCORE_EXACT, (
        float(diff[..., :4].mean()), float(diff[..., 4:].mean()))
    y0 = _ort_outputs(reduced_export / "tiny.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_ALL, x)
    sure = y0[..., 4] > 0.25
    err = np.abs(fused - y0)[sure]
    assert sure.sum() > 50 and err[:, :4].mean() < TOL["onnx"][0] and err[:, 4:].mean() < TOL["onnx"][1], (
        err[:, :4].mean(), err[:, 4:].mean())


def test_auto_keeps_the_weight_width_whose_boxes_are_closer_to_fp32(data, tmp_path, monkeypatch):
    import re
    import utils.torch_utils
    w = _weights(tmp_path)
    for flags, tried in (({"avx2", "fma"}, True), ({"avx2", "avx512_vnni"}, False)):
        monkeypatch.setattr(utils.torch_utils, "cpu_flags", lambda flags=flags: set(flags))
        with captured_log() as log:
            export.run(weights=str(w), imgsz=[IMGSZ], include=["onnx"], int8=True, data=str(data), int8_images=4)
        lines = [m for m in log if "tried 8-bit and 7-bit weights" in m]
        assert len(lines) == int(tried), log
        kept = 8
        if tried:
            kept, e8, e7 = re.search(r"kept (\d)-bit \(box error against fp32 on 4 calibration images: ([\d.]+) and "
                                     r"([\d.]+) px", lines[0]).groups()
            kept, e8, e7 = int(kept), float(e8), float(e7)
            assert kept == (8 if e8 <= e7 else 7) and e8 > 0 and e7 > 0
        assert np.abs(_int8_weights(tmp_path / "tiny_int8.onnx")).max() == {8: 127, 7: 64}[kept]


def test_box_errors_rank_candidates_by_their_distance_from_fp32(exports, data):
    import onnx
    from models.int8 import _box_errors
    fp32, int8 = (onnx.load(str(exports[1][f])) for f in ("tiny.onnx", "tiny_int8.onnx"))
    images = [x[None].numpy() for x in _calibration_batch(data)[:4]]
    errors = _box_errors(fp32, [int8, fp32], images)
    assert errors[1] == 0 and 0.05 < errors[0] < TOL["onnx"][0], errors  # the model itself: exactly 0


def test_onnx_concats_copy_bytes(exports):
    # Int8 concats read and write one scale and zero point (the union of the calibrated ranges), so that ONNX
    # Runtime's QLinearConcat copies bytes: the seed's ShuffleNet branch concats, C3's and Detect's scores. Not where
    # a range from 0 (a ReLU the quantizer removed) would have to go below 0: the PAN joining the ReLU backbone
    import onnx
    from onnx import numpy_helper
    from models.int8 import _graph_index
    proto = onnx.load(str(exports[1]["tiny_int8.onnx"]))
    graph, (tensors, made_by, readers) = proto.graph, _graph_index(proto)
    init = {k: numpy_helper.to_array(t) for k, t in tensors.items()}
    shared, relu_joins = [], []
    for n in graph.node:
        if n.op_type != "Concat" or not all(t in made_by and made_by[t].op_type == "DequantizeLinear"
                                            for t in n.input) or [r.op_type for r in readers[n.output[0]]] != \
                ["QuantizeLinear"]:
            continue
        params = {(float(init[made_by[t].input[1]]), int(init[made_by[t].input[2]])) for t in n.input}
        params.add((float(init[readers[n.output[0]][0].input[1]]), int(init[readers[n.output[0]][0].input[2]])))
        (shared if len(params) == 1 else relu_joins).append(n.name)
        if len(params) > 1:  # refused only because one side starts at 0 and another goes below it
            assert min(z for _, z in params) == 0 < max(z for _, z in params), (n.name, params)
    shuffles = [f"/model.{i}/Concat" for i in (1, 2, 3, 5, 6)] + [f"/model.4/model.4.{i}/Concat" for i in (0, 1)]
    assert set(shuffles) <= set(shared) and len(shared) >= 12, (shared, relu_joins)


def _run_onnx(model, feeds: dict, optimized: Path = None) -> list:
    import onnxruntime as ort
    so = ort.SessionOptions()
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _qdq(helper, numpy_helper, name: str, scale: float, zero: int) -> tuple:
    """Initializers and QuantizeLinear + DequantizeLinear nodes that take float `name` through uint8 and back."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.array(zero, np.uint8), f"{name}_z")]
    nodes = [helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
             helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    return inits, nodes


def test_shared_concat_ranges_keep_the_values_and_requantize_the_biases(tmp_path):
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import _share_concat_ranges
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (3, 4, 1, 1)).astype(np.float32)
    # 7-bit weights (-63..63): on CPUs without VNNI, ONNX Runtime's uint8 x int8 kernel adds pairs of products in
    # int16, which saturates from 2 x 255 x 127 on (this test's inputs reach it: up to 5 off on an AVX2-only EPYC);
    # the test is about the shared ranges, not that kernel. `w` is then what the int8 weights stand for.
    w_scale = np.abs(w).reshape(3, -1).max(1) / 63
    w = (np.round(w / w_scale[:, None, None, None]) * w_scale[:, None, None, None]).astype(np.float32)
    b = np.array([5.0, -10.0, 20.0], np.float32)
    c_scale = np.float32(0.04)
    inits, nodes = [], []
    for name, s, z in (("x1", 0.04, 5), ("x2", 0.05, 10)):  # ranges [-0.2, 10] and [-0.5, 12.25]
        i, n = _qdq(helper, numpy_helper, name, s, z)
        inits += i
        nodes += n
    nodes.append(helper.make_node("Concat", ["x1_dq", "x2_dq"], ["c"], axis=1))
    i, n = _qdq(helper, numpy_helper, "c", float(c_scale), 10)  # [-0.4, 9.8]
    inits += i + [numpy_helper.from_array(np.round(w / w_scale[:, None, None, None]).astype(np.int8), "w_q"),
                  numpy_helper.from_array(w_scale.astype(np.float32), "w_s"),
                  numpy_helper.from_array(np.zeros(3, np.int8), "w_z"),
                  numpy_helper.from_array(np.round(b / (c_scale * w_scale)).astype(np.int32), "bias_q"),
                  numpy_helper.from_array((c_scale * w_scale).astype(np.float32), "bias_s"),
                  numpy_helper.from_array(np.zeros(3, np.int32), "bias_z")]
    nodes += n + [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
                  helper.make_node("DequantizeLinear", ["bias_q", "bias_s", "bias_z"], ["bias"], axis=0),
                  helper.make_node("Conv", ["c_dq", "w", "bias"], ["y"])]
    i, n = _qdq(helper, numpy_helper, "y", 0.25, 128)  # quantized output: ONNX Runtime fuses a QLinearConv
    value = lambda name, c: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, c, 4, 4])
    graph = helper.make_graph(nodes + n, "concat", [value("x1", 2), value("x2", 2)], [value("y_dq", 3)], inits + i)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert _share_concat_ranges(model, numpy_helper, max_widening=1.2) == 0  # 12.75 / 10.2: too much wider
    relu = onnx.ModelProto()
    relu.CopyFrom(model)
    next(t for t in relu.graph.initializer if t.name == "x1_z").CopyFrom(
        numpy_helper.from_array(np.array(0, np.uint8), "x1_z"))  # x1 from 0: maybe a ReLU the quantizer removed
    assert _share_concat_ranges(relu, numpy_helper) == 0
    assert _share_concat_ranges(model, numpy_helper) == 2  # x1 and c move to x2's range [-0.5, 12.25]
    s = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert {(float(s[f"{k}_s"]), int(s[f"{k}_z"])) for k in ("x1", "x2", "c")} == {(float(np.float32(0.05)), 10)}
    # zero inputs: the output is the bias alone, to half an output step; the int32 bias of the QLinearConv is read
    # at input scale x weight scale, so without its requantization it would come out 1.25x too large
    zeros = {"x1": np.zeros((1, 2, 4, 4), np.float32), "x2": np.zeros((1, 2, 4, 4), np.float32)}
    np.testing.assert_allclose(_run_onnx(model, zeros, tmp_path / "opt.onnx")[0][0, :, 0, 0], b, atol=0.125 + 1e-3)
    assert "QLinearConv" in [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    # inputs over the whole shared range (x2 beyond c's old one): as close to the float conv as the steps allow
    feeds = {"x1": rng.uniform(-0.2, 10, (1, 2, 4, 4)).astype(np.float32),
             "x2": rng.uniform(-0.5, 12, (1, 2, 4, 4)).astype(np.float32)}
    exact = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], np.concatenate([feeds["x1"], feeds["x2"]], 1)) + b[:, None, None]
    bound = 0.05 * np.abs(w).sum((1, 2, 3))[:, None, None] + 0.125 + 1e-3  # half a step per rounding
    assert (np.abs(_run_onnx(model, feeds)[0][0] - exact) <= bound).all()


def test_a_relu_input_keeps_its_range_where_the_others_share_one(tmp_path):
    # The seed's PAN joins: a ReLU backbone tensor (range from 0: the quantizer dropped the ReLU, the bytes clip)
    # meets a SiLU head tensor. The backbone input keeps its range and is requantized by the concat; the head input
    # and the output share one range, so the head's bytes are copied. Only where that widens neither by over 10 %.
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import _share_concat_ranges
    def join(c_scale):
        inits, nodes = [], []
        for name, sc, z in (("x1", 0.04, 0), ("x2", 0.05, 10), ("c", None, 10)):
            if name == "c":
                nodes.append(helper.make_node("Concat", ["x1_dq", "x2_dq"], ["c"], axis=1))
            i, n = _qdq(helper, numpy_helper, name, c_scale if sc is None else sc, z)
            inits += i
            nodes += n
        value = lambda name, c: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, c, 3, 3])
        graph = helper.make_graph(nodes, "join", [value("x1", 2), value("x2", 2)], [value("c_dq", 4)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    pairs = lambda m: {t.name: float(numpy_helper.to_array(t)) for t in m.graph.initializer}
    model = join(0.048)  # c: [-0.48, 11.76]; x2: [-0.5, 12.25], 4 % wider; x1: [0, 10.2]
    assert _share_concat_ranges(model, numpy_helper) == 1
    p = pairs(model)
    assert (p["c_s"], p["c_z"]) == (p["x2_s"], p["x2_z"]) == (float(np.float32(0.05)), 10)
    assert (p["x1_s"], p["x1_z"]) == (float(np.float32(0.04)), 0)  # the ReLU clipping stays in x1's bytes
    feeds = {"x1": np.full((1, 2, 3, 3), -3.0, np.float32), "x2": np.full((1, 2, 3, 3), -0.3, np.float32)}
    out = _run_onnx(model, feeds, tmp_path / "opt.onnx")[0]
    assert (out[:, :2] == 0).all() and np.allclose(out[:, 2:], -0.3)  # negatives clipped in x1 only
    assert "QLinearConcat" in [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert _share_concat_ranges(join(0.04), numpy_helper) == 0  # c [-0.4, 9.8]: 25 % wider shared, so left as is


def test_joins_with_a_reshaped_tensor_run_channels_last_on_the_same_bytes(tmp_path):
    # The seed's PAN joins: one input comes out of the channel shuffle's Reshape, which ONNX Runtime's layout
    # transposes cannot pass; joined channels-last, only that input is transposed
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import _channels_last_joins
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1, 4, 3, 5], np.int64), "shape"),
             numpy_helper.from_array(rng.uniform(-1, 1, (3, 2, 1, 1)).astype(np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["a", "shape"], ["ar"]), helper.make_node("Conv", ["b", "w"], ["bc"])]
    for name, sc, z in (("ar", 0.04, 5), ("bc", 0.05, 10)):
        i, n = _qdq(helper, numpy_helper, name, sc, z)
        inits += i
        nodes += n
    nodes.append(helper.make_node("Concat", ["ar_dq", "bc_dq"], ["c"], axis=1))
    nodes.append(helper.make_node("Concat", ["bc_dq", "bc_dq"], ["d"], axis=1))  # no reshaped input: stays
    for name in ("c", "d"):
        i, n = _qdq(helper, numpy_helper, name, 0.05, 10)
        inits += i
        nodes += n
    value = lambda name, shape: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "joins", [value("a", [1, 4, 15]), value("b", [1, 2, 3, 5])],
                              [value("c_dq", [1, 7, 3, 5]), value("d_dq", [1, 6, 3, 5])], inits,
                              value_info=[value("c", [1, 7, 3, 5]), value("d", [1, 6, 3, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"a": rng.uniform(-0.2, 10, (1, 4, 15)).astype(np.float32),
             "b": rng.uniform(-3, 3, (1, 2, 3, 5)).astype(np.float32)}
    want = _run_onnx(model, feeds)
    assert _channels_last_joins(model, helper) == 1
    onnx.checker.check_model(model)
    axes = {n.output[0]: helper.get_attribute_value(n.attribute[0]) for n in model.graph.node if n.op_type == "Concat"}
    assert axes == {"c": 3, "d": 1}
    assert [v.name for v in model.graph.value_info] == ["d"]  # c is channels-last now: its recorded shape goes
    got = _run_onnx(model, feeds, tmp_path / "opt.onnx")
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert "QLinearConcat" in [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def test_hard_sigmoid_runs_as_one_int8_requantization(tmp_path):
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import HSIG_STEP, _hard_sigmoids_as_requantizations
    inits, nodes = _qdq(helper, numpy_helper, "x", 10 / 255, 128)  # inputs from about -5 to 5
    nodes.append(helper.make_node("HardSigmoid", ["x_dq"], ["h"], alpha=1 / 6, beta=0.5))
    i, n = _qdq(helper, numpy_helper, "h", 1 / 255, 0)
    nodes += n + [helper.make_node("Mul", ["x_dq", "h_dq"], ["y"])]  # Hardswish, as torch.onnx writes it
    graph = helper.make_graph(nodes, "hsig", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 601])],
                              [helper.make_tensor_value_info("h_dq", onnx.TensorProto.FLOAT, [1, 601]),
                               helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 601])], inits + i)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert _hard_sigmoids_as_requantizations(model, numpy_helper, helper) == 1
    assert "HardSigmoid" not in [n.op_type for n in model.graph.node]
    assert not {"h_s", "h_z"} & {t.name for t in model.graph.initializer}  # the replaced pair is dropped
    x = np.linspace(-6, 6, 601, dtype=np.float32)[None]
    xq = (np.clip(np.round(x / np.float32(10 / 255)) + 128, 0, 255) - 128) * np.float32(10 / 255)  # what Q/DQ keeps
    h, y = _run_onnx(model, {"x": x}, tmp_path / "opt.onnx")
    want = np.clip(xq / 6 + 0.5, 0, 1)
    inside = want < 1
    assert np.abs(h - want)[inside].max() <= HSIG_STEP / 2 + 1e-6  # rounding only
    assert (h[~inside] == np.float32(255 * HSIG_STEP)).all()  # the saturated byte reads 255/254
    assert np.abs(y - xq * want).max() < 0.05
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "QLinearAdd" in optimized and "HardSigmoid" not in optimized, optimized  # one uint8 op in ONNX Runtime


def test_upsamples_run_as_byte_copies(tmp_path):
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import _upsamples_as_byte_copies
    inits, nodes = _qdq(helper, numpy_helper, "x", 0.05, 100)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes += [helper.make_node("Constant", [], ["up_scales"], value=scales),  # as torch.onnx writes them
              helper.make_node("Resize", ["x_dq", "", "up_scales"], ["u"], mode="nearest",
                               coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
              helper.make_node("QuantizeLinear", ["u", "x_s", "x_z"], ["u_q"]),  # the quantizer reuses x's pair
              helper.make_node("DequantizeLinear", ["u_q", "x_s", "x_z"], ["u_dq"]),
              helper.make_node("Resize", ["x_dq", "", "scales"], ["v"], mode="nearest"),  # half-pixel: not rewritten
              helper.make_node("QuantizeLinear", ["v", "x_s", "x_z"], ["v_q"]),
              helper.make_node("DequantizeLinear", ["v_q", "x_s", "x_z"], ["v_dq"]),
              helper.make_node("Resize", ["u_dq", "", "up_scales"], ["w"], mode="nearest",  # shares the constant
                               coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
              helper.make_node("QuantizeLinear", ["w", "x_s", "x_z"], ["w_q"]),
              helper.make_node("DequantizeLinear", ["w_q", "x_s", "x_z"], ["w_dq"])]
    shape = [1, 3, 5, 7]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, [1, 3, 5 * k, 7 * k])
                               for t, k in (("u_dq", 2), ("v_dq", 2), ("w_dq", 4))], inits + [scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = {"x": np.random.default_rng(0).uniform(-5, 8, shape).astype(np.float32)}
    want = _run_onnx(model, x)
    assert _upsamples_as_byte_copies(model, numpy_helper, helper) == 2
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Resize") == 1 and ops.count("QuantizeLinear") == 2 and "Constant" not in ops  # constant dropped
    got = _run_onnx(model, x)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert np.array_equal(got[0], np.repeat(np.repeat(want[0][..., ::2, ::2], 2, 2), 2, 3))  # 2x nearest indeed
    assert _upsamples_as_byte_copies(model, numpy_helper, helper) == 0  # the half-pixel one stays as it is


def test_float_box_convs_run_as_integer_matmuls_on_the_bytes():
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import _float_convs_as_integer_matmuls
    rng = np.random.default_rng(0)
    shape = [2, 5, 4, 6]
    inits, nodes = _qdq(helper, numpy_helper, "x", 0.05, 10)  # [-0.5, 12.25]
    w_scale = np.array([0.01, 0.002, 0.03], np.float32)
    steps = rng.integers(-127, 128, (3, 5, 1, 1))
    steps[:, 0] = 127  # each channel's largest weight sets its step: these weights lie on the int8 grid
    exact = (steps * w_scale[:, None, None, None]).astype(np.float32)
    w_any = rng.uniform(-1, 1, (3, 5, 1, 1)).astype(np.float32)
    inits += [numpy_helper.from_array(exact, "w_exact"), numpy_helper.from_array(np.array([1, -2, 3], np.float32), "b"),
              numpy_helper.from_array(w_any, "w_any"),
              numpy_helper.from_array(rng.uniform(-1, 1, (3, 5, 3, 3)).astype(np.float32), "w_3x3")]
    nodes += [helper.make_node("Conv", ["x_dq", "w_exact", "b"], ["y_exact"]),
              helper.make_node("Conv", ["x_dq", "w_any"], ["y_any"]),  # no bias
              helper.make_node("Conv", ["x_dq", "w_3x3"], ["y_3x3"], pads=[1, 1, 1, 1]),  # not a 1x1: stays
              helper.make_node("Conv", ["x", "w_any"], ["y_float_input"])]  # float input: stays
    outs = ["y_exact", "y_any", "y_3x3", "y_float_input"]
    graph = helper.make_graph(nodes, "box", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, [2, 3, 4, 6]) for t in outs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = {"x": rng.uniform(-1, 13, shape).astype(np.float32)}
    want = _run_onnx(model, x)
    assert _float_convs_as_integer_matmuls(model, numpy_helper, helper) == 2
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("Conv") == 2 and "QuantizeLinear" in ops
    kept = {t.name for t in model.graph.initializer}
    assert "w_exact" not in kept and "w_any" in kept  # float weights dropped where no other node reads them
    got = _run_onnx(model, x)
    # weights on the int8 grid: the int32 sums are exact, only float rounding is left
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    # other weights: off by at most half a step of each output channel's weights times the inputs' absolute sum
    x_dq = (np.clip(np.round(x["x"] / np.float32(0.05)) + 10, 0, 255) - 10) * np.float32(0.05)
    step = np.abs(w_any).reshape(3, -1).max(1) / 127
    bound = np.abs(x_dq).sum(1, keepdims=True) * step[None, :, None, None] / 2
    assert (np.abs(got[1] - want[1]) <= bound + 1e-5).all() and np.abs(got[1] - want[1]).max() > 1e-5
    assert all(np.array_equal(g, w) for g, w in zip(got[2:], want[2:]))
    assert _float_convs_as_integer_matmuls(model, numpy_helper, helper) == 0  # nothing left to rewrite


def test_score_convs_padded_to_blocks_of_16_give_the_same_bytes(tmp_path):
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import _pad_convs_to_blocks
    rng = np.random.default_rng(0)
    inits, nodes = _qdq(helper, numpy_helper, "x", 0.05, 10)
    w_scale = rng.uniform(0.001, 0.01, 27).astype(np.float32)
    inits += [numpy_helper.from_array(rng.integers(-63, 64, (27, 8, 1, 1)).astype(np.int8), "w_q"),
              numpy_helper.from_array(w_scale, "w_s"), numpy_helper.from_array(np.zeros(27, np.int8), "w_z"),
              numpy_helper.from_array(rng.integers(-500, 500, 27).astype(np.int32), "b_q"),
              numpy_helper.from_array(np.float32(0.05) * w_scale, "b_s"),
              numpy_helper.from_array(np.zeros(27, np.int32), "b_z")]
    nodes += [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
              helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], axis=0),
              helper.make_node("Conv", ["x_dq", "w", "b"], ["y"], name="score")]
    i, n = _qdq(helper, numpy_helper, "y", 0.1, 128)
    nodes += n + [helper.make_node("Sigmoid", ["y_dq"], ["p"])]
    value = lambda name, c: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, c, 5, 6])
    graph = helper.make_graph(nodes, "score", [value("x", 8)], [value("p", 27)], inits + i,
                              value_info=[value("y", 27)])  # as onnxruntime's quantizer records shapes
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = {"x": rng.uniform(-1, 13, (1, 8, 5, 6)).astype(np.float32)}
    want = _run_onnx(model, x)
    assert _pad_convs_to_blocks(model, numpy_helper, helper, {"other"}) == 0  # only the named convs
    assert _pad_convs_to_blocks(model, numpy_helper, helper, {"score"}) == 1
    onnx.checker.check_model(model)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert init["w_q"].shape[0] == 32 and not init["w_q"][27:].any() and not init["b_q"][27:].any()
    assert "Slice" in [n.op_type for n in model.graph.node]
    assert "y" not in [v.name for v in model.graph.value_info]  # 32 channels now: ONNX Runtime would warn
    got = _run_onnx(model, x, optimized=tmp_path / "opt.onnx")
    assert np.array_equal(got[0], want[0])
    # the padded bias scales keep input scale x weight scale, so ONNX Runtime still fuses an int8 conv
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert _pad_convs_to_blocks(model, numpy_helper, helper, {"score"}) == 0  # already whole blocks


def test_seven_bit_box_weights_where_the_convs_have_them():
    import onnx
    from onnx import helper, numpy_helper
    from models.int8 import _float_convs_as_integer_matmuls
    inits, nodes = _qdq(helper, numpy_helper, "x", 0.05, 10)
    w = np.random.default_rng(1).uniform(-1, 1, (4, 3, 1, 1)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "w"))
    nodes.append(helper.make_node("Conv", ["x_dq", "w"], ["y"]))
    value = lambda name, c: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, c, 2, 2])
    model = helper.make_model(helper.make_graph(nodes, "box", [value("x", 3)], [value("y", 4)], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    assert _float_convs_as_integer_matmuls(model, numpy_helper, helper, weight_max=64) == 1
    w_int = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert np.abs(np.concatenate([a.ravel() for a in w_int])).max() == 64


def test_seed_int8_upsamples_are_byte_copies(exports):
    # The seed's two PAN upsamples: Resize in the fp32 export, concats of bytes in the int8 one
    import onnx
    w, files = exports
    fp32 = [n.op_type for n in onnx.load(str(files["tiny.onnx"])).graph.node]
    int8 = [n.op_type for n in onnx.load(str(files["tiny_int8.onnx"])).graph.node]
    assert fp32.count("Resize") == 2 and "Resize" not in int8


def test_hardswish_model_int8_has_no_float_hard_sigmoid_and_stays_close(hardswish_export, data):
    # The shipped default yolov5n_shuffle_cpu.pt uses Hardswish: in its int8 ONNX every HardSigmoid is an int8
    # requantization, and the outputs stay as close to fp32 as the seed model's (TOL, measured on that one)
    import onnx
    ops = [n.op_type for n in onnx.load(str(hardswish_export / "cpu_int8.onnx")).graph.node]
    fp32_ops = [n.op_type for n in onnx.load(str(hardswish_export / "cpu.onnx")).graph.node]
    assert "HardSigmoid" not in ops and fp32_ops.count("HardSigmoid") >= 20
    x = _calibration_batch(data)
    fp32 = DetectMultiBackend(hardswish_export / "cpu.onnx")
    int8 = DetectMultiBackend(hardswish_export / "cpu_int8.onnx")
    y0 = torch.cat([fp32(xi[None])[0] for xi in x])
    y1 = torch.cat([int8(xi[None])[0] for xi in x])
    sure = y0[..., 4] > 0.25
    assert sure.sum() > 50
    err_box, err_score = (y1 - y0)[sure].abs().split((4, y0.shape[-1] - 4), 1)
    # measured: 0.25 px / 0.010 over 276 rows
    assert float(err_box.mean()) < TOL["onnx"][0] and float(err_score.mean()) < TOL["onnx"][1]
