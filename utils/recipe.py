"""--optimizer auto (the default): pick the training recipe from the size of the run. Long runs get YOLOv5's SGD
recipe unchanged; short ones (few optimizer steps, e.g. a small dataset for tens of epochs) get AdamW with a small
learning rate, no bias warm-up and one optimizer step per batch. An explicit --optimizer always trains as YOLOv5."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from utils.dataset_scan import list_image_files
from utils.logger import LOGGER, colorstr

NBS = 64  # YOLOv5's nominal batch size: gradients are accumulated to about 64 images per optimizer step
SHORT_RUN_STEPS = 10_000  # fewer nominal-batch optimizer steps than this = a short run (the same line as YOLOv8's optimizer=auto)
SHORT_RUN_LR = 0.03  # AdamW lr0 = SHORT_RUN_LR / (4 + nc): 0.0025 at 8 classes (README: measured on shapes)


@dataclass
class Recipe:
    """What train.py uses: the optimizer name, the hyp values the recipe overrides, the nominal batch size (images
    per optimizer step; YOLOv5 accumulates gradients up to it) and the one-line reason shown in the log."""

    optimizer: str
    hyp: dict = field(default_factory=dict)
    nbs: int = NBS
    reason: str = ""


def nominal_steps(n_images: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of a run with YOLOv5's accumulation to the nominal batch: epochs x ceil(n / max(bs, 64))."""
    return epochs * math.ceil(n_images / max(batch_size, NBS))


def short_run_lr(nc: int) -> float:
    """AdamW's lr0 for a short run with nc classes: 0.03 / (4 + nc) (0.0025 at 8 classes, 0.001875 at 12)."""
    return round(SHORT_RUN_LR / (4 + nc), 6)


def choose_recipe(n_images: int, nc: int, batch_size: int, epochs: int, evolve: bool = False) -> Recipe:
    """The recipe --optimizer auto uses for a run of `epochs` over `n_images` training images in batches of
    `batch_size` with `nc` classes."""
    if evolve:
        return Recipe("SGD", reason="--evolve mutates lr0 and momentum itself, so YOLOv5's SGD recipe is kept")
    batch_size = batch_size if batch_size > 0 else 16  # AutoBatch (-1) trains at 16 on CPU
    steps = nominal_steps(n_images, batch_size, epochs)
    size = f"{epochs} epochs x {n_images} images at batch {batch_size} = {steps:,} steps of {NBS} images"
    if steps >= SHORT_RUN_STEPS:
        return Recipe("SGD", reason=f"long run ({size} >= {SHORT_RUN_STEPS:,}): YOLOv5's SGD recipe, hyp as given")
    lr0 = short_run_lr(nc)
    hyp = {"lr0": lr0, "momentum": 0.9, "warmup_bias_lr": 0.0}
    return Recipe("AdamW", hyp=hyp, nbs=batch_size, reason=(
        f"short run ({size} < {SHORT_RUN_STEPS:,}): AdamW lr0={lr0} ({SHORT_RUN_LR}/(4+nc), nc={nc}), momentum=0.9, "
        f"warmup_bias_lr=0.0, a step every batch of {batch_size} (no accumulation)"))


def count_images(path) -> int:
    """Number of image files in a dataset split (folder, .txt list or a list of those), 0 if it has none. Quiet:
    the dataloader reports ignored files and missing folders when it lists the same split."""
    was_disabled, LOGGER.disabled = LOGGER.disabled, True
    try:
        return len(list_image_files(path)[0])
    except FileNotFoundError:
        return 0
    finally:
        LOGGER.disabled = was_disabled


def resolve_recipe(optimizer: str, hyp: dict, n_images: int, nc: int, batch_size: int, epochs: int,
                   evolve: bool = False) -> Recipe:
    """The recipe of a run: an explicit optimizer keeps YOLOv5's behaviour (hyp untouched, nominal batch 64);
    'auto' chooses one (choose_recipe) and writes its values into `hyp`. Logs one line saying which and why."""
    if optimizer != "auto":
        recipe = Recipe(optimizer, reason=f"--optimizer {optimizer} given: YOLOv5's recipe, hyp as given")
    else:
        recipe = choose_recipe(n_images, nc, batch_size, epochs, evolve)
        hyp.update(recipe.hyp)
    LOGGER.info(f"{colorstr('recipe:')} {recipe.optimizer}, {recipe.reason}")
    return recipe
