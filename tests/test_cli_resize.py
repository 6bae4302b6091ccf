"""``--resize`` on ``bnnlite predict`` / ``evaluate``, and ``evaluate --data`` given loose image files.

Torch-free: the shipped model (32x32 RGB, CIFAR-10's classes) runs on images made here.
``--resize`` scales with Pillow's bilinear filter until the image covers the model's input
size, then crops the centre (PIL.ImageOps.fit); the expected pixels are computed below with a
plain ``Image.resize`` and a crop box worked out by hand.  Without the flag an image of
another size stays an error that names ``--resize``; with it, the hostile-file refusals
(bombs, corrupt and truncated files, FIFOs) hold as before.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

Image = pytest.importorskip("PIL.Image")

import bnnlite  # noqa: E402
from bnnlite import cli  # noqa: E402
from bnnlite.datasets import fit_image, load_images  # noqa: E402

from _cli import assert_error  # noqa: E402

SIDE = 32  # the shipped model's input: 32x32x3
BILINEAR = Image.Resampling.BILINEAR
# (W, H) of each image, and the crop box (left, top, right, bottom) that maps it onto 32x32 with its
# aspect ratio kept: the shorter side whole, the longer one cut evenly from both ends.
SIZES = {"same": ((32, 32), None), "twice": ((64, 64), (0, 0, 64, 64)), "wide": ((48, 32), (8, 0, 40, 32)),
         "tall_small": ((20, 30), (0, 5, 20, 25)), "odd": ((45, 33), (6, 0, 39, 33))}


def cli_run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def parse_predictions(output):
    rows = [line.split("\t") for line in output.strip().splitlines()]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def expected_pixels(path, box):
    """What --resize must give for ``path``: Pillow's bilinear resize of the crop ``box`` (None: as decoded)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        return np.asarray(rgb if box is None else rgb.resize((SIDE, SIDE), BILINEAR, box=box))


@pytest.fixture(scope="module")
def model():
    return bnnlite.Model.pretrained()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A flat folder of noise images, one per entry of SIZES; returns (folder, {name: path})."""
    d = tmp_path_factory.mktemp("mixed") / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    paths = {}
    for name, ((w, h), _) in SIZES.items():
        paths[name] = d / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[name])
    return d, paths


# ---------------------------------------------------------------- the pixels
@pytest.mark.parametrize("name", list(SIZES))
def test_resized_pixels_are_pillows_bilinear_resize_of_the_centre(name, mixed):
    path = mixed[1][name]
    got = load_images([path], (SIDE, SIDE), resize=True)
    assert got.shape == (1, SIDE, SIDE, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], expected_pixels(path, SIZES[name][1]))


def test_an_image_at_the_size_is_not_resampled(mixed):
    path = mixed[1]["same"]
    np.testing.assert_array_equal(load_images([path], (SIDE, SIDE), resize=True), load_images([path], (SIDE, SIDE)))


def test_fit_image_is_imageops_fit_bilinear(mixed):
    from PIL import ImageOps
    with Image.open(mixed[1]["odd"]) as im:
        rgb = im.convert("RGB")
        np.testing.assert_array_equal(np.asarray(fit_image(rgb, (24, 16))),  # (H, W): a non-square target
                                      np.asarray(ImageOps.fit(rgb, (16, 24), BILINEAR)))


def test_palette_and_greyscale_images_are_converted_before_resizing(tmp_path):
    """A palette image resized as indices would blend unrelated colours: it is resized as RGB."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    rgb.quantize(16).save(tmp_path / "p.gif")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / "g.png")
    for f in ("p.gif", "g.png"):
        with Image.open(tmp_path / f) as im:
            want = np.asarray(im.convert("RGB").resize((SIDE, SIDE), BILINEAR))
        np.testing.assert_array_equal(load_images([tmp_path / f], (SIDE, SIDE), resize=True)[0], want)
    with Image.open(tmp_path / "g.png") as im:
        want = np.asarray(im.convert("L").resize((SIDE, SIDE), BILINEAR))
    np.testing.assert_array_equal(load_images([tmp_path / "g.png"], (SIDE, SIDE), channels=1, resize=True)[0],
                                  want[..., None])


def test_resize_needs_a_size():
    with pytest.raises(ValueError, match="resize=True needs the size"):
        load_images([], resize=True)


# ---------------------------------------------------------------- predict
def test_predict_a_mixed_size_folder_with_resize(mixed, model):
    d, paths = mixed
    files = sorted(paths.values())
    want = model.predict(np.stack([expected_pixels(p, SIZES[p.stem][1]) for p in files]))
    r = cli_run("predict", "--resize", d)
    assert r.exit_code == 0, r.output
    keys, pred = parse_predictions(r.output)
    assert keys == [str(p) for p in files]
    assert pred == want.tolist()
    small = cli_run("predict", "--resize", "--batch", "2", *files)  # files named one by one, batches of 2
    assert small.exit_code == 0 and small.output == r.output


def test_predict_a_mixed_size_folder_without_resize_names_the_flag(mixed):
    assert_error(cli_run("predict", mixed[0]),
                 r"odd.png: image is 45x33 \(W x H\), the model \(.*birealnet.h5\) takes 32x32: .*--resize")


def test_predict_resize_with_npy_is_a_usage_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, SIDE, SIDE, 3), np.uint8))
    assert_error(cli_run("predict", "--resize", tmp_path / "x.npy"), "--resize applies to image files", code=2)


