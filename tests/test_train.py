"""train.py end to end on a tiny generated dataset: run layout, checkpoints, resume, atomic saves, evolve, seeds,
weight transfer, training flags and error paths. Every run: yolov5n_shuffle, 64 px, batch 4, 1-3 epochs, CPU."""

import io
import math
import os
import resource
import runpy
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
import train
from detect_helpers import captured_log
from models.yolo import DetectionModel
from models.checkpoint import UntrustedCheckpointError, copy_checkpoint, load_checkpoint, save_checkpoint
from utils.logger import LOGGER
from utils.loss import ComputeLoss
from utils.recipe import Recipe, short_run_lr
from utils.train_utils import RESULT_KEYS, load_hyp

CKPT_KEYS = ["epoch", "best_fitness", "model", "ema", "updates", "optimizer", "opt", "git", "date"]
HEADER = ",".join("%20s" % k for k in RESULT_KEYS)


# ---------------------------------------------------------------- fixtures and helpers

def make_dataset(root: Path, n_train: int = 6, n_val: int = 2, labelled: bool = True) -> Path:
    """Coloured rectangles on noise, 64-96 px, two classes; the last train image is a background (empty .txt)."""
    rng = np.random.default_rng(0)
    sizes = ((64, 96), (96, 64), (80, 80), (64, 64))
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            h, w = sizes[i % 4]
            im = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            rows = []
            for k in range(0 if split == "train" and i == n - 1 else 2):
                bw, bh = int(rng.integers(14, w // 2)), int(rng.integers(14, h // 2))
                x1, y1 = int(rng.integers(1, w - bw - 1)), int(rng.integers(1, h - bh - 1))
                cv2.rectangle(im, (x1, y1), (x1 + bw, y1 + bh), (40 + 150 * k, 220, 255 - 150 * k), -1)
                rows.append(f"{k} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n")
            cv2.imwrite(str(root / "images" / split / f"{split}{i}.png"), im)
            if labelled:
                (root / "labels" / split / f"{split}{i}.txt").write_text("".join(rows))
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": {0: "red", 1: "blue"}}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


def args(data, project, *extra, epochs: int = 1, plots: bool = False) -> list:
    """train.py arguments of a tiny run."""
    a = ["--data", str(data), "--cfg", "yolov5n_shuffle.yaml", "--imgsz", "64", "--batch-size", "4",
         "--epochs", str(epochs), "--workers", "0", "--project", str(project)]
    return a + ([] if plots else ["--noplots"]) + [str(x) for x in extra]


def run_cli(argv: list) -> Path:
    """main(parse_opt(argv)) in-process; returns the run directory."""
    opt = train.parse_opt(argv)
    train.main(opt)
    return Path(opt.save_dir)


def read_results(run: Path) -> tuple:
    """results.csv -> (header line, rows as lists of floats)."""
    lines = (run / "results.csv").read_text().splitlines()
    return lines[0], [[float(v) for v in line.split(",")] for line in lines[1:]]


@contextmanager
def isolated_globals():
    """train() switches on deterministic algorithms, sets env vars and the logger's handler: undo all that."""
    env = {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")}
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    handlers, level, propagate = list(LOGGER.handlers), LOGGER.level, LOGGER.propagate
    try:
        yield
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)
        LOGGER.handlers[:], LOGGER.level, LOGGER.propagate = handlers, level, propagate


@pytest.fixture(autouse=True)
def restore_globals():
    with isolated_globals():
        torch.set_num_threads(1)  # tiny convs: a second thread only adds sync cost, worse on a shared 2-core box
        yield


@pytest.fixture
def skip_final_validation(monkeypatch):
    """For tests about something else: no optimizer stripping and best.pt re-validation (most of a tiny run's
    time). The layout, resume and multi-process tests keep it."""
    monkeypatch.setattr(train, "final_validation", lambda s, opt: s.results)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory) -> Path:
    """One run with plots and --save-period 1 (an unstripped epoch0.pt), shared by the layout/checkpoint tests."""
    with isolated_globals():
        torch.set_num_threads(1)
        return run_cli(args(data, tmp_path_factory.mktemp("runs"), "--save-period", "1", plots=True))


# ---------------------------------------------------------------- run layout and checkpoints

def test_run_writes_yolov5_layout(full_run):
    expected = ["weights/last.pt", "weights/best.pt", "weights/epoch0.pt", "hyp.yaml", "opt.yaml", "results.csv",
                "results.png", "labels.jpg", "labels_correlogram.jpg", "train_batch0.jpg", "train_batch1.jpg",
                "confusion_matrix.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg"]
    missing = [f for f in expected if not (full_run / f).is_file()]
    assert not missing, f"missing {missing}; have {sorted(p.name for p in full_run.rglob('*'))}"
    assert not list(full_run.rglob("*.tmp"))
    (full_run / "plain.txt").write_text("")  # atomic saves get the permissions open() would give, not 0600
    assert (full_run / "weights" / "best.pt").stat().st_mode == (full_run / "plain.txt").stat().st_mode
    (full_run / "plain.txt").unlink()
    header, rows = read_results(full_run)
    assert header == HEADER  # '%20s' cells: right-aligned, padded with leading spaces
    assert len(rows) == 1 and len(rows[0]) == 14 and rows[0][0] == 0
    line = (full_run / "results.csv").read_text().splitlines()[1]
    assert all(len(cell) == 20 for cell in line.split(","))  # '%20.5g' values
    assert all(math.isfinite(v) for v in rows[0]) and rows[0][1] > 0  # box loss
    saved_hyp = yaml.safe_load((full_run / "hyp.yaml").read_text())
    assert saved_hyp["weight_decay"] == 0.0005  # unscaled
    assert saved_hyp["lr0"] == short_run_lr(2)  # --optimizer auto's choice is what hyp.yaml records
    opt = yaml.safe_load((full_run / "opt.yaml").read_text())
    assert opt["save_dir"] == str(full_run) and opt["epochs"] == 1 and opt["hyp"]["box"] == 0.05


def test_final_checkpoints_stripped_and_safe(full_run):
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(full_run / "weights" / name)  # weights_only=True + allow-list; no trust needed
        assert list(ckpt) == CKPT_KEYS
        assert ckpt["epoch"] == -1
        assert all(ckpt[k] is None for k in ("best_fitness", "ema", "updates", "optimizer"))
        model = ckpt["model"]
        assert isinstance(model, DetectionModel)
        assert all(p.dtype == torch.float16 and not p.requires_grad for p in model.parameters())
        assert model.nc == 2 and model.names == {0: "red", 1: "blue"}
        assert model.hyp["box"] == pytest.approx(0.05) and model.class_weights.shape == (2,)
        assert isinstance(ckpt["opt"], dict) and ckpt["opt"]["imgsz"] == 64
        assert set(ckpt["git"]) == {"remote", "branch", "commit"} and isinstance(ckpt["date"], str)


def test_epoch_checkpoint_has_training_state(full_run):
    ckpt = load_checkpoint(full_run / "weights" / "epoch0.pt")
    assert list(ckpt) == CKPT_KEYS
    assert ckpt["epoch"] == 0 and isinstance(ckpt["best_fitness"], float) and ckpt["updates"] >= 1
    assert len(ckpt["optimizer"]["param_groups"]) == 3
    assert next(ckpt["ema"].parameters()).dtype == torch.float16
    assert next(ckpt["model"].parameters()).dtype == torch.float16


def test_interrupted_save_keeps_previous_checkpoint(full_run, tmp_path, monkeypatch):
    f = tmp_path / "weights" / "last.pt"
    f.parent.mkdir()
    good = load_checkpoint(full_run / "weights" / "epoch0.pt")
    save_checkpoint(good, f)
    before = f.read_bytes()
    real_save = torch.save

    def killed_halfway(obj, fh, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**good, "epoch": 1}, f)
    monkeypatch.undo()
    assert f.read_bytes() == before
    assert sorted(p.name for p in f.parent.iterdir()) == ["last.pt"]  # no temporary file left behind
    assert load_checkpoint(f)["epoch"] == 0


