"""Train a YOLOv5 detector (stock or ShuffleNetV2 backbone) on a dataset, offline, CPU first.

Usage:
    python train.py                                    # yolov5n_shuffle from scratch on the built-in dataset
    python train.py --cfg yolov5s_shuffle.yaml --data my.yaml --img 640 --epochs 100
    python -m torch.distributed.run --nproc_per_node 2 train.py --batch 32 --device 0,1
"""

import argparse
import math
import os
import random
import sys
import time
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# OMP_WAIT_POLICY is left to the user: PASSIVE (idle OpenMP threads sleep at once) made a 2-core CPU epoch 7 % slower
# than OpenMP's default, which spins briefly, then sleeps (README: "Training speed against YOLOv5 v7.0").
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import val as validate  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.yolo import Model, set_conv_memory_format  # noqa: E402
from utils.autoanchor import check_anchors  # noqa: E402
from models.checkpoint import (UntrustedCheckpointError, copy_checkpoint, load_checkpoint,  # noqa: E402
                               save_checkpoint, strip_optimizer)
from utils.checks import check_img_size  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.datasets_yaml import check_dataset  # noqa: E402
from utils.ema import ModelEMA  # noqa: E402
from utils.files import check_file, check_yaml, increment_path, yaml_load, yaml_save  # noqa: E402
from utils.logger import LOGGER, colorstr, set_logging  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.metrics import fitness  # noqa: E402
from utils.optim import EarlyStopping, lr_lambda, smart_optimizer  # noqa: E402
from utils.plots import plot_images, plot_labels, plot_results  # noqa: E402
from models.pretrained import load_shufflenet_backbone  # noqa: E402
from utils.autobatch import auto_batch_size  # noqa: E402
from utils.recipe import Recipe, count_images, resolve_recipe  # noqa: E402
from utils.torch_utils import (LOCAL_RANK, RANK, WORLD_SIZE, cpu_bf16_autocast, cpu_bf16_status,  # noqa: E402
                               cuda_ids, de_parallel, init_seeds, keep_freed_memory, out_of_place_activations,
                               select_device, torch_distributed_zero_first)
from utils.train_utils import (check_amp, git_info, intersect_dicts, labels_to_class_weights,  # noqa: E402
                               labels_to_image_weights, load_hyp, trim_results, write_results_row)


# ---------------------------------------------------------------- setup steps

def build_model(opt, hyp, nc, device):
    """A model from --cfg, initialised from --weights by name-and-shape transfer when given."""
    if not opt.weights:
        return Model(opt.cfg, ch=3, nc=nc, anchors=hyp.get("anchors")).to(device), None
    ckpt = load_checkpoint(check_file(opt.weights), trust=opt.trust_weights)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), nn.Module)):
        raise ValueError(f"--weights {opt.weights}: not a YOLOv5 checkpoint (no 'model' entry)")
    model = Model(opt.cfg or ckpt["model"].yaml, ch=3, nc=nc, anchors=hyp.get("anchors")).to(device)
    exclude = ["anchor"] if (opt.cfg or hyp.get("anchors")) and not opt.resume else []
    csd = intersect_dicts(ckpt["model"].float().state_dict(), model.state_dict(), exclude=exclude)
    model.load_state_dict(csd, strict=False)
    LOGGER.info(f"Transferred {len(csd)}/{len(model.state_dict())} items from {opt.weights}")
    return model, ckpt


def freeze_layers(model, freeze):
    """--freeze 10 freezes model.0..model.9; --freeze 0 3 5 freezes those layer indices."""
    layers = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(freeze[0]))]
    for k, v in model.named_parameters():
        v.requires_grad = not any(x in k for x in layers)
        if not v.requires_grad:
            LOGGER.debug(f"freezing {k}")


def scale_hyp(hyp, nl, nc, imgsz, label_smoothing):
    """YOLOv5's loss-gain scaling by detection layers, classes and image size (done once, before training)."""
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = label_smoothing


def smart_resume(ckpt, optimizer, ema, weights, epochs, resume):
    """Restore optimizer, best fitness and EMA; return (best_fitness, start_epoch, epochs)."""
    best_fitness, start_epoch = 0.0, 0
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        best_fitness = float(np.asarray(ckpt["best_fitness"]).reshape(-1)[0]) if ckpt.get("best_fitness") is not None else 0.0
    if ema is not None and ckpt.get("ema") is not None:
        ema.ema.load_state_dict(ckpt["ema"].float().state_dict())
        ema.updates = ckpt["updates"]
    start_epoch = ckpt["epoch"] + 1
    if resume:
        if start_epoch <= 0:
            raise ValueError(f"{weights}: training to {epochs} epochs is finished (or this is a stripped final "
                             f"checkpoint), nothing to resume. Start a new run with --weights {weights}")
        LOGGER.info(f"Resuming training from {weights} from epoch {start_epoch} to {epochs} total epochs")
    if epochs < start_epoch:
        LOGGER.info(f"{weights} has been trained for {ckpt['epoch']} epochs. Fine-tuning for {epochs} more epochs.")
        epochs += ckpt["epoch"]
    return best_fitness, start_epoch, epochs


