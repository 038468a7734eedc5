"""Exact rewrites of an exported ONNX graph that let ONNX Runtime keep its blocked CPU layout (NCHWc).

ONNX Runtime's CPU provider runs convs, pools and concats in a blocked layout whose block is 16 channels with
AVX-512 (8 with AVX2). A tensor it cannot keep blocked is copied to plain NCHW and back ("ReorderOutput" /
"ReorderInput" nodes in its profile); in the ShuffleNet models two kinds of tensor caused most of these copies:

- a conv whose output channels are not a multiple of 16, such as the 24-channel stem: its max-pool then runs in plain
  NCHW. `pad_conv_channels` gives that conv zero filters up to the next multiple of 16 and the convs that read it
  zero input weights for them, so every value the graph computes stays the same. A depth-wise reader (the seed's
  ShuffleNetV2 units start with one) gets zero filters too and passes the padding on to its own readers;
- a channel shuffle (Reshape/Transpose) joined with a blocked tensor by a Concat: the whole Concat falls back to
  NCHW. `split_concat_convs` replaces Concat -> Conv by one Conv per input and an Add, the convolution of a
  channel concatenation being the sum of per-input convolutions; ONNX Runtime folds the Add into a conv.

Measured on yolov5n_shuffle_cpu (AMD EPYC Zen 4, 2 threads, batch 1, one interleaved run): ONNX Runtime 0.87x ->
0.77x yolov5n's latency at 640 and 0.82x -> 0.74x at 320 (README "Which model should I use?"). The outputs stay the
same up to float rounding. Not done, because they measured slower:
- passing a shuffle output through a 1x1 identity conv so that its sum with a blocked tensor
  (models/experiments/yolov5n_shuffle_cpu_addp3.yaml's P3 node) runs blocked too (0.65x -> 0.68x yolov5n at 640);
- computing a 3x3 conv of a 2x nearest upsample at the low resolution (Zen 4, 640, untrained yolov5n_shuffle_cpu,
  interleaved against yolov5n): as one ConvTranspose (4x4, stride 2, pad 1, weights summed per output phase; 55 %
  fewer multiply-adds, exact) 0.80x -> 0.82x, since ONNX Runtime runs ConvTranspose unblocked and the Add after it
  no longer folds into a conv; as four 2x2 convs (one per output phase) + Concat + DepthToSpace 0.83x -> 0.84x: the
  four convs took 1.3 ms where the 3x3 took 2.8, but DepthToSpace alone 0.9 ms.
"""

from __future__ import annotations

import numpy as np

BLOCK = 16  # ONNX Runtime's NCHWc block on AVX-512 CPUs; a multiple of AVX2's 8
_PASS_THROUGH = {"MaxPool", "Relu"}  # per-channel ops a padded (all-zero) channel may flow through
_NOT_BLOCKED = {"Reshape", "Transpose", "Flatten", "Split", "Slice", "Gather"}  # outputs ORT keeps in plain NCHW


class _Graph:
    """Producer/consumer maps and initializer access over an onnx GraphProto, following Identity aliases."""

    def __init__(self, proto):
        from onnx import numpy_helper
        self.proto, self.g, self.nh = proto, proto.graph, numpy_helper
        self.init = {t.name: t for t in self.g.initializer}
        self.alias = {n.output[0]: n.input[0] for n in self.g.node
                      if n.op_type == "Identity" and n.input[0] in self.init}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in self.g.output}

    def array(self, name: str):
        """The constant behind `name` (an initializer, or an Identity of one), or None."""
        t = self.init.get(self.alias.get(name, name))
        return None if t is None else self.nh.to_array(t)

    def add_initializer(self, base: str, array) -> str:
        """A new initializer named after `base`, never reusing a name (weights may be shared by several nodes)."""
        name, k = f"{base}_blocked", 0
        while name in self.init or name in self.producer:
            k += 1
            name = f"{base}_blocked{k}"
        t = self.nh.from_array(array, name)
        self.g.initializer.append(t)
        self.init[name] = t
        return name

    def drop_unused_initializers(self) -> None:
        used = {i for n in self.g.node for i in n.input} | self.graph_outputs
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain_conv(g: _Graph, node) -> bool:
    """A Conv with constant weights (and bias) and group 1: its input channels can be split or padded."""
    return (node.op_type == "Conv" and _attrs(node).get("group", 1) == 1 and g.array(node.input[1]) is not None
            and (len(node.input) < 3 or not node.input[2] or g.array(node.input[2]) is not None))


