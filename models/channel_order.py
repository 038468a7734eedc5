"""Exact rewrite of an fp32 ONNX graph: ShuffleNetV2 channel shuffles become channel orders carried by the weights.

A ShuffleNetV2 unit ends by interleaving two tensors' channels (the export writes it as Unsqueeze, Concat on a new
axis 2 and a Reshape); the next unit then takes channel halves of the result (Slice). In ONNX Runtime's int8 graph
the convs run channels-last while the Reshape can only run channels-first, so every unit pays two transposes, the
interleaving copy and the split (README, INT8: about 0.5 ms of the seed model's 6.7 ms at 640).

No value needs to move for a shuffle: a channel permutation in front of a conv is a permutation of the conv's input
weights, and in front of a depth-wise conv a permutation of its filters (whose output is then permuted the same
way, for the next conv to absorb). `unshuffle` therefore tracks, for every tensor a shuffle made, where each of its
channels really is (which real tensor, which channel), removes the shuffles and the halving slices, and gives each
reader one real tensor: the pieces it needs, sliced and concatenated channels-first in an order of our choosing
(no copy at all where one whole tensor serves), with the reader's weights permuted to that order. Joins (Concat on
channels) of such tensors stay virtual and are made real once for their readers in the same way.

The rewritten graph computes the same values up to float rounding (the sums of each conv run in another order);
`unshuffle` checks this on one input and leaves the graph untouched when it does not hold, or when a shuffled tensor
reaches a node it cannot account for (a graph output, an op other than Slice on channels, Conv or Concat on
channels).
"""

from __future__ import annotations

import copy

import numpy as np

from models.int8 import _constant_value
from models.onnx_layout import _attrs


def _interleaves(proto, init: dict, producer: dict, readers: dict, numpy_helper) -> dict:
    """{Reshape output: (a, b, nodes of the pattern)} for each Reshape(Concat(Unsqueeze(a, 2), Unsqueeze(b, 2),
    axis=2)) that only the Reshape (and Shape nodes) read: the interleave a0, b0, a1, b1, ... of a and b."""
    found = {}
    for r in proto.graph.node:
        c = producer.get(r.input[0]) if r.op_type == "Reshape" else None
        if c is None or c.op_type != "Concat" or _attrs(c).get("axis") != 2 or len(c.input) != 2:
            continue
        ups = [producer.get(t) for t in c.input]
        if not all(u is not None and u.op_type == "Unsqueeze" for u in ups):
            continue
        axes = [_attrs(u).get("axes") if len(u.input) < 2 else
                _constant_value(u.input[1], init, producer, numpy_helper) for u in ups]
        if any(a is None or list(np.atleast_1d(a)) != [2] for a in axes):
            continue
        if any(len(readers.get(u.output[0], [])) != 1 for u in ups):
            continue
        if any(n.output[0] != r.output[0] and n.op_type != "Shape" for n in readers.get(c.output[0], [])):
            continue
        found[r.output[0]] = (ups[0].input[0], ups[1].input[0], [*ups, c, r])
    return found


def _feeds(proto, fill) -> dict:
    """{input name: fill(dims, np.float32)} for the graph's inputs; free dimensions get 1 for the batch and 64 for
    the others."""
    init = {t.name for t in proto.graph.initializer}
    return {i.name: fill([d.dim_value if d.HasField("dim_value") else (1 if k == 0 else 64)
                          for k, d in enumerate(i.type.tensor_type.shape.dim)], np.float32)
            for i in proto.graph.input if i.name not in init}


def _values(proto, names: list, onnx, onnxruntime) -> dict:
    """{name: array} of the graph's tensors `names`, from one ONNX Runtime run on zeros (channel counts and slice
    bounds do not depend on the input; free dimensions get 1 for the batch and 64 for the others)."""
    m = copy.deepcopy(proto)
    del m.graph.output[:]
    for t in names:
        m.graph.output.append(onnx.helper.make_value_info(t, onnx.TypeProto()))
    feeds = _feeds(m, np.zeros)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds)))


