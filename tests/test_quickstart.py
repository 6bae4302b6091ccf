"""The README's quick start, as a newcomer runs it: in one fresh venv, on a
fresh copy of the repository, the bench install and run, then the editable
install with the test extras, must leave a working bnnlite.

It once did not: the bench's numba run left its cache in
site-packages/bnnlite/__pycache__, which outlived the uninstall of the
editable reinstall and shadowed the package as an empty namespace package
(``module 'bnnlite' has no attribute 'Model'``).  numba now caches in the
user's cache (bnnlite/backends/_numba_kernels.py, _cache_dir).

And ``pip install .`` alone (numba is the optional extra ``bnnlite[numba]``)
must run the compiled kernels, and name the extra when they are missing.

Slow (venvs with torch, ONNX Runtime and numba, three builds and a bench
run: several minutes), so it runs only with BNNLITE_QUICKSTART=1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BENCH = 'pip install ".[bench]" && bnnlite-bench --threads 1'
TEST = 'pip install -e ".[test]" && python -m pytest -q'

pytestmark = pytest.mark.skipif(os.environ.get("BNNLITE_QUICKSTART") != "1",
                                reason="slow (fresh venv + installs + bench): set BNNLITE_QUICKSTART=1")


def _copy_repo(dst: Path) -> None:
    """The repository's files (tracked and new, not ignored: no builds)."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)


def _run(cmd: str, cwd: Path, env: dict) -> str:
    res = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _numba_caches(site: Path) -> list[Path]:
    return sorted(p for p in (site / "bnnlite").rglob("*") if p.suffix in (".nbi", ".nbc"))


def _fresh(tmp_path: Path):
    """(a copy of the repository, the environment of a fresh venv, its
    site-packages).  Commands that import bnnlite run in tmp_path/"away",
    an empty folder: beside the sources ``python -c`` would import those."""
    shutil.which("git") or pytest.skip("needs git to copy the repository")
    repo, venv = tmp_path / "repo", tmp_path / "venv"
    repo.mkdir()
    (tmp_path / "away").mkdir()
    _copy_repo(repo)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
               VIRTUAL_ENV=str(venv), XDG_CACHE_HOME=str(tmp_path / "cache"))
    for var in ("PYTHONPATH", "BNNLITE_BACKEND", "NUMBA_CACHE_DIR", "PYTHONHOME"):
        env.pop(var, None)
    site = Path(_run('python -c "import sysconfig; print(sysconfig.get_paths()[\'purelib\'])"',
                     repo, env).strip())
    return repo, env, site


def test_readme_quick_start_in_one_venv(tmp_path):
    assert BENCH in README and TEST in README, "the README's quick start changed: update this test"
    repo, env, site = _fresh(tmp_path)

    out = _run(BENCH, repo, env)
    assert "bnnlite" in out
    assert _numba_caches(site) == []                      # numba cached elsewhere
    assert list((tmp_path / "cache" / "bnnlite" / "numba").rglob("*.nbi"))

    _run('pip install -e ".[test]"', repo, env)
    assert _numba_caches(site) == []
    away = tmp_path / "away"
    assert "Model" in _run('python -c "import bnnlite; print(bnnlite.Model.__name__)"', away, env)
    _run("bnnlite info", away, env)                       # the CLIs run
    _run("python -m pytest -q -p no:cacheprovider tests/test_torch_free.py tests/test_bench_cli.py",
         repo, env)


def test_install_without_numba(tmp_path):
    repo, env, site = _fresh(tmp_path)
    _run("pip install .", repo, env)
    probe = ('python -c "import bnnlite, numpy as np; m = bnnlite.Model.pretrained(); '
             'print(m.backend.name, m.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape)"')
    away = tmp_path / "away"
    assert _run(probe, away, env).split() == ["cython", "(2,)"]
    assert subprocess.run(["python", "-c", "import numba"], env=env, cwd=away).returncode != 0
    for so in (site / "bnnlite").glob("_bconv_*"):           # as if no compiler had built them
        so.unlink()
    res = subprocess.run(probe, shell=True, cwd=away, env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "pip install 'bnnlite[numba]'" in res.stderr, res.stderr[-2000:]
