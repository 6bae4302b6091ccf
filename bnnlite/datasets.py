"""Your own data: image folders and .npz arrays, besides CIFAR-10 (torch-free).

Public names: load_dataset, dataset_from_arrays, load_images, fit_image, read_npy_header, IMAGE_SUFFIXES.

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

``bnnlite predict`` and ``bnnlite evaluate`` read image files through
``load_images`` and ``class_folder_files`` too; with ``resize=True``
(their ``--resize``) ``load_images`` brings an image of another size to the
expected one (``fit_image``: bilinear, shorter side to fit, centre crop)
instead of refusing it.

Every file is taken as hostile.  An image folder holds class folders, a class
folder image files: anything else in them (a text file, a folder one level
too deep) is an error naming it, never skipped in silence; only hidden
entries (``.DS_Store``, ``._x.png``) are passed over.  Image files are opened
without blocking and refused unless regular (a FIFO would hang the read),
decoded only by the Pillow plugins of ``IMAGE_SUFFIXES`` (a file named
``x.png`` that is really, say, an EPS never reaches another decoder), and
their size is checked against the expected one and against
``MAX_IMAGE_PIXELS`` from the header, before any pixel is decoded (a
decompression bomb costs nothing; ``resize=True`` drops the first check,
never the second).

Errors are ValueError (FileNotFoundError where nothing is there) and name
the file or folder at fault.
"""
from __future__ import annotations

import math
import os
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .cifar import Split, load_cifar

