"""Reliability and security: train/val/detect over a bad-input corpus, SIGKILLs mid-run, non-finite losses, disk
errors and untrusted checkpoints. Every bad input is either skipped with a message naming it or stops the run with
one clear message: never a traceback, never a silent drop."""

import os
import re
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
import detect
import train
import val
from bad_corpus import (BACKGROUND, FIX, IGNORE, KEEP, SKIP, STOP, WARN, all_cases, cli_cases, write_checkpoints,
                        write_class_overflow, write_clean_dataset, write_dataset, write_dataset_yamls,
                        write_model_yamls, write_tiny_model)
from detect_helpers import captured_log as captured
from models import checkpoint
from models.checkpoint import UntrustedCheckpointError, load_checkpoint, safe_globals
from utils.dataloaders import LoadImagesAndLabels

TINY_RUN = {"imgsz": 64, "epochs": 1, "batch_size": 4, "workers": 0, "noplots": True, "exist_ok": True}


def one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    """A CLI that stopped with exit code 1, a last line 'ERROR: ...<fragment>...' and no traceback anywhere."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR")]
    assert len(errors) == 1 and fragment in errors[0], errors
    assert proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]


def run_cli(script: str, *args, cwd: Path, timeout: int = 180, **kw) -> subprocess.CompletedProcess:
    """Run a repo script as users do (its own __main__ error handling), from cwd, single-threaded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd, **kw)


# ---------------------------------------------------------------- the corpus and one training run over it

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    data, cases = write_dataset(root / "dataset")
    return {"root": root, "data": data, "cases": cases, "images": root / "dataset" / "images",
            "clean": write_clean_dataset(root / "clean"), "tiny": write_tiny_model(root / "models")}


@pytest.fixture(scope="module")
def trained(corpus):
    """yolov5n_shuffle trained one epoch on the bad dataset (train = val): -> (run dir, log lines)."""
    with captured() as log:
        train.run(data=str(corpus["data"]), cfg="yolov5n_shuffle.yaml", project=str(corpus["root"] / "runs"),
                  name="bad", **TINY_RUN)
    return corpus["root"] / "runs" / "bad", log


def _lines_naming(log, path) -> list:
    return [x for x in log if str(path) in x]


def test_corpus_has_at_least_25_kinds(tmp_path):
    cases = all_cases(tmp_path)
    kinds = [c.kind for c in cases]
    assert len(set(kinds)) == len(kinds) >= 25
    assert {c.outcome for c in cases} == {KEEP, FIX, BACKGROUND, SKIP, IGNORE, WARN, STOP}
    for group in ("image:", "label:", "dataset yaml:", "model yaml:", "CLI:", "checkpoint:"):
        assert sum(k.startswith(group) for k in kinds) >= 3, group
    assert not (tmp_path / "checkpoints" / "pwned").exists()


def test_training_reports_every_bad_file_and_finishes(corpus, trained):
    run, log = trained
    for c in corpus["cases"]:
        if c.outcome in (SKIP, FIX, IGNORE, WARN):
            hits = [x for x in _lines_naming(log, c.path) if c.message in x]
            assert hits, f"{c.kind}: no message naming {c.path} with {c.message!r}"
    assert (run / "weights" / "last.pt").is_file() and (run / "weights" / "best.pt").is_file()
    assert len((run / "results.csv").read_text().splitlines()) == 2  # header + one epoch


def test_scan_summary_counts_what_was_skipped_and_why(corpus, trained):
    _, log = trained
    summary = [x for x in log if "label check:" in x][0]
    skipped = Counter(c.reason for c in corpus["cases"] if c.outcome == SKIP)
    n_images = len([p for p in corpus["images"].iterdir() if p.suffix != ".jfif"])
    assert f"{sum(skipped.values())} of {n_images} images skipped as corrupt" in summary, summary
    for reason, n in skipped.items():
        assert f"{n} {reason}" in summary, (reason, summary)
    restored = sum(c.kind.startswith("image: JPEG") and c.outcome == FIX for c in corpus["cases"])
    assert "1 duplicate rows removed" in summary and f"{restored} corrupt JPEGs restored" in summary
    missing = [c for c in corpus["cases"] if c.kind == "label: missing file"][0]
    assert f"1 images have no label file and are used as backgrounds (e.g. {missing.path} is missing)" in summary