class _Rewrite:
    """The bookkeeping of one unshuffle: where each logical channel of a shuffled tensor really is."""

    def __init__(self, proto, numpy_helper, helper):
        self.proto, self.nh, self.helper = proto, numpy_helper, helper
        self.init = {t.name: t for t in proto.graph.initializer}
        self.where: dict = {}  # tensor -> [(real tensor, channel)] per logical channel
        self.real: dict = {}  # tensor -> (real tensor name, order): real channel k is logical channel order[k]
        self.cached: dict = {}  # tensor -> its parts() answer
        self.slices: dict = {}  # (source, first channel, end) -> the Slice output made for it
        self.joins: dict = {}  # virtual channel concat -> its inputs
        self.channels: dict = {}  # tensor -> channel count
        self.new_nodes: dict = {}  # index of a node in the graph -> nodes to insert before it
        self.at = 0  # index of the node being rewritten
        self.names: set = {x for n in proto.graph.node for x in (n.name, *n.output)} | set(self.init)

    def fresh(self, base: str) -> str:
        """A tensor and node name starting with `base` that the graph does not use yet."""
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def constant(self, base: str, array) -> str:
        """A new initializer holding `array`; -> its name."""
        name = self.fresh(base)
        t = self.nh.from_array(np.asarray(array), name)
        self.proto.graph.initializer.append(t)
        self.init[name] = t
        return name

    def made_real(self, t: str, prefix: str) -> tuple:
        """(real tensor, order) for the shuffled tensor t (real channel k is t's channel order[k]), made once per
        tensor in front of its first reader (the node being rewritten): see parts()."""
        if t not in self.real:
            parts, order = self.parts(t, prefix)
            if len(parts) == 1:
                real = parts[0]
            else:
                real = self.fresh(f"{prefix}channels")
                self.new_nodes.setdefault(self.at, []).append(
                    self.helper.make_node("Concat", parts, [real], name=real, axis=1))
            self.real[t] = (real, order)
        return self.real[t]

    def parts(self, t: str, prefix: str) -> tuple:
        """([real tensors], order): t's channels as the channel concat of the tensors, channel k of which is t's
        channel order[k]. A virtual join gives its inputs' parts one after the other; a shuffled tensor its
        channels gathered per source in channel order, each maximal run of one source's consecutive channels one
        Slice (none for a whole source)."""
        if t in self.cached:
            return self.cached[t]
        if t in self.joins:
            parts, order = [], []
            for x in self.joins[t]:
                px, ox = self.parts(x, prefix) if x in self.where else ([x], list(range(self.channels[x])))
                order += [len(order) + o for o in ox]
                parts += px
            self.cached[t] = parts, order
            return self.cached[t]
        where = self.where[t]
        sources = list(dict.fromkeys(s for s, _ in where))
        order = sorted(range(len(where)), key=lambda j: (sources.index(where[j][0]), where[j][1]))
        runs = []  # [source, first channel, end]
        for j in order:
            s, c = where[j]
            if runs and runs[-1][0] == s and runs[-1][2] == c:
                runs[-1][2] += 1
            else:
                runs.append([s, c, c + 1])
        parts = []
        for s, c0, c1 in runs:
            if c0 == 0 and c1 == self.channels[s]:
                parts.append(s)
                continue
            key = (s, c0, c1)
            if key not in self.slices:
                out = self.fresh(f"{s}_channels_{c0}_{c1}")
                args = [self.constant(f"{out}_{k}", np.array([v], np.int64)) for k, v in
                        (("starts", c0), ("ends", c1), ("axes", 1))]
                self.new_nodes.setdefault(self.at, []).append(
                    self.helper.make_node("Slice", [s, *args], [out], name=out))
                self.slices[key] = out
            parts.append(self.slices[key])
        self.cached[t] = parts, order
        return self.cached[t]

    def weight(self, name: str, array, base: str) -> str:
        """A new initializer with the reordered values of the weight `name` (shared weights stay as they are)."""
        return self.constant(f"{base}_reordered", array.astype(self.nh.to_array(self.init[name]).dtype))