__all__ = ["load_dataset", "dataset_from_arrays", "load_images", "fit_image", "image_files", "class_folder_files",
           "is_image_folder", "is_loose_images", "read_npy_header", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # the only decoders a file reaches
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


def _open_regular(path: Path):
    """``path`` open for reading; a FIFO, device or folder is a ValueError (O_NONBLOCK: opening
    a FIFO does not wait for a writer; fstat of the open file: no swap between check and read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: not a regular file ({e.strerror})") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def _size_error(p, got, size, expected_by, hint):
    (h, w), (eh, ew) = got, size
    if expected_by is None:
        return ValueError(f"{p}: image is {w}x{h} (W x H), the others are {ew}x{eh}: resize your images to one size")
    return ValueError(f"{p}: image is {w}x{h} (W x H), {expected_by} {ew}x{eh}: "
                      f"{hint or 'resize it to that size first'}")


def fit_image(im, size):
    """The Pillow image ``im`` at ``size`` (H, W): scaled with the bilinear filter until it
    covers ``size`` (the shorter side, relative to the target's aspect ratio, fits), the
    overhang cropped evenly from both ends, in one resampling step; that is
    ``PIL.ImageOps.fit(im, (W, H), Image.Resampling.BILINEAR)``.  An image already at
    ``size`` is returned as it is.  Convert a palette image first (Pillow resamples
    palette images with the nearest pixel only)."""
    from PIL import Image, ImageOps
    h, w = size
    if im.size == (w, h):
        return im
    return ImageOps.fit(im, (w, h), Image.Resampling.BILINEAR)


def _decode(Image, p: Path, size, mode: str, expected_by, hint=None, resize=False) -> np.ndarray:
    with _open_regular(p) as fh:
        try:
            with warnings.catch_warnings():  # over MAX_IMAGE_PIXELS: refused below, no warning printed
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh, formats=PILLOW_FORMATS)
        except Image.DecompressionBombError as e:  # over twice the limit: Pillow's own refusal
            raise ValueError(f"{p}: image is larger than the {MAX_IMAGE_PIXELS:,} pixels read "
                             f"(a decompression bomb? {e})") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{p}: not a readable image ({type(e).__name__}: {e})") from e
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"{p}: image is {w}x{h}, more than the {MAX_IMAGE_PIXELS:,} pixels read "
                                 f"(a decompression bomb?)")
            if size is not None and (h, w) != tuple(size) and not resize:
                raise _size_error(p, (h, w), size, expected_by, hint)
            try:
                im.load()
                rgb = im.convert(mode)  # before resizing: a palette image resamples as colours, not indices
                return np.asarray(fit_image(rgb, size) if resize else rgb, dtype=np.uint8)
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
                raise ValueError(f"{p}: not a readable image ({type(e).__name__}: {e})") from e


def load_images(paths, size=None, *, channels: int = 3, expected_by: str | None = None, hint: str | None = None,
                resize: bool = False) -> np.ndarray:
    """Decode image files to uint8 (N, H, W, ``channels``) (3: RGB, 1: greyscale).

    Every image must have ``size`` (H, W), or the first one's; a mismatch is a
    ValueError naming the file and both sizes (``expected_by`` says whose size
    it is, e.g. "the model takes"; default: the other images'; ``hint``: what
    the message advises, with ``expected_by``).  ``resize=True`` (``size``
    needed): an image of another size is brought to ``size`` by ``fit_image``
    after decoding, within the same pixel limit as any other.
    """
    if channels not in (1, 3):
        raise ValueError(f"images are read with 1 or 3 channels, not {channels}")
    if resize and size is None:
        raise ValueError("resize=True needs the size to resize to")
    Image = _pillow()
    out = []
    for p in paths:
        arr = _decode(Image, Path(p), size, "RGB" if channels == 3 else "L", expected_by, hint, resize)
        size = arr.shape[:2]
        out.append(arr.reshape(arr.shape[:2] + (channels,)))
    if not out:
        return np.zeros((0, 0, 0, channels), np.uint8)
    return np.stack(out)


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted, hidden ones (.DS_Store, ._x.png) left out."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise ValueError(f"{folder}: cannot list this folder ({e.strerror or type(e).__name__})") from e


def image_files(folder) -> list[Path]:
    """The image files in ``folder``, sorted by name (maybe none).

    Anything else in it (a subfolder, a file of another type) is a ValueError
    naming it; hidden entries are passed over.
    """
    folder = Path(folder)
    files = []
    for p in _visible(folder):
        if p.is_dir():
            raise ValueError(f"{p}: a folder inside an image folder (it may hold image files only)")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{p}: not an image file ({', '.join(IMAGE_SUFFIXES)}); move it out of {folder}")
        files.append(p)
    return files


def class_folder_files(root, classes=None, *, classes_of: str = "the training split's"):
    """(files, labels int64, class_names) of the tree ``root/<class>/<image>``.

    ``classes`` None: the class names are the subfolder names, sorted.  Given
    (e.g. a model's, in its order): every subfolder must be named as one of
    them, the labels index ``classes``, and a class may have no folder.  A
    file beside the class folders, or a class folder without images, is a
    ValueError naming it.
    """
    root = Path(root)
    folders = []
    for p in _visible(root):
        if not p.is_dir():
            raise ValueError(f"{p}: a file beside the class folders (images belong in {root}/<class>/)")
        folders.append(p)
    if not folders:
        raise ValueError(f"{root}: no class subfolders with images (folder/<class>/<image>.png)")
    names = [p.name for p in folders] if classes is None else list(classes)
    index = {name: i for i, name in enumerate(names)}
    files, labels = [], []
    for folder in folders:
        if folder.name not in index:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise ValueError(f"{folder}: {folder.name!r} is not one of {classes_of} classes ({shown})")
        found = image_files(folder)
        if not found:
            raise ValueError(f"{folder}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [index[folder.name]] * len(found)
    return files, np.array(labels, np.int64), names


def _read_folder_split(root: Path, classes=None, size=None) -> tuple[Split, list[str]]:
    files, labels, names = class_folder_files(root, classes)
    return Split(load_images(files, size), labels), names


def _load_folder(root: Path):
    if (root / "train").is_dir():
        train, classes = _read_folder_split(root / "train")
        test = (_read_folder_split(root / "test", classes, train.images.shape[1:3])[0] if (root / "test").is_dir()
                else Split(train.images[:0], train.labels[:0]))
        return train, test, classes
    train, classes = _read_folder_split(root)
    return train, Split(train.images[:0], train.labels[:0]), classes


def _array(z, key, name):
    try:
        return z[key]
    except ValueError as e:  # an object array: reading it would unpickle
        raise ValueError(f"{name}: array {key} holds Python objects; only plain numeric arrays are read") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"{name}: array {key} is damaged ({type(e).__name__})") from e


def _npz_split(z, xk, yk, name) -> Split:
    return _checked_split(_array(z, xk, name), _array(z, yk, name), xk, yk, name)


def _checked_split(x, y, xk, yk, name) -> Split:
    x, y = np.asarray(x), np.asarray(y)
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
    return _with_class_names(train, test, names, path)


def _with_class_names(train: Split, test: Split, names, name):
    if len(test) and test.images.shape[1:] != train.images.shape[1:]:
        raise ValueError(f"{name}: x_test images are {test.images.shape[1:]}, x images {train.images.shape[1:]}")
    n = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1))) + 1
    if names and len(names) < n:
        raise ValueError(f"{name}: {len(names)} class_names for labels up to {n - 1}")
    return train, test, (names or [f"class_{i}" for i in range(n)])


def dataset_from_arrays(x, y, test=None, class_names=None, name="arrays"):
    """(train, test, class_names) from in-memory arrays, checked as an .npz file's are:
    ``x`` uint8 (N, H, W, C) with C 1 or 3, ``y`` integer labels; ``test`` an optional
    ``(x_test, y_test)`` pair; ``class_names`` default ``class_0``, ``class_1``, ..."""
    train = _checked_split(x, y, "x", "y", name)
    if len(train) == 0:
        raise ValueError(f"{name}: the training split has no images")
    if test is None:
        test_split = Split(train.images[:0], train.labels[:0])
    else:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise ValueError(f"{name}: test must be a pair (x_test, y_test)")
        test_split = _checked_split(test[0], test[1], "x_test", "y_test", name)
    names = [str(s) for s in class_names] if class_names is not None else []
    return _with_class_names(train, test_split, names, name)


def _has_cifar_batches(path: Path) -> bool:
    # CIFAR's batch files sit in the folder or one below (cifar-10-batches-*/): no need to walk
    # a whole image tree to tell the two apart.
    return any(path.glob("*batch*")) or any(path.glob("*/*batch*"))


def is_image_folder(path) -> bool:
    """True for a folder of class folders (or train/ and test/), False for CIFAR-10's folders."""
    path = Path(path)
    return path.is_dir() and not _has_cifar_batches(path) and any(p.is_dir() for p in path.iterdir())


def is_loose_images(path) -> bool:
    """True for an image file, or a folder of image files without class subfolders (nor CIFAR-10
    batches): images that carry no labels.  Nothing is opened; a folder is listed until its
    first image file."""
    path = Path(path)
    if not path.is_dir():
        return path.suffix.lower() in IMAGE_SUFFIXES
    if _has_cifar_batches(path) or is_image_folder(path):
        return False
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if not p.name.startswith("."))


def load_dataset(path) -> tuple[Split, Split, list[str]]:
    """(train, test, class_names) from CIFAR-10, an .npz file or an image folder (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data at {path}")
    if path.is_dir():
        if is_image_folder(path):
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
