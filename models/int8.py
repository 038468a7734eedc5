"""INT8 post-training quantization for the ONNX Runtime and OpenVINO exports, calibrated on real images.

Calibration images come from a dataset's train split and are prepared exactly as val.py feeds a fixed-shape export
(long side resized to the export size, letterboxed, RGB, /255). ONNX uses onnxruntime's static quantization (QDQ,
per-channel int8 weights, 7-bit where --int8-reduce-range says so, uint8 activations); OpenVINO uses NNCF. In both
the stem conv and Detect's box convs and decode stay in float: see FLOAT_LAYERS. Six rewrites of the quantized
ONNX graph then save ONNX Runtime work: concats whose inputs share one range (_share_concat_ranges), HardSigmoid as
an int8 requantization (_hard_sigmoids_as_requantizations), 2x nearest upsamples as byte copies
(_upsamples_as_byte_copies), the float box convs as integer matmuls with float outputs
(_float_convs_as_integer_matmuls), the score convs padded to whole blocks of 16 channels (_pad_convs_to_blocks) and
the joins of reshaped tensors done channels-last (_channels_last_joins). Results are written atomically next to the
weights, with the fp32 exports' metadata.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from utils.augmentations import letterbox
from utils.files import ROOT, atomic_write, yaml_save
from utils.logger import LOGGER

INT8_FORMATS = ("onnx", "openvino")
DEFAULT_DATA = ROOT / "data" / "shapes.yaml"  # --int8 without --data calibrates on the built-in dataset
DEFAULT_IMAGES = 300  # NNCF's default subset size; more images barely move the ranges (see README)
# Layers kept in float (module indices of the model's top-level Sequential, as in the ONNX node names /model.<i>/):
# - the stem (layer 0): a 3-channel conv on the full-resolution image is slower in int8 than in float on CPUs
#   (ONNX Runtime's int8 kernels gain nothing at 3 input channels and the input must be quantized first);
# - Detect (the last layer), except its score convs: the box convs produce logits that the decode turns into
#   pixels (offsets times up to the stride, sizes squared times the anchors); int8 there moves boxes by whole
#   pixels and costs mAP50-95. The score convs (objectness and classes, na·(nc+1) of the na·(nc+5) channels, the
#   largest 1x1 convs of small models at nc=80), their sigmoids and the score rows up to the final concat with the
#   boxes are int8: in the README's accuracy table that moved mAP50-95 by under 0.003. (The quantizer leaves the
#   box convs float; the ONNX export then runs them on the int8 bytes with int8 weights and float outputs:
#   _float_convs_as_integer_matmuls.)
FLOAT_LAYERS = ("first", "last")
REDUCE_RANGE = ("auto", "on", "off")  # --int8-reduce-range: 7-bit ONNX weights on CPUs without int8 dot products
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of x86 int8 dot-product instructions
COMPARE_IMAGES = 32  # calibration images on which auto compares 8- and 7-bit weights against fp32


def weight_bits_to_try(choice: str, flags=None) -> tuple:
    """--int8-reduce-range -> the widths of the ONNX INT8 model's weights to quantize with: (8,), (7,) or (8, 7).

    Without VNNI, ONNX Runtime's x86 uint8 x int8 convolution adds pairs of byte products in 16 bits (vpmaddubsw),
    which saturate where activations and weights are both near their extremes (2 x 255 x 127 > 32,767); with 7-bit
    weights (onnxruntime's reduce_range) no pair can, but every weight loses a bit. Which costs more depends on the
    model (README), so 'auto' quantizes both ways where export runs on an x86 CPU with AVX2 and none of
    INT8_DOT_FLAGS and keeps the one closer to fp32 (quantize_onnx); elsewhere (VNNI or AMX, ARM, flags unknown) 8
    bits. 'on' / 'off': 7 / 8 bits anywhere. `flags`: the CPU's /proc/cpuinfo flags (default: this CPU's)."""
    if choice not in REDUCE_RANGE:
        raise ValueError(f"--int8-reduce-range {choice}: use one of {', '.join(REDUCE_RANGE)}")
    if choice != "auto":
        return (7,) if choice == "on" else (8,)
    if flags is None:
        from utils.torch_utils import cpu_flags
        flags = cpu_flags()
    return (8, 7) if "avx2" in flags and not any(f in flags for f in INT8_DOT_FLAGS) else (8,)


class CalibrationImages:
    """Up to `n` images of a dataset split, yielded `batch` at a time as a float32 (batch, 3, h, w) RGB array in
    [0, 1]: the batch of the model being quantized (export.py --batch-size without --dynamic fixes it in the graph).

    The images are spread evenly over the split (sorted file order), decoded lazily on every pass (NNCF reads the
    set more than once) and prepared as val.py prepares them: long side resized to max(h, w), letterboxed to (h, w)
    with YOLOv5's grey. The last batch is filled up with the first images. Images that fail to decode are skipped;
    if all do, the constructor raises ValueError.
    """

    def __init__(self, data, imgsz: Sequence[int], n: int = DEFAULT_IMAGES, stride: int = 32, batch: int = 1):
        from utils.dataloaders import LoadImagesAndLabels
        from utils.datasets_yaml import check_dataset
        if n < 1:
            raise ValueError(f"--int8-images {n}: calibration needs at least 1 image")
        if data is None:
            data = DEFAULT_DATA
            LOGGER.info(f"INT8: no --data given, calibrating on the built-in dataset {DEFAULT_DATA.name}")
        info = check_dataset(data)
        self.h, self.w, self.batch = int(imgsz[0]), int(imgsz[-1]), max(1, int(batch))
        self.source = info["train"]
        self.dataset = LoadImagesAndLabels(self.source, img_size=max(self.h, self.w), batch_size=1, augment=False,
                                           rect=False, stride=stride, prefix="INT8 calibration: ")
        picks = np.unique(np.linspace(0, self.dataset.n - 1, min(n, self.dataset.n)).round().astype(int))
        self.indices = [int(i) for i in picks if self._decodes(int(i))]  # decoded once up front to refuse early
        if not self.indices:
            raise ValueError(f"{self.source}: none of the {len(picks)} calibration images could be decoded")
        LOGGER.info(f"INT8: calibrating on {len(self.indices)} of {self.dataset.n} images in {self.source}"
                    + (f", in batches of {self.batch}" if self.batch > 1 else ""))

    def _decodes(self, i: int) -> bool:
        self.dataset.load_image(i)
        return i not in self.dataset.broken  # the loader gives a grey stand-in for an undecodable file

    def __len__(self) -> int:
        """Number of batches."""
        return -(-len(self.indices) // self.batch)

    def __iter__(self) -> Iterator[np.ndarray]:
        return map(self._batch, range(len(self)))

    def sample(self, n: int) -> list:
        """Up to n of the batches, spread over the set."""
        return [self._batch(k) for k in range(0, len(self), max(1, len(self) // n))[:n]]

    def _batch(self, k: int) -> np.ndarray:
        picks = [self.indices[(k * self.batch + j) % len(self.indices)] for j in range(self.batch)]
        return np.concatenate([self._prepare(i) for i in picks])

    def _prepare(self, i: int) -> np.ndarray:
        im = letterbox(self.dataset.load_image(i)[0], (self.h, self.w), auto=False, scaleup=False)[0]
        return np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])[None].astype(np.float32) / 255


def _float_prefixes(n_layers: int) -> tuple:
    """ONNX node-name prefixes of the layers in FLOAT_LAYERS for a model with n_layers top-level modules."""
    index = {"first": 0, "last": n_layers - 1}
    return tuple(f"/model.{index[k]}/" for k in FLOAT_LAYERS)


def _score_path(graph, n_layers: int) -> set:
    """Names of the Detect nodes that compute scores only: its score convs and every later node whose activation
    inputs all come from them (sigmoids, the transposes and reshapes to rows, the concat of the levels).
    Detect._forward_export traces each level as a box conv, then a score conv, so Detect's convs go box, score, box,
    score, ... Empty if they do not pair up (all of Detect float)."""
    detect = _float_prefixes(n_layers)[-1]
    nodes = [n for n in graph.node if n.name.startswith(detect)]
    convs = [n for n in nodes if n.op_type == "Conv"]
    if not convs or len(convs) % 2:
        return set()
    names = {n.name for n in convs[1::2]}
    scores = {n.output[0] for n in convs[1::2]}  # tensors computed from the score convs alone
    consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for n in nodes:  # graph order is topological
        acts = [t for t in n.input if t and t not in consts]  # shapes of reshapes etc. are constants
        if n.name not in names and n.op_type != "Shape" and acts and all(t in scores for t in acts):
            names.add(n.name)
            scores.update(n.output)
    return names


def _in_float(name: str, prefixes: tuple, score_path: set) -> bool:
    """Whether a node (ONNX name, or an OpenVINO op named after one: '<onnx name>/WithoutBiases') stays float."""
    return name.startswith(prefixes) and name.split("/WithoutBiases")[0] not in score_path


def _own_initializers(proto, onnx) -> None:
    """Give every Identity of an initializer its own copy. torch.onnx shares equal tensors (e.g. the all-zero conv
    biases of a freshly initialised model) through Identity nodes; the quantizer only quantizes a bias that is an
    initializer, and a conv with a float bias stays a float conv."""
    init = {t.name: t for t in proto.graph.initializer}
    for node in [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in init]:
        copy = onnx.TensorProto()
        copy.CopyFrom(init[node.input[0]])
        copy.name = node.output[0]
        proto.graph.initializer.append(copy)
        proto.graph.node.remove(node)


def _graph_index(proto) -> tuple:
    """({initializer name: tensor}, {tensor name: the node that makes it}, {tensor name: [nodes that read it]})."""
    readers: dict = {}
    for n in proto.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    return ({t.name: t for t in proto.graph.initializer}, {o: n for n in proto.graph.node for o in n.output},
            readers)


def _splice(proto, old: list, new: list) -> None:
    """Replace the nodes `old` by `new`, in order, where the first of `old` stood (keeps the graph sorted when
    `new` only reads what `old` read)."""
    i = list(proto.graph.node).index(old[0])
    for node in old:
        proto.graph.node.remove(node)
    _insert(proto, i, new)


def _insert(proto, i: int, nodes: list) -> None:
    """Put `nodes`, in order, at position i of the graph's node list."""
    for k, node in enumerate(nodes):
        proto.graph.node.insert(i + k, node)


