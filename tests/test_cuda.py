"""The CUDA paths, on a machine with a GPU (every test here is marked gpu and skipped without CUDA): AutoBatch,
AMP training and its checkpoints, a CUDA run resumed, single-GPU DDP over NCCL with SyncBatchNorm, the DataParallel
wrapper, FP16 detection and validation and the hub API's AMP against the CPU's FP32, and FP16 TorchScript/ONNX
export.
benchmarks/cuda_check.sh runs them, then the scripts themselves with --device 0."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import ROOT
import export
import train
import val
from detect_helpers import assert_close_detections, captured_log, detect_labels
from models.checkpoint import load_checkpoint
from models.yolo import DetectionModel
from test_train import (CKPT_KEYS, args, distributed_run, interrupted_run, isolated_globals, make_dataset,
                        read_results, run_cli)
from utils.autobatch import LARGEST, auto_batch_size, train_step_memory

pytestmark = pytest.mark.gpu

SHIPPED = ROOT / "yolov5n_shuffle_cpu.pt"  # trained on the built-in shapes dataset


@pytest.fixture(autouse=True)
def restore_globals():
    with isolated_globals():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory) -> Path:
    """A small copy of the shapes dataset the shipped model was trained on (its val split: 40 images)."""
    from utils.synthetic import generate_shapes_dataset
    import yaml
    root = generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=4, n_val=40, seed=0)
    names = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())["names"]
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": names}
    (Path(root) / "data.yaml").write_text(yaml.safe_dump(data))
    return Path(root) / "data.yaml"


# ---------------------------------------------------------------- training

def test_autobatch_fits_the_device():
    model = DetectionModel(ROOT / "models" / "yolov5n_shuffle.yaml", nc=8).cuda()
    small, large = (train_step_memory(model.train(), 320, b, amp=True) for b in (2, 8))
    assert small is not None and large is not None and large > small  # memory grows with the batch
    with captured_log() as log:
        b = auto_batch_size(model, 320, amp=True)
    assert 16 <= b <= LARGEST  # n-scale at 320 px: far more than 16 images fit on any training GPU
    assert any("AutoBatch" in line and f"--batch-size {b}" in line for line in log)
    assert next(model.parameters()).is_cuda and all(p.grad is None for p in model.parameters())  # model untouched


def test_amp_training_run(data, tmp_path):
    with captured_log() as log:
        run = run_cli(args(data, tmp_path, "--device", "0", "--batch-size", "-1", "--save-period", "1", epochs=2))
    assert any("AMP checks passed" in line for line in log)
    assert any("AutoBatch" in line for line in log)
    header, rows = read_results(run)
    assert [r[0] for r in rows] == [0, 1] and all(np.isfinite(rows).all(1)) and rows[-1][1] > 0
    for name in ("best.pt", "last.pt", "epoch1.pt"):
        ckpt = load_checkpoint(run / "weights" / name)
        assert list(ckpt) == CKPT_KEYS
        assert all(p.dtype == torch.float16 for p in ckpt["model"].parameters())
    final = torch.load(run / "weights" / "best.pt", map_location=None, weights_only=False)
    assert all(p.device.type == "cpu" for p in final["model"].parameters())  # loads on a machine without CUDA


def test_resume_on_cuda(data, tmp_path, monkeypatch):
    run = interrupted_run(args(data, tmp_path, "--device", "0", epochs=2), monkeypatch)
    last = run / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0
    train.main(train.parse_opt(["--resume", str(last)]))
    assert [r[0] for r in read_results(run)[1]] == [0, 1]
    assert load_checkpoint(last)["epoch"] == -1


def test_single_gpu_ddp_nccl_with_sync_bn(data, tmp_path):
    out = distributed_run(1, args(data, tmp_path, "--device", "0", "--sync-bn"), tmp_path, timeout=180)
    assert "Using SyncBatchNorm()" in out and "AMP checks passed" in out
    ckpt = load_checkpoint(tmp_path / "exp" / "weights" / "best.pt")
    assert ckpt["epoch"] == -1 and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in ckpt["model"].modules())


def test_data_parallel_wrapper_trains(data, tmp_path, monkeypatch):
    """--device 0,1 in one process wraps the model in DataParallel. One GPU cannot split a batch, so the wrapper
    runs over [0] alone here: what is checked is that the loop, EMA, validation and checkpoints work through it."""
    seen = []

    def ids(opt, device):
        seen.append(opt.device)
        return [0]

    monkeypatch.setattr(train, "data_parallel_ids", ids)
    with captured_log() as log:
        run = run_cli(args(data, tmp_path, "--device", "0"))
    assert seen == ["0"] and any("DataParallel over GPUs [0]" in line for line in log)
    assert all(np.isfinite(read_results(run)[1]).all(1))
    model = load_checkpoint(run / "weights" / "best.pt")["model"]
    assert isinstance(model, DetectionModel) and model.nc == 2


# ---------------------------------------------------------------- inference

def test_fp16_detect_matches_cpu_fp32(tmp_path):
    cpu = detect_labels(SHIPPED, tmp_path, "cpu", device="cpu")
    gpu = detect_labels(SHIPPED, tmp_path, "gpu", device="0", half=True)
    assert_close_detections(cpu, gpu, box_tol=0.004, conf_tol=0.02)


def test_hub_api_on_cuda_matches_cpu():
    import hubconf

    def labels(d: torch.Tensor) -> dict:  # xyxyn rows (x1, y1, x2, y2, conf, cls) as detect_labels' (cls, xywh, conf)
        d = d.cpu().float()
        return {"im": torch.cat((d[:, 5:6], (d[:, :2] + d[:, 2:4]) / 2, d[:, 2:4] - d[:, :2], d[:, 4:5]), 1).numpy()}

    files = sorted(str(f) for f in (ROOT / "data" / "images").glob("*.jpg"))
    cpu = hubconf.custom(path=SHIPPED, device="cpu", _verbose=False)(files).xyxyn
    gpu_model = hubconf.custom(path=SHIPPED, device=0, _verbose=False)
    assert next(gpu_model.parameters()).is_cuda
    for amp in (False, True):  # AutoShape.amp (off by default, as in YOLOv5): fp16 autocast on CUDA
        gpu_model.amp = amp
        for c, g in zip(cpu, gpu_model(files).xyxyn):
            assert_close_detections(labels(c), labels(g), box_tol=0.004, conf_tol=0.02)


def test_fp16_val_matches_cpu_fp32(shapes_val, tmp_path):
    kw = dict(data=shapes_val, weights=SHIPPED, imgsz=640, batch_size=8, workers=0, project=tmp_path, plots=False)
    cpu = val.run(device="cpu", half=False, **kw)[0]
    gpu = val.run(device="0", half=True, **kw)[0]
    assert cpu[3] > 0.5  # the shipped model detects the shapes: the comparison means something
    assert gpu[2] == pytest.approx(cpu[2], abs=0.01) and gpu[3] == pytest.approx(cpu[3], abs=0.01)


def test_fp16_export_torchscript_and_onnx(tmp_path):
    """FP16 exports made on the GPU detect what the same formats exported in FP32 on the CPU do (same fixed input
    shape; a .pt letterboxes differently)."""
    files = {}
    for kind, kw in (("fp32", dict(device="cpu")), ("fp16", dict(device="0", half=True))):
        weights = tmp_path / kind / SHIPPED.name
        weights.parent.mkdir()
        shutil.copy(SHIPPED, weights)
        out = export.run(weights=weights, imgsz=(640, 640), include=("torchscript", "onnx"), **kw)
        files[kind] = [next(Path(f) for f in out if str(f).endswith(ext)) for ext in (".torchscript", ".onnx")]
    ts32, ox32 = files["fp32"]
    ts16, ox16 = files["fp16"]
    assert onnx.load(str(ox16)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert_close_detections(detect_labels(ts32, tmp_path, "ts32", device="cpu"),
                            detect_labels(ts16, tmp_path, "ts16", device="0", half=True), 0.004, 0.02)
    assert_close_detections(detect_labels(ox32, tmp_path, "ox32", device="cpu"),
                            detect_labels(ox16, tmp_path, "ox16", device="cpu"), 0.004, 0.02)  # ORT's CPU runs FP16
