"""The ARM64 NEON target (kernels/bconv_neon.h) without ARM hardware:
cross-compiled static for aarch64 and run under qemu-aarch64 against the
portable kernels in the same program, bit for bit (tools/neon/); the NEON
build of the extension's C, and the backend's choice on a faked aarch64
CPU.  The cross tools come from Debian's gcc-aarch64-linux-gnu and
qemu-user (.ci/run installs them); without them these tests skip."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bnnlite import backends as B
from bnnlite.backends import native

ROOT = Path(__file__).resolve().parents[1]
CC = "aarch64-linux-gnu-gcc"
OBJDUMP = "aarch64-linux-gnu-objdump"
QEMU = "qemu-aarch64"
CASES = 2400          # + a 1x1 and a pool case per 4, a pack case per 8: 3900 in all

needs_cc = pytest.mark.skipif(
    shutil.which(CC) is None,
    reason=f"no {CC} (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)")
needs_qemu = pytest.mark.skipif(
    shutil.which(CC) is None or shutil.which(QEMU) is None,
    reason=f"no {CC} / {QEMU} (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)")


def _run_comparison(out, cases, kernels=None, native=False):
    env = dict(os.environ)
    if kernels is not None:
        env["KERNELS"] = str(kernels)
    if native:
        env["NATIVE"] = "1"
    return subprocess.run(["bash", str(ROOT / "tools/neon/build.sh"), str(out), str(cases)],
                          capture_output=True, text=True, timeout=300, env=env)


def _digest(stdout):
    m = re.search(r"^\w+ digest ([0-9a-f]{16})$", stdout, re.M)
    return m and m.group(1)


@pytest.fixture(scope="module")
def qemu_run(tmp_path_factory):
    return _run_comparison(tmp_path_factory.mktemp("neon"), CASES)


@needs_qemu
def test_neon_equals_portable_under_qemu(qemu_run):
    r = qemu_run
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^(\d+) cases, (\d+) identical$", r.stdout, re.M)
    assert m and int(m.group(1)) == int(m.group(2)) >= 2000, r.stdout


@needs_qemu
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or shutil.which("gcc") is None,
                    reason="needs an x86-64 machine with gcc")
def test_neon_equals_x86_portable(qemu_run, tmp_path):
    """The same cases built for this x86 machine (portable target, native):
    the digest of every output equals the NEON run's under qemu, so ARM
    and x86 give the same bits."""
    r = _run_comparison(tmp_path, CASES, native=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "portable digest" in r.stdout and "neon digest" in qemu_run.stdout
    assert _digest(r.stdout) == _digest(qemu_run.stdout) is not None


@needs_qemu
@pytest.mark.parametrize("header, old, new, cases", [
    # the epilogue's fused multiply-add split into a multiply and an add
    ("bnn_common.h", "y = vfmaq_f32(bias, y, mult);",
     "y = vaddq_f32(vmulq_f32(y, mult), bias);", 400),
    # uint16 accumulators past their limit (the saturated 4100-word case)
    ("bconv_neon.h", "#define BNN_NEON_MAX_STEPS 4095", "#define BNN_NEON_MAX_STEPS 4100", 4),
    # the packing compare off by a tie (x <= thr for x < thr)
    ("pack.h", "vcltq_f32(vld1q_f32(x + l), vld1q_f32(thr + l))",
     "vcleq_f32(vld1q_f32(x + l), vld1q_f32(thr + l))", 400),
    # the pointwise run (1x1) overwriting the word that two channel blocks share
    # (bnn_pw_store_bits: the portable target has no pointwise run, so only NEON changes)
    ("bnn_common.h", "*b = sh ? (*b | ((m & keep) << sh)) : (m & keep);",
     "*b = (m & keep) << sh;", 400),
    # its bits-mode threshold off by a tie (acc <= thr for acc < thr)
    ("bconv_neon.h", "mk[g] = vcltq_s32(bnn_neon_pw_acc(kv, pc[g]), th[g]);",
     "mk[g] = vcleq_s32(bnn_neon_pw_acc(kv, pc[g]), th[g]);", 400),
])
def test_the_comparison_sees_a_broken_neon_target(tmp_path, header, old, new, cases):
    """No test that cannot fail: a NEON target changed as above must differ
    from the portable one."""
    kernels = tmp_path / "kernels"
    shutil.copytree(ROOT / "kernels", kernels, ignore=shutil.ignore_patterns("*.c", "*.so"))
    src = (kernels / header).read_text()
    assert src.count(old) == 1
    (kernels / header).write_text(src.replace(old, new))
    r = _run_comparison(tmp_path / "out", cases, kernels)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISMATCH" in r.stderr


def _objdump(obj):
    return subprocess.run([OBJDUMP, "-d", str(obj)], capture_output=True, text=True,
                          check=True).stdout


@needs_cc
def test_the_kernels_c_builds_for_aarch64_with_the_neon_target(tmp_path):
    """setup.py's flags for _bconv_neon (none beyond the common ones) on the
    C the extension includes: the selector takes the NEON target (cnt,
    uadalp, fmla in the code), and -DBNN_NO_NEON (the generic build there)
    does not."""
    tu = tmp_path / "kernels_tu.c"
    tu.write_text('#include "bconv_select.h"\n#include "fconv.h"\n#include "pack.h"\n'
                  "#if !BNN_NEON\n#error not the NEON target\n#endif\n"
                  "void run(const bnn_sel_job *j, ptrdiff_t b) { bnn_sel_run(j, b, 0); }\n"
                  "void frow(const bnn_fconv_params *p, const float *x, float *o, "
                  "bnn_word_t *bits) { bnn_fconv_row(p, x, o, 1, bits, 1); }\n")
    flags = ["-O3", "-ffp-contract=off", "-fopenmp", "-Wall", "-Werror", "-Wno-unused-function",
             f"-I{ROOT / 'kernels'}"]
    subprocess.run([CC, *flags, "-c", str(tu), "-o", str(tmp_path / "neon.o")], check=True)
    text = _objdump(tmp_path / "neon.o")
    for insn in ("cnt", "uadalp", "fmla"):
        assert re.search(rf"\t{insn}\s+v\d+\.", text), insn
    tu.write_text(tu.read_text().replace("#if !BNN_NEON", "#if BNN_NEON"))
    subprocess.run([CC, *flags, "-DBNN_NO_NEON", "-c", str(tu), "-o", str(tmp_path / "g.o")],
                   check=True)
    assert not re.search(r"\tuadalp\s", _objdump(tmp_path / "g.o"))


@needs_cc
def test_the_cython_extension_c_compiles_for_aarch64(tmp_path):
    """kernels/_bconv_neon.pyx through Cython, then the aarch64 compiler on
    the generated C with setup.py's flags (syntax and types only: this
    machine's Python headers stand in for an aarch64 Python's)."""
    cython = pytest.importorskip("Cython.Build")
    del cython
    np = pytest.importorskip("numpy")
    c_file = tmp_path / "_bconv_neon.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", str(ROOT / "kernels"),
                    "-X", "boundscheck=False", "-X", "wraparound=False", "-X", "cdivision=True",
                    str(ROOT / "kernels/_bconv_neon.pyx"), "-o", str(c_file)], check=True)
    inc = [sysconfig.get_paths()["include"], np.get_include(), str(ROOT / "kernels")]
    subprocess.run([CC, "-fsyntax-only", "-O3", "-ffp-contract=off", "-fopenmp",
                    "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION",
                    *[f"-I{d}" for d in inc], str(c_file)], check=True)


def _setup_names(machine, win32=False):
    """setup.py's _target_names, read from the file (running setup.py
    would build)."""
    import ast
    tree = ast.parse((ROOT / "setup.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_target_names")
    g: dict = {}
    exec(compile(ast.Module([fn], []), "setup.py", "exec"), g)
    return g["_target_names"](machine, win32)


@pytest.mark.parametrize("machine, names", [
    ("x86_64", ["_bconv_avx512", "_bconv_avx2", "_bconv_generic", "_cpu"]),
    ("AMD64", ["_bconv_avx512", "_bconv_avx2", "_bconv_generic", "_cpu"]),
    ("aarch64", ["_bconv_neon", "_bconv_generic", "_cpu"]),
    ("arm64", ["_bconv_neon", "_bconv_generic", "_cpu"]),
    ("riscv64", ["_bconv_generic", "_cpu"]),
])
def test_setup_builds_the_machines_targets_only(machine, names):
    assert _setup_names(machine) == names


class TestFakedAarch64:
    """The backend's choice on an ARM64 CPU: its probe says neon and no x86
    feature; the NEON module (faked: this machine cannot load one) wins."""

    @pytest.fixture
    def arm(self, monkeypatch):
        class Probe:
            @staticmethod
            def has(name):
                return name == "neon"

        loaded = []

        class FakeImpl:
            def __init__(self, module_name, variant):
                if variant not in ("neon", "generic"):
                    raise ImportError(f"No module named {module_name!r}")
                loaded.append(module_name)
                self.variant = variant

        monkeypatch.setitem(sys.modules, "bnnlite._cpu", Probe)
        monkeypatch.setattr(native, "CythonKernels", FakeImpl)
        monkeypatch.setattr(B, "_CACHE", {})
        monkeypatch.delenv(B.ENV_VAR, raising=False)
        return loaded

    def test_picks_the_neon_module(self, arm):
        be = B.get_backend()
        assert (be.name, be.variant) == ("cython", "neon")
        assert arm == ["bnnlite._bconv_neon"]

    def test_the_bench_reports_cython_neon(self, arm, monkeypatch):
        from bnnlite.bench import engines
        from bnnlite.model import Model

        class Loaded:
            logits = weight_bytes = None
            backend = B.get_backend("cython")

        monkeypatch.setattr(Model, "load", staticmethod(lambda *a, **k: Loaded))
        assert engines._bnnlite("bnnlite", "model.h5", 1)[2] == "backend cython/neon"

    def test_x86_builds_are_refused(self, arm):
        assert not B._cpu_supports("avx512") and not B._cpu_supports("avx2")
        with pytest.raises(RuntimeError, match="needs a CPU with AVX2, POPCNT and FMA"):
            B.get_backend("cython-avx2")
        assert B.get_backend("cython-neon").variant == "neon"

    def test_x86_never_picks_neon(self, monkeypatch):
        class Probe:
            @staticmethod
            def has(name):
                return name in ("avx2", "popcnt", "fma")
        monkeypatch.setitem(sys.modules, "bnnlite._cpu", Probe)
        assert not B._cpu_supports("neon")
        with pytest.raises(RuntimeError, match="cython-neon needs a CPU with NEON;"):
            B._load("cython-neon")
