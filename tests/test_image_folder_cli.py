"""Your own images through the CLIs (issue 19, acceptance 3): a folder of 100 PNG files made here
trains one epoch (bnnlite-train), exports (bnnlite-export) and runs (bnnlite predict / evaluate);
damaged folders (a corrupt or truncated image, an empty class folder, mixed sizes, stray files, a
FIFO, a decompression bomb) end each command with one ``Error:`` line naming the file.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

Image = pytest.importorskip("PIL.Image")

from bnnlite import cli  # noqa: E402

from _cli import assert_error  # noqa: E402

CLASSES = ("east", "north", "south", "west")  # sorted: the label order training gives them
SIDE = 16
TRAIN = [sys.executable, "-m", "bnnlite.train"]
EXPORT = [sys.executable, "-m", "bnnlite.train.export"]
TINY = ["--epochs", "1", "--batch-size", "16", "--val-size", "10", "--no-compile", "--no-bf16", "--threads", "1",
        "--no-progress", "--model-overrides", '{"widths": [8, 8, 16, 16, 32, 32]}']


def _image(label, rng, size=(SIDE, SIDE)):
    """Noise with one bright half (east, north, south or west): a pattern a network can learn."""
    h, w = size
    x = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    half = {"east": (slice(None), slice(w // 2, None)), "north": (slice(0, h // 2), slice(None)),
            "south": (slice(h // 2, None), slice(None)), "west": (slice(None), slice(0, w // 2))}[label]
    x[half] += 150
    return x


def make_folder(root, per_class=25, classes=CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_image(c, rng)).save(root / c / f"{c}{i:02d}.png")
    return root


def _run(cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, cmd))} hung for {timeout} s")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs") / "photos")


@pytest.fixture(scope="module")
def bundle(folder, tmp_path_factory):
    """bnnlite-train one epoch on the 100 PNG files, then bnnlite-export (both as subprocesses)."""
    d = tmp_path_factory.mktemp("run")
    proc = _run(TRAIN + ["--model", "birealnet", "--data", folder, "--out", d / "run"] + TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(EXPORT + [d / "run" / "model.pth", d / "model.h5"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class agreement 100.000%" in proc.stdout, proc.stdout
    return d / "model.h5"


def cli_run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def pillow_rgb(paths):
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def parse_predictions(output):
    rows = [line.split("\t") for line in output.strip().splitlines()]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows]), [r[2] for r in rows]


# ---------------------------------------------------------------- train, export, run
def test_the_bundle_records_the_folder_classes_size_and_training_statistics(bundle, folder):
    import bnnlite
    from bnnlite.datasets import load_dataset
    from bnnlite.train.data import channel_stats, train_val_split
    m = bnnlite.Model.load(bundle)
    assert m.input_shape == (SIDE, SIDE, 3) and m.class_names == list(CLASSES)
    assert m.graph.shapes["logits"] == (len(CLASSES),)
    train, _, _ = load_dataset(folder)
    mean, std = channel_stats(train_val_split(train, 10, 0)[0].images)  # the training split, not the whole folder
    assert m.header["normalization_mean"].tolist() == pytest.approx(mean, abs=1e-6)
    assert m.header["normalization_std"].tolist() == pytest.approx(std, abs=1e-6)
    assert mean != pytest.approx(channel_stats(train.images)[0], abs=1e-7)


def test_predict_image_files(bundle, folder):
    import bnnlite
    files = [folder / "east" / "east03.png", folder / "south" / "south11.png", folder / "west" / "west24.png"]
    r = cli_run("predict", *files, "--model", bundle)
    assert r.exit_code == 0, r.output
    keys, pred, names = parse_predictions(r.output)
    assert keys == [str(f) for f in files]
    assert pred.tolist() == bnnlite.Model.load(bundle).predict(pillow_rgb(files)).tolist()
    assert names == [CLASSES[p] for p in pred]


def test_predict_a_folder_in_batches(bundle, folder):
    import bnnlite
    files = sorted(folder.glob("*/*.png"))
    want = bnnlite.Model.load(bundle).predict(pillow_rgb(files))
    r = cli_run("predict", folder, "--model", bundle)
    assert r.exit_code == 0, r.output
    keys, pred, _ = parse_predictions(r.output)
    assert keys == [str(f) for f in files] and len(keys) == 100
    assert pred.tolist() == want.tolist()
    small = cli_run("predict", folder, "--model", bundle, "--batch", "7")  # a batch boundary inside a class
    assert small.exit_code == 0 and small.output == r.output
    flat = cli_run("predict", folder / "north", "--model", bundle)  # a folder of images, no classes
    assert flat.exit_code == 0 and parse_predictions(flat.output)[1].tolist() == want[25:50].tolist()


def _top1(output):
    m = re.search(r"top-1 ([\d.]+)% on ([\d,]+) images", output)
    assert m, output
    return float(m.group(1)), int(m.group(2).replace(",", ""))


def test_evaluate_a_folder(bundle, folder):
    import bnnlite
    files = sorted(folder.glob("*/*.png"))
    labels = np.array([CLASSES.index(f.parent.name) for f in files])
    acc = float(np.mean(bnnlite.Model.load(bundle).predict(pillow_rgb(files)) == labels))
    r = cli_run("evaluate", "--model", bundle, "--data", folder, "--batch", "16")
    assert r.exit_code == 0, r.output
    assert _top1(r.output) == (round(100 * acc, 2), 100)


def test_evaluate_matches_class_folders_to_the_model_by_name(bundle, folder, tmp_path):
    """Two of the four classes: their labels are the model's 1 and 3, not the folder's 0 and 1."""
    import bnnlite
    part = tmp_path / "part"
    for c in ("north", "west"):
        shutil.copytree(folder / c, part / c)
    files = sorted(part.glob("*/*.png"))
    pred = bnnlite.Model.load(bundle).predict(pillow_rgb(files))
    acc = float(np.mean(pred == np.repeat([1, 3], 25)))
    r = cli_run("evaluate", "--model", bundle, "--data", part)
    assert r.exit_code == 0, r.output
    assert _top1(r.output) == (round(100 * acc, 2), 50)


def test_evaluate_a_train_test_folder_uses_test(bundle, folder, tmp_path):
    shutil.copytree(folder, tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "test", per_class=3, seed=1)
    assert _top1(cli_run("evaluate", "--model", bundle, "--data", tmp_path / "d").output)[1] == 12


# ---------------------------------------------------------------- damaged folders
def _png_with_size(path, width, height):
    """A real PNG whose header then claims width x height (CRC fixed): only the header says so."""
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))


def damage(root, kind):
    """Damage the image folder ``root`` one way; returns a regex the error must hold."""
    if kind == "corrupt":
        (root / "north" / "north05.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        return r"north05.png: not a readable image"
    if kind == "truncated":
        p = root / "south" / "south07.png"
        p.write_bytes(p.read_bytes()[:-40])
        return r"south07.png: not a readable image"
    if kind == "empty_class":
        for f in (root / "west").iterdir():
            f.unlink()
        return r"west: class folder has no images"
    if kind == "mixed_sizes":
        Image.fromarray(np.zeros((SIDE, SIDE + 4, 3), np.uint8)).save(root / "west" / "wide.png")
        return rf"wide.png: image is {SIDE + 4}x{SIDE} \(W x H\), .*{SIDE}x{SIDE}"
    if kind == "text_file":
        (root / "east" / "notes.txt").write_text("not an image")
        return r"notes.txt: not an image file"
    if kind == "stray_file":
        Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(root / "loose.png")
        return r"loose.png: a file beside the class folders"
    if kind == "tiff_named_png":  # decoded only by the plugins of the image suffixes
        Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(root / "east" / "fake.png", format="TIFF")
        return r"fake.png: not a readable image \(UnidentifiedImageError"
    if kind == "bomb":  # refused from the header: 9000x9000 is over the 64 Mpixel limit
        _png_with_size(root / "east" / "bomb.png", 9000, 9000)
        return r"bomb.png: image is 9000x9000, more than the 67,108,864 pixels read \(a decompression bomb"
    raise AssertionError(kind)


KINDS = ["corrupt", "truncated", "empty_class", "mixed_sizes", "text_file", "stray_file", "tiff_named_png", "bomb"]


@pytest.fixture
def damaged(tmp_path_factory):
    def make(kind):
        root = make_folder(tmp_path_factory.mktemp("bad") / "photos", per_class=8)
        return root, damage(root, kind)
    return make


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_damaged_folder(kind, bundle, damaged):
    root, match = damaged(kind)
    assert_error(cli_run("evaluate", "--model", bundle, "--data", root), match)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_damaged_folder(kind, bundle, damaged):
    root, match = damaged(kind)
    assert_error(cli_run("predict", "--model", bundle, root), match)


@pytest.mark.parametrize("kind", ["corrupt", "empty_class", "mixed_sizes", "text_file"])
def test_train_on_damaged_folder(kind, damaged, tmp_path, torch1):
    from bnnlite.train import cli as train_cli
    root, match = damaged(kind)
    r = CliRunner().invoke(train_cli.main, ["--model", "xnor", "--data", str(root), "--out", str(tmp_path / "o"),
                                            *TINY])
    if kind == "mixed_sizes":  # training takes the first image's size: the others must have it
        match = rf"wide.png: image is {SIDE + 4}x{SIDE} \(W x H\), the others are {SIDE}x{SIDE}"
    assert_error(r, match)
    assert not (tmp_path / "o" / "model.pth").exists()


def test_predict_image_of_another_size_than_the_model(bundle, tmp_path):
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "big.png")
    assert_error(cli_run("predict", "--model", bundle, tmp_path / "big.png"),
                 rf"big.png: image is 24x24 \(W x H\), the model \(.*model.h5\) takes {SIDE}x{SIDE}: resize.*--resize")
    r = cli_run("predict", "--model", bundle, "--resize", tmp_path / "big.png")
    assert r.exit_code == 0, r.output


def test_evaluate_class_folder_the_model_does_not_know(bundle, folder, tmp_path):
    shutil.copytree(folder / "east", tmp_path / "d" / "eats")
    assert_error(cli_run("evaluate", "--model", bundle, "--data", tmp_path / "d"),
                 r"eats: 'eats' is not one of the model's classes \(east, north, south, west\)")


def test_predict_an_empty_folder(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_error(cli_run("predict", "--model", bundle, tmp_path / "empty"), "empty: no image files")


def test_predict_npy_and_images_together_is_a_usage_error(bundle, folder, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, SIDE, SIDE, 3), np.uint8))
    r = cli_run("predict", "--model", bundle, tmp_path / "x.npy", folder / "east" / "east00.png")
    assert r.exit_code == 2 and "give one .npy file, or image files and folders" in r.output


def test_hidden_files_are_passed_over(bundle, folder, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(folder / "north", d / "north")
    (d / "north" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (d / "north" / "._north00.png").write_bytes(b"\0\5\26\7 AppleDouble")
    r = cli_run("predict", "--model", bundle, d)
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 25


@pytest.mark.parametrize("how", ["file", "in_folder"])
def test_a_fifo_named_like_an_image_does_not_hang(how, bundle, folder, tmp_path):
    """In a subprocess: a regression would block on the FIFO's open or read."""
    d = tmp_path / "d"
    shutil.copytree(folder / "north", d / "north")
    os.mkfifo(d / "north" / "pipe.png")
    target = d / "north" / "pipe.png" if how == "file" else d
    proc = _run([sys.executable, "-m", "bnnlite.cli", "predict", "--model", bundle, target], timeout=60)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and err[-1].startswith("Error: "), proc.stderr
    assert "pipe.png: not a regular file" in err[-1] and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- other sizes, other class counts
