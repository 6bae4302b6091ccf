"""A new op kind needs its own module and a registry entry only (bnnlite/ops/).

The toy op ``scale_add`` (y = x * scale + shift per channel, on a float map) is
defined below as a module of bnnlite/ops/ would define it: bundle schema, value
bound, runtime class, ONNX translation and PyTorch mirror, then one
``register(OpKind(...))``.  A bundle with it loads, predicts and translates;
unregistered, the same file is refused like any unknown op, and a file cannot
register anything.
"""
from __future__ import annotations

import numpy as np
import pytest

import bnnlite
from bnnlite.bounds import abs64, rounding
from bnnlite.bundle import OP_SPECS, BundleError, OpRecord, read_bundle, write_bundle
from bnnlite.ops import Inferred, OpKind, RuntimeOp, SchemaError, lookup, register, registered, unregister

HWC = (4, 4, 3)
N_OUT = int(np.prod(HWC))
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


# ---------------------------------------------------------------- the toy op's module
def _infer(attrs, inputs):
    inputs.need("float")
    shape = inputs.shapes[0]
    if shape[-1] != attrs["channels"]:
        raise SchemaError(f"input of shape {shape} does not have {attrs['channels']} channels")
    return Inferred(shape, "float")


def _bounds(attrs, arrays, in_bounds):
    y = (in_bounds[0] * abs64(arrays["scale"]) + abs64(arrays["shift"])) * rounding(0)
    return {"out": float(y.max(initial=0.0))}


class ScaleAdd(RuntimeOp):
    kind = "float"

    def bind(self, t, ctx):
        x, out = t[self.inputs[0]], t[self.outputs[0]]
        scale, shift = self.arrays["scale"], self.arrays["shift"]

        def call():
            np.multiply(x, scale, out=out)
            np.add(out, shift, out=out)
        return call


def _to_onnx(g, rec):
    y = g.node("Mul", [rec.inputs[0], g.per_channel(rec.name + "_s", rec.arrays["scale"])], [rec.name + "_m"])
    g.node("Add", [y, g.per_channel(rec.name + "_b", rec.arrays["shift"])], [rec.outputs[0]])


def _to_torch(rec, bundle):
    import torch
    from torch import nn
    c = rec.attrs["channels"]
    conv = nn.Conv2d(c, c, 1, groups=c)  # per-channel x * scale + shift
    conv.weight.data = torch.from_numpy(rec.arrays["scale"].reshape(c, 1, 1, 1).copy())
    conv.bias.data = torch.from_numpy(rec.arrays["shift"].copy())
    return conv


SCALE_ADD = OpKind("scale_add", ScaleAdd, _infer, _bounds, int_attrs={"channels": 1},
                   datasets={"scale": ("float32", ("channels",)), "shift": ("float32", ("channels",))},
                   to_onnx=_to_onnx, to_torch=_to_torch)


# ---------------------------------------------------------------- bundles
@pytest.fixture
def scale_add():
    register(SCALE_ADD)
    yield SCALE_ADD
    if "scale_add" in registered():  # a test may have unregistered it already
        unregister("scale_add")


def _header():
    return {"producer": "test", "architecture": "toy", "input_shape": list(HWC), "input_layout": "NHWC",
            "normalization_mean": MEAN, "normalization_std": STD, "class_names": [], "config": {}, "metrics": {}}


def _readout(src):
    """flatten ``src`` -> logits = the flattened values (an identity dense: exact)."""
    return [OpRecord("flatten", "flatten", [src], ["flat"]),
            OpRecord("dense", "readout", ["flat"], ["logits"], {"units_in": N_OUT, "units_out": N_OUT},
                     {"weight": np.eye(N_OUT, dtype=np.float32), "bias": np.zeros(N_OUT, np.float32)})]


SCALE = np.array([1.5, -0.25, 3.0], np.float32)
SHIFT = np.array([0.125, 2.0, -1.0], np.float32)


def _toy_bundle(path, channels=HWC[2], scale=SCALE, shift=SHIFT):
    toy = OpRecord("scale_add", "toy", ["input"], ["scaled"], {"channels": channels},
                   {"scale": scale, "shift": shift})
    write_bundle(path, _header(), [toy] + _readout("scaled"))
    return path


