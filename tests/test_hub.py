"""The Python/hub API: torch.hub.load('.', 'custom', ..., source='local'), per-config entry points, AutoShape inputs,
Detections output, and agreement with detect.py on the same image."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
import detect
import hubconf
from detect_helpers import (IMGSZ, NAMES, assert_same_detections, lively_model, read_rows, reference,
                            rows_to_xyxy, save_legacy, save_own)
from inference.autoshape import AutoShape, Detections
from models.checkpoint import UntrustedCheckpointError



@pytest.fixture(scope="module")
def model_and_weights(images, tmp_path_factory):
    model = lively_model("yolov5n_shuffle.yaml", images)
    return model, save_own(model, tmp_path_factory.mktemp("weights") / "best.pt")


@pytest.fixture(scope="module")
def api(model_and_weights):
    return torch.hub.load(str(ROOT), "custom", path=str(model_and_weights[1]), source="local", _verbose=False)


def test_hub_custom_returns_detections(api, model_and_weights, images):
    assert isinstance(api, AutoShape) and api.names == NAMES
    results = api(str(images[0]), size=IMGSZ)
    assert isinstance(results, Detections) and len(results) == 1 and results.files == ["im0.jpg"]
    det = results.xyxy[0]
    assert det.shape[1] == 6 and len(det)
    assert_same_detections(det, reference(model_and_weights[0], images[0]))
    h, w = cv2.imread(str(images[0])).shape[:2]
    np.testing.assert_allclose(results.xyxyn[0][:, :4] * torch.tensor([w, h, w, h]), det[:, :4], rtol=1e-5)
    np.testing.assert_allclose(results.xywh[0][:, 2], det[:, 2] - det[:, 0], rtol=1e-5)
    assert (results.xywhn[0][:, :4] <= 1).all()
    text = str(results)
    assert text.startswith(f"image 1/1: {h}x{w} ") and "Speed:" in text
    rows = results.tolist()[0]
    assert json.loads(json.dumps(rows)) == rows and rows[0]["name"] in NAMES.values()


def test_api_matches_detect_py(api, model_and_weights, images, tmp_path):
    save_dir = detect.run(weights=model_and_weights[1], source=images[2], imgsz=(IMGSZ, IMGSZ), save_txt=True,
                          save_conf=True, project=tmp_path, name="exp", nosave=True)
    im_bgr = cv2.imread(str(images[2]))
    from_detect = rows_to_xyxy(read_rows(save_dir / "labels" / "im2.txt"), im_bgr.shape)
    inputs = [str(images[2]), im_bgr[..., ::-1].copy(), Image.open(images[2])]  # path, RGB array, PIL
    for im in inputs:
        assert_same_detections(api(im, size=IMGSZ).xyxy[0], from_detect)


def test_batch_of_mixed_inputs_save_and_crop(api, images, tmp_path):
    batch = [str(images[0]), cv2.imread(str(images[1]))[..., ::-1], Image.open(images[2])]
    results = api(batch, size=IMGSZ)
    assert len(results) == 3 and results.files == ["im0.jpg", "image1.jpg", "im2.jpg"]
    assert [len(r) for r in results] == [1, 1, 1]
    save_dir = results.save(save_dir=tmp_path / "exp")
    assert sorted(p.name for p in save_dir.glob("*.jpg")) == ["im0.jpg", "im2.jpg", "image1.jpg"]
    crops = results.crop(save_dir=tmp_path / "exp")
    assert len(crops) == sum(len(x) for x in results.xyxy)
    assert {p.parent.name for p in (tmp_path / "exp2" / "crops").rglob("*.jpg")} <= set(NAMES.values())
    results.print()


def test_autoshape_settings_and_raw_tensor(api, images):
    api.classes = [0]
    try:
        kept = api(str(images[0]), size=IMGSZ).xyxy[0]
    finally:
        api.classes = None
    assert (kept[:, 5] == 0).all()
    raw = api(torch.zeros(1, 3, IMGSZ, IMGSZ))
    assert raw[0].shape[-1] == 5 + len(NAMES)


def test_bad_inputs_are_named(api, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg: not a readable image"):
        api(str(broken))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        api(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="unsupported input of type int"):
        api(123)
    with pytest.raises(ValueError, match="must be uint8"):
        api(np.zeros((64, 64, 3), np.float32))


def test_custom_legacy_checkpoint_needs_trust(model_and_weights, images, tmp_path):
    legacy = save_legacy(model_and_weights[0], tmp_path / "last.pt")
    with pytest.raises(UntrustedCheckpointError):
        hubconf.custom(path=legacy, _verbose=False)
    trusted = hubconf.custom(path=legacy, _verbose=False, trust=True)
    assert_same_detections(trusted(str(images[1]), size=IMGSZ).xyxy[0], reference(model_and_weights[0], images[1]))


def test_config_entry_points(model_and_weights, monkeypatch, tmp_path):
    monkeypatch.setattr(hubconf, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="pretrained=False"):
        hubconf.yolov5n_shuffle(_verbose=False)
    with pytest.raises(ValueError, match="unknown model 'yolov9'"):
        hubconf._create("yolov9")
    random_init = hubconf.yolov5n_shuffle(pretrained=False, classes=3, _verbose=False)
    assert isinstance(random_init, AutoShape) and random_init.model.model[-1].nc == 3
    save_own(model_and_weights[0], tmp_path / "yolov5n_shuffle.pt")
    pretrained = hubconf.yolov5n_shuffle(autoshape=False, _verbose=False)
    assert pretrained.names == NAMES and not pretrained.training
    more_classes = hubconf.yolov5n_shuffle(classes=5, autoshape=False, _verbose=False)
    assert more_classes.model[-1].nc == 5
    configs = {f.stem for f in (ROOT / "models").glob("*.yaml")}  # one entry point per shipped config
    assert all(callable(getattr(hubconf, name, None)) for name in configs | {"custom"})
    small = torch.hub.load(str(ROOT), "yolov5n", source="local", pretrained=False, autoshape=False, _verbose=False)
    assert small.yaml_file == "yolov5n.yaml" and hubconf.yolov5n.__name__ == "yolov5n"
