"""bnnlite.train.fit: your own nn.Module, your own data, through engine.train.

* An image folder written by the test (train/ and test/, 3 classes, 16x16 PNGs) trains a small
  user network for one epoch; the result exports with ``**result["export"]`` and the bundle
  predicts as PyTorch does; the run folder has the usual files.
* Exact resume: 2 epochs straight against interrupted (Ctrl-C simulated) + resumed into a fresh
  instance of the class: bitwise-equal weights.
* Errors before training: wrong number of outputs, images of the wrong size or channel count,
  bad arrays, unknown options, resuming into another network, exporting a fit() checkpoint as a
  built-in model.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
from torch import nn  # noqa: E402

import bnnlite  # noqa: E402
from bnnlite.train import checkpoint as ckpt_io  # noqa: E402
from bnnlite.train import fit  # noqa: E402
from bnnlite.train.export import export_checkpoint, export_model  # noqa: E402
from bnnlite.train.nn import BinaryConv2d, BinaryLinear  # noqa: E402

CLASSES = ["ant", "bee", "cat"]
SIDE = 16
FAST = dict(batch_size=16, progress=False, bf16=False, threads=1, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class SmallNet(nn.Module):
    """A real stem, two binary convs with BN and max-pool, a linear head (16x16 inputs)."""

    def __init__(self, classes=3, side=SIDE, channels=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
            BinaryConv2d(8, 16, 3, padding=1, scale="none"), nn.BatchNorm2d(16), nn.MaxPool2d(2),
            BinaryConv2d(16, 16, 3, padding=1, scale="none"), nn.BatchNorm2d(16), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * (side // 4) ** 2, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class OtherNet(SmallNet):
    pass


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return SmallNet(**kw)


def _images(rng, n, label_of, side=SIDE):
    """Images whose mean colour depends on the class, so one epoch can learn something."""
    y = rng.integers(0, len(CLASSES), n)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.int64)[y][:, None, None, :]
    x = np.clip(base + rng.integers(-40, 41, (n, side, side, 3)), 0, 255).astype(np.uint8)
    return x, y


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("test", 24)):
        x, y = _images(rng, n, None)
        for i, (img, lab) in enumerate(zip(x, y)):
            (root / split / CLASSES[lab]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / CLASSES[lab] / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def arrays():
    return _images(np.random.default_rng(1), 120, None)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_an_image_folder_then_export_and_predict(folder, tmp_path):
    model = _net()
    before = _state(model)
    r = fit(model, folder, out=tmp_path / "run", epochs=1, **FAST)
    assert r["epochs"] == 1 and len(r["history"]) == 1 and 0.0 <= r["val_acc"] <= 1.0
    assert r["test_acc"] is not None and 0.0 <= r["test_acc"] <= 1.0
    ex = r["export"]
    assert ex["class_names"] == CLASSES and ex["input_size"] == (SIDE, SIDE, 3)
    assert len(ex["mean"]) == 3 and all(0 < s < 1 for s in ex["std"])
    assert {"checkpoint.pth", "model.pth", "log.jsonl", "metrics.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_acc"] == r["val_acc"]
    # trained in place, handed back in eval mode on the CPU, latent weights clipped
    assert not model.training and next(model.parameters()).device.type == "cpu"
    moved = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 2
    assert all(m.weight.abs().max() <= 1.0 for m in model.modules() if isinstance(m, BinaryConv2d))
    saved = ckpt_io.load_checkpoint(tmp_path / "run" / "model.pth")
    assert saved["config"]["arch"] == "custom" and saved["config"]["model_class"].endswith("SmallNet")
    assert all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())

    path = tmp_path / "mine.h5"
    metrics = export_model(model, path, **ex, probe=64, log=lambda *a: None)
    assert metrics["export_agreement"] == 1.0
    m = bnnlite.Model.load(path)
    assert m.class_names == CLASSES
    test_images, _ = _images(np.random.default_rng(5), 40, None)
    from bnnlite.train.data import normalize
    with torch.no_grad():
        ref = model(normalize(torch.from_numpy(test_images), ex["mean"], ex["std"])).argmax(1).numpy()
    assert np.array_equal(m.predict(test_images), ref)


def test_fit_on_arrays_without_out(arrays):
    x, y = arrays
    model = _net()
    r = fit(model, (x, y), epochs=1, test=(x[:20], y[:20]), class_names=CLASSES, **FAST)
    assert r["out"] is None and r["epochs"] == 1 and r["export"]["class_names"] == CLASSES
    assert r["test_acc"] is not None


@pytest.fixture(scope="module")
def resume_runs(arrays, tmp_path_factory):
    """A: 2 epochs straight. B: interrupted after 3 steps, resumed into a fresh model (other
    initial weights) and interrupted again mid-epoch 2, then resumed to the end."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fit_resume")
    x, y = arrays          # 120 images: 12 held out, 108 train -> 6 steps of 16 per epoch
    a = _net(seed=0)
    ra = fit(a, (x, y), out=root / "A", epochs=2, **FAST)
    b1 = fit(_net(seed=0), (x, y), out=root / "B", epochs=2, interrupt_after_steps=3, **FAST)
    b2 = fit(_net(seed=7), (x, y), out=root / "B", epochs=2, resume=True, interrupt_after_steps=6, **FAST)
    b = _net(seed=9)
    rb = fit(b, (x, y), out=root / "B", epochs=2, resume=True, **FAST)
    return {"a": a, "b": b, "ra": ra, "rb": rb, "b1": b1, "b2": b2}


