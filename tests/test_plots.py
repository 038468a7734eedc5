"""Plots (utils/plots.py): each writes its file on tiny inputs, and failures only warn."""

import logging

import cv2
import numpy as np
import torch

from utils.metrics import ConfusionMatrix, ap_per_class
from utils.plots import (Annotator, colors, feature_visualization, output_to_target, plot_ap_curves,
                         plot_confusion_matrix, plot_images, plot_labels, plot_mc_curve, plot_pr_curve, plot_results)

from utils.train_utils import RESULT_KEYS as RESULTS_HEADER


def test_colors_palette():
    assert len({colors(i) for i in range(20)}) == 20
    assert colors(21) == colors(1)
    r, g, b = colors(3)
    assert colors(3, bgr=True) == (b, g, r)


def test_annotator_draws():
    im = np.zeros((64, 64, 3), dtype=np.uint8)
    ann = Annotator(im, line_width=1)
    ann.box_label([5, 20, 40, 50], "person 0.9", color=colors(0))
    ann.box_label([0, 0, 10, 10], "caf\u00e9")  # non-ASCII text must not crash
    ann.text((2, 2), "hello")
    assert ann.result().any()


def test_plot_images_labels_and_predictions(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8, generator=g)
    labels = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.4], [2, 0, 0.3, 0.3, 0.2, 0.2]])
    plot_images(images, labels, ["a.jpg", "b.jpg", "c.jpg"], tmp_path / "labels.jpg", names={0: "cat", 1: "dog"})
    preds = [torch.tensor([[5.0, 5.0, 30.0, 30.0, 0.9, 1.0]]), torch.zeros(0, 6), torch.zeros(0, 6)]
    targets = output_to_target(preds)
    assert targets.shape == (1, 7)
    plot_images(images.float() / 255, targets, None, tmp_path / "pred.jpg", names=["cat", "dog"])
    for name in ("labels.jpg", "pred.jpg"):
        im = cv2.imread(str(tmp_path / name))
        assert im is not None and im.shape == (128, 128, 3)


def test_plot_results(tmp_path):
    f = tmp_path / "results.csv"
    lines = [",".join(f"{h:>20s}" for h in RESULTS_HEADER)]
    lines += [",".join(f"{v:>20.5g}" for v in [e] + [0.1 * (e + 1)] * 13) for e in range(4)]
    f.write_text("\n".join(lines) + "\n")
    plot_results(f)
    assert (tmp_path / "results.png").stat().st_size > 0


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.concatenate((rng.integers(0, 3, (30, 1)), rng.uniform(0.1, 0.9, (30, 4))), 1)
    plot_labels(labels, ["a", "b", "c"], tmp_path)
    assert (tmp_path / "labels.jpg").stat().st_size > 0
    assert (tmp_path / "labels_correlogram.jpg").stat().st_size > 0


def test_curves_from_ap_per_class(tmp_path):
    tp = np.array([[1], [0], [1], [1]], dtype=bool)
    curves = {}
    ap_per_class(tp, np.array([0.9, 0.8, 0.5, 0.4]), np.array([0, 0, 1, 1]), np.array([0, 1, 1]), curves=curves)
    assert curves["py"].shape == (2, 1000) and curves["f1"].shape == (2, 1000)
    plot_ap_curves(curves, tmp_path, names={0: "a", 1: "b"})
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_curve_plots_many_classes(tmp_path):
    px = np.linspace(0, 1, 1000)
    plot_pr_curve(px, [px[::-1]] * 25, np.full((25, 10), 0.5), tmp_path / "pr.png", names=[str(i) for i in range(25)])
    plot_mc_curve(px, np.tile(px, (25, 1)), tmp_path / "mc.png")
    assert (tmp_path / "pr.png").exists() and (tmp_path / "mc.png").exists()


def test_confusion_matrix_plot(tmp_path):
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(torch.tensor([[0, 0, 10, 10, 0.9, 0.0]]), torch.tensor([[0, 0, 0, 10, 10.0]]))
    plot_confusion_matrix(cm.matrix, tmp_path / "confusion_matrix.png", names={0: "a", 1: "b"})
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0


def test_feature_visualization(tmp_path):
    x = torch.randn(1, 12, 8, 8)
    feature_visualization(x, "models.common.Conv", 3, n=10, save_dir=tmp_path)
    assert (tmp_path / "stage3_Conv_features.png").exists()
    assert np.load(tmp_path / "stage3_Conv_features.npy").shape == (12, 8, 8)
    feature_visualization(x, "models.yolo.Detect", 4, save_dir=tmp_path)  # Detect outputs are skipped
    assert not list(tmp_path.glob("stage4*"))


def test_plot_failure_only_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("yolov5"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        plot_results(tmp_path / "missing.csv")
    assert "plot_results failed" in caplog.text