def test_copied_checkpoint_is_what_a_second_save_writes(full_run, tmp_path):
    """end_epoch writes best.pt and epochN.pt as copies of last.pt instead of pickling the same dict again: the copy
    is byte for byte what a second save_checkpoint writes, and a failed copy (a 4 kB file-size limit: EFBIG) names
    the file, keeps the previous one and leaves no temporary file."""
    ckpt = load_checkpoint(full_run / "weights" / "epoch0.pt")
    save_checkpoint(ckpt, tmp_path / "last.pt")
    save_checkpoint(ckpt, tmp_path / "saved.pt")
    copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "saved.pt").read_bytes()
    assert (tmp_path / "best.pt").stat().st_mode == (tmp_path / "saved.pt").stat().st_mode
    (tmp_path / "best.pt").write_bytes(b"the previous best.pt")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError, match=r"best\.pt: checkpoint not saved \(File too large\)"):
            copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (tmp_path / "best.pt").read_bytes() == b"the previous best.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "saved.pt"]


# ---------------------------------------------------------------- resume

def interrupted_run(argv: list, monkeypatch) -> Path:
    """Run train.py with `argv` until the first last.pt of epoch 0 is saved, then "die" (KeyboardInterrupt);
    returns the run directory."""
    real_save = train.save_checkpoint

    def save_then_die(ckpt, path):
        real_save(ckpt, path)
        if Path(path).name == "last.pt" and ckpt["optimizer"] is not None:
            raise KeyboardInterrupt

    opt = train.parse_opt(argv)
    with monkeypatch.context() as m:
        m.setattr(train, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train.main(opt)
    return Path(opt.save_dir)


def test_resume_after_interrupt_finishes_remaining_epochs(data, tmp_path, monkeypatch):
    run = interrupted_run(args(data, tmp_path, epochs=3), monkeypatch)
    assert run == tmp_path / "exp"
    last = run / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0 and len(read_results(run)[1]) == 1
    (run / "weights" / ".last.pt.killed.tmp").write_bytes(b"half a checkpoint")  # a SIGKILL mid-save leaves this

    monkeypatch.chdir(tmp_path)  # bare --resume: the newest last*.pt under the working directory
    with captured_log() as log:
        train.main(train.parse_opt(["--resume"]))
    assert any("Resuming training from" in r and "from epoch 1 to 3 total epochs" in r for r in log)
    header, rows = read_results(run)
    assert header == HEADER and [r[0] for r in rows] == [0, 1, 2]
    assert not list(run.rglob("*.tmp"))
    assert load_checkpoint(last)["epoch"] == -1  # finished and stripped
    assert not (tmp_path / "exp2").exists()  # resumed in place
    with pytest.raises(ValueError, match="nothing to resume"):
        train.main(train.parse_opt(["--resume", str(last)]))


# ---------------------------------------------------------------- evolve, seeds, transfer

def test_evolve_two_generations(data, tmp_path):
    run = run_cli(args(data, tmp_path, "--evolve", "2"))
    assert run == tmp_path / "exp"
    lines = (run / "evolve.csv").read_text().splitlines()
    assert len(lines) == 3  # header + 2 generations
    cols = [c.strip() for c in lines[0].split(",")]
    assert cols[:4] == ["metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
    gens = [[float(v) for v in line.split(",")] for line in lines[1:]]
    assert all(len(g) == len(cols) for g in gens) and gens[0][7:] != gens[1][7:]  # the second one is mutated
    best = load_hyp(run / "hyp_evolve.yaml")  # a valid --hyp file
    assert set(best) >= {"lr0", "mosaic"}
    assert (run / "evolve.png").is_file() and not list(run.rglob("*.pt"))


def test_same_seed_same_losses(data, tmp_path, skip_final_validation):
    runs = [run_cli(args(data, tmp_path, "--seed", s, "--noval")) for s in ("3", "3", "4")]
    losses = [np.array(read_results(r)[1])[:, 1:4] for r in runs]
    np.testing.assert_array_equal(losses[0], losses[1])
    assert not np.array_equal(losses[0], losses[2])


def test_weights_transfer_from_checkpoint(data, full_run, tmp_path, skip_final_validation):
    with captured_log() as log:
        run_cli(args(data, tmp_path, "--weights", full_run / "weights" / "best.pt", "--cfg", "", "--noval"))
    n = len(DetectionModel(ROOT / "models" / "yolov5n_shuffle.yaml", nc=2).state_dict())
    assert f"Transferred {n}/{n} items from {full_run / 'weights' / 'best.pt'}" in log


def test_weights_transfer_from_legacy_pickle(data, tmp_path, monkeypatch, skip_final_validation):
    torch.manual_seed(0)
    model = DetectionModel(ROOT / "models" / "yolov5n_shuffle.yaml", nc=3)  # 3 classes: the head does not fit
    legacy = tmp_path / "yolov5_last.pt"
    torch.save({"epoch": 5, "best_fitness": np.array([0.25]), "model": model.half(), "ema": None, "updates": 7,
                "optimizer": None, "opt": {"imgsz": 64}, "git": {}, "date": "2022-11-22"}, legacy)

    with pytest.raises(UntrustedCheckpointError) as e:
        run_cli(args(data, tmp_path, "--weights", legacy))
    assert "--trust-weights" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(sys, "argv", ["train.py", *args(data, tmp_path, "--weights", legacy)])
    with pytest.raises(SystemExit) as e:  # the command line turns it into one 'ERROR: ...' line
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert str(e.value.code).startswith("ERROR: ") and "\n" not in str(e.value.code)

    with captured_log() as log:
        run_cli(args(data, tmp_path, "--weights", legacy, "--trust-weights", "--noval"))
    msg = next(r for r in log if r.startswith("Transferred "))
    x, y = map(int, msg.split()[1].split("/"))
    assert 0 < x < y  # everything but the class-dependent head convs (and the anchors, as --cfg is given)


# ---------------------------------------------------------------- recipe: --optimizer auto and explicit optimizers

def test_default_short_run_uses_the_adamw_recipe(full_run):
    """The tiny run (1 epoch of 2 batches) is short: AdamW, lr0 0.01/(4+2), bias warm-up from 0, not 0.1."""
    ckpt = load_checkpoint(full_run / "weights" / "epoch0.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert all("betas" in g and "nesterov" not in g for g in groups)  # Adam-family state
    assert [g["initial_lr"] for g in groups] == [short_run_lr(2)] * 3
    assert groups[1]["betas"][0] == 0.9 and groups[1]["weight_decay"] == 0.0005
    lr_bias = read_results(full_run)[1][0][11]  # x/lr0 after batch 1 of the 100-iteration warm-up: 0 -> lr0
    assert lr_bias == pytest.approx(short_run_lr(2) / 100, rel=1e-3)
    assert yaml.safe_load((full_run / "opt.yaml").read_text())["optimizer"] == "auto"


def test_explicit_sgd_trains_with_yolov5_recipe(data, tmp_path, skip_final_validation):
    with captured_log() as log:
        run = run_cli(args(data, tmp_path, "--optimizer", "SGD", "--save-period", "1", "--noval"))
    lines = [r for r in log if "recipe:" in r]
    assert len(lines) == 1 and "--optimizer SGD given" in lines[0]
    assert yaml.safe_load((run / "hyp.yaml").read_text())["lr0"] == 0.01
    groups = load_checkpoint(run / "weights" / "epoch0.pt")["optimizer"]["param_groups"]
    assert all(g["nesterov"] and g["initial_lr"] == 0.01 for g in groups)
    lr_bias = read_results(run)[1][0][11]  # bias warm-up 0.1 -> lr0 over 100 iterations, after batch 1
    assert lr_bias == pytest.approx(0.1 - (0.1 - 0.01) / 100, rel=1e-6)


@pytest.mark.parametrize("recipe,accumulate", [(Recipe("AdamW", nbs=16), 1), (Recipe("SGD"), 4)])
def test_accumulation_follows_the_recipe(recipe, accumulate):
    s = train.RunState(save_dir=ROOT, epochs=10, plots=False, device=torch.device("cpu"), batch_size=16, recipe=recipe)
    model = DetectionModel(ROOT / "models" / "yolov5n_shuffle.yaml", nc=2)
    opt = train.parse_opt(["--optimizer", recipe.optimizer])
    hyp = load_hyp(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
    optimizer = train.build_optimizer(s, model, opt, hyp, None)[0]
    assert s.accumulate == accumulate and type(optimizer).__name__ == recipe.optimizer
    assert hyp["weight_decay"] == 0.0005 * 16 * accumulate / recipe.nbs


# ---------------------------------------------------------------- training flags

def test_flags_quad_rect_cache_disk_single_cls_freeze(tmp_path, skip_final_validation):
    data = make_dataset(tmp_path / "d")  # its own copy: --cache disk writes .npy files beside the images
    run = run_cli(args(data, tmp_path, "--quad", "--rect", "--cache", "disk", "--single-cls", "--freeze", "3",
                       "--cos-lr", "--optimizer", "AdamW", "--label-smoothing", "0.1", "--noval"))
    assert len(list((tmp_path / "d" / "images" / "train").glob("*.npy"))) == 6
    model = load_checkpoint(run / "weights" / "best.pt")["model"]
    assert model.nc == 1 and model.names == {0: "item"} and model.hyp["label_smoothing"] == 0.1
    assert len(read_results(run)[1]) == 1


def test_flags_image_weights_multi_scale_cache_ram_patience(data, tmp_path, monkeypatch, skip_final_validation):
    fits = iter([0.5, 0.4, 0.3])  # fitness falls after epoch 0: --patience 1 stops after epoch 1
    monkeypatch.setattr(train, "fitness", lambda x: np.array([next(fits)]))
    with captured_log() as log:
        run = run_cli(args(data, tmp_path, "--image-weights", "--multi-scale", "--cache", "ram", "--patience", "1",
                           "--noval", epochs=3))
    assert [r[0] for r in read_results(run)[1]] == [0, 1]
    assert any("Stopping training early" in r for r in log)


def test_autobatch_flag_without_cuda_trains_at_16(data, tmp_path, skip_final_validation):
    with captured_log() as log:
        run = run_cli(args(data, tmp_path, "--batch-size", "-1", "--noval"))
    assert any("AutoBatch" in r and "needs a CUDA device" in r for r in log)
    assert any("recipe:" in r and "at batch 16 " in r for r in log)  # the recipe sees the batch that trains
    assert yaml.safe_load((run / "opt.yaml").read_text())["batch_size"] == -1  # as given: a resume asks again


def test_data_parallel_only_for_several_gpus_in_one_process():
    from types import SimpleNamespace
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert train.data_parallel_ids(SimpleNamespace(device="0,1"), cuda) == [0, 1]
    assert train.data_parallel_ids(SimpleNamespace(device="cuda:2, 3"), cuda) == [2, 3]
    assert train.data_parallel_ids(SimpleNamespace(device="0"), cuda) == []
    assert train.data_parallel_ids(SimpleNamespace(device=""), cuda) == []  # no list given: the first GPU only
    assert train.data_parallel_ids(SimpleNamespace(device="cpu"), cpu) == []


def test_cuda_grad_scaler_on_old_and_new_torch(monkeypatch):
    new = train.cuda_grad_scaler(enabled=False)
    assert type(new) is torch.amp.GradScaler and not new.is_enabled()
    monkeypatch.delattr(torch.amp, "GradScaler")  # torch < 2.3 has only torch.cuda.amp.GradScaler
    old = train.cuda_grad_scaler(enabled=False)
    assert isinstance(old, torch.cuda.amp.GradScaler) and not old.is_enabled()


def test_freeze_layers_stops_gradients():
    model = DetectionModel(ROOT / "models" / "yolov5n_shuffle.yaml", nc=2)
    train.freeze_layers(model, [3])
    frozen = {k.split(".")[1] for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2"}
    train.freeze_layers(model, [0, 5])
    assert {k.split(".")[1] for k, p in model.named_parameters() if not p.requires_grad} == {"0", "5"}


def test_non_finite_loss_is_skipped(data, tmp_path, monkeypatch, skip_final_validation):
    real_call, calls = ComputeLoss.__call__, []

    def nan_once(self, p, targets):
        loss, items = real_call(self, p, targets)
        calls.append(1)
        return (loss * float("nan"), items) if len(calls) == 1 else (loss, items)

    monkeypatch.setattr(ComputeLoss, "__call__", nan_once)
    with captured_log() as log:
        run = run_cli(args(data, tmp_path, "--noval"))
    assert sum("non-finite loss" in r for r in log) == 1
    rows = read_results(run)[1]
    assert len(rows) == 1 and all(math.isfinite(v) for v in rows[0]) and rows[0][1] > 0
    model = load_checkpoint(run / "weights" / "last.pt")["model"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- errors and defaults

def test_unlabelled_train_set_is_a_clear_error(tmp_path):
    data = make_dataset(tmp_path / "d", labelled=False)
    with pytest.raises(ValueError, match="no labels found"):
        run_cli(args(data, tmp_path))


def test_no_argument_defaults(monkeypatch):
    seen = {}
    monkeypatch.setattr(train, "train", lambda hyp, opt, device: seen.update(hyp=hyp, opt=opt))
    train.main(train.parse_opt([]))
    opt = seen["opt"]
    assert Path(opt.cfg) == ROOT / "models" / "yolov5n_shuffle_cpu.yaml"
    assert Path(opt.data) == ROOT / "data" / "shapes.yaml"
    assert Path(opt.hyp) == ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"
    assert Path(opt.save_dir).parent == ROOT / "runs" / "train" and not Path(opt.save_dir).exists()
    assert (opt.weights, opt.epochs, opt.batch_size, opt.imgsz, opt.optimizer) == ("", 100, 16, 640, "auto")
    assert seen["hyp"]["lr0"] == 0.01 and seen["hyp"]["mosaic"] == 1.0
    assert train.parse_opt(["--local-rank", "1", "--img", "320"]).local_rank == 1
    assert train.parse_opt(["--local_rank", "2", "--img-size", "96"]).imgsz == 96


def test_hyp_file_rejects_unknown_keys(tmp_path):
    f = tmp_path / "hyp.yaml"
    f.write_text("lr0: 0.01\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown hyperparameter.*learning_rate"):
        load_hyp(f)
    assert load_hyp({"lr0": 0.02})["lr0"] == 0.02  # a saved opt.yaml 'hyp' dict (used by --resume)


# ---------------------------------------------------------------- multi-process (gloo on CPU)

def distributed_run(nproc: int, argv: list, cwd: Path, timeout: int = 300, **env) -> str:
    """python -m torch.distributed.run --nproc_per_node nproc train.py argv; asserts it succeeded, returns its
    output. The whole process group is killed if it outlives `timeout` seconds."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "train.py"), *argv]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "NO_COLOR": "1", **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow  # ~20 s: two processes, each importing torch; > 30 s on a busy machine
def test_two_process_gloo_run_matches_single_process_layout(data, full_run, tmp_path):
    out = distributed_run(2, args(data, tmp_path, "--device", "cpu"), tmp_path, OMP_NUM_THREADS="1")
    run = tmp_path / "exp"
    assert sorted(p.name for p in run.iterdir()) == ["hyp.yaml", "opt.yaml", "results.csv", "weights"]
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["best.pt", "last.pt"]
    header, rows = read_results(run)
    assert header == read_results(full_run)[0] and np.array(rows).shape == (1, 14)
    assert all(math.isfinite(v) for v in rows[0]) and rows[0][1] > 0
    ckpt = load_checkpoint(run / "weights" / "best.pt")
    assert list(ckpt) == CKPT_KEYS and ckpt["epoch"] == -1 and ckpt["model"].nc == 2
    assert "Destroying process group" in out and out.count("Starting training for 1 epochs") == 1  # rank 0 logs


def test_cache_flag_modes():
    from train import cache_modes
    assert cache_modes(None) == ("auto", "auto")  # not given: RAM when the split is small
    assert cache_modes("ram") == cache_modes("true") == ("ram", "ram")
    assert cache_modes("disk") == ("disk", "disk")
    assert cache_modes("val") == (None, "ram")
    assert cache_modes("no") == cache_modes("OFF") == (None, None)
    with pytest.raises(ValueError, match="--cache ramm: unknown"):
        cache_modes("ramm")


@pytest.mark.parametrize("cfg, bf16", [("yolov5n_shuffle_cpu.yaml", True), ("yolov5n_shuffle.yaml", False),
                                       ("yolov5n_shuffle.yaml", True)])
def test_cpu_training_memory_format(cfg, bf16, data, tmp_path, monkeypatch, skip_final_validation):
    """On CPU the conv weights and every training batch are channels-last (oneDNN's faster layout), in fp32 and
    under bf16, for the seed's ShuffleNetV2 units too (since they shuffle in one interleaving copy)."""
    monkeypatch.setattr(train, "choose_cpu_bf16", lambda mode, device: bf16)  # bf16 is emulated where not native
    weights_cl, inputs_cl = [], []
    real = train.train_one_epoch

    def spy(s, parts, *rest, **kw):
        model = parts.model
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        weights_cl.append(all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs))
        hook = model.register_forward_pre_hook(
            lambda m, inp: inputs_cl.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
        try:
            return real(s, parts, *rest, **kw)
        finally:
            hook.remove()

    monkeypatch.setattr(train, "train_one_epoch", spy)
    run_cli(args(data, tmp_path, "--device", "cpu", "--cfg", cfg))
    assert weights_cl == [True] and inputs_cl and all(inputs_cl)


def test_cpu_training_keeps_freed_memory(data, tmp_path, monkeypatch, skip_final_validation):
    """A CPU run lets glibc keep freed activations for reuse (tests/test_train_speed.py shows what that does)."""
    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append("cpu") or True)
    run_cli(args(data, tmp_path, "--device", "cpu"))
    assert calls == ["cpu"]