def test_resize_is_in_the_help():
    for cmd in ("predict", "evaluate"):
        out = cli_run(cmd, "--help").output
        assert "--resize" in out and "bilinear" in out and "centre-cropped" in out, out


# ---------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def classes(mixed, tmp_path_factory):
    """photos/<class>/: the mixed images split between two of the model's classes."""
    root = tmp_path_factory.mktemp("cls") / "photos"
    for i, (name, path) in enumerate(sorted(mixed[1].items())):
        (root / ("cat" if i % 2 else "ship")).mkdir(parents=True, exist_ok=True)
        (root / ("cat" if i % 2 else "ship") / path.name).write_bytes(path.read_bytes())
    return root


def test_evaluate_a_mixed_size_class_folder_with_resize(classes, model):
    files = sorted(classes.glob("*/*.png"))
    labels = np.array([model.class_names.index(f.parent.name) for f in files])
    pred = model.predict(np.stack([expected_pixels(p, SIZES[p.stem][1]) for p in files]))
    r = cli_run("evaluate", "--resize", "--data", classes, "--batch", "2")
    assert r.exit_code == 0, r.output
    m = re.search(r"top-1 ([\d.]+)% on ([\d,]+) images", r.output)
    assert m and (float(m.group(1)), int(m.group(2))) == (round(100 * float(np.mean(pred == labels)), 2), len(files))


def test_evaluate_a_mixed_size_class_folder_without_resize_names_the_flag(classes):
    assert_error(cli_run("evaluate", "--data", classes), r"image is \d+x\d+ \(W x H\), the model .* --resize")


@pytest.mark.parametrize("data", ["npz", "none"])
def test_evaluate_resize_with_arrays_is_a_usage_error(data, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 24, 24, 3), np.uint8), y=np.zeros(2, np.int64))
    args = ["--data", tmp_path / "d.npz"] if data == "npz" else []
    assert_error(cli_run("evaluate", "--resize", *args), "--resize applies to image files", code=2)


# ---------------------------------------------------------------- evaluate: loose image files
@pytest.mark.parametrize("how", ["file", "flat_folder"])
def test_evaluate_loose_images_says_they_carry_no_labels(how, mixed):
    d, paths = mixed
    target = paths["same"] if how == "file" else d
    what = "an image file" if how == "file" else "a folder of images without class subfolders"
    r = cli_run("evaluate", "--data", target)
    assert_error(r, re.escape(f"{target}: {what} carries no labels"), "folder/<class>/<image>.png",
                 re.escape(f"`bnnlite predict {target}`"))
    assert "is named as the model's class" not in r.output
    assert_error(cli_run("evaluate", "--resize", "--data", target), "carries no labels")  # --resize or not


def test_evaluate_a_flat_folder_named_as_a_class_points_to_its_parent(classes):
    assert_error(cli_run("evaluate", "--data", classes / "cat"), "cat: a folder of images without class subfolders",
                 r"it is named as the model's class 'cat': .* give the folder above it")


def test_evaluate_a_fifo_named_like_an_image_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    proc = _run_cli(["evaluate", "--data", tmp_path / "pipe.png"])
    assert proc.returncode == 1 and "pipe.png: an image file carries no labels" in proc.stderr.splitlines()[-1]


# ---------------------------------------------------------------- hostile files under --resize
def _png_with_size(path, width, height):
    """A real 2x2 PNG whose header then claims width x height (CRC fixed)."""
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _run_cli(args, timeout=60):
    try:
        return subprocess.run([sys.executable, "-m", "bnnlite.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"bnnlite {' '.join(map(str, args))} hung for {timeout} s")


@pytest.mark.parametrize("kind,match", [
    ("bomb", r"bomb.png: image is 9000x9000, more than the 67,108,864 pixels read \(a decompression bomb"),
    ("big_bomb", r"big_bomb.png: image is larger than the 67,108,864 pixels read \(a decompression bomb"),
    ("corrupt", r"corrupt.png: not a readable image"),
    ("truncated", r"truncated.png: not a readable image"),
    ("tiff_named_png", r"tiff_named_png.png: not a readable image \(UnidentifiedImageError"),
])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_resize_keeps_the_hostile_file_refusals(kind, match, command, mixed, tmp_path):
    d = tmp_path / "photos" / "cat"
    d.mkdir(parents=True)
    (d / "ok.png").write_bytes(mixed[1]["wide"].read_bytes())
    p = d / f"{kind}.png"
    if kind == "bomb":  # refused by bnnlite from the header: 81 Mpixels
        _png_with_size(p, 9000, 9000)
    elif kind == "big_bomb":  # over twice the limit: Pillow's own refusal, on open
        _png_with_size(p, 12000, 12000)
    elif kind == "corrupt":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
        p.write_bytes(p.read_bytes()[:-200])
    else:
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(p, format="TIFF")
    args = ["predict", "--resize", d] if command == "predict" else ["evaluate", "--resize", "--data", d.parent]
    assert_error(cli_run(*args), match)


def test_resize_keeps_the_fifo_refusal(mixed, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "ok.png").write_bytes(mixed[1]["wide"].read_bytes())
    os.mkfifo(d / "pipe.png")
    proc = _run_cli(["predict", "--resize", d])
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and err[-1].startswith("Error: ") and "pipe.png: not a regular file" in err[-1]
    assert "Traceback" not in proc.stderr
