"""val.py end to end on a tiny generated dataset: table, files, metrics, and YOLOv5-format checkpoints."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import val
from detect_helpers import NAMES, captured_log, lively_model, save_legacy, save_own
from models.checkpoint import UntrustedCheckpointError


def make_dataset(root: Path, n: int = 4) -> Path:
    """n images (shapes on noise) with YOLO labels under root/{images,labels}/val, and a dataset yaml."""
    rng = np.random.default_rng(0)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i in range(n):
        h, w = (64, 96) if i % 2 else (80, 64)
        im = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        rows = []
        for k in range(2):
            x1, y1 = int(rng.integers(2, w // 2)), int(rng.integers(2, h // 2))
            bw, bh = int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2))
            cv2.rectangle(im, (x1, y1), (x1 + bw, y1 + bh), (40 + 100 * k, 200, 255 - 80 * k), -1)
            rows.append(f"{(i + k) % 3} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / "val" / f"{i:03d}.png"), im)
        (root / "labels" / "val" / f"{i:03d}.txt").write_text("\n".join(rows) + "\n")
    data = {"path": str(root), "train": "images/val", "val": "images/val", "names": dict(NAMES)}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("valdata")
    data = make_dataset(root)
    files = sorted((root / "images" / "val").glob("*.png"))
    model = lively_model("yolov5n_shuffle.yaml", files)
    return root, data, model


def test_val_end_to_end_writes_table_and_files(setup, tmp_path, capsys):
    root, data, model = setup
    w = save_own(model, tmp_path / "own.pt")
    with captured_log() as log:
        (mp, mr, map50, map_, *losses), maps, times = val.run(
            data=str(data), weights=str(w), imgsz=64, batch_size=2, workers=0, project=tmp_path, name="v",
            save_txt=True, save_conf=True, save_json=True, plots=True)
    out = tmp_path / "v"
    text = "\n".join(log) + capsys.readouterr().err  # the header is the progress bar's title
    assert "Class     Images  Instances          P          R      mAP50   mAP50-95" in text
    assert "                   all          4          8" in text
    assert "Speed:" in text and "pre-process" in text
    for f in ("confusion_matrix.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg", "own_predictions.json"):
        assert (out / f).is_file(), f
    assert 0 <= map_ <= map50 <= 1 and 0 <= mp <= 1 and 0 <= mr <= 1
    assert len(losses) == 3 and maps.shape == (3,) and len(times) == 3
    records = json.loads((out / "own_predictions.json").read_text())
    assert records and {"image_id", "category_id", "bbox", "score"} <= set(records[0])
    txts = list((out / "labels").glob("*.txt"))
    assert txts and all(len(r.split()) == 6 for t in txts for r in t.read_text().splitlines())


def test_hybrid_labels_score_perfectly(setup, tmp_path):
    # --save-hybrid puts the labels themselves among the detections (conf 1): every label is found first,
    # so AP is the 101-point trapezoid's maximum, 0.995, at every IoU threshold.
    root, data, model = setup
    w = save_own(model, tmp_path / "own.pt")
    (mp, mr, map50, map_, *_), _, _ = val.run(data=str(data), weights=str(w), imgsz=64, batch_size=4, workers=0,
                                              project=tmp_path, name="h", save_hybrid=True, save_txt=True,
                                              plots=False)
    assert map50 == pytest.approx(0.995, abs=1e-6)
    assert map_ == pytest.approx(0.995, abs=1e-6)
    assert mr == pytest.approx(1.0, abs=1e-6)


def test_legacy_yolov5_checkpoint_needs_trust_then_matches(setup, tmp_path):
    root, data, model = setup
    legacy = save_legacy(model, tmp_path / "legacy.pt")
    own = save_own(model, tmp_path / "own.pt")
    with pytest.raises(UntrustedCheckpointError, match="--trust-weights"):
        val.run(data=str(data), weights=str(legacy), imgsz=64, workers=0, project=tmp_path, plots=False)
    a = val.run(data=str(data), weights=str(legacy), imgsz=64, workers=0, project=tmp_path, plots=False,
                trust_weights=True)[0]
    b = val.run(data=str(data), weights=str(own), imgsz=64, workers=0, project=tmp_path, plots=False)[0]
    np.testing.assert_allclose(a[:4], b[:4], atol=1e-6)


def test_class_count_mismatch_is_a_clear_error(setup, tmp_path):
    root, data, model = setup
    cfg = yaml.safe_load(data.read_text())
    cfg["names"] = {0: "a", 1: "b"}
    other = tmp_path / "two.yaml"
    other.write_text(yaml.safe_dump(cfg))
    w = save_own(model, tmp_path / "own.pt")
    with pytest.raises(ValueError, match="trained on 3 classes .* has 2"):
        val.run(data=str(other), weights=str(w), imgsz=64, workers=0, project=tmp_path, plots=False)


def test_nms_speed_benchmark_runs_both_modes_and_restores_nms(setup, tmp_path, capsys):
    """benchmarks/nms_speed.py validates once per NMS mode and prints a row each, and leaves utils.nms as it was.
    (That the modes return the same detections is tests/test_nms.py's; this random model scores 0 either way.)"""
    import importlib.util
    root, data, model = setup
    w = save_own(model, tmp_path / "m.pt")
    spec = importlib.util.spec_from_file_location("nms_speed", val.ROOT / "benchmarks" / "nms_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(bench.parse_opt(["--weights", str(w), "--data", str(data), "--img", "64", "--batch-size", "4",
                                "--workers", "0", "--runs", "1", "--project", str(tmp_path / "runs")]))
    rows = [r.split() for r in capsys.readouterr().out.splitlines() if r.startswith(("every candidate", "prefix"))]
    assert len(rows) == 2
    full, prefix = rows[0][2:], rows[1][1:]  # "every candidate" is two words; then run, s, ms, dropped, P, R, mAPs
    assert full[4:] == prefix[4:] and full[3] == prefix[3] == "0"  # same P, R, mAPs; nothing dropped
    assert bench.nms_module._first_kept is bench.PREFIX  # the library is left as it was
