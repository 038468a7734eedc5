"""models/channel_order.py: ShuffleNetV2 channel shuffles removed from an fp32 ONNX graph, their permutations carried
by the weights of the convs that read the shuffled tensors; the same outputs, and no change where it cannot apply."""

import collections

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.common import ShuffleNetV2_InvertedResidual as Unit

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from models.channel_order import unshuffle  # noqa: E402


class Backbone(nn.Module):
    """Stem, a stage of a stride-2 and a stride-1 unit, one of a stride-2 and two stride-1 units, a conv of the deep
    stage upsampled and joined with the shallow stage (a channel concat of a shuffled tensor, as in the seed's PAN),
    read by a conv."""

    def __init__(self, deep_output: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.s1 = nn.Sequential(Unit(16, 32, 2), Unit(32, 32, 1))
        self.s2 = nn.Sequential(Unit(32, 64, 2), Unit(64, 64, 1), Unit(64, 64, 1))
        self.lateral = nn.Conv2d(64, 24, 1)
        self.head = nn.Conv2d(56, 8, 1)
        self.deep_output = deep_output

    def forward(self, x):
        a = self.s1(self.stem(x))
        b = self.s2(a)
        y = self.head(torch.cat((nn.functional.interpolate(self.lateral(b), scale_factor=2.0), a), 1))
        return (y, b) if self.deep_output else y


def _onnx(model, path):
    torch.manual_seed(0)
    for m in model.modules():  # BN statistics that are not the identity, so that a wrong channel order shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(path), opset_version=13, input_names=["images"],
                      dynamo=False)
    return onnx.load(str(path))


def _run(proto, x):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})


def test_shuffles_are_carried_by_the_weights_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    proto = _onnx(Backbone(), tmp_path / "m.onnx")
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    before = _run(proto, x)[0]
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert unshuffle(proto, onnx, ort) == 5  # one per unit
    after_ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert after_ops["Reshape"] == ops["Reshape"] - 5 and after_ops["Unsqueeze"] == 0
    assert after_ops["Conv"] == ops["Conv"]  # no conv added: the permutations are in the weights
    after = _run(proto, x)[0]
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
    onnx.checker.check_model(proto)
    # the permuted weights are what keeps the outputs: with the convs' original weights back, they change
    init = {t.name: t for t in proto.graph.initializer}
    reordered = [n for n in init if n.endswith("_reordered")]
    assert reordered
    for name in reordered:
        init[name].CopyFrom(onnx.numpy_helper.from_array(weights[name.rsplit("_reordered", 1)[0]], name))
    assert np.abs(_run(proto, x)[0] - before).max() > 1e-2 * np.abs(before).max()


def test_a_shuffled_graph_output_leaves_the_graph_unchanged(tmp_path):
    torch.manual_seed(0)
    proto = _onnx(Backbone(deep_output=True), tmp_path / "m.onnx")
    was = proto.SerializeToString()
    assert unshuffle(proto, onnx, ort) == 0
    assert proto.SerializeToString() == was


def test_a_graph_without_shuffles_is_left_alone(tmp_path):
    proto = _onnx(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), tmp_path / "m.onnx")
    was = proto.SerializeToString()
    assert unshuffle(proto, onnx, ort) == 0
    assert proto.SerializeToString() == was


def test_benchmark_quantizes_the_seed_model_both_ways_and_times_them(tmp_path, monkeypatch, capsys):
    from conftest import ROOT
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import int8_unshuffle
    table = int8_unshuffle.run(ROOT / "yolov5n_shuffle.pt", imgsz=64, images=2, out=tmp_path, rounds=1, runs=1)
    names = ["yolov5n_shuffle.onnx", "yolov5n_shuffle_int8.onnx", "yolov5n_shuffle_int8_unshuffled.onnx"]
    assert all((tmp_path / n).is_file() for n in names)
    assert [line.split(" | ")[0].rsplit("/", 1)[-1] for line in table.splitlines() if line.startswith("| /")] == names
    ops = [collections.Counter(n.op_type for n in onnx.load(str(tmp_path / n)).graph.node) for n in names[1:]]
    assert ops[1]["Unsqueeze"] == ops[0]["Unsqueeze"] - 14  # the seed's 7 units: 2 Unsqueezes each
