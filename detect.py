"""Run a detector on images, videos, folders, globs, .txt lists, webcams and streams, and save what it finds.

Usage:
    python detect.py                                        # the shipped yolov5n_shuffle_cpu.pt on data/images
    python detect.py --weights best.pt --source img.jpg     # also: dir/  'dir/*.jpg'  vid.mp4  list.txt  0  rtsp://...
Results go to runs/detect/exp{n}: annotated media, labels/*.txt (--save-txt), crops/<class>/*.jpg (--save-crop).
"""

import argparse
import contextlib
import math
import sys
from pathlib import Path

import cv2  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from inference.backends import backend_kind, load_model  # noqa: E402
from utils.boxes import scale_boxes  # noqa: E402
from models.checkpoint import UntrustedCheckpointError, strip_optimizer  # noqa: E402
from utils.checks import check_img_size, check_thresholds, display_available  # noqa: E402
from utils.crops import crop_folder, save_one_box  # noqa: E402
from utils.dataloaders import IMG_FORMATS, VID_FORMATS, LoadImages, LoadStreams  # noqa: E402
from utils.files import check_yaml, increment_path, yaml_load  # noqa: E402
from utils.logger import LOGGER, colorstr, set_logging  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.plots import Annotator, colors  # noqa: E402
from utils.results import (Stopwatch, box_label, class_name, count_summary, names_dict, saved_line,  # noqa: E402
                           speed_line, txt_row)
from utils.torch_utils import keep_freed_memory, select_device, smart_inference_mode  # noqa: E402

DEFAULT_WEIGHTS = "yolov5n_shuffle_cpu.pt"  # the small model shipped in the repo root
URL_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")
MISSING_DEFAULT = (f"{DEFAULT_WEIGHTS}: the default model is not in {ROOT}. Train one with `python train.py "
                   f"--data data/shapes.yaml --cfg yolov5n_shuffle_cpu.yaml --weights ''` and pass "
                   f"--weights runs/train/exp/weights/best.pt (or copy that file to {ROOT / DEFAULT_WEIGHTS})")


def resolve_weights(weights) -> list:
    """Local paths for --weights (as given, else in the repo root). Nothing is downloaded."""
    out = []
    for w in weights if isinstance(weights, (list, tuple)) else [weights]:
        w = str(w)
        if w.lower().startswith(URL_PREFIXES):
            raise FileNotFoundError(f"{w}: this project never downloads weights; fetch the file and pass its path")
        backend_kind(w)  # raises for formats no backend runs
        p = Path(w) if Path(w).exists() else ROOT / w  # exported OpenVINO/ncnn models are folders
        if not p.exists() and Path(w).name == DEFAULT_WEIGHTS:
            raise FileNotFoundError(MISSING_DEFAULT)
        out.append(str(p) if p.exists() else w)
    return out


def model_names(model, data) -> dict:
    """The model's class names; only a model without names takes them from --data (else class0, class1, ...)."""
    names = getattr(model, "names", None)
    if not names and data:
        try:
            names = yaml_load(check_yaml(data)).get("names")
        except (FileNotFoundError, ValueError) as e:
            LOGGER.warning(f"WARNING: the model has no class names and --data could not give them ({e})")
    names = names_dict(names)
    nc = getattr(model, "nc", None) or getattr(model.model[-1], "nc", 0)
    return dict(names) if names else {i: f"class{i}" for i in range(int(nc))}


def check_half(half: bool, device: torch.device) -> bool:
    """FP16 inference only on CUDA; elsewhere say so and run FP32."""
    if half and device.type != "cuda":
        LOGGER.warning(f"WARNING: --half needs a CUDA device; running FP32 on {device.type}")
        return False
    return half


def check_view(view_img: bool, streams: bool) -> bool:
    """Show windows if asked (always for webcams/streams) and a display exists; else one line why not."""
    if not (view_img or streams):
        return False
    if display_available():
        return True
    if view_img:
        LOGGER.info("--view-img: no display available (headless OpenCV or no $DISPLAY), not showing images")
    return False


