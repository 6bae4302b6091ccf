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

import pickle
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
    records = np.frombuffer(blob, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max(initial=0) > 9:
        raise ValueError(f"{name}: label {labels.max()} outside 0..9")
    return Split(_planes_to_nhwc(records[:, 1:]), labels)


def _parse_pickle(blob: bytes, name: str) -> Split:
    d = pickle.loads(blob, encoding="bytes")
    data = np.asarray(d[b"data"], np.uint8)
    labels = np.asarray(d[b"labels"], np.int64)
    if data.shape != (len(labels), 3072):
        raise ValueError(f"{name}: data shape {data.shape} does not fit {len(labels)} labels")
    return Split(_planes_to_nhwc(data), labels)


class _Source:
    """Reads members by base name from a tarball or a folder tree."""

    def __init__(self, path: Path):
        self.path = path
        self.files: dict[str, bytes | Path] = {}
        if path.is_file():
            try:
                with tarfile.open(path) as tar:
                    for m in tar.getmembers():
                        if m.isfile():
                            self.files[Path(m.name).name] = tar.extractfile(m).read()
            except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                raise ValueError(f"{path}: not a readable CIFAR-10 tarball ({type(e).__name__}: {e})") from e
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    self.files.setdefault(p.name, p)
        else:
            raise FileNotFoundError(f"no CIFAR data at {path}")

    def has(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str) -> bytes:
        v = self.files[name]
        return v.read_bytes() if isinstance(v, Path) else v


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
            meta = pickle.loads(src.read("batches.meta"), encoding="bytes")
            classes = [c.decode() for c in meta.get(b"label_names", [])]
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
