"""models/onnx_layout.py: the exported graph's rewrites keep every output, remove ONNX Runtime's plain-layout copies
around the _shuffle_cpu models' stem and head concats and the seed's stem, and leave graphs they cannot help (stock)
as they are."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import models.exporters as exporters  # noqa: E402
from models.onnx_layout import for_blocked_layout, pad_conv_channels, split_concat_convs  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402

TOL = {"atol": 2e-2, "rtol": 1e-3}  # as tests/test_export.py: ORT's kernels differ from PyTorch's in the last bits


def run_onnx(proto, x: np.ndarray, optimized=None) -> list:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"images": x})


def export_model(cfg: str, path, rewrite: bool, monkeypatch, size: int = 128):
    """export_onnx of a fused, eval copy of `cfg` (nc=3); rewrite=False: the plain traced graph."""
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3).eval()
    model.names = {0: "a", 1: "b", 2: "c"}
    model = model.fuse()
    with monkeypatch.context() as m:
        if not rewrite:
            m.setattr(exporters, "for_blocked_layout", lambda proto: (0, 0))
        f = exporters.export_onnx(model, torch.zeros(1, 3, size, size), path, opset=13)
    return model, onnx.load(str(f))


def reorders_into(optimized_file, op_types) -> list:
    """ORT's plain-layout copies (ReorderOutput) whose reader is one of `op_types`, in its optimized graph."""
    g = onnx.load(str(optimized_file)).graph
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    return [n.name for n in g.node if n.op_type == "ReorderOutput"
            and any(r in op_types for r in readers.get(n.output[0], []))]


def test_shuffle_cpu_export_is_rewritten_and_gives_the_same_outputs(tmp_path, monkeypatch):
    model, proto = export_model("yolov5n_shuffle_cpu.yaml", tmp_path / "new.onnx", True, monkeypatch)
    _, plain = export_model("yolov5n_shuffle_cpu.yaml", tmp_path / "plain.onnx", False, monkeypatch)
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    stem = next(n for n in proto.graph.node if n.op_type == "Conv" and n.input[0] == "images")
    w = init[stem.input[1]]
    assert w.shape[0] == 32 and not w[24:].any() and not init[stem.input[2]][24:].any()  # 24 filters + 8 zero ones
    # the two head convs that read a channel shuffle (P4 and P3 nodes) are now one conv per input plus an Add
    split = sorted(n.name for n in proto.graph.node if n.name.endswith("_sum1"))
    assert split == ["/model.10/conv/Conv_sum1", "/model.13/conv/Conv_sum1"]
    concats = [sum(n.op_type == "Concat" for n in p.graph.node) for p in (plain, proto)]
    assert concats[0] - concats[1] == 2
    x = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        want = model(x)[0].numpy()
    got, before = run_onnx(proto, x.numpy())[0], run_onnx(plain, x.numpy())[0]
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(got, before, atol=1e-3, rtol=1e-4)


def test_rewrite_removes_ort_plain_layout_copies(tmp_path, monkeypatch):
    """What the rewrite is for: in ORT's optimized graph no max-pool or concat reads a tensor copied back to NCHW."""
    _, proto = export_model("yolov5n_shuffle_cpu.yaml", tmp_path / "new.onnx", True, monkeypatch, size=64)
    _, plain = export_model("yolov5n_shuffle_cpu.yaml", tmp_path / "plain.onnx", False, monkeypatch, size=64)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    run_onnx(plain, x, tmp_path / "plain_opt.onnx")
    run_onnx(proto, x, tmp_path / "new_opt.onnx")
    if not any(n.op_type == "ReorderOutput" for n in onnx.load(str(tmp_path / "plain_opt.onnx")).graph.node):
        pytest.skip("ONNX Runtime uses no blocked layout on this CPU")
    # the P4 and P3 head concats (and, where the block is 16 channels (AVX-512), the stem's max-pool)
    assert len(reorders_into(tmp_path / "plain_opt.onnx", {"Concat"})) == 2
    assert reorders_into(tmp_path / "new_opt.onnx", {"MaxPool", "Concat"}) == []


