"""``bnnlite``: run a bundle from the shell (torch-free).

    bnnlite info [model.h5]                  # summary of a bundle (default: the shipped one)
    bnnlite evaluate [--data cifar-10-...]   # top-1 on the CIFAR-10 test split or the shipped sample
    bnnlite evaluate --data photos/          # ... or on an image folder, one subfolder per class
    bnnlite predict images.npy               # class per image of a uint8 (N, H, W, C) array
    bnnlite predict a.png b.jpg photos/      # class per image file (folders: flat or per class)
    bnnlite predict --resize photos/         # ... images of any size, resized to the model's input

Image files are decoded by Pillow (bnnlite.datasets) and must have the
model's input size unless ``--resize`` is given (bilinear, shorter side to
fit, centre crop: datasets.fit_image): nothing is resized behind your back.
``evaluate`` needs a label per image, so it takes image files only in class
folders; loose image files (or a flat folder of them) are an error that
points to ``predict``.
"""
from __future__ import annotations

import math
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

MODEL_HELP = "Bundle to run [default: the shipped pretrained birealnet]."
RESIZE_HELP = ("Bring image files of another size to the model's input size: scaled with Pillow's bilinear "
               "filter until they cover it (the shorter side fits), then centre-cropped (PIL.ImageOps.fit). "
               "Without it such an image is an error.")
SIZE_HINT = "resize it to that size first, or give --resize (bilinear, shorter side to fit, centre crop)"


@contextmanager
def _library_errors():
    from .bundle import BundleError
    try:
        yield
    except BrokenPipeError:  # `bnnlite predict ... | head`: click ends quietly
        raise
    except (BundleError, ValueError, OSError, EOFError) as e:
        raise click.ClickException(str(e) or type(e).__name__) from e
    except MemoryError as e:
        raise click.ClickException(f"out of memory ({e})") from e


def _load_npy(path) -> np.ndarray:
    """A .npy array, its header checked before anything is allocated (ValueError if bad)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # np.load would block on a FIFO
        raise ValueError(f"{path}: not a regular file")
    from .datasets import read_npy_header
    with open(path, "rb") as fh:
        read_npy_header(fh, path, st.st_size)
    return np.load(path, allow_pickle=False)


def _image_reader(m, resize=False):
    """images(paths) -> uint8 (N, H, W, C) at the input size and channels of model ``m``
    (``resize``: images of another size are resized to it, else refused)."""
    from .datasets import load_images
    h, w, c = m.input_shape
    if c not in (1, 3):
        raise ValueError(f"the model takes {c}-channel input: image files give 1 (greyscale) or 3 (RGB)")
    return lambda paths: load_images(paths, (h, w), channels=c, expected_by=f"the model ({m.source}) takes",
                                     hint=SIZE_HINT, resize=resize)


def _image_paths(inputs) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders flat or one subfolder per class."""
    from .datasets import class_folder_files, image_files
    files = []
    for p in map(Path, inputs):
        if not p.is_dir():
            files.append(p)
        elif any(q.is_dir() and not q.name.startswith(".") for q in p.iterdir()):
            files += class_folder_files(p)[0]
        else:
            found = image_files(p)
            if not found:
                raise ValueError(f"{p}: no image files in this folder")
            files += found
    return files


def _unlabelled_error(path: Path, m) -> ValueError:
    """evaluate --data given image files without class folders: no labels to score against."""
    what = "a folder of images without class subfolders" if path.is_dir() else "an image file"
    more = ""
    if path.is_dir() and path.name in m.class_names:
        more = (f"; it is named as the model's class {path.name!r}: to evaluate its images as that class, give "
                f"the folder above it (which must hold class folders only)")
    return ValueError(f"{path}: {what} carries no labels, and evaluate needs one per image: give --data a folder "
                      f"with one subfolder per class, named as the model's classes (folder/<class>/<image>.png), "
                      f"or classify unlabelled images with `bnnlite predict {path}`{more}")


def _evaluation_set(data, m, resize=False):
    """(labels, images(i, j)) of the evaluation data at ``data`` for model ``m``."""
    from .datasets import class_folder_files, is_image_folder, is_loose_images, load_dataset
    path = Path(data)
    if path.is_dir() and is_image_folder(path):
        root = path / "test" if (path / "train").is_dir() else path
        if not root.is_dir():
            raise ValueError(f"{path}: has train/ but no test/ folder to evaluate on")
        files, labels, _ = class_folder_files(root, m.class_names, classes_of="the model's")
        read = _image_reader(m, resize)
        return labels, lambda i, j: read(files[i:j])
    if is_loose_images(path):
        raise _unlabelled_error(path, m)
    if resize:
        raise click.UsageError(f"--resize applies to image files; {data} holds arrays, which must have the "
                               f"model's input size")
    if path.suffix.lower() == ".npz":
        train, test, _ = load_dataset(path)
        split = test if len(test) else train
        images, labels = split.images, split.labels
    else:
        from .cifar import load_test_split
        images, labels = load_test_split(data)
    return labels, lambda i, j: images[i:j]


