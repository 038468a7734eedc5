"""CPU training speed paths: bf16 autocast gives the plain fp32 loss within a measured tolerance, and switches
itself off, with one line, where the CPU or torch cannot run it natively."""

import subprocess
import sys

import pytest
import torch

from detect_helpers import captured_log
from models.yolo import Model
from utils import torch_utils
from utils.loss import ComputeLoss
from utils.train_utils import load_hyp
import train

# Measured on yolov5n and yolov5n_shuffle (seeds 0-2, 4 images at 128 px, 8 labels): the total loss moved by
# 0.13-0.62 % and a single component by at most 1.7 %, as bf16's 8-bit mantissa (~0.4 % per rounding) predicts.
TOTAL_RTOL, ITEM_RTOL = 0.02, 0.05


def small_training_setup(cfg):
    """A fresh `cfg` model (seed 0, 8 classes) in train mode, 4 random 128 px images, 8 labels, and a CPU RunState
    with its loss: what train.forward_loss needs."""
    torch.manual_seed(0)
    model = Model(cfg, nc=8).train()
    model.hyp, model.nc = load_hyp(train.ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"), 8
    imgs = torch.rand(4, 3, 128, 128)
    targets = torch.tensor([[i % 4, i, 0.3 + 0.1 * (i % 4), 0.5, 0.2, 0.3] for i in range(8)])
    s = train.RunState(save_dir=None, epochs=1, plots=False, device=torch.device("cpu"))
    s.compute_loss = ComputeLoss(model)
    return model, imgs, targets, s


@pytest.mark.parametrize("cfg", ["yolov5n_shuffle.yaml", "yolov5n.yaml"])
def test_cpu_bf16_loss_matches_fp32(cfg):
    model, imgs, targets, s = small_training_setup(cfg)
    loss32, items32 = train.forward_loss(s, model, imgs, targets)
    s.bf16 = True
    loss16, items16 = train.forward_loss(s, model, imgs, targets)
    assert loss16.dtype == torch.float32 and items16.dtype == torch.float32  # the loss itself is fp32
    assert not torch.equal(loss16, loss32)  # the network really ran in bf16
    torch.testing.assert_close(loss16, loss32, rtol=TOTAL_RTOL, atol=0)
    torch.testing.assert_close(items16, items32, rtol=ITEM_RTOL, atol=1e-4)
    loss16.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters() if p.grad is not None)  # fp32 master weights and gradients


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5n_shuffle.yaml"])
def test_training_forward_runs_silu_out_of_place_with_the_same_loss_and_gradients(cfg):
    model, imgs, targets, s = small_training_setup(cfg)
    acts = [m for m in model.modules() if isinstance(m, torch.nn.SiLU)]
    assert acts and all(m.inplace for m in acts)  # as YOLOv5 builds them (initialize_weights)
    seen = []

    def loss_and_grads(step):
        model.zero_grad()
        loss, items = step()
        loss.backward()
        return loss.detach(), items, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    # acts[0] may be Conv.default_act, shared by every Conv built in this process: the hook must not outlive the test
    hook = acts[0].register_forward_pre_hook(lambda m, _: seen.append(m.inplace))
    try:
        plain = loss_and_grads(lambda: s.compute_loss(model(imgs), targets))
        assert seen and all(seen)  # the plain forward ran SiLU in place
        seen.clear()
        fast = loss_and_grads(lambda: train.forward_loss(s, model, imgs, targets))
    finally:
        hook.remove()
    assert seen and not any(seen)  # train.py's forward ran it out of place ...
    assert all(m.inplace for m in acts)  # ... and left the model as it was
    assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])  # the same bits
    assert len(fast[2]) == len(plain[2]) and all(torch.equal(a, b) for a, b in zip(fast[2], plain[2]))


@pytest.fixture
def deterministic_mode():
    """torch's deterministic mode (as train.py sets it), undone afterwards: both switches are process-wide."""
    import torch.utils.deterministic as deterministic
    before = torch.are_deterministic_algorithms_enabled(), deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield deterministic
    torch.use_deterministic_algorithms(before[0])
    deterministic.fill_uninitialized_memory = before[1]


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5n_shuffle.yaml"])
def test_deterministic_training_without_the_nan_fill_gives_the_same_bits(cfg, deterministic_mode):
    model, imgs, targets, s = small_training_setup(cfg)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)

    def two_steps():
        model.load_state_dict(start)
        optimizer.state.clear()
        out = []
        for _ in range(2):  # the second step reads the first's optimizer state and BN statistics
            loss, items = train.forward_loss(s, model, imgs, targets)
            loss.backward()
            out += [loss.detach(), items] + [p.grad.clone() for p in model.parameters()]
            optimizer.step()
            optimizer.zero_grad()
        return out + [v.clone() for v in model.state_dict().values()]

    deterministic_mode.fill_uninitialized_memory = True
    assert torch.isnan(torch.empty(64)).all()  # the fill is on: every new tensor starts as NaN
    filled = two_steps()
    torch_utils.init_seeds(0, deterministic=True)  # train.py's call turns the fill off ...
    assert deterministic_mode.fill_uninitialized_memory is False
    assert torch.are_deterministic_algorithms_enabled()  # ... and keeps the deterministic kernels
    unfilled = two_steps()
    assert len(filled) == len(unfilled) and all(torch.equal(a, b) for a, b in zip(filled, unfilled))