def test_stock_graph_stays_as_it_is(tmp_path, monkeypatch):
    """yolov5n has no odd widths or shuffles: nothing to rewrite, and the file is the plain trace."""
    _, plain = export_model("yolov5n.yaml", tmp_path / "plain.onnx", False, monkeypatch, size=64)
    before = plain.SerializeToString()
    assert for_blocked_layout(plain) == (0, 0) and plain.SerializeToString() == before


def test_seed_export_pads_through_depthwise_convs_and_gives_the_same_outputs(tmp_path, monkeypatch):
    """The seed's stem (24 channels here: with nc=3 YOLOv5's parse_model leaves a width equal to Detect's 3 x (3 + 5)
    outputs unscaled; 8 in the shipped yolov5n_shuffle.pt) feeds its first unit's depth-wise conv (branch1) and 1x1
    conv (branch2), and the 60-channel 1x1 convs of its last stage feed depth-wise convs: all get zero filters up to a
    multiple of 16 (the depth-wise ones too), the convs after them zero input weights; the shuffled concats feed a C3
    block's two convs and stay. ONNX Runtime then runs the stem's max-pool blocked."""
    model, proto = export_model("yolov5n_shuffle.yaml", tmp_path / "new.onnx", True, monkeypatch)
    _, plain = export_model("yolov5n_shuffle.yaml", tmp_path / "plain.onnx", False, monkeypatch)
    c = model.model[0].conv[0].out_channels
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = {n.name: n for n in proto.graph.node}

    def weight(name):
        return init[node[name].input[1]]

    assert c % 16 and weight("/model.0/conv.0/Conv").shape[0] == 32 and not weight("/model.0/conv.0/Conv")[c:].any()
    dw = node["/model.1/branch1/branch1.0/Conv"]
    assert next(a.i for a in dw.attribute if a.name == "group") == 32 and weight(dw.name).shape[0] == 32
    assert not weight(dw.name)[c:].any() and not init[dw.input[2]][c:].any()
    for name in ("/model.1/branch1/branch1.2/Conv", "/model.1/branch2/branch2.0/Conv"):
        assert weight(name).shape[1] == 32 and not weight(name)[:, c:].any()
    assert weight("/model.6/branch2/branch2.0/Conv").shape[0] == 64
    assert weight("/model.6/branch2/branch2.5/Conv").shape == (60, 64, 1, 1)  # the unit's output keeps 60 channels
    assert sum(n.op_type == "Concat" for n in proto.graph.node) == sum(n.op_type == "Concat" for n in plain.graph.node)
    x = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        want = model(x)[0].numpy()
    got, before = run_onnx(proto, x.numpy(), tmp_path / "new_opt.onnx")[0], run_onnx(plain, x.numpy())[0]
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(got, before, atol=1e-3, rtol=1e-4)
    opt = onnx.load(str(tmp_path / "new_opt.onnx")).graph
    if any(n.op_type == "ReorderOutput" for n in opt.node):  # a CPU where ONNX Runtime uses its blocked layout
        assert next(n for n in opt.node if n.op_type == "MaxPool").domain == "com.microsoft.nchwc"  # the stem's


def conv_node(name, x, w, b=None, group=1, pad=1):
    return helper.make_node("Conv", [x, w] + ([b] if b else []), [name], name=name, group=group, pads=[pad] * 4,
                            kernel_shape=[3, 3])


