"""Shared fixtures: tiny exported bundles (one per architecture), built once per session.

The models are built in ``_models.py``; exporting goes through the real
``export_checkpoint`` (which refuses a bundle that disagrees with PyTorch on
its probe).  Torch is limited to one thread: a training job may own the CPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import _models  # noqa: E402


@pytest.fixture(scope="session")
def torch1():
    """torch, limited to one thread (imported only by tests that need it)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def tiny_models(torch1):
    """arch -> the PyTorch model (eval mode) behind the tiny bundle."""
    return {arch: _models.make_model(arch, seed=i) for i, arch in enumerate(_models.ARCHS)}


@pytest.fixture(scope="session")
def tiny_bundles(tiny_models, tmp_path_factory):
    """arch -> path of the exported, sealed bundle of ``tiny_models[arch]``."""
    d = tmp_path_factory.mktemp("bundles")
    return {arch: _models.export(m, d, arch) for arch, m in tiny_models.items()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny CIFAR-binary training set (320 train + 64 test random images) for the training tests."""
    from _cifar_files import write_tiny_training_set
    return write_tiny_training_set(tmp_path_factory.mktemp("data"), n_train=320, n_test=64, seed=0)
