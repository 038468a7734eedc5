"""AutoBatch (utils/autobatch.py): the batch size fitted to measured memory, its limits and fallbacks, and the
GPU tooling on a machine without CUDA (AutoBatch's fallback, benchmarks/cuda_check.sh's refusal). The real
measurements on a GPU are in test_cuda.py."""

import subprocess
import sys

import pytest
import torch

from conftest import ROOT

from detect_helpers import captured_log
from utils.autobatch import LARGEST, PROBE_SIZES, auto_batch_size, fit_batch_size

GIB = 2 ** 30


def linear(fixed: float, per_image: float):
    return [fixed + per_image * b for b in PROBE_SIZES]


def test_fit_solves_the_line_for_the_budget():
    b, why = fit_batch_size(PROBE_SIZES, linear(1 * GIB, 0.1 * GIB), budget=11 * GIB)
    assert b == 100 and "102.4 MiB per image" in why and "1.00 GiB fixed" in why
    assert fit_batch_size(PROBE_SIZES, linear(1 * GIB, 0.1 * GIB), budget=11.05 * GIB)[0] == 100  # rounds down


def test_fit_stays_below_the_first_size_that_ran_out_of_memory():
    used = linear(1 * GIB, 0.1 * GIB)[:3] + [None]  # 1, 2, 4 ran; 8 did not
    assert fit_batch_size(PROBE_SIZES[:4], used, budget=100 * GIB)[0] == 4


@pytest.mark.parametrize("used, budget, expect, words", [
    ([None], 10 * GIB, 1, "batch 1 already ran out of memory"),
    ([GIB, None], 10 * GIB, 1, "batch 2 already ran out of memory"),
    ([GIB], 10 * GIB, 16, "too few batch sizes ran (1 of 1)"),
    ([GIB] * 5, 10 * GIB, 16, "does not grow"),
    (linear(20 * GIB, GIB), 10 * GIB, 16, "the model alone needs more than the budget of 10.0 GiB"),
    (linear(0, 1e6), 100 * GIB, LARGEST, f"capped at {LARGEST}"),
])
def test_fit_fallbacks(used, budget, expect, words):
    b, why = fit_batch_size(PROBE_SIZES[:len(used)], used, budget)
    assert b == expect and words in why


def test_without_cuda_the_default_is_used_and_said():
    model = torch.nn.Conv2d(3, 4, 3)
    calls = []
    with captured_log() as log:
        b = auto_batch_size(model, 64, amp=False, default=16, measure=lambda *a: calls.append(a))
    assert b == 16 and not calls
    assert any("AutoBatch" in line and "needs a CUDA device" in line and "--batch-size 16" in line for line in log)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run its checks")
def test_cuda_check_script_says_there_is_nothing_to_check(tmp_path):
    bin_dir = tmp_path / "bin"  # `python` on the PATH is this interpreter, as in the README's setup
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "cuda_check.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert proc.returncode == 1 and "no CUDA device: nothing to check" in proc.stdout
    assert "===" not in proc.stdout  # no step ran