def _read_through(proto, readers: dict, after, node) -> None:
    """Insert `node`, which reads the first output t of `after`, right behind it, and make every other reader of t
    (the nodes in `readers`, a graph output) read the output of `node` instead."""
    t, new = after.output[0], node.output[0]
    for r in readers.get(t, []):
        r.input[:] = [new if x == t else x for x in r.input]
    for o in proto.graph.output:
        if o.name == t:
            o.name = new
    _insert(proto, list(proto.graph.node).index(after) + 1, [node])


def _drop_unread(proto, names) -> None:
    """Remove the initializers, and the nodes making the tensors, among `names` that no node and no graph output
    reads any more (what a rewrite left behind)."""
    init, producer, readers = _graph_index(proto)
    outputs = {o.name for o in proto.graph.output}
    for t in dict.fromkeys(names):
        if readers.get(t) or t in outputs:
            continue
        if t in producer:
            proto.graph.node.remove(producer[t])
        elif t in init:
            proto.graph.initializer.remove(init[t])


KEPT_JOIN_WIDENING = 1.1  # how much a concat that requantizes a ReLU input may widen the ranges it shares


def _share_concat_ranges(proto, numpy_helper, max_widening: float = 4.0) -> int:
    """Give the inputs and the output of a quantized Concat one quantization range, the union of theirs, and
    requantize the int32 biases of the convs that read a tensor whose scale changed. ONNX Runtime then fuses such a
    concat into a QLinearConcat that copies bytes instead of requantizing every input through a table (the
    ShuffleNet units' branch concats, C3's, the PAN's). The quantizer names one scale/zero-point pair per tensor and
    lets shape ops (Reshape, Slice, Split, Unsqueeze, Resize, ...) reuse their input's pair, so the pairs met at
    concats are merged into groups (union-find on their names) and every fused int8 op stays consistent.

    A merge that widens a group's range more than `max_widening` times (the narrower input would lose more than two
    bits) is refused, and that concat requantizes as before. A range starting at 0 is never moved below 0: the
    quantizer drops a ReLU in front of a QuantizeLinear whose range starts at 0, leaving the clipping to the uint8
    bytes, and moved below 0 those bytes would pass negative values on. (Merged regardless, the seed's ReLU backbone
    joined its SiLU head, and yolov5n_shuffle's int8 mAP50-95 on the built-in val split at 640 fell from 0.546 to
    0.465.) Where such an input meets negative ranges, it keeps its range and is requantized by the concat; once all
    other merges are done, the output and the other inputs share one range that covers it too, if that widens none
    of their ranges by more than KEPT_JOIN_WIDENING (more costs accuracy: sharing the head's range widened the seed's
    P4 join output 2x and its int8 mAP50-95 fell from 0.548 to 0.543). The seed's P3 join then copies the head's
    bytes and requantizes only the backbone's. Returns the number of pairs whose range changed."""
    init, producer, readers = _graph_index(proto)

    def span(pair) -> tuple:  # the float values of bytes 0 and 255
        s, z = float(numpy_helper.to_array(init[pair[0]])), int(numpy_helper.to_array(init[pair[1]]))
        return -z * s, (255 - z) * s

    parent, ranges = {}, {}  # union-find over pairs; a group's root -> its (lo, hi)

    def root(k):
        if k not in parent:
            parent[k], ranges[k] = k, span(k)
        while parent[k] != k:
            k = parent[k]
        return k

    def merge(roots: set, lo: float, hi: float) -> None:
        top = roots.pop()
        for r in roots:
            parent[r] = top
        ranges[top] = (lo, hi)

    joins = []  # concats where a range starting at 0 meets negative ones

    for n in proto.graph.node:
        if n.op_type != "Concat":
            continue
        dqs = [producer.get(t) for t in n.input]
        out = readers.get(n.output[0], [])
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in dqs) or \
                len(out) != 1 or out[0].op_type != "QuantizeLinear":
            continue  # a concat left in float (Detect's box path, the final output)
        pairs = [(d.input[1], d.input[2]) for d in dqs] + [(out[0].input[1], out[0].input[2])]
        if any(s not in init or z not in init or numpy_helper.to_array(init[z]).dtype != np.uint8
               for s, z in pairs):
            continue
        roots = {root(p) for p in pairs}
        lo, hi = min(0.0, *(ranges[r][0] for r in roots)), max(0.0, *(ranges[r][1] for r in roots))
        if lo < 0 and any(ranges[r][0] == 0 for r in roots):
            joins.append(pairs)  # a ReLU-clipped input meets negative ranges: see below, once all else is merged
            continue
        if any(hi - lo > max_widening * (ranges[r][1] - ranges[r][0]) for r in roots):
            continue
        merge(roots, lo, hi)
    for pairs in joins:  # the ReLU-clipped inputs keep their ranges; the output and the others share one
        roots = {root(p) for p in pairs}
        lo, hi = min(0.0, *(ranges[r][0] for r in roots)), max(0.0, *(ranges[r][1] for r in roots))
        kept = {r for r in roots if ranges[r][0] == 0}
        roots -= kept
        if root(pairs[-1]) in roots and len(roots) > 1 and \
                all(hi - lo <= KEPT_JOIN_WIDENING * (ranges[r][1] - ranges[r][0]) for r in roots):
            merge(roots, lo, hi)

    old_scale = {}  # scale name -> its scale before, for the bias requantization below
    for p in parent:
        lo, hi = ranges[root(p)]
        scale = np.float32((hi - lo) / 255)
        zp = np.uint8(np.clip(round(-lo / float(scale)), 0, 255))
        s, z = float(numpy_helper.to_array(init[p[0]])), int(numpy_helper.to_array(init[p[1]]))
        if s != scale or z != zp:
            old_scale[p[0]] = s
            init[p[0]].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), p[0]))
            init[p[1]].CopyFrom(numpy_helper.from_array(np.array(zp, np.uint8), p[1]))
    for n in proto.graph.node:  # a quantized bias is stored at scale input scale x weight scale
        if n.op_type != "Conv" or len(n.input) < 3:
            continue
        x, b = producer.get(n.input[0]), producer.get(n.input[2])
        if x is None or b is None or x.op_type != "DequantizeLinear" or b.op_type != "DequantizeLinear" or \
                x.input[1] not in old_scale or b.input[0] not in init:
            continue
        q, bs = numpy_helper.to_array(init[b.input[0]]), numpy_helper.to_array(init[b.input[1]])
        new_bs = (bs.astype(np.float64) * (float(numpy_helper.to_array(init[x.input[1]])) / old_scale[x.input[1]]))
        q = np.clip(np.round(q.astype(np.float64) * bs / new_bs), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        init[b.input[0]].CopyFrom(numpy_helper.from_array(q, b.input[0]))
        init[b.input[1]].CopyFrom(numpy_helper.from_array(new_bs.astype(np.float32), b.input[1]))
    return len(old_scale)


HSIG_STEP = 1 / 254  # the scale at which the bytes of a requantized HardSigmoid are read: 0.5 falls on byte 127


def _hard_sigmoids_as_requantizations(proto, numpy_helper, helper) -> int:
    """Compute every quantized HardSigmoid (Hardswish is x * HardSigmoid(x) in ONNX) as a uint8 requantization.

    The quantizer leaves HardSigmoid in float: dequantize, HardSigmoid, quantize, three passes over the tensor.
    But clip(alpha x + beta, 0, 1) is an affine map of x clipped to [0, 1], which a requantization does in one int8
    op: x + 0 (an Add with a zero constant, fused by ONNX Runtime into QLinearAdd) quantized at scale step/alpha and
    zero point beta/step saturates to bytes 0..255, and those bytes read at scale `step`, zero point 0 are the
    HardSigmoid: exact to rounding for alpha x + beta in [0, 1] (with step 1/254, bytes 0..254), and 255/254
    instead of 1 above that. Only a HardSigmoid fed by a DequantizeLinear and read by one QuantizeLinear (uint8),
    whose bytes only DequantizeLinear nodes read, with beta a whole number of steps, is rewritten. Returns how many
    were."""
    init, producer, readers = _graph_index(proto)
    nodes = list(proto.graph.node)
    done, replaced = 0, set()
    for n in nodes:
        if n.op_type != "HardSigmoid":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        dq, q = producer.get(n.input[0]), readers.get(n.output[0], [])
        zero_point = round(beta / HSIG_STEP)
        if dq is None or dq.op_type != "DequantizeLinear" or len(q) != 1 or q[0].op_type != "QuantizeLinear" or \
                alpha <= 0 or abs(beta / HSIG_STEP - zero_point) > 1e-3 or not 0 <= zero_point <= 255 or \
                q[0].input[2] not in init or numpy_helper.to_array(init[q[0].input[2]]).dtype != np.uint8 or \
                any(r.op_type != "DequantizeLinear" for r in readers.get(q[0].output[0], [])):
            continue  # not the quantizer's DQ -> HardSigmoid -> Q -> DQ pattern: left as it is
        q = q[0]
        name = n.output[0]
        replaced.update(q.input[1:3])
        consts = {f"{name}_requant_scale": np.array(HSIG_STEP / alpha, np.float32),
                  f"{name}_requant_zero_point": np.array(zero_point, np.uint8),
                  f"{name}_read_scale": np.array(HSIG_STEP, np.float32),
                  f"{name}_read_zero_point": np.array(0, np.uint8),
                  f"{name}_zero_quantized": np.array(0, np.uint8),
                  f"{name}_zero_scale": np.array(1, np.float32)}
        proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
        q.input[1], q.input[2] = f"{name}_requant_scale", f"{name}_requant_zero_point"
        for r in readers.get(q.output[0], []):  # the DequantizeLinear nodes that read the bytes
            r.input[1], r.input[2] = f"{name}_read_scale", f"{name}_read_zero_point"
        zero = helper.make_node("DequantizeLinear", [f"{name}_zero_quantized", f"{name}_zero_scale",
                                                     f"{name}_read_zero_point"], [f"{name}_zero"],
                                name=f"{n.name}_zero")
        add = helper.make_node("Add", [n.input[0], f"{name}_zero"], [name], name=f"{n.name}_as_requantization")
        _splice(proto, [n], [zero, add])
        done += 1
    _drop_unread(proto, replaced)  # the HardSigmoid output's own scale and zero point
    return done


def _float_convs_as_integer_matmuls(proto, numpy_helper, helper, weight_max: int = 127) -> int:
    """Run every float 1x1 conv that reads a dequantized uint8 tensor (Detect's box convs, kept float) as an integer
    matmul over the channels-last bytes, with float outputs.

    Such a conv costs ONNX Runtime four passes over its input: the transpose out of its channels-last int8 layout, the
    dequantize, the reorder into its blocked float layout and the float conv (yolov5n_shuffle at 640: 0.34 ms at P3
    alone in one profile). A 1x1 conv is a matmul over the channels, and channels-last bytes are its rows already:
    Transpose to NHWC (which ONNX Runtime cancels against its own layout change) -> MatMulInteger with the weights
    quantized per output channel (symmetric, +-weight_max: 127, or 64 where the model's convs have 7-bit weights) ->
    int32 sums, exact -> Transpose back to NCHW -> Cast -> Mul by input scale x weight scale -> Add the float bias.
    Only the weights are rounded (half a step of each output channel's largest weight); the outputs stay float, so
    boxes are not moved by an output step. Only a Conv with a float weight initializer, kernel 1x1, stride 1, no
    padding, one group, whose input comes from a DequantizeLinear of uint8 with one scale and zero point, is
    rewritten. Returns how many were."""
    init, producer, readers = _graph_index(proto)
    done, dropped = 0, []
    for n in [n for n in proto.graph.node if n.op_type == "Conv"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = numpy_helper.to_array(init[n.input[1]]) if n.input[1] in init else None
        dq = producer.get(n.input[0])
        if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[2:] != (1, 1) or attrs.get("group", 1) != 1 \
                or any(v != 1 for v in attrs.get("strides", [1]) + attrs.get("dilations", [1])) \
                or any(attrs.get("pads", [0])) or dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) != 3:
            continue
        x_scale, x_zero = (_constant_value(t, init, producer, numpy_helper) for t in dq.input[1:])
        if x_scale is None or x_zero is None or x_scale.size != 1 or x_zero.size != 1 or x_zero.dtype != np.uint8:
            continue
        bias = numpy_helper.to_array(init[n.input[2]]) if len(n.input) > 2 and n.input[2] in init else None
        if len(n.input) > 2 and n.input[2] and bias is None:
            continue  # a bias computed in the graph: left as it is
        w = w[:, :, 0, 0].astype(np.float64)
        w_scale = np.abs(w).max(1) / weight_max
        w_scale[w_scale == 0] = 1
        w_int = np.clip(np.round(w / w_scale[:, None]), -weight_max, weight_max).astype(np.int8)
        name = n.output[0]
        consts = {f"{name}_weight_int8": w_int.T.copy(), f"{name}_weight_zero_point": np.array(0, np.int8),
                  f"{name}_scale": (float(x_scale) * w_scale).astype(np.float32).reshape(-1, 1, 1),
                  f"{name}_bias": (np.zeros(len(w)) if bias is None else bias).astype(np.float32).reshape(-1, 1, 1)}
        proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
        new = [helper.make_node("Transpose", [dq.input[0]], [f"{name}_nhwc"], perm=[0, 2, 3, 1],
                                name=f"{name}_to_nhwc"),
               helper.make_node("MatMulInteger", [f"{name}_nhwc", f"{name}_weight_int8", dq.input[2],
                                                  f"{name}_weight_zero_point"], [f"{name}_sums"],
                                name=f"{name}_integer_matmul"),
               helper.make_node("Transpose", [f"{name}_sums"], [f"{name}_sums_nchw"], perm=[0, 3, 1, 2],
                                name=f"{name}_to_nchw"),
               helper.make_node("Cast", [f"{name}_sums_nchw"], [f"{name}_sums_float"], to=1, name=f"{name}_to_float"),
               helper.make_node("Mul", [f"{name}_sums_float", f"{name}_scale"], [f"{name}_scaled"],
                                name=f"{name}_scaled"),
               helper.make_node("Add", [f"{name}_scaled", f"{name}_bias"], [name], name=f"{name}_biased")]
        _splice(proto, [n], new)
        dropped += [dq.output[0]] + list(n.input[1:])
        done += 1
    _drop_unread(proto, dropped)  # the float weights and biases, and each DequantizeLinear nothing else reads
    return done


def _pad_convs_to_blocks(proto, numpy_helper, helper, convs, block: int = 16) -> int:
    """Give each quantized conv named in `convs` zero filters up to a multiple of `block` output channels, and slice
    the extra channels off its bytes right after its QuantizeLinear.

    ONNX Runtime's int8 conv takes a slow path where the output channels are not a multiple of 16: in one profile
    (2 threads, 64 -> N channels at 80x80) N = 243 took 0.49 ms and N = 256 0.32 ms, N = 27 0.09 and N = 32 0.06 ms.
    Detect's score convs have na·(nc+1) channels (243 at 80 classes, 27 at 8); the slice is one copy of their bytes.
    Exact: the kept channels are the same values. A padded filter has weight scale 1 and a zero bias at scale input
    scale x 1 (ONNX Runtime fuses the conv only where every bias scale is input scale x weight scale). Only a Conv
    whose weights and bias come from DequantizeLinear (per output channel, as the quantizer writes them) and whose
    output one QuantizeLinear reads is padded. Returns how many were."""
    init, producer, readers = _graph_index(proto)
    done = 0
    for n in [n for n in proto.graph.node if n.op_type == "Conv" and n.name in convs]:
        parts = [producer.get(t) for t in n.input[:3]] + [None] * (3 - len(n.input))
        q = readers.get(n.output[0], [])
        if any(p is None or p.op_type != "DequantizeLinear" for p in parts) or len(q) != 1 or \
                q[0].op_type != "QuantizeLinear" or not all(t in init for p in parts[1:] for t in p.input):
            continue
        x_scale = _constant_value(parts[0].input[1], init, producer, numpy_helper)
        weights, bias = ([numpy_helper.to_array(init[t]) for t in p.input] for p in parts[1:])
        channels = len(weights[0])
        padded = -(-channels // block) * block
        if x_scale is None or x_scale.size != 1 or padded == channels or \
                any(a.shape[:1] != (channels,) for a in weights + bias):
            continue
        fill = {0: 0, 1: 1.0}  # weights and zero points 0, weight scale 1
        for k, (t, a) in enumerate(zip(parts[1].input, weights)):
            extra = np.full((padded - channels, *a.shape[1:]), fill.get(k, 0), a.dtype)
            init[t].CopyFrom(numpy_helper.from_array(np.concatenate([a, extra]), t))
        for k, (t, a) in enumerate(zip(parts[2].input, bias)):  # bias, its scale, its zero point
            extra = np.full(padded - channels, x_scale.astype(np.float32) if k == 1 else 0, a.dtype)
            init[t].CopyFrom(numpy_helper.from_array(np.concatenate([a, extra]), t))
        q = q[0]
        name = q.output[0]
        consts = {f"{name}_starts": [0], f"{name}_ends": [channels], f"{name}_axes": [1]}
        proto.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
        _read_through(proto, readers, q, helper.make_node("Slice", [name, *consts], [f"{name}_kept"],
                                                          name=f"{name}_kept_channels"))
        _forget_shapes(proto, [n.output[0], name])  # now `padded` channels wide
        done += 1
    return done


def _channels_last_joins(proto, helper) -> int:
    """Join channels-last every quantized 4-D concat on channels one of whose inputs comes from a Reshape (directly or
    through a QuantizeLinear).

    ONNX Runtime runs int8 convs channels-last and moves its layout transposes through the ops around them, but not
    through a Reshape such as the ShuffleNet units' channel shuffle. A concat of such a tensor (the seed's PAN joins
    with its backbone) therefore ran channels-first: its other inputs were transposed to NCHW and its output back to
    NHWC for the convs that read it, two passes over the larger tensors (0.13 + 0.05 ms at P3 in a profile of
    yolov5n_shuffle at 640). Written as Transpose to NHWC of each input's bytes -> the same DequantizeLinear ->
    Concat on the last axis -> the same QuantizeLinear -> Transpose back to NCHW, the runtime cancels every transpose
    but the one of the reshaped input. The same bytes. Returns how many concats were rewritten."""
    init, producer, readers = _graph_index(proto)

    def four_d(t: str) -> bool:  # made, through quantize/dequantize nodes, by a 2-D conv or a 4-D transpose
        node = producer.get(t)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node = producer.get(node.input[0])
        if node is None or node.op_type not in ("Conv", "Transpose"):
            return False
        if node.op_type == "Transpose":
            return len(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"), [])) == 4
        w = producer.get(node.input[1])
        w = init.get(w.input[0] if w is not None and w.op_type == "DequantizeLinear" else node.input[1])
        return w is not None and len(w.dims) == 4

    done, dropped = 0, []
    for n in [n for n in proto.graph.node if n.op_type == "Concat"]:
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), None)
        dqs = [producer.get(t) for t in n.input]
        out = readers.get(n.output[0], [])
        if axis != 1 or not all(d is not None and d.op_type == "DequantizeLinear" and len(d.input) == 3
                                for d in dqs) or len(out) != 1 or out[0].op_type != "QuantizeLinear":
            continue
        made = [producer.get(d.input[0]) for d in dqs]  # the bytes' producers, looking through a QuantizeLinear
        made = [producer.get(m.input[0]) if m is not None and m.op_type == "QuantizeLinear" else m for m in made]
        if not any(m is not None and m.op_type == "Reshape" for m in made) or not any(map(four_d, n.input)):
            continue
        name = n.output[0]
        new, inputs = [], []
        for k, d in enumerate(dqs):
            t = f"{name}_input{k}_nhwc"
            new += [helper.make_node("Transpose", [d.input[0]], [t], perm=[0, 2, 3, 1], name=t),
                    helper.make_node("DequantizeLinear", [t, *d.input[1:]], [f"{t}_float"], name=f"{t}_float")]
            inputs.append(f"{t}_float")
        _insert(proto, list(proto.graph.node).index(n), new)
        n.input[:] = inputs
        for a in n.attribute:
            if a.name == "axis":
                a.i = 3
        q = out[0]
        back = f"{q.output[0]}_nchw"
        _read_through(proto, readers, q, helper.make_node("Transpose", [q.output[0]], [back], perm=[0, 3, 1, 2],
                                                          name=back))
        _forget_shapes(proto, [n.output[0], q.output[0]])  # now channels-last
        dropped += [d.output[0] for d in dqs]
        done += 1
    _drop_unread(proto, dropped)  # the channels-first DequantizeLinear nodes
    return done


def _forget_shapes(proto, names) -> None:
    """Drop the recorded shapes (value_info) of tensors a rewrite gave another shape, which ONNX Runtime would
    otherwise warn about when it loads the model."""
    names = set(names)
    stale = [v for v in proto.graph.value_info if v.name in names]
    for v in stale:
        proto.graph.value_info.remove(v)


def _constant_value(name: str, init: dict, producer: dict, numpy_helper):
    """The array behind a tensor name that an initializer or a Constant node holds, else None."""
    if name in init:
        return numpy_helper.to_array(init[name])
    node = producer.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _upsamples_as_byte_copies(proto, numpy_helper, helper) -> int:
    """Run every quantized 2x nearest upsample as two copies of contiguous bytes.

    The quantizer leaves Resize between a DequantizeLinear and a QuantizeLinear of the same scale and zero point, and
    ONNX Runtime runs it on the uint8 tensor in its channels-last int8 layout, where a nearest resize takes a generic
    path that indexes every byte (yolov5l_shuffle's two upsamples: 3.9 ms, against 1.0 ms for the float model's
    blocked ones). In channels-last order a 2x nearest upsample is row copies: a tensor concatenated with itself
    along C, (N, H, W, 2C), read as (N, H, 2W, C) has every pixel twice, and the same along W doubles every row. So
    DQ -> Resize -> Q becomes Transpose to NHWC -> Concat -> Reshape -> Concat -> Reshape -> Transpose back, on the
    bytes; ONNX Runtime cancels the first transpose against its own layout change and folds the target shapes
    (Shape -> Gather -> Mul) for a fixed input size. Exact: the same bytes as the Resize. Only a Resize with scales
    (1, 1, 2, 2), mode nearest, asymmetric coordinates and floor rounding (how torch exports nn.Upsample) whose DQ and
    Q hold equal scales and zero points is rewritten. Returns how many were."""
    init, producer, readers = _graph_index(proto)
    done, dropped = 0, []
    for r in [n for n in proto.graph.node if n.op_type == "Resize"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in r.attribute}
        dq, q = producer.get(r.input[0]), readers.get(r.output[0], [])
        scales = _constant_value(r.input[2], init, producer, numpy_helper) if len(r.input) > 2 and r.input[2] else None
        if attrs.get("mode") != b"nearest" or attrs.get("coordinate_transformation_mode") != b"asymmetric" or \
                attrs.get("nearest_mode") != b"floor" or (len(r.input) > 3 and r.input[3]) or scales is None or \
                scales.tolist() != [1, 1, 2, 2] or dq is None or dq.op_type != "DequantizeLinear" or len(q) != 1 or \
                q[0].op_type != "QuantizeLinear" or len(dq.input) != 3 or len(q[0].input) != 3:
            continue
        q = q[0]
        params = [[_constant_value(t, init, producer, numpy_helper) for t in n.input[1:]] for n in (dq, q)]
        if any(v is None for v in params[0] + params[1]) or not all(
                a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(*params)):
            continue  # the bytes after the Resize would be read at another scale: left as it is
        x, name, scales_name = dq.input[0], r.output[0], r.input[2]  # output names are unique, node names need not be
        consts = {f"{name}_nhwc_order": [0, 2, 3, 1], f"{name}_double_w": [1, 1, 2, 1],
                  f"{name}_double_hw": [1, 2, 2, 1]}
        proto.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
        new = [helper.make_node("Shape", [x], [f"{name}_nchw_shape"], name=f"{name}_nchw_shape"),
               helper.make_node("Gather", [f"{name}_nchw_shape", f"{name}_nhwc_order"], [f"{name}_nhwc_shape"], axis=0,
                                name=f"{name}_nhwc_shape"),
               helper.make_node("Mul", [f"{name}_nhwc_shape", f"{name}_double_w"], [f"{name}_w_shape"],
                                name=f"{name}_w_shape"),
               helper.make_node("Mul", [f"{name}_nhwc_shape", f"{name}_double_hw"], [f"{name}_hw_shape"],
                                name=f"{name}_hw_shape"),
               helper.make_node("Transpose", [x], [f"{name}_nhwc"], perm=[0, 2, 3, 1], name=f"{name}_to_nhwc"),
               helper.make_node("Concat", [f"{name}_nhwc"] * 2, [f"{name}_pixels_twice"], axis=3,
                                name=f"{name}_pixels_twice"),
               helper.make_node("Reshape", [f"{name}_pixels_twice", f"{name}_w_shape"], [f"{name}_w_doubled"],
                                name=f"{name}_w_doubled"),
               helper.make_node("Concat", [f"{name}_w_doubled"] * 2, [f"{name}_rows_twice"], axis=2,
                                name=f"{name}_rows_twice"),
               helper.make_node("Reshape", [f"{name}_rows_twice", f"{name}_hw_shape"], [f"{name}_hw_doubled"],
                                name=f"{name}_hw_doubled"),
               helper.make_node("Transpose", [f"{name}_hw_doubled"], [q.output[0]], perm=[0, 3, 1, 2],
                                name=f"{name}_to_nchw")]
        _splice(proto, [r, q], new)
        dropped += [dq.output[0], scales_name]
        done += 1
    _drop_unread(proto, dropped)  # each Resize's DequantizeLinear and scales, where nothing else reads them
    return done


def quantize_onnx(onnx_file: Path, calib: CalibrationImages, n_layers: int, out: Path,
                  reduce_range: str = "auto", unshuffle: bool = False) -> Path:
    """<stem>_int8.onnx from an fp32 ONNX file (opset >= 13): QDQ, per-channel int8 weights (8 or 7 bits:
    `reduce_range` is --int8-reduce-range, see weight_bits_to_try), uint8 activations, MinMax ranges averaged over
    the images (not their extremes: rare outliers would widen every step); the stem and Detect's box path stay float
    (FLOAT_LAYERS). Where both widths are tried, the one whose boxes are closer to fp32's is written
    (_box_errors). Metadata props are copied from the fp32 file. `unshuffle`: quantize the graph with its channel
    shuffles carried by the weights (models/channel_order.py; off: it measured no faster, see
    benchmarks/int8_unshuffle.py)."""
    from models.exporters import require
    onnx = require("onnx", "ONNX INT8", "pip install onnx")
    ortq = require("onnxruntime.quantization", "ONNX INT8", "pip install onnxruntime")
    bits = weight_bits_to_try(reduce_range)
    proto = onnx.load(str(onnx_file))
    _own_initializers(proto, onnx)
    if unshuffle:
        from models.channel_order import unshuffle as unshuffled
        LOGGER.info(f"ONNX INT8: {unshuffled(proto, onnx, importlib.import_module('onnxruntime'))} channel "
                    f"shuffles carried by the weights")
    keep, score_path = _float_prefixes(n_layers), _score_path(proto.graph, n_layers)
    exclude = [n.name for n in proto.graph.node if _in_float(n.name, keep, score_path)]
    # Everything after the score convs' sigmoids is a probability: all of it gets the range [0, 1] (scale 1/255),
    # so that the concat of the levels copies bytes instead of requantizing each level to a common scale.
    probabilities = {t: [{"rmin": np.float32(0), "rmax": np.float32(1)}] for n in proto.graph.node
                     if n.name in score_path and n.op_type != "Conv" for t in n.output}
    options = {"nodes_to_exclude": exclude, "extra_options": {"CalibMovingAverage": True,
                                                              "TensorQuantOverrides": probabilities}}
    score_convs = {n.name for n in proto.graph.node if n.name in score_path and n.op_type == "Conv"}
    candidates = [_quantized(onnx, ortq, proto, calib, out, score_convs, reduce_range=b == 7, **options)
                  for b in bits]
    qproto = candidates[0]
    if len(candidates) > 1:
        images = calib.sample(COMPARE_IMAGES)
        errors = _box_errors(proto, candidates, images)
        k = int(np.argmin(errors))
        qproto = candidates[k]
        LOGGER.info(f"ONNX INT8: this CPU has AVX2 but no VNNI, where 8-bit weights can saturate ONNX Runtime's "
                    f"int8 sums: tried {' and '.join(f'{b}-bit' for b in bits)} weights, kept {bits[k]}-bit (box "
                    f"error against fp32 on {len(images)} calibration images: "
                    f"{' and '.join(f'{e:.3f}' for e in errors)} px; --int8-reduce-range on/off to choose)")
    del qproto.metadata_props[:]
    for p in proto.metadata_props:
        qproto.metadata_props.add(key=p.key, value=p.value)
    atomic_write(out, lambda fo: fo.write(qproto.SerializeToString()))
    return out


def _quantized(onnx, ortq, proto, calib: CalibrationImages, out: Path, score_convs=(), **options):
    """quantize_static of `proto` calibrated on `calib` (QDQ, per-channel int8 weights, uint8 activations, MinMax;
    `options`: its other arguments), then the graph rewrites (`score_convs`: Detect's score convs, padded to
    blocks of 16 channels) -> the quantized ModelProto."""
    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    root = logging.getLogger()  # the quantizer warns on the root logger ("consider pre-processing": not needed here)
    level = root.level
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}_") as tmp:
        src, q = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        try:
            root.setLevel(logging.ERROR)
            ortq.quantize_static(str(src), str(q), Reader(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                                 activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
                                 calibrate_method=ortq.CalibrationMethod.MinMax, **options)
        finally:
            root.setLevel(level)
        qproto = onnx.load(str(q))
    _share_concat_ranges(qproto, onnx.numpy_helper)
    _hard_sigmoids_as_requantizations(qproto, onnx.numpy_helper, onnx.helper)
    _upsamples_as_byte_copies(qproto, onnx.numpy_helper, onnx.helper)
    weight_max = 64 if options.get("reduce_range") else 127  # onnxruntime's 7-bit weights span +-64
    _float_convs_as_integer_matmuls(qproto, onnx.numpy_helper, onnx.helper, weight_max)
    _pad_convs_to_blocks(qproto, onnx.numpy_helper, onnx.helper, score_convs)
    _channels_last_joins(qproto, onnx.helper)
    return qproto


def _box_errors(fp32, candidates: list, images: list) -> list:
    """For each quantized ModelProto in `candidates`: the mean |box error| in pixels against the fp32 ModelProto's
    outputs (x, y, w, h of every row, weighted by fp32's objectness), in ONNX Runtime on `images`. Weighting by
    objectness counts the boxes that can become detections; on the shipped models it ranked 8- against 7-bit weights
    as their mAP50-95 did (README)."""
    import onnxruntime as ort

    def outputs(proto) -> np.ndarray:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"images": x})[0] for x in images])

    y = outputs(fp32)
    weight = y[..., 4:5]
    return [float((np.abs(outputs(q)[..., :4] - y[..., :4]) * weight).sum() / (4 * weight.sum() + 1e-12))
            for q in candidates]


