"""Bundles built as an attacker would: HDF5 storage that reads other files, links, filters,
huge finite values (issue 16).  Each load runs in a subprocess with a time and memory
limit, so a hang (a FIFO opened for reading), a crash (libhdf5 recursing) or a read of the
target file shows as such instead of taking pytest down.

The target files are FIFOs where the point is "never opened": opening one for reading
blocks until a writer comes, so a loader that touched it would time out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from _bundle_edit import edit

LOADER = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import numpy as np
import bnnlite
from bnnlite.bundle import BundleError
try:
    m = bnnlite.Model.load(sys.argv[1])
except BundleError as e:
    print(json.dumps({"outcome": "rejected", "error": str(e)}))
else:
    x = np.stack([np.zeros(m.input_shape, np.uint8), np.full(m.input_shape, 255, np.uint8)])
    z = m.logits(x)
    print(json.dumps({"outcome": "loaded", "finite": bool(np.isfinite(z).all()),
                      "logits": z.ravel()[:8].tolist()}))
"""
SECRET = b"TOP-SECRET-" * 1000
OP, DS = "classifier", "bias"  # the tiny Bi-Real bundle's dense op: (7,) float32


def load_in_subprocess(path, cwd=None, timeout=60) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", LOADER, str(path)], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} hung for {timeout} s (a FIFO or external file opened?)")
    assert proc.returncode == 0, f"loader died with {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def assert_refused(path, match, cwd=None):
    res = load_in_subprocess(path, cwd)
    assert res["outcome"] == "rejected", f"loaded: {res}"
    assert match in res["error"], res["error"]
    return res


@pytest.fixture
def bireal(tiny_bundles):
    return tiny_bundles["birealnet"]


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "secret.bin"
    p.write_bytes(SECRET)
    return p


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "blocking.fifo"
    os.mkfifo(p)
    return p


def _replace(f, **kwargs):
    del f[f"ops/{OP}/{DS}"]
    return f[f"ops/{OP}"].create_dataset(DS, shape=(7,), dtype="<f4", **kwargs)


class TestExternalStorage:
    def test_external_raw_file_is_not_read(self, bireal, secret, tmp_path):
        p = edit(bireal, tmp_path / "ext.h5", lambda f: _replace(f, external=[(str(secret), 0, 28)]))
        assert_refused(p, f"dataset {DS!r} keeps its data in external files")

    def test_external_fifo_does_not_block(self, bireal, fifo, tmp_path):
        p = edit(bireal, tmp_path / "ext.h5", lambda f: _replace(f, external=[(str(fifo), 0, 28)]))
        assert_refused(p, "external files")

    def test_external_relative_name(self, bireal, tmp_path):
        # Relative external names resolve against the working directory of the loader.
        work = tmp_path / "cwd"
        work.mkdir()
        os.mkfifo(work / "rel.fifo")
        p = edit(bireal, tmp_path / "ext.h5", lambda f: _replace(f, external=[("rel.fifo", 0, 28)]))
        assert_refused(p, "external files", cwd=work)


class TestVirtualDatasets:
    @pytest.mark.parametrize("source", [".", "self.h5", "ANY_NAME.h5"])
    def test_self_referencing_virtual_dataset_is_refused_unresolved(self, bireal, tmp_path, source):
        # The bundle is opened from memory, so libhdf5 resolved any source name to the
        # bundle itself and recursed until SIGSEGV.
        def fn(f):
            layout = h5py.VirtualLayout(shape=(7,), dtype="<f4")
            layout[:] = h5py.VirtualSource(source, f"/ops/{OP}/{DS}", shape=(7,))
            del f[f"ops/{OP}/{DS}"]
            f[f"ops/{OP}"].create_virtual_dataset(DS, layout)
        p = edit(bireal, tmp_path / "self.h5", fn)
        if source == "self.h5":
            p = p.rename(tmp_path / "self.h5") if p.name != "self.h5" else p
        assert_refused(p, "virtual storage", cwd=tmp_path)

    def test_virtual_dataset_on_another_file(self, bireal, tmp_path, fifo):
        def fn(f):
            layout = h5py.VirtualLayout(shape=(7,), dtype="<f4")
            layout[:] = h5py.VirtualSource(str(fifo), "/x", shape=(7,))
            del f[f"ops/{OP}/{DS}"]
            f[f"ops/{OP}"].create_virtual_dataset(DS, layout)
        assert_refused(edit(bireal, tmp_path / "vds.h5", fn), "virtual storage")