def _model(path, threads, backend=None):
    from .model import Model
    return Model.load(path, threads=threads, backend=backend) if path else Model.pretrained(threads=threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="bnnlite")
def main():
    """bnnlite: binary neural networks on ordinary CPUs."""


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help=MODEL_HELP)
def info(bundle, model):
    """Print the ops, shapes, bits and bytes of BUNDLE (or --model; default: the shipped one)."""
    if bundle and model and bundle != model:
        raise click.UsageError("give the bundle once: as BUNDLE or as --model")
    with _library_errors():
        click.echo(_model(bundle or model, 1).summary())


@main.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help=MODEL_HELP)
@click.option("--data", type=click.Path(exists=True), default=None,
              help="CIFAR-10 (either official layout, tarball or folder); an image folder with one subfolder "
                   "per class, named as the model's classes (with train/ and test/: test/); or an .npz "
                   "(x_test and y_test, else x and y) [default: the shipped 1,000-image sample]. Loose image "
                   "files carry no labels: an error (bnnlite predict classifies them).")
@click.option("--threads", type=click.IntRange(1), default=1)
@click.option("--backend", type=click.Choice(["cython", "numba", "numpy"]), default=None)
@click.option("--batch", type=click.IntRange(1), default=128)
@click.option("--resize", is_flag=True, help=RESIZE_HELP + " Image folders only.")
def evaluate(model, data, threads, backend, batch, resize):
    """Top-1 accuracy and throughput on the test split."""
    from tqdm import tqdm
    if resize and not data:
        raise click.UsageError("--resize applies to image files (--data FOLDER); the shipped sample has the "
                               "model's input size")
    with _library_errors():
        m = _model(model, threads, backend)
        if data:
            labels, images = _evaluation_set(data, m, resize)
        else:
            from .bench import SAMPLE, data_file
            with np.load(data_file(SAMPLE)) as z:
                x, labels = z["images"], z["labels"]
            images = lambda i, j: x[i:j]  # noqa: E731
        if len(labels) and labels.max() >= len(m.class_names):
            raise ValueError(f"{data}: label {labels.max()} is beyond the model's {len(m.class_names)} classes")
        correct, t0 = 0, time.perf_counter()
        for i in tqdm(range(0, len(labels), batch), unit="batch", disable=None, leave=False):
            correct += int((m.predict(images(i, i + batch)) == labels[i:i + batch]).sum())
        dt = time.perf_counter() - t0
    click.echo(f"{m!r}")
    click.echo(f"top-1 {100 * correct / len(labels):.2f}% on {len(labels):,} images "
               f"({len(labels) / dt:,.0f} images/s, {threads} thread(s), backend {m.backend.name})")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help=MODEL_HELP)
@click.option("--threads", type=click.IntRange(1), default=1)
@click.option("--batch", type=click.IntRange(1), default=128, help="Image files decoded and run at a time.")
@click.option("--resize", is_flag=True, help=RESIZE_HELP)
def predict(inputs, model, threads, batch, resize):
    """Print the predicted class of each image in INPUTS.

    INPUTS: one .npy array (uint8 NHWC; a line per image: index, class,
    name), or image files (PNG, JPEG, BMP, GIF, WebP) and folders of them,
    flat or one subfolder per class (a line per file: path, class, name).
    Images must have the model's input size (bnnlite info shows it), or
    give --resize.
    """
    npy = [p for p in inputs if p.lower().endswith(".npy") and not os.path.isdir(p)]
    if npy and len(inputs) > 1:
        raise click.UsageError("give one .npy file, or image files and folders")
    if npy and resize:
        raise click.UsageError("--resize applies to image files; a .npy array must have the model's input size")
    with _library_errors():
        if npy:
            x = _load_npy(npy[0])
            m = _model(model, threads)
            rows = [(str(i), p) for i, p in enumerate(np.atleast_1d(m.predict(x)))]
            _print_predictions(rows, m.class_names)
            return
        m = _model(model, threads)
        files, read = _image_paths(inputs), _image_reader(m, resize)
        for i in range(0, len(files), batch):
            part = files[i:i + batch]
            _print_predictions(zip(map(str, part), m.predict(read(part))), m.class_names)


def _print_predictions(rows, names):
    for key, p in rows:
        click.echo(f"{key}\t{p}\t{names[p] if p < len(names) else ''}")


if __name__ == "__main__":
    main()
