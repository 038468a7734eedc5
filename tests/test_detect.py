"""detect.py end to end on tiny images and a tiny video: outputs, label format, crops, filters, checkpoint formats,
and the one-line errors users see."""

import os
import re
import runpy
import subprocess
import sys
import types
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
import detect
from detect_helpers import (IMGSZ, NAMES, assert_same_detections, captured_log, lively_model,
                            read_rows, reference, rows_to_xyxy, save_legacy, save_own)
from models.checkpoint import UntrustedCheckpointError



@pytest.fixture(scope="module")
def shuffle_model(images):
    return lively_model("yolov5n_shuffle.yaml", images)


@pytest.fixture(scope="module")
def weights(shuffle_model, tmp_path_factory):
    return save_own(shuffle_model, tmp_path_factory.mktemp("weights") / "tiny.pt")


def _run(weights, source, tmp_path, **kw):
    kw = {"imgsz": (IMGSZ, IMGSZ), "project": tmp_path / "runs", "name": "exp", "save_txt": True, "save_conf": True,
          **kw}
    return detect.run(weights=weights, source=source, **kw)


def _detections(save_dir: Path, image: Path) -> np.ndarray:
    txt = save_dir / "labels" / f"{image.stem}.txt"
    rows = read_rows(txt) if txt.exists() else np.zeros((0, 6))
    return rows_to_xyxy(rows, cv2.imread(str(image)).shape)


def test_single_image_files_log_and_txt_format(weights, images, tmp_path):
    with captured_log() as log:
        save_dir = _run(weights, images[0], tmp_path)
    assert save_dir == tmp_path / "runs" / "exp"
    assert (save_dir / "im0.png").is_file()
    lines = (save_dir / "labels" / "im0.txt").read_text().splitlines()
    assert lines
    for line in lines:
        vals = line.split(" ")
        assert len(vals) == 6 and all(v == "%g" % float(v) for v in vals), line  # YOLOv5's '%g ' format
        assert vals[0] in ("0", "1", "2") and all(0 <= float(v) <= 1 for v in vals[1:])
    per_image = [m for m in log if m.startswith("image 1/1 ")]
    assert re.fullmatch(r"image 1/1 .*im0\.png: 64x64 (\d+ (circle|square|star)s?, )+\d+\.\dms", per_image[0])
    assert any(m.startswith("Speed: ") and "per image at shape (1, 3, 64, 64)" in m for m in log)
    assert any(m.startswith("Results saved to") and "1 labels saved to" in m for m in log)


def test_directory_glob_and_txt_list(weights, images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images[0]}\n{images[2]}\n")
    runs = [(images[0].parent, 3), (str(images[0].parent / "im[01]*.png"), 2), (listing, 2)]
    for source, n in runs:
        save_dir = _run(weights, source, tmp_path)
        assert len(list(save_dir.glob("*.png"))) == n, source
        assert len(list(save_dir.glob("labels/*.txt"))) == n, source
    assert save_dir.name == "exp3"  # exp, exp2, exp3


def test_own_checkpoint_matches_its_model(weights, shuffle_model, images, tmp_path):
    save_dir = _run(weights, images[0].parent, tmp_path)
    for f in images:
        assert_same_detections(_detections(save_dir, f), reference(shuffle_model, f))
    ensemble = _run([weights, weights], images[0], tmp_path)  # identical members: NMS leaves one of each pair
    assert_same_detections(_detections(ensemble, images[0]), reference(shuffle_model, images[0]))


def test_names_come_from_data_only_when_the_model_has_none(shuffle_model, images, tmp_path):
    nameless = deepcopy(shuffle_model)
    nameless.names = {}
    data = tmp_path / "data.yaml"
    data.write_text("names: [alpha, beta, gamma]\n")
    save_dir = _run(save_own(nameless, tmp_path / "nameless.pt"), images[0], tmp_path, data=data, save_crop=True)
    assert {p.name for p in (save_dir / "crops").iterdir()} <= {"alpha", "beta", "gamma"}


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5n_shuffle.yaml"])  # stock YOLOv5 and the seed's patch
def test_legacy_checkpoint_needs_trust_then_matches(cfg, shuffle_model, images, tmp_path):
    model = shuffle_model if "shuffle" in cfg else lively_model(cfg, images)
    legacy = save_legacy(model, tmp_path / "last.pt")
    with pytest.raises(UntrustedCheckpointError, match="--trust-weights"):
        _run(legacy, images[1], tmp_path)
    save_dir = _run(legacy, images[1], tmp_path, trust_weights=True)
    assert_same_detections(_detections(save_dir, images[1]), reference(model, images[1]))


