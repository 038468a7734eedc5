"""--optimizer auto: which optimizer, learning rate, warm-up and accumulation a short and a long run get, and that an
explicit --optimizer keeps YOLOv5's recipe untouched."""

import pytest

from detect_helpers import captured_log
from utils.recipe import NBS, SHORT_RUN_STEPS, choose_recipe, count_images, nominal_steps, resolve_recipe
from utils.train_utils import hyp_defaults


def test_nominal_steps_count_accumulated_batches():
    assert nominal_steps(360, 16, 30) == 30 * 6  # ceil(360 / 64) steps per epoch
    assert nominal_steps(360, 128, 30) == 30 * 3  # batches above 64 are one step each
    assert nominal_steps(118_287, 64, 300) == 300 * 1849  # COCO, YOLOv5's 300 epochs


def test_short_run_gets_adamw_small_lr_no_bias_warmup_no_accumulation():
    r = choose_recipe(n_images=360, nc=8, batch_size=16, epochs=30)
    assert r.optimizer == "AdamW"
    assert r.hyp["lr0"] == 0.0025
    assert r.hyp["momentum"] == 0.9 and r.hyp["warmup_bias_lr"] == 0.0
    assert r.nbs == 16  # one optimizer step per batch of 16
    assert choose_recipe(600, 12, 16, 36).hyp["lr0"] == 0.001875  # more classes, smaller lr0
    assert "short run" in r.reason and "180 steps" in r.reason


def test_long_run_gets_yolov5_sgd_recipe_unchanged():
    r = choose_recipe(n_images=118_287, nc=80, batch_size=64, epochs=300)
    assert (r.optimizer, r.hyp, r.nbs) == ("SGD", {}, NBS)
    assert "long run" in r.reason
    n = 64 * 100  # 100 steps per epoch: the switch is at SHORT_RUN_STEPS exactly
    assert choose_recipe(n, 8, 16, SHORT_RUN_STEPS // 100).optimizer == "SGD"
    assert choose_recipe(n, 8, 16, SHORT_RUN_STEPS // 100 - 1).optimizer == "AdamW"


def test_auto_overrides_the_hyp_files_learning_rate_and_logs_one_line():
    hyp = dict(hyp_defaults(), fliplr=0.0)  # a user's --hyp: scratch-low values without flips
    with captured_log() as log:
        r = resolve_recipe("auto", hyp, n_images=600, nc=12, batch_size=16, epochs=36)
    assert r.optimizer == "AdamW" and r.nbs == 16
    assert hyp["lr0"] == 0.001875 and hyp["momentum"] == 0.9 and hyp["warmup_bias_lr"] == 0.0
    assert hyp["fliplr"] == 0.0 and hyp["warmup_epochs"] == 3.0 and hyp["cls"] == 0.5  # the rest is the user's
    lines = [line for line in log if "recipe:" in line]
    assert len(lines) == 1 and "AdamW" in lines[0] and "short run" in lines[0] and "lr0=0.001875" in lines[0]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_explicit_optimizer_always_wins(name):
    hyp = dict(hyp_defaults())
    for n_images, epochs in ((360, 30), (118_287, 300)):  # short and long
        r = resolve_recipe(name, hyp, n_images=n_images, nc=8, batch_size=16, epochs=epochs)
        assert (r.optimizer, r.hyp, r.nbs) == (name, {}, NBS)
        assert hyp == hyp_defaults()


def test_evolve_keeps_yolov5_recipe():
    hyp = dict(hyp_defaults())
    r = resolve_recipe("auto", hyp, n_images=360, nc=8, batch_size=16, epochs=30, evolve=True)
    assert (r.optimizer, r.nbs) == ("SGD", NBS) and hyp == hyp_defaults()


def test_autobatch_counts_as_batch_16():
    assert choose_recipe(360, 8, -1, 30).nbs == 16


def test_count_images_quietly(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("1.jpg", "2.png", "3.doc"):
        (tmp_path / "a" / name).write_bytes(b"")
    with captured_log() as log:
        assert count_images(tmp_path / "a") == 2
        assert count_images(tmp_path / "missing") == 0
    assert log == []  # the dataloader warns about 3.doc when it lists the split
