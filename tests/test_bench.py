"""bnnlite-bench: it runs, reports what it measured, and refuses bad options.

Behaviour only (tiny batches, few images): the speed figures themselves are
printed by the benchmark, never asserted here.
"""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnnlite.backend import available_backends
from bnnlite.bench import main


def _run(*args):
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.skipif("cython" not in available_backends(), reason="the compiled extension is not built")
def test_engine_row_and_import_probe():
    out = json.loads(_run("--engines", "bnnlite", "--limit", "8", "--batch", "4", "--scaling", "0", "--json"))
    (row,) = out["results"]
    assert row["engine"] == "bnnlite" and "error" not in row, row
    assert row["eval_images"] == 8 and 0.0 <= row["accuracy"] <= 1.0
    assert row["throughput_ips"] > 0 and row["latency_ms_b1"] > 0 and row["peak_rss_mb"] > 0
    assert row["weight_bytes"] > 0
    imp = out["import"]
    assert imp["import_s"] >= 0 and imp["load_s"] >= 0
    assert imp["torch"] is False and imp["numba"] is False  # the default path imports neither


@pytest.mark.skipif("cython" not in available_backends(), reason="the compiled extension is not built")
def test_thread_scaling_is_timed_in_pairs():
    out = json.loads(_run("--engines", "bnnlite", "--limit", "8", "--batch", "4", "--scaling", "2", "--json"))
    sc = out["scaling"]
    assert "error" not in sc, sc
    assert sc["threads"] == 2 and sc["base_threads"] == 1 and sc["pairs"] >= 5
    assert sc["throughput_ips"] > 0 and sc["base_ips"] > 0 and sc["speedup"] > 0


@pytest.mark.skipif("cython" not in available_backends(), reason="the compiled extension is not built")
def test_workers_import_this_package_not_the_working_directory(tmp_path, monkeypatch):
    """Run from a directory holding another ``bnnlite/`` (a source checkout without built
    kernels, say): the worker subprocesses must still use the package the CLI runs from,
    and relative paths must still name the caller's files."""
    import shutil

    import bnnlite

    shadow = tmp_path / "bnnlite"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadowing bnnlite was imported')\n")
    shutil.copy(Path(bnnlite.__file__).parent / "data" / "birealnet.h5", tmp_path / "model.h5")
    monkeypatch.chdir(tmp_path)
    out = json.loads(_run("--model", "model.h5", "--engines", "bnnlite", "--limit", "8", "--batch", "4",
                          "--scaling", "0", "--json"))
    (row,) = out["results"]
    assert "error" not in row, row
    assert "error" not in out["import"], out["import"]


@pytest.mark.skipif("cython" not in available_backends(), reason="the compiled extension is not built")
def test_engines_are_timed_in_rounds_and_a_failing_one_gets_its_error(tmp_path):
    """All engines' workers run side by side, timed in alternating rounds; one whose
    bundle is bad reports why, and the others are still measured."""
    pytest.importorskip("torch")
    bad = tmp_path / "fp32.h5"
    bad.write_bytes(b"not an HDF5 file")
    out = json.loads(_run("--engines", "bnnlite,torch-fp32", "--fp32", str(bad), "--limit", "8",
                          "--batch", "4", "--scaling", "0", "--json"))
    ok, failed = out["results"]
    assert ok["engine"] == "bnnlite" and "error" not in ok and ok["rounds"] >= 5, ok
    assert failed["engine"] == "torch-fp32" and "fp32.h5" in failed["error"], failed


def test_worker_skips_what_libraries_print_and_reports_its_exit():
    import sys

    from bnnlite.bench import _Worker
    script = ("import json, sys\n"
              "print('a library talking'); print(json.dumps({'ready': True}), flush=True)\n"
              "for line in sys.stdin:\n"
              "    print('more talk'); print(json.dumps({'t': 0.5}), flush=True)\n"
              "sys.exit('worker gave up')\n")
    w = _Worker("fake", [sys.executable, "-c", script])
    try:
        assert w.error is None
        assert w.ask("batch") == {"t": 0.5}
        w._p.stdin.close()                      # the worker leaves its loop and fails
        assert w._answer() is None and w.error == "worker gave up"
        assert w.ask("batch") is None
    finally:
        w.close()


def test_layers_run_per_chunk():
    rows = json.loads(_run("--layers", "--batch", "4", "--json"))
    assert [r["layer"] for r in rows] == ["bconv1", "bconv2", "bconv3", "bconv4", "bconv5"]
    assert rows[0]["shape"] == "32x32x128->128"
    assert all(r["chunk"] >= 1 and r["binary_gmacs"] > 0 for r in rows)


def test_unknown_engine_is_a_usage_error():
    res = CliRunner().invoke(main, ["--engines", "bnnlite,nope"])
    assert res.exit_code == 2 and "nope" in res.output


@pytest.mark.parametrize("path", ["tiny", "shipped"])
def test_torch_engine_is_the_bundles_network(tiny_bundles, path):
    """The PyTorch FP32 engine rebuilt from an fp32 bundle gives bnnlite's logits."""
    import numpy as np
    import torch

    import bnnlite
    from bnnlite.bench import _torch_from_bundle
    from bnnlite.bundle import read_bundle
    from bnnlite.bench import _data_file

    bundle_path = tiny_bundles["fp32"] if path == "tiny" else _data_file("fp32.h5")
    model = bnnlite.Model.load(bundle_path)
    h, w, c = model.header["input_shape"]
    x = np.random.default_rng(0).integers(0, 256, (8, h, w, c), dtype=np.uint8)
    net = _torch_from_bundle(read_bundle(bundle_path))
    mean, std = model.header["normalization_mean"], model.header["normalization_std"]
    xt = torch.from_numpy(((x / np.float32(255) - mean) / std).astype(np.float32).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        got = net(xt).numpy()
    np.testing.assert_allclose(got, model.logits(x), atol=1e-3)
