"""Reading CIFAR-10-layout data sets (no torch, no torchvision).

Public names: Split, load_cifar, load_test_split.

``load_cifar(path)`` reads either official distribution:

* ``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``: records of 1 label
  byte + 3072 pixel bytes (R plane, G plane, B plane, each 32x32 row-major);
  class names in ``batches.meta.txt``.
* ``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/``: pickles holding
  ``data`` (10000, 3072) uint8 in the same plane order and ``labels``; class
  names in ``batches.meta`` under ``label_names``.

``path`` may be the tarball, the extracted ``cifar-10-batches-*`` folder, or a
folder that contains one of those.  Images come back as uint8 NHWC.
"""
from __future__ import annotations

import io
import pickle
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Split", "load_cifar", "load_test_split"]

IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3
TRAIN_FILES_BIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE_BIN = "test_batch.bin"
TRAIN_FILES_PY = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE_PY = "test_batch"
WANTED = set(TRAIN_FILES_BIN + TRAIN_FILES_PY) | {TEST_FILE_BIN, TEST_FILE_PY, "batches.meta", "batches.meta.txt"}
MAX_MEMBER_BYTES = 256 << 20  # the official files are ~31 MB each


@dataclass
class Split:
    """Images (N, 32, 32, 3) uint8 NHWC and labels (N,) int64."""
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Split":
        return Split(self.images[index], self.labels[index])


def _planes_to_nhwc(flat: np.ndarray) -> np.ndarray:
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _parse_binary(blob: bytes, name: str) -> Split:
    if len(blob) % RECORD_BYTES:
        raise ValueError(f"{name}: {len(blob)} bytes is not a whole number of "
                         f"{RECORD_BYTES}-byte CIFAR-10 records")
    if not blob:
        raise ValueError(f"{name}: holds no images (0 bytes)")
    records = np.frombuffer(blob, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max(initial=0) > 9:
        raise ValueError(f"{name}: label {labels.max()} outside 0..9")
    return Split(_planes_to_nhwc(records[:, 1:]), labels)


def _numeric_dtype(*args):
    dt = np.dtype(*args)
    if dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"dtype {dt} is not a plain number type")
    return dt


def _ndarray_only(cls, *args):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"{cls!r} is not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, *args)


def _latin1_bytes(text, encoding="latin1"):
    # Python 3's protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as latin-1 bytes")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Only what the official python-layout files hold: dicts, lists, bytes, numbers and
    plain NumPy arrays.  ``pickle.loads`` would call any global a file names (code execution)."""
    # numpy 1 names its module numpy.core, numpy 2 numpy._core (both pickle the same way).
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _ndarray_only,
               ("numpy._core.multiarray", "_reconstruct"): _ndarray_only,
               ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): _numeric_dtype,
               ("_codecs", "encode"): _latin1_bytes}

    def find_class(self, module, name):
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 pickle")
        return found


def _unpickle(blob: bytes, name: str):
    try:
        return _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            MemoryError, RecursionError, OverflowError, UnicodeError) as e:
        raise ValueError(f"{name}: not a CIFAR-10 python-layout pickle ({type(e).__name__}: {e})") from e


def _parse_pickle(blob: bytes, name: str) -> Split:
    d = _unpickle(blob, name)
    if not isinstance(d, dict) or not isinstance(d.get(b"data"), np.ndarray) or not isinstance(d.get(b"labels"), list):
        raise ValueError(f"{name}: not a CIFAR-10 batch (a dict of b'data' array and b'labels' list)")
    data, labels = d[b"data"], d[b"labels"]
    if data.dtype != np.uint8 or not all(type(v) is int and 0 <= v <= 9 for v in labels):
        raise ValueError(f"{name}: b'data' must be uint8 and b'labels' integers in 0..9")
    labels = np.asarray(labels, np.int64)
    if data.shape != (len(labels), 3072):
        raise ValueError(f"{name}: data shape {data.shape} does not fit {len(labels)} labels")
    if not len(labels):
        raise ValueError(f"{name}: holds no images")
    return Split(_planes_to_nhwc(data), labels)


class _Source:
    """Reads members by base name from a tarball or a folder tree (only the names CIFAR-10 uses)."""

    def __init__(self, path: Path):
        self.path = path
        self.files: dict[str, bytes | Path] = {}
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise FileNotFoundError(f"no CIFAR data at {path} ({e.strerror or e})") from e
        if stat.S_ISREG(mode):
            try:
                with tarfile.open(path) as tar:
                    for m in tar.getmembers():
                        name = Path(m.name).name
                        if m.isfile() and name in WANTED and name not in self.files:
                            _check_size(m.size, f"{path}: {m.name}")
                            self.files[name] = tar.extractfile(m).read()
            except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                raise ValueError(f"{path}: not a readable CIFAR-10 tarball ({type(e).__name__}: {e})") from e
        elif stat.S_ISDIR(mode):
            for p in sorted(path.rglob("*")):
                if p.name in WANTED and p.is_file():  # is_file(): regular files only (no FIFOs)
                    self.files.setdefault(p.name, p)
        else:  # a FIFO or a device would block or never end
            raise ValueError(f"{path}: not a regular file or a folder, so no CIFAR-10 data")

    def has(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str) -> bytes:
        v = self.files[name]
        if isinstance(v, Path):
            _check_size(v.stat().st_size, str(v))
            return v.read_bytes()
        return v


def _check_size(n: int, where: str) -> None:
    if n > MAX_MEMBER_BYTES:
        raise ValueError(f"{where}: {n} bytes is more than a CIFAR-10 file holds ({MAX_MEMBER_BYTES} at most)")


def load_cifar(path) -> tuple[Split, Split, list[str]]:
    """Return (train, test, class_names) from either official CIFAR-10 layout."""
    src = _Source(Path(path))
    if all(src.has(f) for f in TRAIN_FILES_BIN + [TEST_FILE_BIN]):
        parse, train_files, test_file = _parse_binary, TRAIN_FILES_BIN, TEST_FILE_BIN
        names_raw = src.read("batches.meta.txt").decode() if src.has("batches.meta.txt") else ""
        classes = [s.strip() for s in names_raw.splitlines() if s.strip()]
    elif all(src.has(f) for f in TRAIN_FILES_PY + [TEST_FILE_PY]):
        parse, train_files, test_file = _parse_pickle, TRAIN_FILES_PY, TEST_FILE_PY
        classes = []
        if src.has("batches.meta"):
            meta = _unpickle(src.read("batches.meta"), "batches.meta")
            names = meta.get(b"label_names", []) if isinstance(meta, dict) else None
            if not isinstance(names, list) or not all(isinstance(c, bytes) for c in names):
                raise ValueError("batches.meta: b'label_names' is not a list of byte strings")
            classes = [c.decode("utf-8", "replace") for c in names]
    else:
        raise ValueError(f"{path}: neither the CIFAR-10 binary layout ({', '.join(TRAIN_FILES_BIN)}, "
                         f"{TEST_FILE_BIN}) nor the python layout ({', '.join(TRAIN_FILES_PY)}, "
                         f"{TEST_FILE_PY}) was found")
    parts = [parse(src.read(f), f) for f in train_files]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    test = parse(src.read(test_file), test_file)
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if len(classes) < n_classes:
        classes = [f"class_{i}" for i in range(n_classes)]
    return train, test, classes[:n_classes]


def load_test_split(path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 NHWC, labels int64) of the test split."""
    _, test, _ = load_cifar(path)
    return test.images, test.labels
