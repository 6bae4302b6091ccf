"""A checkpoint that pickles more than plain data is refused with the command that converts
it, and tools/convert_checkpoint.py makes one that loads (issue 16)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"


def test_numpy_checkpoint_refused_then_converted(tmp_path, torch1):
    from _models import make_model, write_checkpoint
    from bnnlite.train.checkpoint import load_checkpoint
    old = write_checkpoint(make_model("xnor", seed=0), tmp_path / "old.pth")
    ck = torch1.load(old, weights_only=True)
    ck["normalization"] = {"mean": np.array(ck["normalization"]["mean"]), "std": np.float64(0.25)}
    torch1.save(ck, old)  # what an older trainer could have written: NumPy objects inside
    with pytest.raises(ValueError, match=r"refused: .*convert_checkpoint\.py"):
        load_checkpoint(old)
    new = tmp_path / "new.pth"
    proc = subprocess.run([sys.executable, str(TOOL), str(old), str(new)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = load_checkpoint(new)
    assert np.allclose(np.asarray(got["normalization"]["mean"]), ck["normalization"]["mean"])
    assert got["normalization"]["std"] == 0.25
    assert all(torch1.equal(got["model"][k], v) for k, v in ck["model"].items())