def cache_modes(cache) -> tuple:
    """--cache -> (train split's cache, val split's cache). Not given: 'auto' (RAM when the split is small, see
    LoadImagesAndLabels._cache_images); no/off/none/false: never; ram, disk; val: RAM for the val split only."""
    if cache is None:
        return "auto", "auto"
    mode = str(cache).lower()
    if mode in ("no", "off", "none", "false"):
        return None, None
    if mode == "val":
        return None, "ram"
    if mode not in ("ram", "disk", "true"):
        raise ValueError(f"--cache {cache}: unknown; use ram, disk, val or no (not given: RAM when the images fit)")
    return ("disk", "disk") if mode == "disk" else ("ram", "ram")


def build_loaders(opt, hyp, data, gs, imgsz, batch_size):
    """Training loader (every rank) and validation loader (rank 0 only)."""
    train_cache, val_cache = cache_modes(opt.cache)
    train_loader, dataset = create_dataloader(
        data["train"], imgsz, batch_size // WORLD_SIZE, gs, opt.single_cls, hyp=hyp, augment=True,
        cache=train_cache, rect=opt.rect, rank=LOCAL_RANK, workers=opt.workers,
        image_weights=opt.image_weights, quad=opt.quad, prefix=colorstr("train: "), shuffle=True, seed=opt.seed)
    val_loader = None
    if RANK in (-1, 0):
        val_loader = create_dataloader(
            data["val"], imgsz, batch_size // WORLD_SIZE * 2, gs, opt.single_cls, hyp=hyp, cache=None if opt.noval
            else val_cache, rect=True, rank=-1, workers=opt.workers * 2, pad=0.5, prefix=colorstr("val: "))[0]
    return train_loader, dataset, val_loader


# ---------------------------------------------------------------- one epoch

def warmup(s, ni, epoch, optimizer, lf, hyp):
    """Ramp accumulate 1 -> nbs/bs, the bias LR warmup_bias_lr -> lr0*lf, other LRs 0 -> lr0*lf and momentum
    warmup_momentum -> momentum linearly over the first s.nw iterations."""
    xi = [0, s.nw]
    s.accumulate = max(1, int(np.interp(ni, xi, [1, s.nbs / s.batch_size]).round()))
    for j, x in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 0 else 0.0  # group 0 holds the biases
        x["lr"] = float(np.interp(ni, xi, [start, x["initial_lr"] * lf(epoch)]))  # plain floats keep
        if "momentum" in x:  # the checkpoint loadable with weights_only=True (Adam's betas stay, as in YOLOv5)
            x["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))


def multi_scale(imgs, s):
    """Resize the batch to a random gs-multiple size in [0.5, 1.5] x imgsz (longest side)."""
    sz = random.randrange(int(s.imgsz * 0.5), int(s.imgsz * 1.5) + s.gs) // s.gs * s.gs
    sf = sz / max(imgs.shape[2:])
    if sf != 1:
        ns = [math.ceil(x * sf / s.gs) * s.gs for x in imgs.shape[2:]]
        imgs = nn.functional.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)
    return imgs