def unshuffle(proto, onnx, onnxruntime, rtol: float = 1e-4) -> int:
    """Rewrite the interleaving channel shuffles of `proto` (an fp32 ModelProto, changed in place) as described in
    the module docstring; -> how many were removed (0: graph unchanged). `onnx`, `onnxruntime`: the modules."""
    numpy_helper = onnx.numpy_helper
    g = proto.graph
    init = {t.name: t for t in g.initializer}
    consts = {n.output[0] for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    shuffles = _interleaves(proto, init, producer, readers, numpy_helper)
    if not shuffles:
        return 0
    slices = [n for t in shuffles for n in readers.get(t, []) if n.op_type == "Slice"]
    wanted = [t for t, (a, b, _) in shuffles.items() for t in (t, a, b)]
    wanted += [t for n in slices for t in n.input[1:] if t and t not in init and t not in consts]
    joined = {t for t in shuffles} | {n.output[0] for n in slices}
    wanted += [x for t in joined for n in readers.get(t, []) if n.op_type == "Concat" for x in n.input]
    values = _values(proto, list(dict.fromkeys(wanted)), onnx, onnxruntime)
    before = copy.deepcopy(proto)

    rw = _Rewrite(proto, numpy_helper, onnx.helper)
    rw.channels.update({t: int(v.shape[1]) for t, v in values.items() if v.ndim == 4})
    dropped = set()
    nodes = list(g.node)
    inside = {x.output[0] for _, _, pattern in shuffles.values() for x in pattern[:-1]}  # Unsqueezes, Concats
    for i, n in enumerate(nodes):
        rw.at = i
        if n.output[0] in inside:
            dropped.add(n.output[0])
            continue
        if n.op_type == "Reshape" and n.output[0] in shuffles:
            a, b, pattern = shuffles[n.output[0]]
            wa = rw.where.get(a) or [(a, k) for k in range(rw.channels[a])]
            wb = rw.where.get(b) or [(b, k) for k in range(rw.channels[b])]
            if len(wa) != len(wb) or rw.channels[n.output[0]] != 2 * len(wa):
                return _undo(proto, before)
            rw.where[n.output[0]] = [w for pair in zip(wa, wb) for w in pair]
            dropped.update(x.output[0] for x in pattern)
            continue
        shuffled = [t for t in n.input if t in rw.where]
        if not shuffled:
            continue
        t = shuffled[0]
        prefix = n.name.rsplit("/", 1)[0] + "/" if "/" in n.name else ""
        if n.op_type == "Shape":
            continue  # reads only the shape, which stays the same; dropped below if nothing reads it
        if n.op_type == "Slice" and n.input[0] == t and len(shuffled) == 1:
            def arg(k: int, default: int) -> list:
                if len(n.input) <= k or not n.input[k]:
                    return [default]
                v = values.get(n.input[k])
                v = _constant_value(n.input[k], init, producer, numpy_helper) if v is None else v
                return [] if v is None else [int(x) for x in np.atleast_1d(v)]
            starts, ends, axes, steps = arg(1, 0), arg(2, 0), arg(3, 0), arg(4, 1)
            if axes not in ([1], [-3]) or steps != [1] or len(starts) != 1 or len(ends) != 1:
                return _undo(proto, before)
            c = len(rw.where[t])
            rw.where[n.output[0]] = rw.where[t][slice(*(int(np.clip(v, -c, c)) for v in (starts[0], ends[0])))]
            dropped.add(n.output[0])
        elif n.op_type == "Concat" and _attrs(n).get("axis") in (1, -3) and all(
                x in rw.where or x in rw.channels for x in n.input):
            rw.where[n.output[0]] = [w for x in n.input for w in
                                     rw.where.get(x) or [(x, k) for k in range(rw.channels[x])]]
            rw.joins[n.output[0]] = list(n.input)
            dropped.add(n.output[0])
        elif n.op_type == "Conv" and n.input[0] == t and len(shuffled) == 1 and n.input[1] in init:
            real, order = rw.made_real(t, prefix)
            w = numpy_helper.to_array(init[n.input[1]])
            group = _attrs(n).get("group", 1)
            if group == 1 and w.shape[1] == len(order):
                n.input[1] = rw.weight(n.input[1], w[:, order], n.input[1])
            elif group == len(order) == w.shape[0] and w.shape[1] == 1:  # depth-wise: its output follows `order`
                n.input[1] = rw.weight(n.input[1], w[order], n.input[1])
                if len(n.input) > 2 and n.input[2]:
                    n.input[2] = rw.weight(n.input[2], numpy_helper.to_array(init[n.input[2]])[order], n.input[2])
                out = n.output[0]
                n.output[0] = rw.fresh(f"{out}_reordered")
                inverse = np.argsort(order)
                rw.where[out] = [(n.output[0], int(inverse[j])) for j in range(len(order))]
                rw.channels[n.output[0]] = len(order)
            else:
                return _undo(proto, before)
            n.input[0] = real
        else:
            return _undo(proto, before)
    outputs = {o.name for o in g.output}
    if outputs & set(rw.where):
        return _undo(proto, before)
    kept = []
    for i, n in enumerate(nodes):
        kept += rw.new_nodes.get(i, [])
        if n.output[0] not in dropped:
            kept.append(type(n)())
            kept[-1].CopyFrom(n)
    del g.node[:]
    g.node.extend(kept)
    _drop_dead(proto)
    made = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | {i.name for i in g.input}
    if any(t and t not in made for n in g.node for t in n.input):
        return _undo(proto, before)
    del g.value_info[:]
    if not _same_outputs(before, proto, onnxruntime, rtol):
        return _undo(proto, before)
    return len(shuffles)


def _drop_dead(proto) -> None:
    """Remove nodes none of whose outputs anything reads (repeatedly), then unread initializers."""
    g = proto.graph
    outputs = {o.name for o in g.output}
    while True:
        read = {t for n in g.node for t in n.input} | outputs
        dead = [n for n in g.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {t for n in g.node for t in n.input}
    for t in [t for t in g.initializer if t.name not in read]:
        g.initializer.remove(t)


def _undo(proto, before) -> int:
    proto.CopyFrom(before)
    return 0


def _same_outputs(a, b, onnxruntime, rtol: float) -> bool:
    """Whether two graphs give the same outputs (up to rtol of the output's largest magnitude) on one random input."""
    rng = np.random.default_rng(0)
    feeds = _feeds(a, lambda dims, dtype: rng.random(dims, dtype=dtype))
    ya, yb = (onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
              for m in (a, b))
    return all(x.shape == y.shape and np.abs(x - y).max() <= rtol * max(np.abs(x).max(), 1e-6)
               for x, y in zip(ya, yb))