def _zeros_after(a, n: int, axis: int):
    """`a` with n zero slices appended along `axis` (same dtype)."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, n)
    return np.pad(a, widths)


def _depthwise_conv(g: _Graph, node) -> bool:
    """A Conv with constant weights (and bias) and one filter per input channel (group = channels, multiplier 1)."""
    if node.op_type != "Conv":
        return False
    w, group = g.array(node.input[1]), _attrs(node).get("group", 1)
    return (w is not None and group > 1 and w.shape[:2] == (group, 1)
            and (len(node.input) < 3 or not node.input[2] or g.array(node.input[2]) is not None))


def _zero_padded_readers(g: _Graph, t: str, depth: int = 0):
    """The convs to change if tensor `t` got zero channels appended: (plain convs to widen, depth-wise convs to give
    zero filters), or None where some reader cannot take them. `t` may pass through MaxPool/Relu first; the output of
    a depth-wise reader (zero where its input is) must in turn be readable this way; no graph output may change."""
    chain = []
    while len(g.consumers.get(t, [])) == 1 and g.consumers[t][0].op_type in _PASS_THROUGH:
        chain.append(g.consumers[t][0])
        t = chain[-1].output[0]
    readers = g.consumers.get(t, [])
    if not readers or depth > 8 or t in g.graph_outputs or any(c in g.graph_outputs for n in chain for c in n.output):
        return None
    plain, depthwise = [], []
    for r in readers:
        if r.input[0] != t:
            return None
        if _plain_conv(g, r):
            plain.append(r)
        elif _depthwise_conv(g, r):
            further = _zero_padded_readers(g, r.output[0], depth + 1)
            if further is None:
                return None
            plain += further[0]
            depthwise += [r] + further[1]
        else:
            return None
    return plain, depthwise


def pad_conv_channels(proto, block: int = BLOCK) -> int:
    """Give every conv whose output channels are not a multiple of `block`, and whose output reaches only plain convs
    (directly, through MaxPool/Relu, or through depth-wise convs that get zero filters as well), zero filters up to
    the next multiple; -> number of convs padded."""
    g, padded = _Graph(proto), 0
    for conv in list(g.g.node):
        if not _plain_conv(g, conv) or len(conv.input) < 3 or not conv.input[2]:
            continue
        w, b = g.array(conv.input[1]), g.array(conv.input[2])
        extra = -w.shape[0] % block
        readers = _zero_padded_readers(g, conv.output[0]) if extra else None
        if readers is None:
            continue
        conv.input[1] = g.add_initializer(conv.input[1], _zeros_after(w, extra, axis=0))
        conv.input[2] = g.add_initializer(conv.input[2], _zeros_after(b, extra, axis=0))
        for r in readers[0]:
            r.input[1] = g.add_initializer(r.input[1], _zeros_after(g.array(r.input[1]), extra, axis=1))
        for d in readers[1]:
            d.input[1] = g.add_initializer(d.input[1], _zeros_after(g.array(d.input[1]), extra, axis=0))
            if len(d.input) > 2 and d.input[2]:
                d.input[2] = g.add_initializer(d.input[2], _zeros_after(g.array(d.input[2]), extra, axis=0))
            next(a for a in d.attribute if a.name == "group").i += extra
        padded += 1
    g.drop_unused_initializers()
    return padded


def _channels(g: _Graph, name: str):
    """Channels of tensor `name` where the graph makes them plain (convs and per-channel ops after them), else None."""
    seen = 0
    while name in g.producer and seen < 64:
        node, seen = g.producer[name], seen + 1
        if node.op_type == "Conv":
            w = g.array(node.input[1])
            return None if w is None else int(w.shape[0])
        if node.op_type == "Concat" and _attrs(node).get("axis") == 1:
            parts = [_channels(g, i) for i in node.input]
            return None if None in parts else sum(parts)
        if node.op_type not in {"Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Add", "Resize", "Upsample",
                                "MaxPool", "Clip", "LeakyRelu"}:
            return None
        name = node.input[0]
    return None


def split_concat_convs(proto) -> int:
    """Replace Concat(axis 1) -> plain Conv, where a Concat input comes from a Reshape/Transpose-like node and the Conv
    is its only reader, by one Conv per input summed with Add (the first input's conv keeps the bias); -> number of
    Concats replaced."""
    from onnx import helper
    g, done = _Graph(proto), 0
    for cat in list(g.g.node):
        if cat.op_type != "Concat" or _attrs(cat).get("axis") != 1 or len(cat.input) < 2:
            continue
        if not any(g.producer.get(i) is not None and g.producer[i].op_type in _NOT_BLOCKED for i in cat.input):
            continue
        out, readers = cat.output[0], g.consumers.get(cat.output[0], [])
        if (len(readers) != 1 or out in g.graph_outputs
                or not (_plain_conv(g, readers[0]) and readers[0].input[0] == out)):
            continue  # with two readers (a C3 block's cv1 and cv2) the split costs more than it saves
        total = g.array(readers[0].input[1]).shape[1]
        sizes = [_channels(g, i) for i in cat.input]
        if sizes.count(None) > 1:
            continue
        if None in sizes:
            sizes[sizes.index(None)] = total - sum(s for s in sizes if s is not None)
        if min(sizes) <= 0 or sum(sizes) != total:
            continue
        r = readers[0]
        w, attrs = g.array(r.input[1]), _attrs(r)
        bias = r.input[2] if len(r.input) > 2 and r.input[2] else None
        idx = list(g.g.node).index(r)
        new, acc, start = [], None, 0
        for k, (x, c) in enumerate(zip(cat.input, sizes)):
            wk = g.add_initializer(f"{r.input[1]}_in{k}", np.ascontiguousarray(w[:, start:start + c]))
            start += c
            y = f"{r.output[0]}_in{k}"
            ins = [x, wk] + ([bias] if bias and k == 0 else [])
            new.append(helper.make_node("Conv", ins, [y], name=f"{r.name}_in{k}", **attrs))
            if acc is not None:  # the running sum; the last Add writes the conv's own output name
                s = r.output[0] if k == len(sizes) - 1 else f"{r.output[0]}_sum{k}"
                new.append(helper.make_node("Add", [acc, y], [s], name=f"{r.name}_sum{k}"))
                y = s
            acc = y
        g.g.node.remove(r)
        for j, n in enumerate(new):
            g.g.node.insert(idx + j, n)
        g.g.node.remove(cat)
        done += 1
    g.drop_unused_initializers()
    return done


def for_blocked_layout(proto) -> tuple:
    """Both rewrites, in place; -> (convs padded, concats split)."""
    return pad_conv_channels(proto), split_concat_convs(proto)