def all_finite(loss, device) -> bool:
    """True when the loss is finite on every rank (in DDP all ranks must skip a step together or none)."""
    ok = bool(torch.isfinite(loss).all())
    if RANK != -1:
        flag = torch.tensor([0.0 if ok else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        ok = flag.item() == 0
    return ok


def optimizer_step(model, optimizer, scaler, ema, amp) -> bool:
    """Unscale, clip the gradient norm at 10, step, zero the grads, update the EMA. False when skipped because
    the gradients were not finite (without AMP; with AMP the GradScaler skips such steps itself)."""
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    if not amp and not torch.isfinite(norm):  # grads are all-reduced, so every DDP rank takes the same branch
        optimizer.zero_grad()
        return False
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    if ema:
        ema.update(model)
    return True


def forward_loss(s: "RunState", model, imgs, targets):
    """Forward and loss. CUDA AMP runs both under fp16 autocast, as YOLOv5 does. CPU bf16 runs only the network
    under bf16 autocast (depth-wise convs in fp32); its outputs are cast back, so the loss (like the master weights)
    stays fp32. SiLU runs out of place here (out_of_place_activations: the same values without a copy per layer)."""
    with out_of_place_activations(model):
        if s.bf16:
            with cpu_bf16_autocast():
                pred = model(imgs)
            return s.compute_loss([p.float() for p in pred], targets)
        with torch.autocast(device_type=s.device.type, enabled=s.amp):
            return s.compute_loss(model(imgs), targets)


def train_one_epoch(s: "RunState", t: "Trainables", epoch: int, opt) -> torch.Tensor:
    """Warmup, forward, backward, optimize (every `accumulate` batches), log. Returns mean losses (3,)."""
    model, train_loader, dataset, optimizer, device = t.model, t.train_loader, t.dataset, t.optimizer, s.device
    model.train()
    if opt.image_weights:
        cw = s.class_weights.cpu().numpy() * (1 - s.maps) ** 2 / s.nc
        iw = labels_to_image_weights(dataset.labels, nc=s.nc, class_weights=cw)
        dataset.indices = random.choices(range(dataset.n), weights=iw, k=dataset.n)
    if RANK != -1:
        train_loader.sampler.set_epoch(epoch)
    mloss, n_ok = torch.zeros(3, device=device), 0
    pbar = enumerate(train_loader)
    LOGGER.info(("\n" + "%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size"))
    if RANK in (-1, 0):
        pbar = tqdm(pbar, total=s.nb, bar_format="{l_bar}{bar:10}{r_bar}", disable=not LOGGER.isEnabledFor(20))
    optimizer.zero_grad()
    for i, (imgs, targets, paths, _) in pbar:
        ni = i + s.nb * epoch  # batches since the start of training
        imgs = imgs.to(device, non_blocking=True).float() / 255
        if ni <= s.nw:
            warmup(s, ni, epoch, optimizer, t.lf, t.hyp)
        if opt.multi_scale:
            imgs = multi_scale(imgs, s)
        if s.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)

        # Forward
        loss, loss_items = forward_loss(s, model, imgs, targets.to(device))
        if RANK != -1:
            loss *= WORLD_SIZE  # DDP averages gradients over ranks
        if opt.quad:
            loss *= 4.0
        if not all_finite(loss, device):  # skip this batch; gradients accumulated so far are kept
            LOGGER.warning(f"WARNING: non-finite loss at epoch {epoch}, batch {i} (on this or another rank); "
                           f"skipping it. Images: {', '.join(str(p) for p in paths)}")
            continue

        # Backward
        t.scaler.scale(loss).backward()

        # Optimize
        if ni - s.last_opt_step >= s.accumulate:
            if not optimizer_step(model, optimizer, t.scaler, t.ema, s.amp):
                LOGGER.warning(f"WARNING: non-finite gradients at epoch {epoch}, batch {i}; optimizer step skipped")
            s.last_opt_step = ni

        # Log
        if RANK in (-1, 0):
            mloss = (mloss * n_ok + loss_items) / (n_ok + 1)
            n_ok += 1
            mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
            pbar.set_description(("%11s" * 2 + "%11.4g" * 5) % (
                f"{epoch}/{s.epochs - 1}", mem, *mloss, targets.shape[0], imgs.shape[-1]))
            if s.plots and ni < 3:
                plot_images(imgs, targets, paths, s.save_dir / f"train_batch{ni}.jpg")
    return mloss


# ---------------------------------------------------------------- the training story

@dataclass
class RunState:
    """What the training steps share about one run: where it writes, the data, sizes, schedule and progress."""
    save_dir: Path
    epochs: int
    plots: bool
    device: torch.device
    data: dict = field(default_factory=dict)  # the checked dataset yaml
    nc: int = 0
    names: dict = field(default_factory=dict)
    is_coco: bool = False
    channels_last: bool = False  # CPU training stores conv weights and batches NHWC
    amp: bool = False  # CUDA fp16 autocast
    bf16: bool = False  # CPU bf16 autocast (network only; weights and loss fp32)
    gs: int = 32  # grid size: the largest stride, at least 32
    imgsz: int = 640
    batch_size: int = 16
    nbs: int = 64  # nominal batch size: gradients accumulate to about this many images per step
    accumulate: int = 1
    nb: int = 0  # batches per epoch
    nw: int = 0  # warm-up iterations
    last_opt_step: int = -1
    best_fitness: float = 0.0
    maps: np.ndarray = None  # per-class mAP50-95 of the last validation (image weights use it)
    results: tuple = (0, 0, 0, 0, 0, 0, 0)  # P, R, mAP50, mAP50-95, val box, obj, cls
    class_weights: torch.Tensor = None
    compute_loss: ComputeLoss = None
    stopper: EarlyStopping = None
    val_loader: object = None
    recipe: Recipe = None  # what --optimizer (auto by default) chose: optimizer, hyp overrides, nominal batch

    @property
    def w(self) -> Path:
        return self.save_dir / "weights"

    @property
    def last(self) -> Path:
        return self.w / "last.pt"

    @property
    def best(self) -> Path:
        return self.w / "best.pt"


@dataclass
class Trainables:
    """What one epoch of training works on: the model and its data, optimizer, LR lambda, AMP scaler and EMA."""
    model: nn.Module
    train_loader: object
    dataset: object
    optimizer: torch.optim.Optimizer
    lf: object  # epoch -> LR factor
    scaler: object
    ema: object  # ModelEMA on rank 0, None elsewhere
    hyp: dict


def start_run(hyp, opt, device) -> RunState:
    """Run directory, hyp.yaml/opt.yaml, seeds and the dataset yaml; returns the state the other steps share."""
    s = RunState(save_dir=Path(opt.save_dir), epochs=opt.epochs, plots=not opt.evolve and not opt.noplots,
                 device=device)
    with torch_distributed_zero_first(LOCAL_RANK):
        s.data = check_dataset(opt.data, trust=opt.trust_data)
    s.nc = 1 if opt.single_cls else int(s.data["nc"])
    if RANK in (-1, 0):
        s.save_dir.mkdir(parents=True, exist_ok=True)
        if opt.resume:
            remove_stale_temps(s.w)
    init_seeds(opt.seed + 1 + RANK, deterministic=True)
    s.names = {0: "item"} if opt.single_cls and len(s.data["names"]) != 1 else s.data["names"]
    s.is_coco = isinstance(s.data["val"], str) and s.data["val"].endswith("coco/val2017.txt")
    return s


def record_recipe(s, hyp, opt) -> None:
    """Choose the recipe for the run's batch size (known once AutoBatch has run), then write hyp.yaml and
    opt.yaml (rank 0, not under --evolve, which writes only results.csv and its own files)."""
    s.recipe = resolve_recipe(opt.optimizer, hyp, count_images(s.data["train"]), s.nc, s.batch_size, opt.epochs,
                              evolve=bool(opt.evolve))
    opt.hyp = dict(hyp)  # unscaled, so opt.yaml and ckpt['opt'] hold the values a --resume continues with
    if RANK in (-1, 0) and not opt.evolve:
        s.w.mkdir(exist_ok=True)
        yaml_save(s.save_dir / "hyp.yaml", hyp)
        yaml_save(s.save_dir / "opt.yaml", vars(opt))
    LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in hyp.items()))


