"""ReActNet-A (train/reactnet.py) exports and runs in bnnlite as in PyTorch, its binary 1x1
convs included.

* The model: block structure, default widths, config checks.
* Random weights and BN statistics at a small width (channel counts that are not multiples
  of 64, one above it), exported through ``export_checkpoint``: every binary conv, 3x3 and
  1x1, is one ``bconv2d`` with its BN, residual add (the identity or the 2x2 average pool)
  and RPReLU fused; the same class as PyTorch eval on every image, every logit within 1e-3,
  the binary convs' input bits equal to PyTorch's (``test_export_resnet._assert_agrees``).
* Trained one epoch by ``bnnlite-train --model reactnet`` on a small subset and exported by
  ``bnnlite-export``, as the Bi-Real ResNet-18 is in test_export_resnet.py.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnnlite.bundle import read_bundle  # noqa: E402
from bnnlite.train.export import export_checkpoint  # noqa: E402
from bnnlite.train.models import build_model, default_config  # noqa: E402
from bnnlite.train.nn import BinaryConv2d  # noqa: E402
from bnnlite.train.reactnet import ReActBlock  # noqa: E402

import _models  # noqa: E402
from test_export_resnet import _assert_agrees, _images, _train_one_epoch_and_export  # noqa: E402

# 12 -> 24 (2 pointwise) -> 48 /2 (2) -> 48 (1) -> 96 /2 (2) -> 96 (1): 5 binary 3x3, 8 binary 1x1.
SMALL = {"stem_width": 12, "blocks": [[24, 1], [48, 2], [48, 1], [96, 2], [96, 1]]}
SMALL_1X1, SMALL_3X3 = 8, 5


@pytest.fixture(autouse=True)
def _one_thread(torch1):
    pass


def _bconvs(path):
    return [o for o in read_bundle(path).ops if o.op == "bconv2d"]


def _check_lowering(path, n3, n1):
    """Every binary conv is one fused bconv2d: float out, RPReLU, a residual input; no
    stand-alone add; each pair of pointwise outputs concatenated."""
    ops = read_bundle(path).ops
    kinds = [o.op for o in ops]
    b = _bconvs(path)
    assert sorted((o.attrs["kh"], o.attrs["kw"]) for o in b) == [(1, 1)] * n1 + [(3, 3)] * n3
    for o in b:
        assert o.attrs["output"] == "float" and o.attrs.get("rprelu"), o.name
        assert len(o.inputs) == 2, f"{o.name}: its shortcut is not fused"
        k = o.attrs["kh"]
        assert o.attrs["padding"] == k // 2 and (k == 3 or o.attrs["stride"] == 1), o.name
        assert o.attrs["cin"] == o.attrs["cout"], o.name
    assert "add" not in kinds and kinds.count("conv2d") == 1
    assert kinds.count("global_avgpool") == 1 and kinds[-1] == "dense"
    strided = [o for o in b if o.attrs["stride"] == 2]
    pools = {o.outputs[0]: o for o in ops if o.op == "avgpool2d"}
    assert len(pools) == len(strided) and all(o.inputs[1] in pools for o in strided)
    return kinds


def test_reactnet_blocks_and_config():
    model = build_model(default_config("reactnet"))
    blocks = [m for m in model.modules() if isinstance(m, ReActBlock)]
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(blocks) == 8
    assert sorted(c.kernel_size for c in convs) == [1] * 12 + [3] * 8
    assert all(c.threshold is not None and c.scale_mode == "none" for c in convs)
    assert [b.pool is not None for b in blocks] == [b.conv.stride == 2 for b in blocks]
    assert [len(b.pointwise) for b in blocks] == [2, 2, 1, 2, 1, 2, 1, 1]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    cfg = dict(default_config("reactnet"), stem="imagenet", image_size=64, num_classes=5, **SMALL)
    assert build_model(cfg)(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    for blocks, match in (([[64, 1], [192, 1]], r"stay \(64\) or double \(128\), got 64->192"),
                          ([[32, 3]], "stride must be 1 or 2"),
                          ([[32, 2]] * 6, r"blocks\[5\] halves a 1x1 map")):
        with pytest.raises(ValueError, match=match):
            build_model(dict(default_config("reactnet"), blocks=blocks))


def test_small_reactnet_random_weights(tmp_path):
    cfg = dict(default_config("reactnet", _models.NUM_CLASSES), image_size=_models.IMAGE_SIZE, **SMALL)
    model = _models.randomize(build_model(cfg), seed=3)
    with torch.no_grad():
        model.classifier.weight.mul_(0.5)
    ckpt = _models.write_checkpoint(model, tmp_path / "rn.pt")
    export_checkpoint(ckpt, tmp_path / "rn.h5", probe=32, log=lambda *a: None)
    kinds = _check_lowering(tmp_path / "rn.h5", SMALL_3X3, SMALL_1X1)
    assert kinds.count("concat") == 3 and kinds.count("avgpool2d") == 2
    ref, got = _assert_agrees(model, tmp_path / "rn.h5", _images(300, _models.IMAGE_SIZE), _models.MEAN,
                              _models.STD)
    assert np.abs(ref - got).max() <= 1e-3


def test_reactnet_trained_one_epoch_exports_and_runs(data_dir, tmp_path):
    model, bundle, c = _train_one_epoch_and_export("reactnet", SMALL, 96, data_dir, tmp_path)
    _check_lowering(bundle, SMALL_3X3, SMALL_1X1)
    _assert_agrees(model, bundle, _images(300, 32), c["normalization"]["mean"], c["normalization"]["std"])