def test_resume_continues_where_it_stopped(resume_runs):
    assert resume_runs["b1"]["interrupted"] and (resume_runs["b1"]["epoch"], resume_runs["b1"]["step"]) == (0, 3)
    assert (resume_runs["b2"]["epoch"], resume_runs["b2"]["step"]) == (1, 3)   # resumed at step 3, not afresh


def test_resume_gives_bit_identical_weights(resume_runs):
    sa, sb = resume_runs["a"].state_dict(), resume_runs["b"].state_dict()
    assert sa.keys() == sb.keys()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    strip = [{k: v for k, v in h.items() if k not in ("epoch_seconds", "images_per_s", "wall_seconds")}
             for h in resume_runs["ra"]["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in ("epoch_seconds", "images_per_s", "wall_seconds")}
                     for h in resume_runs["rb"]["history"]]
    assert resume_runs["ra"]["val_acc"] == resume_runs["rb"]["val_acc"]


def test_resume_into_another_network_is_refused(arrays, tmp_path):
    x, y = arrays
    fit(_net(), (x, y), out=tmp_path, epochs=1, interrupt_after_steps=1, **FAST)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="resume needs the same network class"):
        fit(OtherNet(), (x, y), out=tmp_path, epochs=1, resume=True, **FAST)


def test_wrong_number_of_outputs_is_an_error_before_training(arrays, tmp_path):
    x, y = arrays
    model = _net(classes=5)
    before = _state(model)
    with pytest.raises(ValueError, match=r"3 classes .*needs 3 outputs"):
        fit(model, (x, y), out=tmp_path / "run", epochs=1, **FAST)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("side, channels, what", [(24, 3, "24x24 images"), (SIDE, 1, "1 channel")])
def test_images_the_model_cannot_take_are_an_error(side, channels, what, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (40, side, side, channels), dtype=np.uint8)
    y = rng.integers(0, 3, 40)
    with pytest.raises(ValueError, match=f"SmallNet cannot take the data's .*{what}"):
        fit(_net(), (x, y), out=tmp_path / "run", epochs=1, **FAST)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


@pytest.mark.parametrize("data, match", [
    ((np.zeros((8, SIDE, SIDE, 3), np.float32), np.zeros(8, int)), "x must be uint8"),
    ((np.zeros((8, SIDE, SIDE, 3), np.uint8), np.zeros(7, int)), "y must be integer labels, one per image"),
    ((np.zeros((8, SIDE, SIDE, 3), np.uint8), -np.ones(8, int)), "negative label"),
    ((np.zeros((0, SIDE, SIDE, 3), np.uint8), np.zeros(0, int)), "no images"),
    ((np.zeros((8, SIDE, SIDE, 3), np.uint8),), "pair of arrays"),
])
def test_bad_arrays(data, match):
    with pytest.raises(ValueError, match=match):
        fit(_net(), data, epochs=1, **FAST)


def test_bad_arguments(arrays, folder, tmp_path):
    x, y = arrays
    with pytest.raises(TypeError, match="unknown option.*epohcs"):
        fit(_net(), (x, y), epohcs=1, **FAST)
    with pytest.raises(TypeError, match="unknown option.*model_overrides"):
        fit(_net(), (x, y), model_overrides={}, **FAST)
    with pytest.raises(ValueError, match="optimizer must be"):
        fit(_net(), (x, y), optimizer="lamb", **FAST)
    with pytest.raises(ValueError, match="resume=True needs the out folder"):
        fit(_net(), (x, y), resume=True, **FAST)
    with pytest.raises(ValueError, match="class_names go with arrays"):
        fit(_net(), folder, class_names=CLASSES, **FAST)
    with pytest.raises(TypeError, match="nn.Module"):
        fit("SmallNet", (x, y), **FAST)


def test_binary_linear_latent_weights_are_clipped(arrays, tmp_path):
    """One Adam step at lr 50 moves every weight by ~50: BinaryLinear's come back at +-1."""
    x, y = arrays
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                          BinaryLinear(4 * SIDE * SIDE, 32, scale="none"), nn.BatchNorm1d(32), nn.Linear(32, 3))
    r = fit(model, (x, y), out=tmp_path, epochs=1, lr=50.0, interrupt_after_steps=2, **FAST)
    assert r["interrupted"]
    w = model[3].weight
    assert w.abs().max().item() == 1.0 and (w.abs() == 1.0).float().mean().item() > 0.5
    assert model[0].weight.abs().max().item() > 1.0     # the real conv is not clipped


def test_a_fit_checkpoint_is_not_taken_for_a_builtin_model(arrays, tmp_path):
    x, y = arrays
    fit(_net(), (x, y), out=tmp_path, epochs=1, interrupt_after_steps=1, **FAST)
    with pytest.raises(ValueError, match="your own network .*SmallNet.*export_model"):
        export_checkpoint(tmp_path / "checkpoint.pth", tmp_path / "x.h5", log=lambda *a: None)


def test_with_ema_the_model_ends_as_the_average(arrays, tmp_path):
    """ema=...: validation, model.pth and the model handed back are the weight average."""
    x, y = arrays
    model = _net()
    fit(model, (x, y), out=tmp_path, epochs=1, ema=0.9, **FAST)
    saved = ckpt_io.load_checkpoint(tmp_path / "model.pth")["model"]
    raw = ckpt_io.load_checkpoint(tmp_path / "checkpoint.pth")["model"]   # the last raw weights
    assert any(not torch.equal(saved[k], raw[k]) for k in saved if saved[k].is_floating_point())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