def train(hyp, opt, device):
    """Train one run; returns the final (P, R, mAP50, mAP50-95, val box, obj, cls losses)."""
    s = start_run(hyp, opt, device)

    # Model
    model, ckpt = build_model(opt, hyp, s.nc, device)
    if getattr(opt, "backbone_weights", "") and not opt.resume:  # a resumed run's checkpoint holds the backbone
        load_shufflenet_backbone(model, opt.backbone_weights)
    s.amp = check_amp(model)
    s.bf16 = choose_cpu_bf16(getattr(opt, "bf16", "auto"), device)  # opt.yaml of older runs has no bf16
    # On CPUs, channels-last (NHWC) convolutions train faster (oneDNN), in fp32 and under bf16, the seed's ShuffleNetV2
    # units included (benchmarks/train_step.py). Only the memory layout changes, not the values, and checkpoints load
    # anywhere as before.
    s.channels_last = device.type == "cpu"
    if s.channels_last:
        set_conv_memory_format(model, torch.channels_last)
    freeze_layers(model, opt.freeze)
    s.gs = max(int(model.stride.max()), 32)
    s.imgsz = check_img_size(opt.imgsz, s.gs, floor=s.gs * 2)
    s.batch_size = opt.batch_size if opt.batch_size != -1 else auto_batch_size(model, s.imgsz, s.amp)
    record_recipe(s, hyp, opt)

    # Optimizer, schedule, EMA, resume
    optimizer, lf, scheduler, ema, start_epoch = build_optimizer(s, model, opt, hyp, ckpt)
    del ckpt
    if opt.resume and RANK in (-1, 0):
        trim_results(s.save_dir / "results.csv", start_epoch)

    # Data
    train_loader, dataset, s.val_loader = build_loaders(opt, hyp, s.data, s.gs, s.imgsz, s.batch_size)
    dataset.check_classes(s.nc, str(opt.data))
    if not opt.resume and RANK in (-1, 0):
        if s.plots:
            plot_labels(np.concatenate(dataset.labels, 0), s.names, s.save_dir)
        if not opt.noautoanchor:
            check_anchors(dataset, model=model, thr=hyp["anchor_t"], imgsz=s.imgsz)
        model.half().float()  # round initial weights to FP16 precision, as YOLOv5 does
    model = wrap_parallel(model, opt, device)
    m = set_model_attributes(s, de_parallel(model), hyp, dataset, opt)

    # Start training
    s.nb = len(train_loader)
    s.nw = max(round(hyp["warmup_epochs"] * s.nb), 100)
    s.maps = np.zeros(s.nc)
    scheduler.last_epoch = start_epoch - 1
    scaler = cuda_grad_scaler(s.amp) if device.type == "cuda" else _NoScaler()
    s.stopper, stop = EarlyStopping(patience=opt.patience), False
    s.compute_loss = ComputeLoss(m)
    parts = Trainables(model, train_loader, dataset, optimizer, lf, scaler, ema, hyp)
    t0 = time.time()
    LOGGER.info(f"Image sizes {s.imgsz} train, {s.imgsz} val\nUsing {train_loader.num_workers} dataloader workers\n"
                f"Logging results to {colorstr('bold', s.save_dir)}\nStarting training for {s.epochs} epochs...")
    epoch = start_epoch
    for epoch in range(start_epoch, s.epochs):
        mloss = train_one_epoch(s, parts, epoch, opt)
        lr = [x["lr"] for x in optimizer.param_groups]  # for the loggers, before the scheduler steps
        scheduler.step()
        if RANK in (-1, 0):
            stop = end_epoch(s, epoch, model, ema, optimizer, opt, mloss, lr)
        if RANK != -1:  # every rank stops together
            flag = [stop if RANK == 0 else None]
            dist.broadcast_object_list(flag, 0)
            stop = flag[0]
        if stop:
            break

    if RANK in (-1, 0):
        LOGGER.info(f"\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        s.results = final_validation(s, opt)
        if s.plots:
            plot_results(file=s.save_dir / "results.csv")
        LOGGER.info(f"Results saved to {colorstr('bold', s.save_dir)}")
        if s.best.exists():
            LOGGER.info(f"Final: mAP50 {s.results[2]:.3f}, mAP50-95 {s.results[3]:.3f} on the val split; best weights: "
                        f"{colorstr('bold', s.best)}")
    return s.results


def keep_cpu_memory(device) -> bool:
    """CPU training: glibc keeps freed activations for the next step instead of page-faulting in fresh memory every
    step (see the README); says in one line where it cannot (a C library other than glibc). Elsewhere nothing."""
    if device.type != "cpu":
        return False
    if keep_freed_memory():
        return True
    LOGGER.info(f"{colorstr('memory:')} the C library is not glibc, so freed activations go back to the system as it "
                f"decides (each step may page-fault in fresh memory)")
    return False


def choose_cpu_bf16(mode: str, device) -> bool:
    """--bf16 auto: bf16 autocast for CPU training where the CPU runs bf16 natively; says which in one line."""
    if device.type != "cpu":
        return False
    if mode == "off":
        LOGGER.info(f"{colorstr('bf16:')} off (--bf16 off): CPU training in fp32")
        return False
    ok, why = cpu_bf16_status()
    LOGGER.info(f"{colorstr('bf16:')} " + (f"autocast on for CPU training ({why}); weights, loss and validation stay "
                                            f"fp32 (--bf16 off for plain fp32)" if ok else f"off, fp32 training: {why}"))
    return ok


def build_optimizer(s, model, opt, hyp, ckpt):
    """Three-group optimizer (weight decay scaled to the nominal batch 64), LR lambda and scheduler, EMA; on
    --resume their state from the checkpoint. Returns (optimizer, lf, scheduler, ema or None, start_epoch)."""
    s.nbs = s.recipe.nbs  # nominal batch size: 64 as in YOLOv5, the batch size in the short-run recipe
    s.accumulate = max(round(s.nbs / s.batch_size), 1)
    hyp["weight_decay"] *= s.batch_size * s.accumulate / s.nbs
    optimizer = smart_optimizer(model, s.recipe.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    lf = lr_lambda(opt.cos_lr, hyp["lrf"], s.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model) if RANK in (-1, 0) else None
    s.best_fitness, start_epoch = 0.0, 0
    if opt.resume and ckpt is not None:
        s.best_fitness, start_epoch, s.epochs = smart_resume(ckpt, optimizer, ema, opt.weights, s.epochs, True)
    return optimizer, lf, scheduler, ema, start_epoch


def set_model_attributes(s, m, hyp, dataset, opt):
    """Scale the loss gains (levels, classes, image size) and attach nc, hyp, names and class weights to the
    (de-parallelised) model m, as checkpoints and the loss expect them. Returns m."""
    scale_hyp(hyp, m.model[-1].nl, s.nc, s.imgsz, opt.label_smoothing)
    m.nc, m.hyp, m.names = s.nc, hyp, s.names
    m.class_weights = labels_to_class_weights(dataset.labels, s.nc).to(s.device) * s.nc
    s.class_weights = m.class_weights
    return m


def wrap_parallel(model, opt, device):
    """SyncBatchNorm (CUDA DDP only) and the DistributedDataParallel wrapper when launched by torch.distributed;
    DataParallel when one process is given several GPUs."""
    if opt.sync_bn and device.type == "cuda" and RANK != -1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
        LOGGER.info("Using SyncBatchNorm()")
    elif opt.sync_bn:
        LOGGER.warning("WARNING: --sync-bn needs multi-process training on CUDA devices; ignoring it")
    if RANK != -1:  # static_graph: every parameter is used in every step (frozen ones have no grad at all)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[LOCAL_RANK] if device.type == "cuda" else None, static_graph=True)
    elif ids := data_parallel_ids(opt, device):
        LOGGER.warning(f"WARNING: --device {opt.device} in one process: DataParallel over GPUs {ids}, as YOLOv5 "
                       f"does; DDP is faster: python -m torch.distributed.run --nproc_per_node {len(ids)} train.py "
                       f"--device {opt.device} ...")
        model = nn.DataParallel(model, device_ids=ids)
    return model


def data_parallel_ids(opt, device) -> list:
    """The CUDA devices a single-process run splits each batch over (DataParallel): those --device names when
    it names several, else none."""
    if device.type != "cuda" or RANK != -1:
        return []
    ids = cuda_ids(opt.device)
    return ids if len(ids) > 1 else []


def fused_copy(model):
    """A copy of the EMA with its BatchNorms folded into the convolutions, for the per-epoch validation: the same
    outputs up to float rounding (as the final validation of best.pt, which loads fused), and about a quarter
    less inference time on a CPU. The EMA itself is left unfused and in float32."""
    m = deepcopy(model)
    return m.fuse(verbose=False) if hasattr(m, "fuse") else m


def end_epoch(s, epoch, model, ema, optimizer, opt, mloss, lr) -> bool:
    """Rank 0 after each epoch: validate (a fused copy of) the EMA, append results.csv, save last/best/epochN.pt.
    True = stop early."""
    ema.update_attr(model, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])
    final_epoch = epoch + 1 == s.epochs or s.stopper.possible_stop
    if not opt.noval or final_epoch:
        s.results, s.maps, _ = validate.run(
            s.data, batch_size=s.batch_size // WORLD_SIZE * 2, imgsz=s.imgsz, half=s.amp, model=fused_copy(ema.ema),
            single_cls=opt.single_cls, dataloader=s.val_loader, save_dir=s.save_dir, plots=False,
            compute_loss=s.compute_loss)
    fi = float(fitness(np.array(s.results).reshape(1, -1))[0])  # 0.1 mAP50 + 0.9 mAP50-95
    stop = s.stopper(epoch=epoch, fitness=fi)
    s.best_fitness = max(s.best_fitness, fi)
    write_results_row(s.save_dir / "results.csv", [epoch, *mloss.tolist(), *s.results, *lr])
    if not opt.nosave or (final_epoch and not opt.evolve):
        ckpt = {"epoch": epoch, "best_fitness": s.best_fitness, "model": deepcopy(de_parallel(model)).half(),
                "ema": deepcopy(ema.ema).half(), "updates": ema.updates,
                "optimizer": optimizer.state_dict(), "opt": _plain(vars(opt)), "git": git_info(),
                "date": datetime.now().isoformat()}
        save_checkpoint(ckpt, s.last)
        if s.best_fitness == fi:  # ties count: YOLOv5 rewrites best.pt when fitness equals the best so far
            copy_checkpoint(s.last, s.best)  # the same bytes, without pickling the same dict again
        if opt.save_period > 0 and epoch % opt.save_period == 0:
            copy_checkpoint(s.last, s.w / f"epoch{epoch}.pt")
    return stop


def final_validation(s, opt):
    """Strip the optimizer from last.pt and best.pt, then validate best.pt with plots; returns its results."""
    results = s.results
    for f in (s.last, s.best):
        if not f.exists():
            continue
        strip_optimizer(f)
        if f == s.best:
            LOGGER.info(f"\nValidating {f}...")
            results, _, _ = validate.run(
                s.data, batch_size=s.batch_size // WORLD_SIZE * 2, imgsz=s.imgsz, model=attempt_load(f, s.device),
                iou_thres=0.65 if s.is_coco else 0.60, single_cls=opt.single_cls, dataloader=s.val_loader,
                save_dir=s.save_dir, save_json=s.is_coco, verbose=True, plots=s.plots, compute_loss=s.compute_loss)
    return results


def remove_stale_temps(weights_dir: Path) -> None:
    """Delete temporary checkpoint files a killed run left behind (atomic saves write '.<name>.*.tmp' first)."""
    for f in Path(weights_dir).glob(".*.pt.*.tmp"):
        LOGGER.info(f"Removing {f}, an unfinished checkpoint save of the interrupted run")
        f.unlink(missing_ok=True)


def cuda_grad_scaler(enabled: bool):
    """AMP's gradient scaler: torch.amp.GradScaler('cuda') since torch 2.3, torch.cuda.amp.GradScaler before."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


class _NoScaler:
    """GradScaler stand-in for CPU: plain backward/step."""

    def scale(self, loss):
        return loss

    def unscale_(self, optimizer):
        pass

    def step(self, optimizer):
        optimizer.step()

    def update(self):
        pass


def _plain(d: dict) -> dict:
    """Options as plain types, so checkpoints load with torch.load(weights_only=True)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


# ---------------------------------------------------------------- command line

DEFAULT_CFG = "yolov5n_shuffle_cpu.yaml"  # no --cfg, no --weights: this project's n-scale CPU design (README)


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Train a YOLOv5 / ShuffleNetV2-YOLOv5 detector.")
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' = from scratch)")
    p.add_argument("--cfg", type=str, default="", help=f"model.yaml path (default {DEFAULT_CFG} when neither "
                                                       "--cfg nor --weights is given)")
    p.add_argument("--data", type=str, default=ROOT / "data/shapes.yaml", help="dataset.yaml path")
    p.add_argument("--hyp", type=str, default=ROOT / "data/hyps/hyp.scratch-low.yaml", help="hyperparameters path")
    p.add_argument("--epochs", type=int, default=100, help="total training epochs")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all GPUs, -1 for autobatch")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="evolve hyperparameters for x generations")
    p.add_argument("--bucket", type=str, default="", help="gsutil bucket (not supported offline)")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="image --cache ram/disk/val/no (default: RAM if small)")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["auto", "SGD", "Adam", "AdamW"], default="auto",
                   help="optimizer; auto: AdamW recipe for short runs, SGD for long ones (utils/recipe.py)")
    p.add_argument("--bf16", choices=["auto", "off"], default="auto",
                   help="CPU training: bf16 autocast where the CPU has AVX512-BF16/AMX (auto) or never (off)")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per RANK in DDP mode)")
    p.add_argument("--project", default=ROOT / "runs/train", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--quad", action="store_true", help="quad dataloader")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="Label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="Freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="Save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="Global training seed")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="DDP (read from $LOCAL_RANK)")
    p.add_argument("--trust-weights", action="store_true", help="allow legacy pickled checkpoints you trust")
    p.add_argument("--trust-data", action="store_true", help="allow the --data yaml's download: script to run "
                                                             "(only for files you trust)")
    p.add_argument("--backbone-weights", type=str, default="",
                   help="torchvision ShuffleNetV2 ImageNet .pth for the backbone of a models/shufflenetv2 config")
    for flag in ("--entity", "--upload_dataset", "--bbox_interval", "--artifact_alias"):  # W&B: accepted, unused
        p.add_argument(flag, default=None, help=argparse.SUPPRESS, nargs="?")
    return p.parse_args(argv)