@pytest.mark.parametrize("arch,side,classes", [("fp32", 24, ("east", "west")), ("xnor", 40, ("north", "south", "west"))])
def test_train_and_export_other_image_sizes_and_class_counts(arch, side, classes, tmp_path, torch1):
    """The classifier follows the data: 24x24 and 40x40 images, 2 and 3 classes, through training and export."""
    import bnnlite
    from bnnlite.train.engine import TrainConfig, train
    from bnnlite.train.export import export_checkpoint
    rng = np.random.default_rng(side)
    for c in classes:
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(_image(c, rng, (side, side))).save(tmp_path / "d" / c / f"{i}.png")
    train(TrainConfig(model=arch, data=str(tmp_path / "d"), out=str(tmp_path / "o"), epochs=1, batch_size=8,
                      compile=False, bf16=False, progress=False, threads=1, device="cpu",
                      model_overrides={"widths": [8, 8, 16, 16, 32, 32]}))
    export_checkpoint(tmp_path / "o" / "model.pth", tmp_path / "m.h5", probe=32, log=lambda *a: None)
    m = bnnlite.Model.load(tmp_path / "m.h5")
    assert m.input_shape == (side, side, 3) and m.class_names == list(classes)
    assert m.logits(np.zeros((2, side, side, 3), np.uint8)).shape == (2, len(classes))


@pytest.mark.parametrize("size,match", [((20, 20), "must be a multiple of 8, got 20"),
                                        ((16, 24), "images are 24x16; the built-in models take square images")])
def test_train_on_sizes_the_models_cannot_take(size, match, tmp_path, torch1):
    from bnnlite.train import cli as train_cli
    rng = np.random.default_rng(0)
    for c in CLASSES[:2]:
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(_image(c, rng, size)).save(tmp_path / "d" / c / f"{i}.png")
    r = CliRunner().invoke(train_cli.main, ["--model", "birealnet", "--data", str(tmp_path / "d"),
                                            "--out", str(tmp_path / "o"), *TINY])
    assert_error(r, match)