def test_bf16_is_off_without_bf16_instructions(monkeypatch):
    monkeypatch.setattr(torch_utils, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    with captured_log() as log:
        assert train.choose_cpu_bf16("auto", torch.device("cpu")) is False
    assert len(log) == 1 and "off, fp32 training" in log[0] and "no bf16 instructions" in log[0]


def test_bf16_is_off_when_torch_cannot_run_it(monkeypatch):
    monkeypatch.setattr(torch_utils, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    ok, why = torch_utils.cpu_bf16_status()
    assert not ok and "oneDNN cannot run bf16" in why


def test_kept_memory_is_off_with_one_line_without_glibc(monkeypatch):
    monkeypatch.setattr(torch_utils, "_ALLOCATOR_TUNED", False)
    monkeypatch.setattr(torch_utils, "_glibc", lambda: None)  # musl, macOS, Windows
    with captured_log() as log:
        assert train.keep_cpu_memory(torch.device("cpu")) is False
        assert train.keep_cpu_memory(torch.device("meta")) is False  # not a CPU: nothing said, nothing done
    assert len(log) == 1 and "not glibc" in log[0]
    assert torch_utils._ALLOCATOR_TUNED is False


def test_bf16_on_with_bf16_instructions_and_off_by_flag(monkeypatch):
    monkeypatch.setattr(torch_utils, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    with captured_log() as log:
        assert train.choose_cpu_bf16("auto", torch.device("cpu")) is True
        assert train.choose_cpu_bf16("off", torch.device("cpu")) is False
        assert train.choose_cpu_bf16("auto", torch.device("meta")) is False  # not a CPU: nothing said, nothing done
    assert len(log) == 2 and "autocast on" in log[0] and "amx_bf16" in log[0] and "--bf16 off" in log[1]


# Measured on yolov5n, yolov5n_shuffle and yolov5n_shuffle_cpu (seeds 0-2, BN statistics from two train batches):
# folding BN moved the decoded boxes by at most 6e-6 relative and the raw head outputs by at most 7e-6.
FUSED_RTOL, FUSED_ATOL = 1e-4, 1e-4


@pytest.mark.parametrize("cfg", ["yolov5n_shuffle.yaml", "yolov5n.yaml"])
def test_per_epoch_validation_copy_is_fused_and_gives_the_same_outputs(cfg):
    torch.manual_seed(0)
    ema = Model(cfg, nc=8).train()
    with torch.no_grad():
        ema(torch.rand(4, 3, 128, 128))  # BN running statistics that are not the identity
    ema.eval()
    x = torch.rand(2, 3, 160, 128)
    copy = train.fused_copy(ema)
    with torch.no_grad():
        (pred, raw), (pred_f, raw_f) = ema(x), copy(x)
    bn = lambda m: sum(isinstance(k, torch.nn.BatchNorm2d) for k in m.modules())  # noqa: E731
    assert bn(copy) == 0 and bn(ema) > 0  # the copy is fused, the EMA (which keeps training) is not
    assert all(k.weight.is_contiguous() for k in ema.modules() if isinstance(k, torch.nn.Conv2d))  # nor NHWC
    torch.testing.assert_close(pred_f, pred, rtol=FUSED_RTOL, atol=FUSED_ATOL)
    for a, b in zip(raw_f, raw):
        torch.testing.assert_close(a, b, rtol=FUSED_RTOL, atol=FUSED_ATOL)


def _conv_output_dtypes(model, x, context):
    """{conv: dtype of its output} for one forward of `model` inside `context`."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, out: seen.__setitem__(m, out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with context:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_cpu_bf16_autocast_runs_depthwise_convs_in_fp32():
    model = Model("yolov5n_shuffle.yaml", nc=8).train()
    x = torch.rand(1, 3, 64, 64)
    seen = _conv_output_dtypes(model, x, torch_utils.cpu_bf16_autocast())
    depthwise = [m for m in seen if torch_utils.is_depthwise(m)]
    assert len(depthwise) >= 10  # the seed's units each hold one or two
    assert all(seen[m] == torch.float32 for m in depthwise)
    assert all(dtype == torch.bfloat16 for m, dtype in seen.items() if m not in depthwise)
    # the hooks end with the block, also when the forward fails: plain autocast then runs them in bf16 again
    with pytest.raises(RuntimeError):
        with torch_utils.cpu_bf16_autocast():
            model(torch.rand(1, 4, 64, 64))  # 4 channels: the stem refuses
    assert not torch.is_autocast_cpu_enabled()
    seen = _conv_output_dtypes(model, x, torch.autocast("cpu", dtype=torch.bfloat16))
    assert all(dtype == torch.bfloat16 for dtype in seen.values())


def test_train_step_benchmark_prints_every_variant(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(train.ROOT / "benchmarks"))
    import train_step
    threads = torch.get_num_threads()
    try:
        text = train_step.run(cfg=("yolov5n_shuffle.yaml",), batch=2, imgsz=64, steps=1, threads=1)
    finally:
        torch.set_num_threads(threads)  # run() sets the process-wide count
    row = [line for line in text.splitlines() if line.startswith("| yolov5n_shuffle |")]
    assert len(row) == 1 and row[0].count("(") == len(train_step.VARIANTS)
    assert "(1.00)" in row[0].split("|")[2]  # NCHW fp32 is the base
    assert text in capsys.readouterr().out


def test_train_speed_benchmark_passes_its_settings_to_the_training_child(monkeypatch):
    monkeypatch.syspath_prepend(str(train.ROOT / "benchmarks"))
    import train_speed
    opt = train_speed.parse_opt(["--bf16", "off", "--epochs", "2", "--workers", "1", "--optimizer", "AdamW"])
    child = train_speed.parse_opt(train_speed.child_args(opt, "yolov5n.yaml", "glibc"))
    assert child.child and child.cfg == ["yolov5n.yaml"] and child.malloc == "glibc"
    assert (child.bf16, child.epochs, child.workers, child.optimizer) == ("off", 2, 1, "AdamW")
    assert train_speed.parse_opt([]).bf16 == "auto"  # as train.py
    assert child.nan_fill == "off" and train_speed.parse_opt([]).nan_fill == "off"  # as train.py
    child = train_speed.parse_opt(train_speed.child_args(opt, "yolov5n.yaml", "default", "on"))
    assert (child.malloc, child.nan_fill) == ("default", "on")
    both = train_speed.parse_opt(["--cfg", "a.yaml", "b.yaml", "--malloc", "both", "--nan-fill", "both"])
    assert train_speed.variants(both) == [(c, m, f) for c in ("a.yaml", "b.yaml") for m in ("glibc", "default")
                                          for f in ("on", "off")]  # torch's or glibc's setting first, train.py's last


BIG_BLOCKS = """
import multiprocessing, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from utils import torch_utils
from utils.dataloaders import seed_worker

def faults_per_block(mb, out=None):
    # page faults of allocating, filling and freeing an `mb` MB tensor 12 times, as training steps do with their
    # largest activations (64 and 96 MB are over 32 MB, the largest size glibc keeps for reuse by itself); the sum
    # of the last three: the heap grows for the first ones, until a freed block is large enough to be reused
    counts = []
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(mb << 18)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out.put(sum(counts[-3:])) if out is not None else sum(counts[-3:])

def worker(release, out):
    torch.set_num_threads(1)  # as in a DataLoader worker (the parent's OpenMP threads do not survive the fork)
    if release:
        seed_worker(0)  # what a DataLoader worker runs first
    faults_per_block(96, out)

if sys.argv[2] == "tuned":
    torch_utils.keep_freed_memory()  # what train.py does on a CPU
results = []
for release in (True, False):  # a forked loader worker, with and without seed_worker's release
    q = multiprocessing.get_context("fork").Queue()
    p = multiprocessing.get_context("fork").Process(target=worker, args=(release, q))
    p.start()
    results.append(q.get())
    p.join()
print(faults_per_block(64), *results, torch_utils._ALLOCATOR_TUNED)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning and page-fault counts")
def test_training_process_reuses_big_blocks_and_workers_give_memory_back():
    """keep_freed_memory() (train.py on a CPU) keeps even blocks over 32 MB for reuse: once the heap has grown to
    fit them, no page faults for the next ones (glibc's defaults: one per 4 kB page, every time); a DataLoader
    worker forked afterwards maps and unmaps such blocks again (seed_worker), so workers do not hoard memory."""
    def run(mode):
        out = subprocess.run([sys.executable, "-c", BIG_BLOCKS, str(train.ROOT), mode], cwd=train.ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        return [int(x) for x in out[:3]], out[3]

    pages = 3 * (64 << 20) // 4096  # 49,152 pages of 4 kB in three 64 MB blocks
    (main, released, kept), tuned = run("tuned")
    assert main < 600 and kept < 600 and tuned == "True", (main, kept)
    assert released > pages, released  # the worker's 96 MB blocks are mapped afresh again: their memory went back
    (main, released, kept), tuned = run("default")
    assert main > pages // 2 and released > pages and kept > pages and tuned == "False", (main, released, kept)