# Never taken from a resumed run's opt.yaml (or its checkpoint's 'opt'), which may come from anyone: consent comes
# from this command line only, and the run keeps writing where its checkpoint is, not to a --project the file names.
RESUME_FROM_CLI = ("trust_weights", "trust_data", "project", "name", "exist_ok", "save_dir", "evolve", "resume",
                   "weights", "cfg", "local_rank")


def resolve_resume(opt):
    """--resume [path]: reload that run's options and continue from its last.pt, in the folder that holds it."""
    last = Path(check_file(opt.resume) if isinstance(opt.resume, str) else newest_last_pt())
    opt_yaml = last.parent.parent / "opt.yaml"
    if opt_yaml.is_file():
        saved, source = yaml_load(opt_yaml), str(opt_yaml)
    else:
        saved, source = load_checkpoint(last, trust=opt.trust_weights)["opt"], f"{last} (its 'opt')"
    new = argparse.Namespace(**{**vars(opt), **_resumable(saved, vars(opt), source)})
    new.cfg, new.weights, new.resume = "", str(last), True
    new.save_dir = str(last.parent.parent if last.parent.name == "weights" else last.parent)
    return new


def _resumable(saved: dict, current: dict, source: str) -> dict:
    """The saved options a resume may use: known ones, not in RESUME_FROM_CLI, of the type their flag takes."""
    unknown = sorted(str(k) for k in saved if k not in current and k not in RESUME_FROM_CLI)
    if unknown:
        LOGGER.warning(f"WARNING: {source}: ignoring unknown option(s) {', '.join(unknown)}")
    kept = {k: v for k, v in saved.items() if k in current and k not in RESUME_FROM_CLI}
    for k, v in kept.items():
        d = current[k]
        want = bool if isinstance(d, bool) else int if isinstance(d, int) else (int, float) if isinstance(d, float) \
            else None
        if want and (not isinstance(v, want) or (want is not bool and isinstance(v, bool))):
            raise ValueError(f"{source}: option {k} is {v!r}, expected {type(d).__name__} as its flag takes; "
                             f"fix or delete that line")
    return kept


