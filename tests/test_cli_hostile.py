"""Hostile files on every CLI (issue 16): FIFOs, pickle payloads in checkpoints and CIFAR
pickles, lying .npy headers.  Each command runs in a subprocess with a timeout: it must
end with one ``Error:`` line (exit 1, no traceback), not hang, and never run the payload.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from _cifar_files import make_tarball, random_batches, write_python_folder, write_tiny_training_set

BNNLITE = [sys.executable, "-m", "bnnlite.cli"]
EXPORT = [sys.executable, "-m", "bnnlite.train.export"]
TRAIN = [sys.executable, "-m", "bnnlite.train"]
BENCH = [sys.executable, "-m", "bnnlite.bench"]
TINY_TRAIN = ["--model", "xnor", "--epochs", "1", "--batch-size", "32", "--val-size", "32", "--subset", "320",
              "--no-compile", "--no-bf16", "--threads", "1", "--no-progress",
              "--model-overrides", '{"widths": [8, 8, 16, 16, 32, 32]}']


class Payload:
    """Unpickling this runs ``touch MARKER``: the attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_cli(cmd, cwd, timeout=120):
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, cmd))} hung for {timeout} s")
    return proc


def assert_one_error_line(proc, match=""):
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert err and err[-1].startswith("Error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert match in err[-1], err[-1]


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "pipe"
    os.mkfifo(p)
    return p


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_training_set(tmp_path_factory.mktemp("data"), n_train=320, n_test=64, seed=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, torch1):
    from _models import make_model, write_checkpoint
    d = tmp_path_factory.mktemp("ckpt")
    return write_checkpoint(make_model("xnor", seed=0), d / "xnor.pth")


# ---------------------------------------------------------------- FIFOs
def _fifo_commands(fifo, ckpt, tiny_data, tmp_path):
    npy = tmp_path / "ok.npy"
    np.save(npy, np.zeros((1, 32, 32, 3), np.uint8))
    return {
        "info --model": BNNLITE + ["info", "--model", fifo],
        "evaluate --model": BNNLITE + ["evaluate", "--model", fifo],
        "evaluate --data": BNNLITE + ["evaluate", "--data", fifo],
        "predict IMAGES": BNNLITE + ["predict", fifo],
        "predict --model": BNNLITE + ["predict", npy, "--model", fifo],
        "export CKPT": EXPORT + [fifo, tmp_path / "out.h5"],
        "export --data": EXPORT + [ckpt, tmp_path / "out.h5", "--data", fifo],
        "train --data": TRAIN + TINY_TRAIN + ["--data", fifo, "--out", tmp_path / "run"],
        "train --teacher-path": TRAIN + TINY_TRAIN + ["--data", tiny_data, "--out", tmp_path / "run", "--kd",
                                                     "--teacher-path", fifo],
        "bench --model": BENCH + ["--model", fifo, "--engines", "bnnlite"],
        "bench --data": BENCH + ["--data", fifo, "--engines", "bnnlite"],
    }


FIFO_CASES = ["info --model", "evaluate --model", "evaluate --data", "predict IMAGES", "predict --model",
              "export CKPT", "export --data", "train --data", "train --teacher-path", "bench --model", "bench --data"]


@pytest.mark.parametrize("case", FIFO_CASES)
def test_fifo_on_every_cli(case, fifo, ckpt, tiny_data, tmp_path):
    cmd = _fifo_commands(fifo, ckpt, tiny_data, tmp_path)[case]
    assert_one_error_line(run_cli(cmd, tmp_path, timeout=30), "not a regular file")


def test_fifo_as_resume_checkpoint(tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "checkpoint.pth")
    proc = run_cli(TRAIN + TINY_TRAIN + ["--data", tiny_data, "--out", run, "--resume"], tmp_path, timeout=30)
    assert_one_error_line(proc, "not a regular file")


# ---------------------------------------------------------------- pickle payloads
def _evil_checkpoint(path, marker, torch):
    torch.save({"format": "bnnlite-checkpoint", "format_version": 1, "model": Payload(marker)}, path)
    return path


@pytest.mark.parametrize("where", ["export", "resume", "teacher"])
def test_checkpoint_payload_is_not_run(where, tmp_path, tiny_data, torch1):
    marker = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "evil.pth", marker, torch1)
    if where == "export":
        cmd = EXPORT + [evil, tmp_path / "out.h5"]
    elif where == "resume":
        (tmp_path / "run").mkdir()
        os.replace(evil, tmp_path / "run" / "checkpoint.pth")
        cmd = TRAIN + TINY_TRAIN + ["--data", tiny_data, "--out", tmp_path / "run", "--resume"]
    else:
        cmd = TRAIN + TINY_TRAIN + ["--data", tiny_data, "--out", tmp_path / "run", "--kd", "--teacher-path", evil]
    proc = run_cli(cmd, tmp_path)
    assert not marker.exists(), "the checkpoint's pickle payload ran"
    assert_one_error_line(proc, "convert_checkpoint.py")


def _evil_cifar(tmp_path, marker, member):
    """A python-layout CIFAR tarball whose ``member`` is a pickle payload."""
    folder = write_python_folder(tmp_path / "src", random_batches(0, (40, 40, 40, 40, 40), 16))
    with open(folder / member, "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [1], b"label_names": Payload(marker)}, f, protocol=2)
    return make_tarball(folder, tmp_path / "cifar-10-python.tar.gz")


@pytest.mark.parametrize("cli,member", [("evaluate", "data_batch_1"), ("evaluate", "test_batch"),
                                        ("evaluate", "batches.meta"), ("export", "test_batch"),
                                        ("train", "data_batch_1")])
def test_cifar_pickle_payload_is_not_run(cli, member, tmp_path, ckpt):
    marker = tmp_path / "PWNED"
    tar = _evil_cifar(tmp_path, marker, member)
    cmd = {"evaluate": BNNLITE + ["evaluate", "--data", tar],
           "export": EXPORT + [ckpt, tmp_path / "out.h5", "--data", tar],
           "train": TRAIN + TINY_TRAIN + ["--data", tar, "--out", tmp_path / "run"]}[cli]
    proc = run_cli(cmd, tmp_path)
    assert not marker.exists(), "the CIFAR pickle payload ran"
    assert_one_error_line(proc, "is not allowed in a CIFAR-10 pickle")


# ---------------------------------------------------------------- data edges
def test_zero_record_cifar_file(tmp_path):
    from _cifar_files import write_binary_folder
    folder = write_binary_folder(tmp_path, random_batches(0, (2, 2, 2, 2, 2), 2))
    (folder / "test_batch.bin").write_bytes(b"")
    assert_one_error_line(run_cli(BNNLITE + ["evaluate", "--data", folder], tmp_path), "holds no images")


def _npy_header_only(path, shape, dtype="|u1", data=b"\0" * 64):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
        f.write(data)
    return path


@pytest.mark.parametrize("case,match", [
    ("huge", "the header declares"),
    ("empty", "not a .npy array"),
    ("text", "not a .npy array"),
    ("object", "holds Python objects"),
])
def test_predict_bad_npy(case, match, tmp_path):
    p = tmp_path / f"{case}.npy"
    if case == "huge":
        _npy_header_only(p, (10 ** 11, 32, 32, 3))
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("1,2,3\n")
    else:
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    proc = run_cli(BNNLITE + ["predict", p], tmp_path, timeout=60)
    assert_one_error_line(proc, match)
    assert "allow_pickle" not in proc.stderr
