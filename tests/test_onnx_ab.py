"""benchmarks/onnx_ab.py: interleaved ONNX Runtime timing of exports (mechanics only; the figures are the README's)."""

import numpy as np
import pytest

from conftest import ROOT


def _chain(path, n: int, shape=(1, 3, 8, 8)):
    """An ONNX file of n Relu nodes on a float input of `shape` (a None dim is dynamic)."""
    import onnx
    from onnx import helper
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    dims = [d if d is not None else "batch" for d in shape]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("t0", onnx.TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(f"t{n}", onnx.TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


@pytest.fixture()
def onnx_ab(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import onnx_ab
    return onnx_ab


def test_every_file_is_timed_in_every_round_in_a_shuffled_order(onnx_ab, tmp_path, monkeypatch, capsys):
    files = [_chain(tmp_path / f"m{k}.onnx", k + 1) for k in range(3)]
    calls = []
    real = onnx_ab.session

    def counted(path):
        s, feed = real(path)

        class Counting:
            def run(self, out, f):
                calls.append(path.name)
                assert set(f) == set(feed) and f["t0"].shape == (1, 3, 8, 8)
                return s.run(out, f)
        return Counting(), feed

    monkeypatch.setattr(onnx_ab, "session", counted)
    text = onnx_ab.run(files, rounds=6, runs=3, warmup=1, threads=1)
    per_round = 3 * (1 + 3)
    assert len(calls) == 6 * per_round
    orders = [tuple(dict.fromkeys(calls[r * per_round:(r + 1) * per_round])) for r in range(6)]
    assert all(sorted(o) == ["m0.onnx", "m1.onnx", "m2.onnx"] for o in orders)  # each file once per round
    assert len(set(orders)) > 1  # not one fixed order (seed 0)
    rows = [line for line in text.splitlines() if line.startswith("| ") and ".onnx" in line]
    assert len(rows) == 3 and rows[0].split("|")[3].strip() == "1.000"
    assert all(len(r.split("|")[4].split()) == 6 for r in rows)  # one median per round
    assert "6 interleaved rounds of 3 forwards" in text and text in capsys.readouterr().out


def test_bad_files_are_refused_with_their_path(onnx_ab, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        onnx_ab.run([str(tmp_path / "missing.onnx")], rounds=1, runs=1)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: ONNX Runtime cannot load it"):
        onnx_ab.run([str(junk)], rounds=1, runs=1)
    dynamic = _chain(tmp_path / "dynamic.onnx", 1, shape=(None, 3, 8, 8))
    with pytest.raises(ValueError, match="dynamic shape"):
        onnx_ab.run([dynamic], rounds=1, runs=1)
    with pytest.raises(ValueError, match="--rounds"):
        onnx_ab.run([_chain(tmp_path / "ok.onnx", 1)], rounds=0)
    assert np.isfinite(float(onnx_ab.run([_chain(tmp_path / "ok.onnx", 1)], rounds=1, runs=1, warmup=0)
                             .splitlines()[-1].split("|")[2]))