def test_nothing_is_dropped_silently(corpus, trained):
    """Every file in images/ is either in the dataset or named by a warning; unusual images keep their labels."""
    _, log = trained
    cache = np.load(corpus["data"].parent / "labels.cache", allow_pickle=True).item()
    warned = "\n".join(x for x in log if "WARNING" in x)
    for f in sorted(corpus["images"].iterdir()):
        assert str(f) in cache or str(f) in warned, f"{f} silently dropped"
    entry = {c.kind: cache.get(str(c.image)) for c in corpus["cases"] if c.image}  # [labels, (w, h), segments]
    for c in corpus["cases"]:
        if c.outcome in (KEEP, FIX, BACKGROUND) and c.image:
            assert entry[c.kind] is not None, f"{c.kind}: {c.image} not in the dataset"
            rows = 0 if c.outcome == BACKGROUND else 2 if c.kind == "label: polygon and box rows mixed" else 1
            assert len(entry[c.kind][0]) == rows, c.kind
        elif c.outcome == SKIP:
            assert entry[c.kind] is None, f"{c.kind}: {c.image} should have been skipped"
    assert tuple(entry["image: EXIF-rotated JPEG"][1]) == (40, 64)  # (w, h) as shown, not as stored
    assert tuple(entry["image: very large (5000x4000)"][1]) == (5000, 4000)
    np.testing.assert_allclose(entry["label: polygon rows"][0], [[1, 0.5, 0.5, 0.4, 0.4]], atol=1e-6)


def test_validation_skips_the_same_files_and_adjusts_settings(corpus, trained, tmp_path):
    run, _ = trained
    with captured() as log:
        val.run(data=str(corpus["data"]), weights=str(run / "weights" / "best.pt"), imgsz=70, batch_size=64,
                workers=0, project=tmp_path, name="v", plots=False)
    text = "\n".join(log)
    cache = np.load(corpus["data"].parent / "labels.cache", allow_pickle=True).item()
    kept = len([k for k in cache if k not in ("hash", "version", "msgs", "results")])
    assert "--imgsz 70 is not a multiple of max stride 32; using 96" in text  # CLI: imgsz not a stride multiple
    assert f"batch size 64 is larger than the {kept} images" in text  # CLI: batch larger than the dataset
    assert re.search(rf"\ball\s+{kept}\s", text), text[-2000:]  # every kept image was validated
    for c in corpus["cases"]:
        if c.outcome == SKIP:
            assert any(str(c.path) in x and c.message in x for x in log), c.kind


def test_detection_processes_or_names_every_file(corpus, trained, tmp_path):
    run, _ = trained
    best = str(run / "weights" / "best.pt")
    with captured() as log:
        out = detect.run(weights=best, source=corpus["images"], imgsz=(70, 70), project=tmp_path, name="d")
    assert any("--imgsz [70, 70] is not a multiple of max stride 32; using [96, 96]" in x for x in log)
    processed = [x for x in log if re.match(r"image \d+/\d+ ", x)]
    for f in sorted(corpus["images"].iterdir()):
        named = _lines_naming(log, f)
        done = any(x.startswith("image ") and f"{f}:" in x for x in named)
        assert done or any("skipped" in x for x in named), f"{f} silently dropped by detect: {named}"
    assert len(list(out.glob("*.*"))) == len(processed)
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "zero.jpg").write_bytes(b"")
    (only_bad / "text.png").write_text("not pixels")
    with pytest.raises(ValueError, match="no readable images"):
        detect.run(weights=best, source=only_bad, imgsz=(64, 64), project=tmp_path)


