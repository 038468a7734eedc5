"""Training/validation dataset (LoadImagesAndLabels), its collate functions and create_dataloader.

Also re-exports the inference sources (LoadImages, LoadStreams), IMG_FORMATS/VID_FORMATS and img2label_paths.
A batch is (imgs uint8 (bs, 3, h, w) RGB, targets (n, 6) [img_idx, cls, x, y, w, h] normalised, paths, shapes).
"""

from __future__ import annotations

import math
import os
import random
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, distributed

from utils.augmentations import (PAD_COLOR, Albumentations, augment_hsv, copy_paste, letterbox, mixup,
                                 random_perspective)
from utils.boxes import xyn2xy, xywhn2xyxy, xyxy2xywhn
from utils.dataset_scan import (IMG_FORMATS, VID_FORMATS, cache_path_for, img2label_paths, imread,  # noqa: F401
                                list_image_files)
from utils.files import ROOT, atomic_write, yaml_load
from utils.label_cache import load_or_scan
from utils.label_check import check_label_classes
from utils.logger import LOGGER
from utils.media_sources import LoadImages, LoadStreams  # noqa: F401
from utils.torch_utils import RANK, release_inherited_memory, torch_distributed_zero_first

GENERATOR_SEED = 6148914691236517205  # 0x5555...: YOLOv5's base seed for the shuffling generator
DEFAULT_HYP = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"
AUTO_CACHE_BYTES = 2 << 30  # --cache auto: cache a split in RAM when its resized images need at most this