class TestLinks:
    def test_soft_link_to_a_dataset(self, bireal, tmp_path):
        def fn(f):
            f.move(f"ops/{OP}/{DS}", f"ops/{OP}/real")
            f[f"ops/{OP}/{DS}"] = h5py.SoftLink(f"/ops/{OP}/real")
        assert_refused(edit(bireal, tmp_path / "soft.h5", fn), f"dataset {DS!r} is a soft link")

    def test_second_hard_link(self, bireal, tmp_path):
        def fn(f):  # the same object under two names (the RPReLU slope aliased onto another array)
            del f["ops/bconv2/rprelu_gamma"]
            f["ops/bconv2/rprelu_gamma"] = f["ops/bconv2/rprelu_zeta"]
        assert_refused(edit(bireal, tmp_path / "hard.h5", fn), "hard-linked under more than one name")

    def test_external_link_to_a_dataset(self, bireal, tmp_path, fifo):
        def fn(f):
            del f[f"ops/{OP}/{DS}"]
            f[f"ops/{OP}/{DS}"] = h5py.ExternalLink(str(fifo), "/x")
        assert_refused(edit(bireal, tmp_path / "elink.h5", fn), "is an external link")

    def test_external_link_to_a_real_file(self, bireal, tmp_path):
        other = tmp_path / "other.h5"
        with h5py.File(other, "w") as g:
            g.create_dataset("x", data=np.full(7, 1234.5, np.float32))

        def fn(f):
            del f[f"ops/{OP}/{DS}"]
            f[f"ops/{OP}/{DS}"] = h5py.ExternalLink(str(other), "/x")
        assert_refused(edit(bireal, tmp_path / "elink.h5", fn), "is an external link")

    def test_soft_link_op_group(self, bireal, tmp_path):
        def fn(f):
            f.move(f"ops/{OP}", "elsewhere")
            f[f"ops/{OP}"] = h5py.SoftLink("/elsewhere")
        assert_refused(edit(bireal, tmp_path / "g.h5", fn), f"group /ops/{OP} is a soft link")

    def test_external_link_ops(self, bireal, tmp_path, fifo):
        def fn(f):
            del f["ops"]
            f["ops"] = h5py.ExternalLink(str(fifo), "/ops")
        assert_refused(edit(bireal, tmp_path / "ops.h5", fn), "/ops is an external link")


class TestLayoutsAndFilters:
    @pytest.mark.parametrize("kwargs", [dict(compression="gzip"), dict(compression="lzf"), dict(shuffle=True),
                                        dict(fletcher32=True), dict(scaleoffset=4)],
                             ids=["gzip", "lzf", "shuffle", "fletcher32", "scaleoffset"])
    def test_filters(self, bireal, tmp_path, kwargs):
        def fn(f):
            a = f[f"ops/{OP}/{DS}"][()]
            _replace(f, chunks=(7,), **kwargs)[...] = a
        assert_refused(edit(bireal, tmp_path / "filt.h5", fn), "uses HDF5 filters")

    def test_compact_layout(self, bireal, tmp_path):
        def fn(f):
            a = f[f"ops/{OP}/{DS}"][()]
            del f[f"ops/{OP}/{DS}"]
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            h5py.h5d.create(f[f"ops/{OP}"].id, DS.encode(), h5py.h5t.IEEE_F32LE,
                            h5py.h5s.create_simple((7,)), dcpl=dcpl).write(h5py.h5s.ALL, h5py.h5s.ALL, a)
        assert_refused(edit(bireal, tmp_path / "compact.h5", fn), "compact storage")

    def test_what_the_writer_makes_loads(self, bireal, tmp_path):
        # Chunked and contiguous, unfiltered: both allowed.
        def fn(f):
            a = f[f"ops/{OP}/{DS}"][()]
            _replace(f, chunks=(3,))[...] = a
        res = load_in_subprocess(edit(bireal, tmp_path / "chunked.h5", fn))
        assert res["outcome"] == "loaded" and res["finite"], res


class TestHugeFiniteValues:
    @pytest.mark.parametrize("ds", ["scale", "multiplier", "bias", "rprelu_beta", "rprelu_gamma", "rprelu_zeta"])
    def test_huge_per_channel_value(self, bireal, tmp_path, ds):
        def fn(f):
            a = f[f"ops/bconv3/{ds}"][()]
            a[5] = 3.4e38
            f[f"ops/bconv3/{ds}"][...] = a
        # Refused at bconv3 or at the first later op whose values it would overflow.
        assert_refused(edit(bireal, tmp_path / "huge.h5", fn), "beyond float32")

    def test_tiny_std(self, bireal, tmp_path):
        def fn(f):
            f.attrs["normalization_std"] = np.array([1e-40, 0.25, 0.25], np.float32)
        assert_refused(edit(bireal, tmp_path / "std.h5", fn), "std too small")