def test_txt_list_splits_sharing_one_folder_report_no_orphans(corpus, tmp_path):
    """train.txt/val.txt lists over one images/ + labels/ pair (as autosplit writes them): the labels of the other
    split's images are not 'label files without an image'."""
    images = sorted((corpus["clean"].parent / "images").glob("*.jpg"))
    listing = tmp_path / "half.txt"
    listing.write_text("\n".join(map(str, images[:4])) + "\n")
    with captured() as log:
        assert LoadImagesAndLabels(str(listing), 64, 4).n == 4
    assert not any("no matching image" in x for x in log), log


# ---------------------------------------------------------------- runs that must stop with one clear message

def test_class_id_beyond_nc_stops_training_naming_file_and_line(tmp_path):
    data, case = write_class_overflow(tmp_path / "overflow")
    proc = run_cli("train.py", "--data", data, "--cfg", write_tiny_model(tmp_path), "--imgsz", 64, "--epochs", 1,
                   "--batch", 4, "--workers", 0, "--noplots", "--project", tmp_path / "runs", cwd=tmp_path)
    one_line_error(proc, case.message)
    assert not list((tmp_path / "runs").rglob("*.pt"))


def test_bad_dataset_yaml_stops_train_and_val(corpus, trained, tmp_path):
    cases = write_dataset_yamls(tmp_path / "yamls", corpus["images"])
    best = str(trained[0] / "weights" / "best.pt")
    for c in cases:
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            train.run(data=str(c.path), cfg=str(corpus["tiny"]), project=str(tmp_path / "runs"), **TINY_RUN)
        assert c.message in str(e.value) and "\n" not in str(e.value), (c.kind, str(e.value))
        if c.kind == "dataset yaml: train path does not exist":
            continue  # validation needs only the val split
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            val.run(data=str(c.path), weights=best, imgsz=64, workers=0, project=tmp_path, name="v", plots=False)
        assert c.message in str(e.value) and "\n" not in str(e.value), (c.kind, str(e.value))


def test_bad_model_yaml_stops_training_naming_file_and_layer(corpus, tmp_path):
    for c in write_model_yamls(tmp_path / "models"):
        with pytest.raises(ValueError) as e:
            train.run(data=str(corpus["clean"]), cfg=str(c.path), project=str(tmp_path / "runs"), **TINY_RUN)
        assert c.message in str(e.value) and c.path.name in str(e.value), (c.kind, str(e.value))


def test_missing_device_stops_train_val_detect(corpus, trained, tmp_path):
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a CUDA device 7")
    msg = [c for c in cli_cases() if c.outcome == STOP][0].message
    best = str(trained[0] / "weights" / "best.pt")
    with pytest.raises(ValueError, match=re.escape(msg)):
        train.run(data=str(corpus["clean"]), cfg=str(corpus["tiny"]), device="7", project=str(tmp_path), **TINY_RUN)
    with pytest.raises(ValueError, match=re.escape(msg)):
        val.run(data=str(corpus["clean"]), weights=best, device="7", project=tmp_path)
    with pytest.raises(ValueError, match=re.escape(msg)):
        detect.run(weights=best, source=corpus["images"], device="7", project=tmp_path)


def _cli(kind: str):
    return [c for c in cli_cases() if c.kind == kind][0]


def test_impossible_settings_stop_val_and_detect(corpus, trained, tmp_path):
    best = str(trained[0] / "weights" / "best.pt")
    for kind in ("CLI: image size 0", "CLI: batch size 0", "CLI: negative workers"):
        c = _cli(kind)
        with pytest.raises(ValueError, match=re.escape(c.message)):
            val.run(**{"data": str(corpus["clean"]), "weights": best, "imgsz": 64, "batch_size": 4, "workers": 0,
                       "project": tmp_path, **c.args})
    with pytest.raises(ValueError, match=_cli("CLI: image size 0").message):
        detect.run(weights=best, source=corpus["images"], imgsz=(0, 0), project=tmp_path)