class LoadImagesAndLabels(Dataset):
    """Images and YOLO labels of one split, with YOLOv5's training augmentation when `augment`.

    Public state used by train/val: im_files, label_files, labels (list of (n, 5) float32 [cls, xywhn]), shapes
    ((N, 2) w, h), segments, batch_shapes (rect only), n, and indices (the trainer may overwrite it, e.g. with
    image-weighted choices).
    """

    cache_version = 0.6

    def __init__(self, path, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: Optional[dict] = None, rect: bool = False, image_weights: bool = False, cache_images=False,
                 single_cls: bool = False, stride: int = 32, pad: float = 0.0, min_items: int = 0, prefix: str = ""):
        self.img_size, self.augment, self.stride, self.prefix = img_size, augment, stride, prefix
        self.hyp = hyp if hyp is not None or not augment else yaml_load(DEFAULT_HYP)
        self.image_weights = image_weights
        self.rect = False if image_weights else rect
        self.mosaic = self.augment and not self.rect  # mosaic makes square images, incompatible with rect
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.albumentations = Albumentations(size=img_size) if augment else None

        im_files, source = list_image_files(path, prefix)
        label_files = img2label_paths(im_files)
        self.cache_path = cache_path_for(source, label_files)
        cache = load_or_scan(im_files, label_files, self.cache_path, prefix)
        self._read_cache(cache, augment)
        if min_items:
            self._keep(np.array([len(x) >= min_items for x in self.labels]))
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.n = n = len(self.im_files)
        self.batch = np.floor(np.arange(n) / batch_size).astype(int)  # batch index of each image
        self.indices = range(n)
        self.broken = set()  # indices whose image failed to decode at load time
        if self.rect:
            self._set_rect(batch_size, img_size, stride, pad)
        self.ims = [None] * n
        self.npy_files = [Path(f).with_suffix(".npy") for f in self.im_files]
        self.cache_images = "ram" if cache_images is True else cache_images
        if self.cache_images:
            self._cache_images()

    def _read_cache(self, cache: dict, augment: bool) -> None:
        """Fill im_files/labels/shapes/segments from the cache dict; training needs at least one label."""
        nf, nm, ne, nc, n = cache["results"]
        entries = {k: v for k, v in cache.items() if k not in ("hash", "version", "msgs", "results")}
        where = f"{self.prefix}{self.cache_path.with_suffix('')}"
        if not entries:
            raise ValueError(f"{where}: none of the {n} images is usable ({nc} corrupt, see the warnings above)")
        labels, shapes, segments = zip(*entries.values())
        if augment and not sum(len(x) for x in labels):
            raise ValueError(f"{where}: no labels found ({nf} label files, {nm} missing, {ne} empty, {nc} corrupt); "
                             f"training needs at least one image with a valid label. Labels go in "
                             f"'labels/' beside 'images/', one <image stem>.txt per image")
        self.labels = [np.asarray(x, dtype=np.float32).reshape(-1, 5) for x in labels]
        self.shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
        self.segments = list(segments)
        self.im_files = list(entries.keys())
        self.label_files = img2label_paths(self.im_files)

    def _keep(self, mask: np.ndarray) -> None:
        """Keep only the images where mask is True."""
        LOGGER.info(f"{self.prefix}{int(mask.sum())}/{len(mask)} images kept by min_items")
        idx = np.nonzero(mask)[0]
        self.im_files = [self.im_files[i] for i in idx]
        self.label_files = [self.label_files[i] for i in idx]
        self.labels = [self.labels[i] for i in idx]
        self.segments = [self.segments[i] for i in idx]
        self.shapes = self.shapes[idx]

    def _set_rect(self, batch_size: int, img_size: int, stride: int, pad: float) -> None:
        """Sort by aspect ratio and give each batch the smallest stride-multiple shape (h, w) that fits it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.segments = [self.segments[i] for i in order]
        self.shapes, ar = self.shapes[order], ar[order]
        nb = self.batch[-1] + 1
        shapes = [[1, 1]] * nb
        for i in range(nb):
            ari = ar[self.batch == i]
            lo, hi = ari.min(), ari.max()
            if hi < 1:
                shapes[i] = [hi, 1]
            elif lo > 1:
                shapes[i] = [1, 1 / lo]
        self.batch_shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride

    def _cache_images(self) -> None:
        """Decode every image once: into RAM ('ram', resized) or to .npy files beside the images ('disk').

        'auto' (train.py's default) caches in RAM only when the resized split is small: at most AUTO_CACHE_BYTES
        and a tenth of the free memory. Mosaic decodes four images per sample, so on a small CPU decoding is a
        large share of each epoch; the cached pixels are the ones load_image() would return, so results do not
        change.
        """
        if self.cache_images == "auto":
            need, avail = self._ram_estimate()
            if need > AUTO_CACHE_BYTES or (avail is not None and need > 0.1 * avail):
                self.cache_images = False
                return
            self.cache_images = "ram"
            LOGGER.info(f"{self.prefix}{need / 1e9:.2f}GB of resized images fit in RAM: caching them "
                        f"(--cache no turns this off)")
        elif self.cache_images == "ram" and not self._ram_fits():
            self.cache_images = False
            return
        disk = self.cache_images == "disk"
        self.im_hw0, self.im_hw = [None] * self.n, [None] * self.n
        fn = self._write_npy if disk else self.load_image
        total = 0
        with ThreadPool(min(8, os.cpu_count() or 1)) as pool:
            for i, x in enumerate(pool.imap(fn, range(self.n))):
                if disk:
                    total += self.npy_files[i].stat().st_size
                else:
                    self.ims[i], self.im_hw0[i], self.im_hw[i] = x
                    total += x[0].nbytes
        LOGGER.info(f"{self.prefix}Caching images ({total / 1e9:.2f}GB {self.cache_images})")

    def _ram_estimate(self) -> tuple:
        """(bytes a 'ram' cache needs, estimated from 30 images; bytes of free memory, or None where unknown)."""
        sample = random.Random(0).sample(range(self.n), min(self.n, 30))  # a local RNG: the global stream is untouched
        need = 0
        for i in sample:
            im = imread(self.im_files[i])
            if im is not None:
                need += im.nbytes * (self.img_size / max(im.shape[:2])) ** 2
        need = need * self.n / max(len(sample), 1)
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
        return need, avail

    def _ram_fits(self, safety: float = 0.1) -> bool:
        """Whether the estimated 'ram' cache fits in the memory available (True where that is unknown)."""
        need, avail = self._ram_estimate()
        if avail is None:
            return True
        fits = need * (1 + safety) < avail
        if not fits:
            LOGGER.warning(f"{self.prefix}WARNING ⚠️ not caching images: {need / 1e9:.1f}GB needed, "
                           f"{avail / 1e9:.1f}GB available")
        return fits

    def _write_npy(self, i: int) -> None:
        f = self.npy_files[i]
        if not f.exists():
            im = self._decode(i)
            atomic_write(f, lambda fh: np.save(fh, im))

    def _decode(self, i: int) -> np.ndarray:
        """BGR image i as stored; an undecodable file becomes a grey image of its scanned size without labels."""
        if self.cache_images == "disk" and self.npy_files[i].exists():
            return np.load(self.npy_files[i])
        im = imread(self.im_files[i])
        if im is None:
            if i not in self.broken:
                LOGGER.warning(f"{self.prefix}WARNING ⚠️ {self.im_files[i]}: image could not be decoded; "
                               f"a grey image without labels is used instead")
            self.broken.add(i)
            w, h = self.shapes[i]
            im = np.full((h, w, 3), PAD_COLOR[0], np.uint8)
        return im

    def load_image(self, i: int) -> tuple:
        """Image i resized so its long side is img_size -> (im, (h0, w0) original, (h, w) resized)."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = self._decode(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (int(w0 * r), int(h0 * r)), interpolation=interp)  # truncated, as YOLOv5 v7.0
        return im, (h0, w0), im.shape[:2]

    def _labels(self, i: int) -> np.ndarray:
        return np.zeros((0, 5), np.float32) if i in self.broken else self.labels[i].copy()

    def _segments(self, i: int) -> list:
        return [] if i in self.broken or not self.segments[i] else [s.copy() for s in self.segments[i]]

    def load_mosaic(self, index: int) -> tuple:
        """Four images (index + 3 random) tiled around a random centre on a 2s x 2s canvas, then randomly warped
        and cropped back to s x s. Returns (img (s, s, 3), labels (n, 5) [cls, xyxy] pixels)."""
        s = self.img_size
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + random.choices(self.indices, k=3)
        random.shuffle(indices)
        canvas = np.full((s * 2, s * 2, 3), PAD_COLOR[0], dtype=np.uint8)
        labels4, segments4 = [], []
        for i, idx in enumerate(indices):
            img, _, (h, w) = self.load_image(idx)
            if i == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif i == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif i == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            padw, padh = x1a - x1b, y1a - y1b
            labels, segments = self._labels(idx), self._segments(idx)
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
                segments = [xyn2xy(x, w, h, padw, padh) for x in segments]
            labels4.append(labels)
            segments4.extend(segments)
        labels4 = np.concatenate(labels4, 0)
        for x in (labels4[:, 1:], *segments4):
            np.clip(x, 0, 2 * s, out=x)
        hyp = self.hyp
        canvas, labels4, segments4 = copy_paste(canvas, labels4, segments4, p=hyp["copy_paste"])
        return random_perspective(canvas, labels4, segments4, degrees=hyp["degrees"], translate=hyp["translate"],
                                  scale=hyp["scale"], shear=hyp["shear"], perspective=hyp["perspective"],
                                  border=self.mosaic_border)

    def __len__(self) -> int:
        return len(self.im_files)

    def __getitem__(self, index: int):
        """-> (img uint8 (3, h, w) RGB, labels (n, 6) [0, cls, x, y, w, h] normalised, path, shapes or None)."""
        index = self.indices[index]  # linear, shuffled or image-weighted
        hyp = self.hyp
        if self.mosaic and random.random() < hyp["mosaic"]:
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < hyp["mixup"]:
                img, labels = mixup(img, labels, *self.load_mosaic(random.randint(0, self.n - 1)))
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)  # what val needs to map boxes back to the original
            labels = self._labels(index)
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                img, labels = random_perspective(img, labels, degrees=hyp["degrees"], translate=hyp["translate"],
                                                 scale=hyp["scale"], shear=hyp["shear"],
                                                 perspective=hyp["perspective"])
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            img, labels = self._augment_pixels(img, labels)
            nl = len(labels)
        out = torch.zeros((nl, 6))
        if nl:
            out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), out, self.im_files[index], shapes

    def _augment_pixels(self, img: np.ndarray, labels: np.ndarray) -> tuple:
        """Albumentations (if installed), HSV, then up-down and left-right flips on xywhn labels."""
        hyp = self.hyp
        img, labels = self.albumentations(img, labels)
        augment_hsv(img, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"])
        if random.random() < hyp["flipud"]:
            img = np.flipud(img)
            if len(labels):
                labels[:, 2] = 1 - labels[:, 2]
        if random.random() < hyp["fliplr"]:
            img = np.fliplr(img)
            if len(labels):
                labels[:, 1] = 1 - labels[:, 1]
        return img, labels

    def check_classes(self, nc: int, data_file: str = "") -> None:
        """Raise ValueError '<label file> line N: class c >= nc=K (<yaml>)' when a label uses an unknown class."""
        check_label_classes(self.label_files, self.labels, nc, data_file)

    @staticmethod
    def collate_fn(batch):
        """Stack images; concatenate targets with column 0 set to the image's index in the batch."""
        im, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(im, 0), torch.cat(label, 0), path, shapes

    @staticmethod
    def collate_fn4(batch):
        """'quad' collate: every 4 images become one, either the first upscaled 2x or the four tiled 2x2."""
        im, label, path, shapes = zip(*batch)
        n = math.ceil(len(shapes) / 4)  # a last group of 1-3 images (epoch end) takes the upscale branch
        im4, label4 = [], []
        ho = torch.tensor([[0.0, 0, 0, 1, 0, 0]])  # shift one tile down
        wo = torch.tensor([[0.0, 0, 1, 0, 0, 0]])  # shift one tile right
        s = torch.tensor([[1, 1, 0.5, 0.5, 0.5, 0.5]])  # tiles are half the new image
        for i in range(0, 4 * n, 4):
            if random.random() < 0.5 or i + 4 > len(im):
                im1 = F.interpolate(im[i].unsqueeze(0).float(), scale_factor=2.0, mode="bilinear",
                                    align_corners=False)[0].type(im[i].type())
                lb = label[i]
            else:
                im1 = torch.cat((torch.cat((im[i], im[i + 1]), 1), torch.cat((im[i + 2], im[i + 3]), 1)), 2)
                lb = torch.cat((label[i], label[i + 1] + ho, label[i + 2] + wo, label[i + 3] + ho + wo), 0) * s
            im4.append(im1)
            label4.append(lb)
        for i, lb in enumerate(label4):
            lb[:, 0] = i
        return torch.stack(im4, 0), torch.cat(label4, 0), path[:n], shapes[:n]


class _Forever:
    """A batch sampler that starts over whenever the wrapped one runs out (so workers never stop)."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler

    def __iter__(self):
        while True:
            yield from self.batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)


class InfiniteDataLoader(DataLoader):
    """DataLoader whose workers live across epochs: each `iter()` yields one epoch (len(self) batches) from a
    single endless stream, so the next epoch's first batches are prefetched while the current one ends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "batch_sampler", _Forever(self.batch_sampler))  # DataLoader forbids setattr
        self._stream = None

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        if self._stream is None:
            self._stream = super().__iter__()
        for _ in range(len(self)):
            yield next(self._stream)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed, and let a worker forked from a training
    process that keeps freed memory (keep_freed_memory) return its inherited and freed memory as usual.

    (No cv2.setNumThreads here: in a worker forked after OpenCV started its thread pool, that call deadlocks.)
    """
    release_inherited_memory()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(path, imgsz: int, batch_size: int, stride: int, single_cls: bool = False, hyp=None,
                      augment: bool = False, cache=False, pad: float = 0.0, rect: bool = False, rank: int = -1,
                      workers: int = 8, image_weights: bool = False, quad: bool = False, prefix: str = "",
                      shuffle: bool = False, seed: int = 0, min_items: int = 0):
    """Build LoadImagesAndLabels and its loader -> (loader, dataset). See the module docstring for a batch."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"{prefix}--batch-size {batch_size} --workers {workers}: the batch size must be at least 1 "
                         f"and the number of workers at least 0 (0 loads in the main process)")
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING ⚠️ --rect is incompatible with DataLoader shuffle, setting shuffle=False")
        shuffle = False
    with torch_distributed_zero_first(rank):  # rank 0 writes the label cache, the others then read it
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                      cache_images=cache, single_cls=single_cls, stride=int(stride), pad=pad,
                                      image_weights=image_weights, min_items=min_items, prefix=prefix)
    if batch_size > len(dataset):
        log = LOGGER.warning if augment else LOGGER.info  # training batches (and accumulation) change; val's do not
        log(f"{prefix}{'WARNING ⚠️ ' if augment else ''}batch size {batch_size} is larger than the {len(dataset)} "
            f"images of {path}; using {len(dataset)}")
        batch_size = len(dataset)
    nd = torch.cuda.device_count()
    nw = min(os.cpu_count() // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle)
    loader = DataLoader if image_weights else InfiniteDataLoader  # the trainer rewrites dataset.indices per epoch
    generator = torch.Generator()
    generator.manual_seed(GENERATOR_SEED + seed + RANK)
    return loader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                  sampler=sampler, pin_memory=torch.cuda.is_available(),
                  collate_fn=LoadImagesAndLabels.collate_fn4 if quad else LoadImagesAndLabels.collate_fn,
                  worker_init_fn=seed_worker, generator=generator), dataset