def _import_quietly(module: str) -> None:
    """Import `module` with its own logger held at ERROR: torch.utils.cpp_extension (which nncf.quantize imports
    whenever torch is installed) logs 'No CUDA runtime is found' on every CPU-only machine with a CUDA build of
    torch, a line about building C++ extensions that an OpenVINO INT8 export never builds."""
    log = logging.getLogger(module)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        importlib.import_module(module)
    except ImportError:  # nncf reports its own needs when it imports it
        pass
    finally:
        log.setLevel(level)


def quantize_openvino(onnx_file: Path, calib: CalibrationImages, n_layers: int, meta: dict, out: Path) -> Path:
    """<stem>_int8_openvino_model/ from the fp32 ONNX file with NNCF post-training quantization; FLOAT_LAYERS
    stay float. Holds <stem>.xml/.bin and the same metadata.yaml as the fp32 OpenVINO export."""
    from models.exporters import atomic_dir, require
    ov = require("openvino", "OpenVINO INT8", "pip install openvino")
    nncf = require("nncf", "OpenVINO INT8", "pip install nncf")
    nncf.set_log_level(logging.WARNING)  # one INFO line per skipped op otherwise
    _import_quietly("torch.utils.cpp_extension")  # nncf.quantize loads it, and its import warns of no CUDA
    onnx = require("onnx", "OpenVINO INT8", "pip install onnx")
    ov_model = ov.convert_model(str(onnx_file))
    keep, score_path = _float_prefixes(n_layers), _score_path(onnx.load(str(onnx_file)).graph, n_layers)
    names = [op.get_friendly_name() for op in ov_model.get_ops()]
    ignored = [name for name in names if _in_float(name, keep, score_path)]
    q = nncf.quantize(ov_model, nncf.Dataset(calib), preset=nncf.QuantizationPreset.MIXED, subset_size=len(calib),
                      ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    with atomic_dir(out) as tmp:
        ov.save_model(q, str(tmp / f"{out.name[:-len('_int8_openvino_model')]}.xml"), compress_to_fp16=False)
        yaml_save(tmp / "metadata.yaml", meta)
    return out