def test_impossible_image_size_and_workers_stop_training(corpus, tmp_path):
    for kind in ("CLI: image size 0", "CLI: negative workers"):
        c = _cli(kind)
        with pytest.raises(ValueError, match=re.escape(c.message)):
            train.run(data=str(corpus["clean"]), cfg=str(corpus["tiny"]), project=str(tmp_path), **{**TINY_RUN,
                                                                                                   **c.args})


def test_zero_epochs_or_batch_stop_training(corpus, tmp_path):
    for kind in ("CLI: batch size 0", "CLI: zero epochs"):
        c = _cli(kind)
        with pytest.raises(ValueError, match=re.escape(c.message)):
            train.run(data=str(corpus["clean"]), cfg=str(corpus["tiny"]), project=str(tmp_path), **{**TINY_RUN,
                                                                                                   **c.args})


def test_odd_image_size_and_oversized_batch_are_adjusted_in_training(corpus, tmp_path):
    with captured() as log:
        train.run(data=str(corpus["clean"]), cfg=str(corpus["tiny"]), project=str(tmp_path), name="cli",
                  **{**TINY_RUN, "imgsz": 70, "batch_size": 64})
    text = "\n".join(log)
    for c in cli_cases():
        if c.outcome == WARN:
            assert c.message in text, c.kind
    assert (tmp_path / "cli" / "weights" / "best.pt").is_file()