def newest_last_pt(search_dir="."):
    files = [p for p in Path(search_dir).rglob("last*.pt")]
    if not files:
        raise FileNotFoundError(f"--resume: no last*.pt found under {Path(search_dir).resolve()}; "
                                f"pass the checkpoint path, e.g. --resume runs/train/exp/weights/last.pt")
    return max(files, key=os.path.getctime)


def main(opt):
    set_logging(rank=RANK)
    if opt.resume and getattr(opt, "backbone_weights", ""):
        raise ValueError("--backbone-weights cannot be combined with --resume: the checkpoint being resumed "
                         "already holds the trained backbone")
    if opt.resume and not opt.evolve:
        opt = resolve_resume(opt)
    else:
        if not opt.cfg and not opt.weights:
            opt.cfg = DEFAULT_CFG
        opt.data = check_yaml(opt.data)
        opt.hyp = opt.hyp if isinstance(opt.hyp, dict) else check_yaml(opt.hyp)  # train.run(hyp={...}) works too
        opt.cfg = check_yaml(opt.cfg) if opt.cfg else ""
        opt.weights = str(opt.weights)
        if opt.evolve and str(opt.project) == str(ROOT / "runs/train"):
            opt.project = str(ROOT / "runs/evolve")
        if opt.name == "cfg":
            opt.name = Path(opt.cfg).stem
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    if opt.epochs < 1:
        raise ValueError(f"--epochs {opt.epochs}: must be at least 1")
    if opt.batch_size == 0 or opt.batch_size < -1:
        raise ValueError(f"--batch-size {opt.batch_size}: must be at least 1 (or -1 for AutoBatch)")
    cache_modes(opt.cache)  # an unknown --cache value stops here, before anything is built
    device = select_device(opt.device, batch_size=opt.batch_size)
    if LOCAL_RANK != -1:
        device = setup_ddp(opt, device)
    keep_cpu_memory(device)
    hyp = load_hyp(opt.hyp)
    if opt.evolve:
        from utils.evolve import evolve
        return evolve(hyp, opt, device, train)
    results = train(hyp, opt, device)
    if WORLD_SIZE > 1 and RANK == 0:
        LOGGER.info("Destroying process group... ")
    if LOCAL_RANK != -1:
        dist.destroy_process_group()
    return results


