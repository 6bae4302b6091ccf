"""The README's complete example ("Your own network, your own data"), run as written.

The block between ``<!-- readme-example: own-network -->`` and ``<!-- /readme-example -->``
holds a Python file (saved as example.py, as the README says) and the shell commands that run
it and the ``bnnlite predict`` CLI on its bundle.  Both run here in an empty folder, in
subprocesses that import this checkout (PYTHONPATH), with the example's own settings.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- readme-example: own-network -->", "<!-- /readme-example -->"


def _example():
    text = (ROOT / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "the README lost its example markers"
    block = text.split(START)[1].split(END)[0]
    python = re.findall(r"```python\n(.*?)```", block, re.S)
    shell = re.findall(r"```bash\n(.*?)```", block, re.S)
    assert len(python) == 1 and len(shell) == 1, "the example is one python and one bash block"
    return python[0], [line for line in shell[0].splitlines() if line.strip()]


def test_readme_example_runs_as_written(tmp_path):
    code, commands = _example()
    (tmp_path / "example.py").write_text(code)
    assert commands[0] == "python example.py", commands
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    bindir = Path(sys.executable).parent     # python and the console scripts of this environment
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    outputs = []
    for cmd in commands:
        res = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        outputs.append(res.stdout)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    lines = outputs[0].strip().splitlines()
    assert any(re.fullmatch(r"validation top-1 \d+\.\d%", line) for line in lines), lines[-5:]
    assert lines[-1] in names                           # the class the bundle gives the horse image
    assert (tmp_path / "mine.h5").is_file() and (tmp_path / "runs" / "mine" / "model.pth").is_file()
    predicted = [line.split("\t") for line in outputs[1].strip().splitlines()]
    assert [p[0] for p in predicted] == ["photos/horse/000.png", "photos/deer/001.png"]
    assert all(p[2] in names and names[int(p[1])] == p[2] for p in predicted)
    assert predicted[0][2] == lines[-1]                 # the CLI and Model.predict agree
