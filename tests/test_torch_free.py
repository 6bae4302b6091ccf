"""The runtime never needs torch, and ``import bnnlite`` stays cheap.

Each check runs in a fresh interpreter (a subprocess), because this pytest
process has torch, h5py and numba loaded already.  Torch is made
unimportable there by a meta-path finder installed before anything else, so
an ``import torch`` anywhere (even a lazy one deep in a call) fails loudly
instead of silently succeeding.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _models import IMAGE_SIZE, NUM_CLASSES

BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import {name!r})")
            return None
    sys.meta_path.insert(0, _NoTorch())
""")


def run_py(code: str, timeout=600) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last, returned parsed."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


class TestImportCost:
    def test_import_bnnlite_loads_no_heavy_modules(self):
        out = run_py("import sys, json, bnnlite\n"
                     "print(json.dumps(sorted(m for m in sys.modules "
                     "if m.split('.')[0] in ('torch', 'h5py', 'numba', 'onnx', 'onnxruntime'))))")
        assert out == [], f"`import bnnlite` imported {out}"

    def test_public_names_resolve_lazily(self):
        # BundleError needs bnnlite.bundle (numpy only), still no h5py/numba/torch.
        out = run_py("import sys, json, bnnlite\n"
                     "E = bnnlite.BundleError\n"
                     "assert issubclass(E, ValueError)\n"
                     "print(json.dumps(sorted(m for m in sys.modules "
                     "if m.split('.')[0] in ('torch', 'h5py', 'numba'))))")
        assert out == []

    def test_blocker_really_blocks(self):
        # The blocker itself must work, or the torch-free test below proves nothing.
        out = run_py(BLOCK_TORCH + textwrap.dedent("""
            import json
            try:
                import torch
                print(json.dumps("imported"))
            except ImportError:
                print(json.dumps("blocked"))
        """))
        assert out == "blocked"


class TestTorchFreeInference:
    @pytest.mark.parametrize("arch", ["birealnet", "xnor", "fp32"])
    def test_load_and_predict_without_torch(self, tiny_bundles, arch, tmp_path):
        x = np.random.default_rng(5).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        np.save(tmp_path / "x.npy", x)
        # The reference result, computed here (torch is loaded in this process, unused by bnnlite).
        import bnnlite
        want = bnnlite.Model.load(tiny_bundles[arch]).logits(x)
        out = run_py(BLOCK_TORCH + textwrap.dedent(f"""
            import json, sys
            import numpy as np
            import bnnlite
            x = np.load({str(tmp_path / 'x.npy')!r})
            res = {{}}
            for be in [None, "numpy"]:  # the default (best) backend and the NumPy reference
                m = bnnlite.Model.load({str(tiny_bundles[arch])!r}, backend=be)
                key = m.backend.name + ("-default" if be is None else "")
                res[key] = {{"pred": m.predict(x).tolist(), "one": m.predict(x[0]),
                             "logits": m.logits(x).tolist()}}
            print(json.dumps({{"res": res, "torch_loaded": "torch" in sys.modules,
                              "any_torch": sorted(k for k in sys.modules if k.startswith("torch"))}}))
        """))
        assert not out["torch_loaded"] and out["any_torch"] == []
        assert len(out["res"]) == 2, out["res"].keys()
        for be, r in out["res"].items():
            got = np.asarray(r["logits"], np.float32)
            assert got.shape == (3, NUM_CLASSES)
            np.testing.assert_array_equal(got, want, err_msg=be)
            assert r["pred"] == want.argmax(1).tolist()
            assert r["one"] == int(want[0].argmax())