def setup_ddp(opt, device):
    """Join the process group started by torch.distributed.run (NCCL on GPUs, gloo on CPUs)."""
    if opt.image_weights:
        raise ValueError("--image-weights is not supported with multi-process (DDP) training")
    if opt.evolve:
        raise ValueError("--evolve is not supported with multi-process (DDP) training")
    if opt.batch_size == -1:
        raise ValueError("AutoBatch (--batch-size -1) is not supported with DDP; pass a batch size")
    if opt.batch_size % WORLD_SIZE:
        raise ValueError(f"--batch-size {opt.batch_size} must be a multiple of WORLD_SIZE={WORLD_SIZE}")
    if device.type == "cuda":
        if torch.cuda.device_count() <= LOCAL_RANK:
            raise ValueError(f"LOCAL_RANK {LOCAL_RANK}: not enough CUDA devices ({torch.cuda.device_count()})")
        torch.cuda.set_device(LOCAL_RANK)
        device = torch.device("cuda", LOCAL_RANK)
    from datetime import timedelta
    dist.init_process_group(backend="nccl" if dist.is_nccl_available() and device.type == "cuda" else "gloo",
                            timeout=timedelta(hours=3))
    return device


def run(**kwargs):
    """Python entry point: train.run(data='shapes.yaml', imgsz=320, epochs=3, ...)."""
    opt = parse_opt([])
    for k, v in kwargs.items():
        setattr(opt, k, v)
    main(opt)
    return opt


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, UntrustedCheckpointError) as err:  # OSError: disk full, unwritable run folder
        sys.exit(f"ERROR: {err}")
    except KeyboardInterrupt:
        sys.exit("Interrupted: the last completed epoch is in weights/last.pt; continue with --resume")
