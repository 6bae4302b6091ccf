"""The short CI run of tools/fuzz_bundles.py (issue 16): mutants of HDF5 storage features,
values, attributes and bytes, each loaded in its own forked process with memory, CPU and
wall limits.  No crash, hang, unexpected error, accepted forbidden storage or non-finite
logits; the storage mutants must reach the storage checks and the value mutants the
bounds.  The 10,000-case run and its figures: docs/benchmarks.md (issue 16).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "fuzz_bundles.py"
CASES = 400


def test_fuzz_isolated_cases(tiny_models, tmp_path):
    from _models import FUZZ_ARCHS, make_model, write_plain_bundle
    bases = tmp_path / "bases"
    bases.mkdir()
    for arch in FUZZ_ARCHS:
        write_plain_bundle(tiny_models[arch] if arch in tiny_models else make_model(arch), bases / f"{arch}.h5")
    out = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, str(TOOL), "--cases", str(CASES), "--work", str(tmp_path),
                           "--out", str(out), "--seed", "20261206"], capture_output=True, text=True, timeout=900)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    bad = [r for r in results if r["outcome"] not in ("rejected", "loaded", "skipped")]
    assert proc.returncode == 0 and not bad, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert len(results) == CASES
    assert sum(r["outcome"] == "skipped" for r in results) < 0.02 * CASES
    storage = [r for r in results if r["family"] == "storage" and r["desc"].startswith("FORBIDDEN")]
    reasons = {r["error"].split(": ", 2)[-1][:30] for r in storage}
    assert len(storage) >= 60 and all(r["outcome"] == "rejected" for r in storage)
    assert len(reasons) >= 5, reasons  # links, external, virtual, filters, compact all reached
    values = [r for r in results if r["family"] == "values"]
    assert sum("beyond float32" in r.get("error", "") for r in values) >= 10
    assert sum(r["outcome"] == "loaded" for r in values) >= 10  # and many still load and run