def is_stream_source(source: str) -> bool:
    """Webcam index, stream URL, or a .txt whose lines are all webcam indices / stream URLs."""
    if source.isnumeric():
        return True
    if source.lower().startswith(URL_PREFIXES):
        return Path(source).suffix[1:].lower() not in IMG_FORMATS + VID_FORMATS
    if source.endswith(".txt") and Path(source).is_file():
        lines = Path(source).read_text(encoding="utf-8", errors="ignore").split()
        return bool(lines) and all(x.isnumeric() or x.lower().startswith(URL_PREFIXES) for x in lines)
    return False


def open_source(source: str, imgsz, stride: int, vid_stride: int, auto: bool = True):
    """LoadStreams for webcams/streams, LoadImages for files, folders, globs, videos and .txt lists.
    -> (dataset, streams). letterbox auto=True (minimum rectangle) for PyTorch models, square for exported ones,
    as YOLOv5 does."""
    if is_stream_source(source):
        return LoadStreams(source, img_size=imgsz, stride=stride, auto=auto, vid_stride=vid_stride), True
    if source.lower().startswith(URL_PREFIXES):
        raise FileNotFoundError(f"--source {source}: this project never downloads; save the file and pass its path")
    try:
        return LoadImages(source, img_size=imgsz, stride=stride, auto=auto, vid_stride=vid_stride), False
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--source {source}: {e}") from None


def preprocess(im, device: torch.device, half: bool) -> torch.Tensor:
    """uint8 (3, h, w) or (b, 3, h, w) RGB numpy -> float (b, 3, h, w) in [0, 1] on device."""
    x = torch.from_numpy(im).to(device)
    x = x.half() if half else x.float()
    x /= 255
    return x[None] if x.ndim == 3 else x


