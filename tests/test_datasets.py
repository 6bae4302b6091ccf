"""bnnlite.datasets: image folders and .npz arrays (made by the tests), their errors, and one
training epoch on an image folder.
"""
import os
import warnings

import numpy as np
import pytest

from bnnlite.datasets import load_dataset, load_images

Image = pytest.importorskip("PIL.Image")


def _png_folder(root, classes=("cat", "dog"), per_class=5, size=(12, 12), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_class_folders_give_images_labels_and_sorted_names(tmp_path):
    root = _png_folder(tmp_path / "d", classes=("zebra", "ant"), per_class=3)
    train, test, classes = load_dataset(root)
    assert classes == ["ant", "zebra"]
    assert train.images.shape == (6, 12, 12, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(test) == 0
    first = np.asarray(Image.open(root / "ant" / "0.png").convert("RGB"))
    assert np.array_equal(train.images[0], first)


def test_train_and_test_subfolders(tmp_path):
    _png_folder(tmp_path / "d" / "train", per_class=4)
    _png_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    train, test, classes = load_dataset(tmp_path / "d")
    assert (len(train), len(test), classes) == (8, 4, ["cat", "dog"])


def test_grey_and_palette_images_become_rgb(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "a" / "g.png")
    Image.fromarray(np.full((8, 8), 3, np.uint8)).convert("P").save(tmp_path / "a" / "p.gif")
    x = load_images(sorted((tmp_path / "a").iterdir()))
    assert x.shape == (2, 8, 8, 3) and x[1].dtype == np.uint8 and (x[0] == 200).all()


@pytest.mark.parametrize("damage, match", [
    ("corrupt", "b.png: not a readable image"),
    ("empty_class", "bird: class folder has no images"),
    ("mixed_sizes", r"odd.png: image is 10x12 \(W x H\)"),
    ("no_classes", "nor is it an image folder"),
])
def test_folder_errors_name_the_culprit(tmp_path, damage, match):
    root = _png_folder(tmp_path / "d")
    if damage == "corrupt":
        (root / "dog" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif damage == "empty_class":
        (root / "bird").mkdir()
    elif damage == "mixed_sizes":
        Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(root / "dog" / "odd.png")
    elif damage == "no_classes":
        root = tmp_path / "flat"
        root.mkdir()
        (root / "sub").mkdir()
        root = root / "sub"
    with pytest.raises(ValueError, match=match):
        load_dataset(root)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    root = _png_folder(tmp_path / "d")
    os.mkfifo(root / "cat" / "z.png")
    with pytest.raises(ValueError, match="not a regular file"):
        load_dataset(root)


@pytest.mark.parametrize("limit", [100, 3000])  # Pillow refuses over 2x its limit, bnnlite over 1x
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, limit):
    import bnnlite.datasets as ds
    root = _png_folder(tmp_path / "d", size=(64, 64))
    monkeypatch.setattr(ds, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not warned about
        with pytest.raises(ValueError, match=rf"0.png: image is .*the {limit:,} pixels read \(a decompression bomb"):
            load_dataset(root)


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(10) % 3)
    train, test, classes = load_dataset(tmp_path / "a.npz")
    assert np.array_equal(train.images, x) and len(test) == 0 and classes == ["class_0", "class_1", "class_2"]
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(10) % 2, x_test=x[:4], y_test=np.zeros(4, int),
             class_names=np.array(["no", "yes"]))
    train, test, classes = load_dataset(tmp_path / "b.npz")
    assert len(test) == 4 and classes == ["no", "yes"]


@pytest.mark.parametrize("arrays, match", [
    (dict(x=np.zeros((3, 4, 4, 3), np.float32), y=np.zeros(3, int)), "x must be uint8"),
    (dict(x=np.zeros((3, 4, 4, 3), np.uint8), y=np.zeros(2, int)), "one per image"),
    (dict(x=np.zeros((3, 4, 4, 3), np.uint8)), "missing y"),
    (dict(x=np.zeros((3, 4, 4, 3), np.uint8), y=-np.ones(3, int)), "negative label"),
    (dict(x=np.zeros((3, 4, 4, 3), np.uint8), y=np.zeros(3, int), x_test=np.zeros((1, 5, 5, 3), np.uint8),
          y_test=np.zeros(1, int)), "x_test images"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset(tmp_path / "bad.npz")


def test_npz_with_a_pickled_object_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(ValueError, match="x.npy: holds Python objects") as e:
        load_dataset(tmp_path / "p.npz")
    assert "allow_pickle" not in str(e.value)


def test_one_epoch_on_an_image_folder_of_100_pngs(tmp_path):
    torch = pytest.importorskip("torch")
    from bnnlite.train.engine import TrainConfig, train
    root = _png_folder(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=25, size=(16, 16))
    torch.set_num_threads(1)
    m = train(TrainConfig(model="birealnet", data=str(root), out=str(tmp_path / "o"), epochs=1, batch_size=16,
                          val_size=20, compile=False, bf16=False, progress=False, threads=1, device="cpu",
                          model_overrides={"widths": [8, 8, 16, 16, 32, 32]}))
    assert m["test_acc"] is None and 0 <= m["val_acc"] <= 1
    ck = torch.load(tmp_path / "o" / "model.pth", weights_only=False)
    assert ck["class_names"] == ["a", "b", "c", "d"] and ck["config"]["image_size"] == 16


def test_npz_member_declaring_more_than_it_holds_is_refused_before_loading(tmp_path):
    import io
    import zipfile
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                               "shape": (10 ** 6, 32, 32, 3)})
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + b"\0" * 100)
        zf.writestr("y.npy", b"")
    with pytest.raises(ValueError, match="declares a uint8 array of shape"):
        load_dataset(tmp_path / "liar.npz")


def test_npz_bigger_than_memory_is_refused(tmp_path, monkeypatch):
    import bnnlite.datasets as ds
    np.savez_compressed(tmp_path / "z.npz", x=np.zeros((50, 32, 32, 3), np.uint8), y=np.zeros(50, int))
    monkeypatch.setattr(ds, "_memory_bytes", lambda: 100_000)
    with pytest.raises(ValueError, match="more than half of this machine's memory"):
        load_dataset(tmp_path / "z.npz")