def test_unwritable_run_directory_is_one_clear_message(corpus, trained, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    project = blocker / "sub"
    best = str(trained[0] / "weights" / "best.pt")
    msg = f"cannot be created because {blocker} is a file, not a folder"
    with pytest.raises(ValueError, match=re.escape(msg)):
        train.run(data=str(corpus["clean"]), cfg=str(corpus["tiny"]), project=str(project), **TINY_RUN)
    with pytest.raises(ValueError, match=re.escape(msg)):
        val.run(data=str(corpus["clean"]), weights=best, imgsz=64, workers=0, project=project)
    with pytest.raises(ValueError, match=re.escape(msg)):
        detect.run(weights=best, source=corpus["images"], imgsz=(64, 64), project=project)


def test_full_disk_leaves_no_partial_checkpoint(corpus, tmp_path):
    """A checkpoint write that fails (here: a 1 MB file-size limit, which Python turns into EFBIG) names the file
    and the cause, and leaves neither a partial last.pt nor a temporary file behind."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(OSError, match=r"last\.pt: checkpoint not saved \(File too large\)"):
            train.run(data=str(corpus["clean"]), cfg="yolov5n_shuffle.yaml", project=str(tmp_path), name="full",
                      **TINY_RUN)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not list((tmp_path / "full" / "weights").iterdir())


def test_full_disk_is_one_line_from_the_cli(corpus, tmp_path):
    def limit():  # the tiny model's checkpoint is ~200 kB, everything else the run writes is smaller than 64 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = run_cli("train.py", "--data", corpus["clean"], "--cfg", corpus["tiny"], "--imgsz", 64,
                   "--epochs", 1, "--batch", 4, "--workers", 0, "--noplots", "--project", tmp_path, cwd=tmp_path,
                   preexec_fn=limit)
    one_line_error(proc, "last.pt: checkpoint not saved (File too large)")


def test_resume_without_a_usable_checkpoint(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        train.run(resume=str(tmp_path / "exp" / "weights" / "last.pt"))
    broken = write_checkpoints(tmp_path / "ckpt", torch.nn.Module())  # only the files without a model matter
    truncated = [c for c in broken if c.kind == "checkpoint: truncated file"][0]
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        train.run(resume=str(truncated.path))


# ---------------------------------------------------------------- numerical safety

def test_non_finite_loss_is_reported_and_skipped(corpus, tmp_path, monkeypatch):
    seen = {}
    real_loss, real_ema = train.ComputeLoss, train.ModelEMA

    class NaNOnce(real_loss):
        calls = 0

        def __init__(self, model, *args, **kw):
            super().__init__(model, *args, **kw)
            seen["model"] = model

        def __call__(self, p, targets):
            loss, items = super().__call__(p, targets)
            if torch.is_grad_enabled():  # training steps only, not validation
                NaNOnce.calls += 1
                if NaNOnce.calls == 1:
                    loss = loss * float("nan")
            return loss, items

    def ema(model, *args, **kw):
        seen["ema"] = real_ema(model, *args, **kw)
        return seen["ema"]

    monkeypatch.setattr(train, "ComputeLoss", NaNOnce)
    monkeypatch.setattr(train, "ModelEMA", ema)
    with captured() as log:
        train.run(data=str(corpus["clean"]), cfg=str(corpus["tiny"]), project=str(tmp_path), name="nan", **TINY_RUN)
    warnings = [x for x in log if "non-finite loss" in x]
    assert len(warnings) == 1, warnings
    images = sorted((corpus["clean"].parent / "images").glob("*.jpg"))
    assert sum(str(f) in warnings[0] for f in images) == 4  # the batch's four files are named
    assert NaNOnce.calls == 2 and seen["ema"].updates == 1  # the other batch still trained
    for name, module in (("model", seen["model"]), ("ema", seen["ema"].ema)):
        for k, v in module.state_dict().items():
            assert torch.isfinite(v.float()).all(), f"{name}.{k} is not finite"
    for f in ("last.pt", "best.pt"):
        ck = load_checkpoint(tmp_path / "nan" / "weights" / f)
        assert all(torch.isfinite(p.float()).all() for p in ck["model"].parameters()), f


# ---------------------------------------------------------------- checkpoint security

@pytest.fixture(scope="module")
def bad_checkpoints(trained, tmp_path_factory):
    model = load_checkpoint(trained[0] / "weights" / "best.pt")["model"].float()
    root = tmp_path_factory.mktemp("ckpt")
    return root, {c.kind: c for c in write_checkpoints(root, model)}


def test_own_checkpoints_load_weights_only(trained):
    for f in ("last.pt", "best.pt"):
        path = trained[0] / "weights" / f
        with torch.serialization.safe_globals(safe_globals()):
            ck = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(ck["model"], torch.nn.Module) and ck["epoch"] == -1
        with captured() as log:
            load_checkpoint(path)
        assert not any("trusted" in x for x in log)


def test_legacy_pickle_needs_opt_in_and_says_so_once(bad_checkpoints, corpus, tmp_path, monkeypatch):
    _, cases = bad_checkpoints
    legacy = cases["checkpoint: legacy YOLOv5 pickle (numpy best_fitness)"].path
    monkeypatch.delenv(checkpoint.TRUST_ENV, raising=False)
    with pytest.raises(UntrustedCheckpointError) as e:
        load_checkpoint(legacy)
    assert "--trust-weights" in str(e.value) and checkpoint.TRUST_ENV in str(e.value)
    with pytest.raises(UntrustedCheckpointError):
        detect.run(weights=str(legacy), source=corpus["images"] / "good0.jpg", imgsz=(64, 64), project=tmp_path)
    monkeypatch.setattr(checkpoint, "_warned_trust", False)
    with captured() as log:
        assert load_checkpoint(legacy, trust=True)["epoch"] == 3
        detect.run(weights=str(legacy), source=corpus["images"] / "good0.jpg", imgsz=(64, 64), project=tmp_path,
                   trust_weights=True)
        monkeypatch.setenv(checkpoint.TRUST_ENV, "1")
        assert load_checkpoint(legacy)["epoch"] == 3
    assert len([x for x in log if "as a trusted pickle" in x]) == 1


def test_malicious_pickle_is_refused_by_train_val_detect(bad_checkpoints, corpus, trained, tmp_path, monkeypatch):
    root, cases = bad_checkpoints
    evil = str(cases["checkpoint: malicious pickle (os.system)"].path)
    monkeypatch.delenv(checkpoint.TRUST_ENV, raising=False)
    calls = {
        "train": lambda: train.run(data=str(corpus["clean"]), weights=evil, project=str(tmp_path), **TINY_RUN),
        "val": lambda: val.run(data=str(corpus["clean"]), weights=evil, imgsz=64, project=tmp_path),
        "detect": lambda: detect.run(weights=evil, source=corpus["images"], imgsz=(64, 64), project=tmp_path),
    }
    for script, call in calls.items():
        with pytest.raises(UntrustedCheckpointError, match=r"refusing to unpickle '(posix|os)\.system'"):
            call()
        assert not (root / "pwned").exists(), f"{script} ran the pickle's code"
    one_line_error(run_cli("detect.py", "--weights", evil, "--source", corpus["images"], "--imgsz", 64,
                           "--project", tmp_path, cwd=tmp_path), "refusing to unpickle")
    assert not (root / "pwned").exists()


def test_broken_checkpoints_are_named(bad_checkpoints, corpus, tmp_path):
    _, cases = bad_checkpoints
    for kind in ("checkpoint: truncated file", "checkpoint: random bytes", "checkpoint: bare state_dict"):
        c = cases[kind]
        with pytest.raises(ValueError) as e:
            detect.run(weights=str(c.path), source=corpus["images"], imgsz=(64, 64), project=tmp_path)
        assert str(c.path) in str(e.value) and c.message in str(e.value), (kind, str(e.value))


# ---------------------------------------------------------------- crash safety

def _kill(tmp_path: Path, moment: str, n: int, *args) -> subprocess.CompletedProcess:
    return run_cli("tests/crash_hooks.py", moment, n, "--", *args, cwd=tmp_path)


def _epoch_of(last: Path):
    """The epoch stored in last.pt, read without trust (None when there is no last.pt yet)."""
    return load_checkpoint(last)["epoch"] if last.exists() else None


@pytest.mark.slow
def test_sigkill_mid_checkpoint_validation_and_epoch_then_resume(corpus, tmp_path):
    """Three SIGKILLs (half-way through writing last.pt, inside validation, inside a training epoch), each leaving a
    last.pt that loads with weights_only; then --resume finishes the 3 requested epochs."""
    run = tmp_path / "runs" / "crash"
    last = run / "weights" / "last.pt"
    args = ["--data", corpus["clean"], "--cfg", corpus["tiny"], "--imgsz", 64, "--epochs", 3, "--batch", 4,
            "--workers", 0, "--noplots", "--project", tmp_path / "runs", "--name", "crash"]
    resume = ["--resume", last]

    p = _kill(tmp_path, "save", 2, *args)  # while writing epoch 1's last.pt
    assert p.returncode == -9, p.stderr[-3000:]
    assert _epoch_of(last) == 0 and list(last.parent.glob(".last.pt.*.tmp")), "the kill should hit a save"

    p = _kill(tmp_path, "val", 1, *resume)  # inside epoch 1's validation
    assert p.returncode == -9, p.stderr[-3000:]
    assert not list(last.parent.glob(".*.tmp"))  # --resume removed the unfinished save
    assert _epoch_of(last) == 0

    p = _kill(tmp_path, "batch", 3, *resume)  # epoch 1 = batches 1-2 completes and saves; dies inside epoch 2
    assert p.returncode == -9, p.stderr[-3000:]
    assert _epoch_of(last) == 1

    p = run_cli("train.py", *resume, cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stdout + p.stderr, p.stderr[-3000:]
    assert "from epoch 2 to 3 total epochs" in p.stdout
    assert _epoch_of(last) == -1 and (run / "weights" / "best.pt").is_file()  # finished and stripped
    epochs = [int(float(r.split(",")[0])) for r in (run / "results.csv").read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2], epochs  # a row logged before a killed save is trimmed on --resume
    assert not list(run.rglob("*.tmp"))