def tiny_graph(nodes, inits: dict, outputs):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, "c", "h", "w"]) for o in outputs],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def stem_graph(reader_group: int = 1, pool_is_output: bool = False, conv_after_depthwise: bool = False,
               concat_after_depthwise: bool = False):
    """images -> Conv 4->24 -> MaxPool -> Relu -> Conv (24->16, or depth-wise 24->24) [-> Conv 24->16, or a Concat
    of it with itself]."""
    rng = np.random.default_rng(0)
    c2 = 16 if reader_group == 1 else 24
    inits = {"w0": rng.normal(size=(24, 4, 3, 3)), "b0": rng.normal(size=24),
             "w1": rng.normal(size=(c2, 24 // reader_group, 3, 3)), "b1": rng.normal(size=c2),
             "w2": rng.normal(size=(16, c2, 3, 3))}
    nodes = [conv_node("c0", "images", "w0", "b0"),
             helper.make_node("MaxPool", ["c0"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["p"], ["r"]),
             conv_node("c1" if conv_after_depthwise or concat_after_depthwise else "out", "r", "w1", "b1",
                       group=reader_group)]
    if conv_after_depthwise:
        nodes.append(conv_node("out", "c1", "w2"))
    else:
        del inits["w2"]
    if concat_after_depthwise:
        nodes.append(helper.make_node("Concat", ["c1", "c1"], ["out"], axis=1))
    return tiny_graph(nodes, inits, ["out"] + (["p"] if pool_is_output else []))


def rewrite_once(proto, rewrite):
    """Apply `rewrite` (it must change one place), check the graph, and check its output is the one before."""
    x = np.random.default_rng(1).random((1, 4, 8, 8), dtype=np.float32)
    want = run_onnx(proto, x)[0]
    assert rewrite(proto) == 1
    onnx.checker.check_model(proto)
    np.testing.assert_allclose(run_onnx(proto, x)[0], want, atol=1e-4, rtol=1e-5)
    return proto


def test_pad_conv_channels_on_a_small_graph():
    proto = rewrite_once(stem_graph(), pad_conv_channels)
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert sorted(shapes.values()) == [(16,), (16, 32, 3, 3), (32,), (32, 4, 3, 3)]  # old weights dropped


def test_pad_conv_channels_through_a_depthwise_conv():
    """A depth-wise reader gets 8 zero filters (group 24 -> 32) and the conv after it 8 zero input channels."""
    proto = rewrite_once(stem_graph(reader_group=24, conv_after_depthwise=True), pad_conv_channels)
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert sorted(shapes.values()) == [(16, 32, 3, 3), (32,), (32,), (32, 1, 3, 3), (32, 4, 3, 3)]
    dw = next(n for n in proto.graph.node if n.name == "c1")
    assert next(a.i for a in dw.attribute if a.name == "group") == 32


@pytest.mark.parametrize("kw", [{"reader_group": 24}, {"pool_is_output": True},
                                {"reader_group": 24, "concat_after_depthwise": True}])
def test_pad_conv_channels_leaves_graph_outputs_and_other_readers(kw):
    """Nothing is padded where the padding would reach a graph output (the depth-wise conv's or the max-pool's) or a
    reader that is not a conv (a concat after the depth-wise conv)."""
    proto = stem_graph(**kw)
    before = proto.SerializeToString()
    assert pad_conv_channels(proto) == 0 and proto.SerializeToString() == before


def shuffle_concat_graph(readers: int = 1):
    """images -> Conv 4->16 = a; images -> Reshape/Transpose/Reshape (a channel shuffle) = s;
    Concat(a, s) -> `readers` Convs 20->8."""
    rng = np.random.default_rng(2)
    inits = {"wa": rng.normal(size=(16, 4, 3, 3)), "ba": rng.normal(size=16)}
    nodes = [conv_node("a", "images", "wa", "ba"),
             helper.make_node("Reshape", ["images", "shape5"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "shape4"], ["s"]),
             helper.make_node("Concat", ["a", "s"], ["cat"], axis=1)]
    outs = []
    for k in range(readers):
        inits[f"w{k}"], inits[f"b{k}"] = rng.normal(size=(8, 20, 3, 3)), rng.normal(size=8)
        nodes.append(conv_node(f"out{k}", "cat", f"w{k}", f"b{k}"))
        outs.append(f"out{k}")
    proto = tiny_graph(nodes, inits, outs)
    proto.graph.initializer.extend([numpy_helper.from_array(np.array([1, 2, 2, 8, 8], np.int64), "shape5"),
                                    numpy_helper.from_array(np.array([1, 4, 8, 8], np.int64), "shape4")])
    return proto


def test_split_concat_convs_on_a_small_graph():
    proto = rewrite_once(shuffle_concat_graph(), split_concat_convs)
    ops = [n.op_type for n in proto.graph.node]
    assert "Concat" not in ops and ops.count("Conv") == 3 and ops.count("Add") == 1
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    assert len(convs["out0_in0"].input) == 3 and len(convs["out0_in1"].input) == 2  # the bias is added once


def test_split_concat_convs_leaves_a_concat_with_two_readers():
    proto = shuffle_concat_graph(readers=2)
    before = proto.SerializeToString()
    assert split_concat_convs(proto) == 0 and proto.SerializeToString() == before