def _images(n=5):
    return np.random.default_rng(0).integers(0, 256, (n,) + HWC, dtype=np.uint8)


# ---------------------------------------------------------------- the tests
def test_a_registered_op_loads_and_runs(scale_add, tmp_path):
    model = bnnlite.Model.load(_toy_bundle(tmp_path / "toy.h5"))
    write_bundle(tmp_path / "plain.h5", _header(), _readout("input"))
    x = bnnlite.Model.load(tmp_path / "plain.h5").logits(_images())  # the normalised input, flattened
    want = (x.reshape((-1,) + HWC) * SCALE + SHIFT).reshape(len(x), -1)
    np.testing.assert_array_equal(model.logits(_images()), want)
    np.testing.assert_array_equal(model.predict(_images()), want.argmax(1))
    assert [type(op) for op in model.graph.ops] == [ScaleAdd, type(model.graph.ops[1])]
    assert "ScaleAdd('toy'" in repr(model.graph.ops[0])


def test_unregistered_op_is_refused(scale_add, tmp_path):
    path = _toy_bundle(tmp_path / "toy.h5")
    bnnlite.Model.load(path)
    unregister("scale_add")
    assert "scale_add" not in OP_SPECS
    with pytest.raises(BundleError, match=r"op 0 \('toy'\): unknown op type 'scale_add'; known: conv2d, "):
        bnnlite.Model.load(path)


def test_the_schema_is_enforced(scale_add, tmp_path):
    with pytest.raises(BundleError, match=r"op 0 \('toy'\): input of shape \(4, 4, 3\) does not have 2 channels"):
        read_bundle(_toy_bundle(tmp_path / "c.h5", channels=2, scale=SCALE[:2], shift=SHIFT[:2]))
    with pytest.raises(BundleError, match=r"op 0 \('toy'\): attribute 'channels' = 0 should be an integer"):
        read_bundle(_toy_bundle(tmp_path / "z.h5", channels=0))
    with pytest.raises(BundleError, match=r"op 0 \('toy'\): dataset 'shift' has shape \(2,\), expected \(3,\)"):
        read_bundle(_toy_bundle(tmp_path / "s.h5", shift=SHIFT[:2]))
    huge = np.full(3, 3e38, np.float32)
    with pytest.raises(BundleError, match=r"op 0 \('toy'\): its values can reach .* beyond float32"):
        read_bundle(_toy_bundle(tmp_path / "b.h5", scale=huge, shift=huge))


def test_registration_is_by_code_only(scale_add):
    assert lookup("scale_add") is scale_add and OP_SPECS is registered() and OP_SPECS["scale_add"] is scale_add
    with pytest.raises(TypeError):
        OP_SPECS["evil"] = scale_add  # the bundle module's view is read-only
    with pytest.raises(ValueError, match="'conv2d' is already registered"):
        register(OpKind("conv2d", ScaleAdd, _infer, _bounds))
    with pytest.raises(ValueError, match="non-empty identifier"):
        register(OpKind("scale add", ScaleAdd, _infer, _bounds))
    with pytest.raises(TypeError, match="takes an OpKind"):
        register({"name": "dict_op"})


def test_onnx_translation(scale_add, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from bnnlite.onnx_export import bundle_to_onnx_model
    path = _toy_bundle(tmp_path / "toy.h5")
    onnx_model = bundle_to_onnx_model(read_bundle(path))
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = ((_images().astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2)
    got = sess.run(None, {"input": np.ascontiguousarray(x)})[0]
    np.testing.assert_allclose(got, bnnlite.Model.load(path).logits(_images()), rtol=1e-5, atol=1e-5)


def test_torch_mirror(scale_add, tmp_path, torch1):
    from bnnlite.bench.engines import torch_from_bundle
    path = _toy_bundle(tmp_path / "toy.h5")
    net = torch_from_bundle(read_bundle(path))
    x = ((_images().astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2)
    with torch1.no_grad():
        got = net(torch1.from_numpy(np.ascontiguousarray(x))).numpy()
    np.testing.assert_allclose(got, bnnlite.Model.load(path).logits(_images()), rtol=1e-5, atol=1e-5)
