"""Helpers for the training tests: tiny CIFAR-10 data sets written in the two
official byte layouts (not a test module; imported by tests/test_train_*.py).

* binary: ``cifar-10-batches-bin/data_batch_{1..5}.bin`` + ``test_batch.bin``
  (records of 1 label byte + 3072 pixel bytes: R plane, G plane, B plane, each
  32x32 row-major) and ``batches.meta.txt`` (one class name a line).
* python: ``cifar-10-batches-py/data_batch_{1..5}`` + ``test_batch`` (pickles
  of a dict with b'data' (n, 3072) uint8 and b'labels') and ``batches.meta``
  (b'label_names').

Every batch is given as a list of raw 3072-byte rows so a test can compare
decoded pixels with the bytes it wrote.
"""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]
PIXELS = 3072


def random_batches(seed: int, train_sizes=(3, 1, 4, 2, 5), test_size: int = 3):
    """{name: (rows (n, 3072) uint8, labels (n,) uint8)} for data_batch_1..5 and test_batch."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(train_sizes, start=1):
        out[f"data_batch_{i}"] = (rng.integers(0, 256, (n, PIXELS), dtype=np.uint8),
                                  rng.integers(0, 10, n, dtype=np.uint8))
    out["test_batch"] = (rng.integers(0, 256, (test_size, PIXELS), dtype=np.uint8),
                         rng.integers(0, 10, test_size, dtype=np.uint8))
    return out


def write_binary_folder(root: Path, batches, class_names=CLASS_NAMES) -> Path:
    """Write ``root/cifar-10-batches-bin``; returns that folder."""
    d = Path(root) / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    for name, (rows, labels) in batches.items():
        with open(d / f"{name}.bin", "wb") as f:
            for row, label in zip(rows, labels):
                f.write(bytes([int(label)]))
                f.write(row.tobytes())
    (d / "batches.meta.txt").write_text("".join(c + "\n" for c in class_names) + "\n")
    return d


def write_python_folder(root: Path, batches, class_names=CLASS_NAMES) -> Path:
    """Write ``root/cifar-10-batches-py``; returns that folder."""
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for name, (rows, labels) in batches.items():
        obj = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
               b"data": np.ascontiguousarray(rows, np.uint8),
               b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
        with open(d / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in class_names],
                     b"num_cases_per_batch": 10000, b"num_vis": PIXELS}, f, protocol=2)
    return d


def make_tarball(folder: Path, tar_path: Path) -> Path:
    """``folder`` packed under its own name into a .tar.gz (as the official downloads are)."""
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname=Path(folder).name)
    return Path(tar_path)


def write_tiny_training_set(root: Path, n_train: int = 320, n_test: int = 64, seed: int = 0) -> Path:
    """A random-pixel binary-layout set of ``n_train`` (split over 5 files) + ``n_test`` images."""
    per = n_train // 5
    sizes = [per] * 4 + [n_train - 4 * per]
    return write_binary_folder(root, random_batches(seed, sizes, n_test))


TINY_WIDTHS = {"widths": [8, 8, 16, 16, 32, 32]}


def tiny_train_config(model, data, out, **kw):
    """A TrainConfig for 2 epochs of a tiny-width model on write_tiny_training_set(n_train=320) data:
    one thread, FP32 on the CPU, no compile, no progress bar; ``kw`` overrides."""
    from bnnlite.train.engine import TrainConfig
    base = dict(model=model, data=str(data), out=str(out), epochs=2, batch_size=32, val_size=32,
                subset=320, compile=False, bf16=False, progress=False, threads=1, seed=0,
                model_overrides=TINY_WIDTHS, device="cpu")
    base.update(kw)
    return TrainConfig(**base)