def test_crops_land_in_class_folders_and_classes_filter(weights, images, tmp_path):
    save_dir = _run(weights, images[2], tmp_path, save_crop=True)
    rows = read_rows(save_dir / "labels" / "im2.txt")
    for c in np.unique(rows[:, 0]).astype(int):
        n = int((rows[:, 0] == c).sum())
        expected = {"im2.jpg"} | {f"im2{k}.jpg" for k in range(2, n + 1)}
        assert {p.name for p in (save_dir / "crops" / NAMES[c]).iterdir()} == expected
    keep = int(rows[0, 0])
    filtered = _run(weights, images[2], tmp_path, classes=[keep])
    kept = read_rows(filtered / "labels" / "im2.txt")
    assert set(kept[:, 0]) == {keep} and len(kept) == (rows[:, 0] == keep).sum()


def test_video_frames(weights, images, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    frame = cv2.imread(str(images[0]))
    for k in range(4):
        writer.write(np.roll(frame, 4 * k, axis=1))
    writer.release()
    with captured_log() as log:
        save_dir = _run(weights, video, tmp_path)
    assert [m.split(":")[0] for m in log if m.startswith("video")] == [f"video 1/1 ({k}/4) {video}" for k in (1, 2, 3, 4)]
    cap = cv2.VideoCapture(str(save_dir / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert {p.name for p in save_dir.glob("labels/*.txt")} <= {f"clip_{k}.txt" for k in (1, 2, 3, 4)}
    assert len(list(save_dir.glob("labels/*.txt"))) > 0


def test_nosave_augment_half_dnn_view_img(weights, images, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with captured_log() as log:
        save_dir = _run(weights, images[1], tmp_path, nosave=True, augment=True, half=True, dnn=True, view_img=True,
                        hide_labels=True)
    assert not list(save_dir.glob("*.png")) and (save_dir / "labels" / "im1.txt").is_file()
    text = "\n".join(log)
    assert "--view-img: no display available" in text
    assert "--half needs a CUDA device" in text and "--dnn" in text


def test_visualize_saves_feature_maps_per_image(weights, images, tmp_path, monkeypatch):
    import utils.plots
    calls = []  # the real plots take ~1 s per layer at 300 dpi; the wiring is what is tested here
    monkeypatch.setattr(utils.plots, "feature_visualization", lambda x, t, i, save_dir: calls.append((i, save_dir)))
    save_dir = _run(weights, images[1], tmp_path, visualize=True, save_txt=False)
    assert calls and calls[0] == (0, save_dir / "im1") and (save_dir / "im1").is_dir()


def test_corrupt_image_is_skipped_and_the_rest_continue(weights, images, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "good.png").write_bytes(images[0].read_bytes())
    with captured_log() as log:
        save_dir = _run(weights, folder, tmp_path)
    assert any("broken.jpg" in m for m in log)
    assert (save_dir / "good.png").is_file()


def test_bad_sources_give_clear_errors(weights, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"no readable images"):
        _run(weights, broken, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        _run(weights, tmp_path / "missing.jpg", tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        _run(weights, "https://example.com/a.jpg", tmp_path)


def test_missing_default_weights_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(detect, "ROOT", tmp_path)  # as if the shipped model were absent
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="python train.py"):
        detect.resolve_weights(detect.DEFAULT_WEIGHTS)


def test_foreign_checkpoint_is_named(images, tmp_path):
    fake = types.ModuleType("ultralytics.nn.tasks")
    parents = {n: types.ModuleType(n) for n in ("ultralytics", "ultralytics.nn")}

    class DetectionModel:  # stands in for a YOLOv8 model class
        pass

    DetectionModel.__module__, DetectionModel.__qualname__ = fake.__name__, "DetectionModel"
    fake.DetectionModel = DetectionModel
    sys.modules.update({**parents, fake.__name__: fake})
    try:
        torch.save({"model": DetectionModel(), "train_args": {}}, tmp_path / "yolov8n.pt")
    finally:
        for name in (fake.__name__, *parents):
            sys.modules.pop(name, None)
    with pytest.raises(ValueError, match="newer YOLO generation"):
        _run(tmp_path / "yolov8n.pt", images[0], tmp_path)


def _cli(*args) -> str:
    """detect.py's __main__ in-process; returns the SystemExit message (the one line a user sees)."""
    argv = sys.argv
    sys.argv = ["detect.py", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / "detect.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return str(e.value.code)


def test_cli_errors_are_one_line(weights, shuffle_model, images, tmp_path):
    legacy = save_legacy(shuffle_model, tmp_path / "last.pt")
    common = ("--imgsz", IMGSZ, "--project", tmp_path / "runs")
    assert _cli("--weights", legacy, "--source", images[0], *common).startswith("ERROR: ")
    msg = _cli("--weights", weights, "--source", tmp_path / "nowhere", *common)
    assert msg.startswith("ERROR: --source") and "nowhere" in msg and "\n" not in msg
    proc = subprocess.run([sys.executable, str(ROOT / "detect.py"), "--weights", str(tmp_path / "missing.pt"),
                           "--source", str(images[0])], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("ERROR: ") and "missing.pt" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