class ResultSaver:
    """Everything detect.py writes for one image or frame: label rows, crops, the annotated image or video."""

    def __init__(self, save_dir: Path, names: dict, n_streams: int, save_img=True, save_txt=False, save_conf=False,
                 save_crop=False, view_img=False, line_thickness=3, hide_labels=False, hide_conf=False):
        self.save_dir, self.names = save_dir, names
        self.save_img, self.save_txt, self.save_conf, self.save_crop = save_img, save_txt, save_conf, save_crop
        self.view_img, self.lw, self.hide_labels, self.hide_conf = view_img, line_thickness, hide_labels, hide_conf
        self.vid_path, self.vid_writer = [None] * n_streams, [None] * n_streams
        self.windows = []

    def process(self, det: torch.Tensor, p: Path, im0, input_hw, frame: int, mode: str, vid_cap, i: int = 0) -> str:
        """Scale det (n, 6) from the input (h, w) to im0 (BGR) and write its outputs; -> '2 circles, ' log text."""
        txt_path = self.save_dir / "labels" / (p.stem + ("" if mode == "image" else f"_{frame}"))
        imc = im0.copy() if self.save_crop else im0
        annotator = Annotator(im0, line_width=self.lw, example=str(self.names))
        rows = []
        if len(det):
            det[:, :4] = scale_boxes(input_hw, det[:, :4], im0.shape).round()
            for *xyxy, conf, cls in reversed(det):  # lowest confidence first, so the best boxes are drawn on top
                if self.save_txt:
                    rows.append(txt_row(xyxy, conf, cls, im0.shape, self.save_conf) + "\n")
                if self.save_img or self.save_crop or self.view_img:
                    label = box_label(self.names, cls, conf, self.hide_labels, self.hide_conf)
                    annotator.box_label(xyxy, label, color=colors(int(cls), True))
                if self.save_crop:
                    file = self.save_dir / "crops" / crop_folder(class_name(self.names, cls)) / f"{p.stem}.jpg"
                    save_one_box(xyxy, imc, file=file, BGR=True)
        if rows:
            with open(f"{txt_path}.txt", "a") as f:
                f.writelines(rows)
        im0 = annotator.result()
        if self.view_img:
            self._show(p, im0)
        if self.save_img:
            self._save(im0, str(self.save_dir / p.name), mode, vid_cap, i)
        return count_summary(det[:, 5], self.names)

    def _show(self, p: Path, im0) -> None:
        if p not in self.windows:
            self.windows.append(p)
            cv2.namedWindow(str(p), cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            cv2.resizeWindow(str(p), im0.shape[1], im0.shape[0])
        cv2.imshow(str(p), im0)
        cv2.waitKey(1)

    def _save(self, im0, save_path: str, mode: str, vid_cap, i: int) -> None:
        """Images as files of the same name; video/stream frames into save_path with an .mp4 suffix."""
        if mode == "image":
            if not cv2.imwrite(save_path, im0):
                LOGGER.warning(f"WARNING: could not write {save_path}")
            return
        if self.vid_path[i] != save_path:  # a new video
            self.vid_path[i] = save_path
            if isinstance(self.vid_writer[i], cv2.VideoWriter):
                self.vid_writer[i].release()
            fps, w, h = 30.0, im0.shape[1], im0.shape[0]
            if vid_cap:
                fps = vid_cap.get(cv2.CAP_PROP_FPS)
                w, h = int(vid_cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(vid_cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = fps if math.isfinite(fps) and fps > 0 else 30.0
            path = str(Path(save_path).with_suffix(".mp4"))
            self.vid_writer[i] = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        self.vid_writer[i].write(im0)

    def close(self) -> None:
        """Finish the video files (an unreleased writer leaves an unplayable .mp4)."""
        for w in self.vid_writer:
            if isinstance(w, cv2.VideoWriter):
                w.release()


def log_summary(seen: int, dt, imgsz, save_dir: Path, save_txt: bool, save_img: bool) -> None:
    """YOLOv5's closing lines: per-image speed, then where the results went."""
    LOGGER.info(speed_line([x.t / seen * 1e3 for x in dt], (1, 3, *imgsz)))
    if save_txt or save_img:
        LOGGER.info(saved_line(save_dir, save_txt))


def _remove_if_empty(save_dir: Path) -> None:
    for d in (save_dir / "labels", save_dir):
        with contextlib.suppress(OSError):
            d.rmdir()


def prepare_model(weights, device: str, half: bool, dnn: bool, trust: bool, data):
    """Resolve and load the weights on the chosen device. -> (model, names, stride, device, half)."""
    weights = resolve_weights(weights)
    device = select_device(device)
    half = check_half(half, device)
    if dnn:
        LOGGER.warning("WARNING: --dnn (OpenCV DNN for ONNX models) is not supported; using the PyTorch model")
    model = load_model(weights, device, half, trust, data)
    names, stride = model_names(model, data), int(model.stride.max())
    return model, names, stride, device, half


def detect_all(model, dataset, saver: ResultSaver, streams: bool, device, half: bool, augment: bool,
               visualize: bool, nms: dict):
    """Pre-process, infer, NMS and save every image/frame/batch of `dataset`, logging one line each.
    -> (images seen, (pre-process, inference, NMS) stopwatches)."""
    seen, dt = 0, (Stopwatch(), Stopwatch(), Stopwatch())
    if device.type == "cuda" and getattr(model, "pt", True):
        model(torch.zeros(1, 3, *dataset.img_size, device=device).type_as(next(model.parameters())))  # warm-up
    for path, im, im0s, vid_cap, s in dataset:
        with dt[0]:
            x = preprocess(im, device, half)
        with dt[1]:
            stem = Path(path[0] if streams else path).stem
            vis = increment_path(saver.save_dir / stem, mkdir=True) if visualize else False
            pred = model(x, augment=augment, visualize=vis)
        with dt[2]:
            pred = non_max_suppression(pred, **nms)
        for i, det in enumerate(pred):
            seen += 1
            p, im0, frame = (path[i], im0s[i], dataset.count) if streams else (path, im0s, dataset.frame)
            s += f"{i}: " if streams else ""
            s += "%gx%g " % x.shape[2:]
            s += saver.process(det, Path(p), im0.copy(), x.shape[2:], frame, dataset.mode, vid_cap, i)
        LOGGER.info(f"{s}{'' if len(det) else '(no detections), '}{dt[1].dt * 1e3:.1f}ms")
    return seen, dt


@smart_inference_mode()
def run(weights=ROOT / DEFAULT_WEIGHTS, source=ROOT / "data/images", data=ROOT / "data/shapes.yaml", imgsz=(640, 640),
        conf_thres=0.25, iou_thres=0.45, max_det=1000, device="", view_img=False, save_txt=False, save_conf=False,
        save_crop=False, nosave=False, classes=None, agnostic_nms=False, augment=False, visualize=False,
        update=False, project=ROOT / "runs/detect", name="exp", exist_ok=False, line_thickness=3,
        hide_labels=False, hide_conf=False, half=False, dnn=False, vid_stride=1, trust_weights=False) -> Path:
    """Detect objects in `source` and save the results under project/name (incremented). -> the run directory."""
    source = str(source)
    check_thresholds(conf_thres, iou_thres)
    model, names, stride, device, half = prepare_model(weights, device, half, dnn, trust_weights, data)
    imgsz = check_img_size(_hw(imgsz), s=stride)
    dataset, streams = open_source(source, imgsz, stride, vid_stride, auto=getattr(model, "pt", True))

    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    saver = ResultSaver(save_dir, names, len(dataset) if streams else 1,
                        save_img=not nosave and not (streams and source.endswith(".txt")), save_txt=save_txt,
                        save_conf=save_conf, save_crop=save_crop, view_img=check_view(view_img, streams),
                        line_thickness=line_thickness, hide_labels=hide_labels, hide_conf=hide_conf)
    nms = {"conf_thres": conf_thres, "iou_thres": iou_thres, "classes": classes, "agnostic": agnostic_nms,
           "max_det": max_det}
    try:
        seen, dt = detect_all(model, dataset, saver, streams, device, half, augment, visualize, nms)
    finally:
        saver.close()

    if not seen:
        _remove_if_empty(save_dir)
        raise ValueError(f"--source {source}: no readable images or video frames (see the warnings above)")
    log_summary(seen, dt, imgsz, save_dir, save_txt, saver.save_img)
    if update:
        strip_optimizer(resolve_weights(weights)[0])  # drop optimizer/EMA state from the checkpoint file
    return save_dir


def _hw(imgsz) -> list:
    """--imgsz as [h, w] from one or two values."""
    hw = [int(imgsz)] * 2 if isinstance(imgsz, (int, float)) else [int(x) for x in imgsz]
    if len(hw) == 1:
        hw *= 2
    if len(hw) != 2:
        raise ValueError(f"--imgsz {' '.join(map(str, hw))}: give one size (square) or two (h w)")
    return hw


def parse_opt(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Detect objects in images, videos, folders, webcams and streams.")
    parser.add_argument("--weights", nargs="+", type=str, default=str(ROOT / DEFAULT_WEIGHTS),
                        help="model path(s); several run as an ensemble")
    parser.add_argument("--source", type=str, default=str(ROOT / "data/images"),
                        help="file, dir, glob, video, .txt list, webcam index (0) or stream URL")
    parser.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"),
                        help="dataset.yaml, read for class names only when the model has none")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--view-img", action="store_true", help="show results (needs a display)")
    parser.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    parser.add_argument("--nosave", action="store_true", help="do not save images/videos")
    parser.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--augment", action="store_true", help="augmented inference (TTA)")
    parser.add_argument("--visualize", action="store_true", help="save feature maps")
    parser.add_argument("--update", action="store_true", help="strip the optimizer from the (first) weights file")
    parser.add_argument("--project", default=str(ROOT / "runs/detect"), help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    parser.add_argument("--hide-labels", default=False, action="store_true", help="hide labels")
    parser.add_argument("--hide-conf", default=False, action="store_true", help="hide confidences")
    parser.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    parser.add_argument("--dnn", action="store_true", help="OpenCV DNN for ONNX inference (not supported)")
    parser.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    parser.add_argument("--trust-weights", action="store_true",
                        help="allow checkpoints that are arbitrary pickles, e.g. YOLOv5 last.pt (only files you trust)")
    opt = parser.parse_args(argv)
    opt.imgsz *= 2 if len(opt.imgsz) == 1 else 1  # expand
    return opt


def main(opt: argparse.Namespace) -> None:
    set_logging()
    keep_freed_memory()  # the script's own process: reuse freed memory instead of page-faulting each forward
    LOGGER.info(colorstr("detect: ") + ", ".join(f"{k}={v}" for k, v in vars(opt).items()))
    run(**vars(opt))


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, UntrustedCheckpointError) as err:  # OSError includes ConnectionError, disk full
        sys.exit(f"ERROR: {err}")
