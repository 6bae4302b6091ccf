"""bnnlite/bench/engines.py: the PyTorch FP32 engine is the bundle's own network, binary
bundles included (their ops as FP32 convs of +-1 values)."""
import numpy as np
import pytest

import bnnlite
from bnnlite.bench.engines import ENGINES, missing, torch_from_bundle
from bnnlite.bench.evalset import data_file
from bnnlite.bundle import read_bundle


@pytest.mark.parametrize("path", ["tiny fp32", "tiny xnor", "tiny birealnet", "fp32.h5", "birealnet.h5"])
def test_torch_engine_is_the_bundles_network(tiny_bundles, path):
    """The PyTorch FP32 engine rebuilt from a bundle gives bnnlite's logits: the same class
    for every image, every logit within 1e-3 for nearly all. The engine runs batch-norm and
    the dense layer in PyTorch's own rounding, not bnnlite's, so a pre-activation at a
    rounding tie can take the other sign and move that image's logits (3% of these noise
    images for the shipped Bi-Real; the exporter's check is the bit-exact one)."""
    import torch

    bundle_path = tiny_bundles[path.split()[1]] if path.startswith("tiny") else data_file(path)
    model = bnnlite.Model.load(bundle_path)
    h, w, c = model.header["input_shape"]
    x = np.random.default_rng(0).integers(0, 256, (64, h, w, c), dtype=np.uint8)
    net = torch_from_bundle(read_bundle(bundle_path))
    mean, std = model.header["normalization_mean"], model.header["normalization_std"]
    xt = torch.from_numpy(((x / np.float32(255) - mean) / std).astype(np.float32).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        got = net(xt).numpy()
    want = model.logits(x)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.mean((np.abs(got - want) <= 1e-3).all(1)) >= 0.9


def test_missing_says_what_to_install(monkeypatch):
    import bnnlite.bench.engines as engines
    monkeypatch.setattr(engines, "find_spec", lambda name: None if name == "onnxruntime" else object())
    assert "onnxruntime" in missing("ort-fp32") and "bnnlite[bench]" in missing("ort-bnn")
    assert missing("torch-fp32") is None
    assert set(ENGINES) >= {"bnnlite", "torch-fp32", "ort-fp32"}
