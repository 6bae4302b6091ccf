"""Your own data: image folders and .npz arrays, besides CIFAR-10 (torch-free).

Public names: load_dataset, load_images, read_npy_header, IMAGE_SUFFIXES.

``load_dataset(path)`` returns ``(train, test, class_names)`` (``test`` may be
empty) from:

* CIFAR-10 in either official layout (cifar.py);
* an ``.npz`` file (loaded without pickle) with ``x`` uint8 (N, H, W, C) and
  ``y`` integer labels, optionally ``x_test`` / ``y_test`` and
  ``class_names`` (an array of strings);
* a folder of images (PNG / JPEG / BMP / GIF / WebP, decoded by Pillow), one
  subfolder per class (``folder/cat/1.png``), or ``train/`` and ``test/``
  subfolders laid out that way.  Class names are the subfolder names in
  sorted order; every image must have the size of the first one.

Errors are ValueError (FileNotFoundError where nothing is there) and name
the file or folder at fault.
"""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from .cifar import Split, load_cifar

__all__ = ["load_dataset", "load_images", "read_npy_header", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024   # a decompression bomb is refused, not decoded


def read_npy_header(fh, name, data_bytes: int):
    """(shape, dtype) of the .npy stream ``fh``, checked before anything is allocated.

    ``data_bytes``: how many bytes the file (or archive member) holds in all;
    a header that declares more data than that, or Python objects, is a
    ValueError (never NumPy's advice to allow pickles).
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ValueError(f"format version {version} is not supported")
    except (ValueError, EOFError, SyntaxError, TypeError) as e:
        raise ValueError(f"{name}: not a .npy array ({str(e).splitlines()[0][:200] or 'empty file'})") from e
    if dtype.hasobject:
        raise ValueError(f"{name}: holds Python objects (dtype {dtype}); only plain numeric arrays are read")
    need, have = math.prod(shape) * dtype.itemsize, data_bytes - fh.tell()
    if need > have:
        raise ValueError(f"{name}: the header declares a {dtype} array of shape {shape} ({need:,} bytes), "
                         f"but holds {have:,} bytes of data")
    return shape, dtype


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_npz(path: Path) -> None:
    """Every member's header against its size, and the total against memory, before np.load reads any."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if i.filename.endswith(".npy")]
            total = sum(i.file_size for i in members)
            if total > _memory_bytes() // 2:
                raise ValueError(f"{path}: its arrays would take {total:,} bytes, more than half of this "
                                 f"machine's memory")
            for info in members:
                with zf.open(info) as fh:
                    read_npy_header(fh, f"{path}: {info.filename}", info.file_size)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e


def _pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise ValueError("reading image files needs Pillow: pip install pillow (or bnnlite[images])") from e
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    return Image


def _regular(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    return path


def load_images(paths, size=None) -> np.ndarray:
    """Decode image files to uint8 (N, H, W, 3) RGB; every image must have ``size`` (H, W) or the first's."""
    Image = _pillow()
    out = []
    for p in paths:
        p = _regular(Path(p))
        try:
            with Image.open(p) as im:
                im.load()
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{p}: not a readable image ({type(e).__name__}: {e})") from e
        if size is None:
            size = arr.shape[:2]
        elif arr.shape[:2] != tuple(size):
            raise ValueError(f"{p}: image is {arr.shape[1]}x{arr.shape[0]} (W x H), the others are "
                             f"{size[1]}x{size[0]}: resize your images to one size")
        out.append(arr)
    if not out:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(out)


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder_split(root: Path, classes: list[str], size=None) -> Split:
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = _image_files(folder) if folder.is_dir() else []
        if not files:
            raise ValueError(f"{folder}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        x = load_images(files, size)
        size = x.shape[1:3]
        images.append(x)
        labels.append(np.full(len(x), label, np.int64))
    extra = sorted({p.name for p in _class_folders(root)} - set(classes))
    if extra:
        raise ValueError(f"{root}: class folder(s) {', '.join(extra)} are not classes of the training split")
    return Split(np.concatenate(images), np.concatenate(labels))


def _load_folder(root: Path):
    if (root / "train").is_dir():
        classes = [p.name for p in _class_folders(root / "train")]
        if not classes:
            raise ValueError(f"{root / 'train'}: no class subfolders")
        train = _read_folder_split(root / "train", classes)
        test = (_read_folder_split(root / "test", classes, train.images.shape[1:3]) if (root / "test").is_dir()
                else Split(train.images[:0], train.labels[:0]))
        return train, test, classes
    classes = [p.name for p in _class_folders(root)]
    if not classes:
        raise ValueError(f"{root}: no class subfolders with images (folder/<class>/<image>.png)")
    train = _read_folder_split(root, classes)
    return train, Split(train.images[:0], train.labels[:0]), classes


def _array(z, key, name):
    try:
        return z[key]
    except ValueError as e:  # an object array: reading it would unpickle
        raise ValueError(f"{name}: array {key} holds Python objects; only plain numeric arrays are read") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"{name}: array {key} is damaged ({type(e).__name__})") from e


def _npz_split(z, xk, yk, name) -> Split:
    x, y = _array(z, xk, name), _array(z, yk, name)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: {xk} must be uint8 (N, H, W, C) with C 1 or 3, got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: {yk} must be integer labels, one per image, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{name}: {yk} has a negative label")
    return Split(np.ascontiguousarray(x), y.astype(np.int64))


def _load_npz(path: Path):
    _check_npz(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__})") from e
    with z:
        missing = {"x", "y"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: .npz needs arrays x and y, missing {', '.join(sorted(missing))}")
        try:
            train = _npz_split(z, "x", "y", path)
            test = (_npz_split(z, "x_test", "y_test", path) if "x_test" in z.files
                    else Split(train.images[:0], train.labels[:0]))
            names = [str(s) for s in _array(z, "class_names", path)] if "class_names" in z.files else []
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path}: not a readable .npz archive ({e})") from e
    if len(test) and test.images.shape[1:] != train.images.shape[1:]:
        raise ValueError(f"{path}: x_test images are {test.images.shape[1:]}, x images {train.images.shape[1:]}")
    n = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1))) + 1
    if names and len(names) < n:
        raise ValueError(f"{path}: {len(names)} class_names for labels up to {n - 1}")
    return train, test, (names or [f"class_{i}" for i in range(n)])


def load_dataset(path) -> tuple[Split, Split, list[str]]:
    """(train, test, class_names) from CIFAR-10, an .npz file or an image folder (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data at {path}")
    if path.is_dir():
        # CIFAR's batch files sit in the folder or one below (cifar-10-batches-*/): no need to walk
        # a whole image tree to tell the two apart.
        cifar = any(path.glob("*batch*")) or any(path.glob("*/*batch*"))
        if any(p.is_dir() for p in path.iterdir()) and not cifar:
            train, test, classes = _load_folder(path)
        else:
            try:
                train, test, classes = load_cifar(path)
            except ValueError as e:
                raise ValueError(f"{e}; nor is it an image folder (folder/<class>/<image>.png)") from e
    elif not path.is_file():
        raise ValueError(f"{path}: not a regular file or folder")
    elif path.suffix.lower() == ".npz":
        train, test, classes = _load_npz(path)
    else:
        train, test, classes = load_cifar(path)
    if len(train) == 0:
        raise ValueError(f"{path}: the training split has no images")
    return train, test, classes
