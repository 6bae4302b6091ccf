"""bnnlite-bench (bnnlite/bench/cli.py): it runs, reports what it measured, and refuses bad options.

Behaviour only (tiny batches, few images): the speed figures themselves are
printed by the benchmark, never asserted here.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import bnnlite
from bnnlite.backends import available_backends
from bnnlite.bench import main

needs_cython = pytest.mark.skipif("cython" not in available_backends(),
                                  reason="the compiled extension is not built")


def _run(*args):
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout  # progress notes go to stderr


@needs_cython
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


@needs_cython
def test_table_output_has_every_line():
    lines = _run("--engines", "bnnlite", "--limit", "8", "--batch", "4", "--scaling", "2").splitlines()
    assert lines[0].startswith("model ") and "1 thread(s); batch 4" in lines[0]
    assert lines[1].split()[:3] == ["engine", "accuracy", "b1"]
    assert any(line.startswith("bnnlite ") and "backend cython" in line for line in lines)
    assert any(line.startswith("import bnnlite: ") for line in lines)
    assert any(line.startswith("bnnlite with 2 threads: ") for line in lines)


@needs_cython
def test_thread_scaling_runs_in_its_own_process():
    out = json.loads(_run("--engines", "bnnlite", "--limit", "8", "--batch", "4", "--scaling", "2", "--json"))
    sc = out["scaling"]
    assert "error" not in sc, sc
    assert sc["threads"] == 2 and sc["base_threads"] == 1 and sc["pairs"] >= 5


@needs_cython
def test_workers_import_this_package_not_the_working_directory(tmp_path, monkeypatch):
    """Run from a directory holding another ``bnnlite/`` (a source checkout without built
    kernels, say): the worker subprocesses must still use the package the CLI runs from,
    and relative paths must still name the caller's files."""
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


@needs_cython
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


def test_unknown_engine_is_a_usage_error():
    res = CliRunner().invoke(main, ["--engines", "bnnlite,nope"])
    assert res.exit_code == 2 and "nope" in res.output


def test_python_dash_m_runs_the_same_command():
    p = subprocess.run([sys.executable, "-m", "bnnlite.bench", "--help"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "--layers" in p.stdout and "--worker" not in p.stdout
