"""Shared cases, oracles and fixtures of the kernel tests (test_backends_*.py).

Each backend is checked against (a) a float +-1 convolution oracle built
only from bitpack.unpack_bits and plain NumPy (independent of the kernels'
popcount formula, ``Case.oracle_acc``) and (b) the NumPy reference
(``ref``), bit for bit.  ``be`` runs a test on every backend in ALL;
backends that are not built here are skipped with the reason.  Outputs are
pre-filled with garbage so any element a kernel forgets to write is caught.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from bnnlite import backends as B
from bnnlite.bitpack import WORD_DTYPE, pack_bits, unpack_bits, words_for

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
CHANNELS = [1, 3, 63, 64, 65, 127, 128, 130, 200]
ALL = ["cython-avx512", "cython-avx2", "cython-generic", "numba", "numpy"]
GARBAGE_WORD = np.iinfo(WORD_DTYPE).max


def _get(name):
    try:
        return B.get_backend(name)
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"backend {name} not available here: {exc}")


@pytest.fixture(scope="module", params=ALL)
def be(request):
    return _get(request.param)


@pytest.fixture(scope="module")
def ref():
    return B.get_backend("numpy")


# --------------------------------------------------------------------------
# Cases and oracles
# --------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 3]))
    pad = draw(st.sampled_from([0, 1]))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    assume(h + 2 * pad >= k and w + 2 * pad >= k)
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, k=k, pad=pad,
                cin=draw(st.sampled_from(CHANNELS)), cout=draw(st.sampled_from(CHANNELS)),
                stride=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2**32 - 1)))


class Case:
    """Random packed input (with its +1 border) and weights for one conv."""

    def __init__(self, n, h, w, k, pad, cin, cout, stride, seed):
        self.rng = np.random.default_rng(seed)
        self.cin, self.cout, self.k, self.stride = cin, cout, k, stride
        self.x = np.zeros((n, h + 2 * pad, w + 2 * pad, words_for(cin)), WORD_DTYPE)
        self.x[:, pad:pad + h, pad:pad + w] = pack_bits(self.rng.standard_normal((n, h, w, cin)))
        self.w = pack_bits(self.rng.standard_normal((cout, k, k, cin)))
        self.k_bits = k * k * cin
        self.n = n
        self.ho = (h + 2 * pad - k) // stride + 1
        self.wo = (w + 2 * pad - k) // stride + 1

    @property
    def out_shape(self):
        return (self.n, self.ho, self.wo, self.cout)

    @property
    def bits_shape(self):
        return (self.n, self.ho, self.wo, words_for(self.cout))

    def f32(self, *shape):
        return self.rng.standard_normal(shape).astype(np.float32)

    def oracle_acc(self):
        """sum of a*w over the window with a, w in {-1,+1}, as float64."""
        xf = unpack_bits(self.x, self.cin).astype(np.float64)   # zero words -> +1
        wf = unpack_bits(self.w, self.cin).astype(np.float64)
        s, acc = self.stride, 0.0
        for i in range(self.k):
            for j in range(self.k):
                patch = xf[:, i:i + s * (self.ho - 1) + 1:s, j:j + s * (self.wo - 1) + 1:s]
                acc = acc + np.einsum("nhwc,oc->nhwo", patch, wf[:, i, j, :])
        return acc


def _float_out(be, c, wp, mult, bias, residual=None, rprelu=None, next_thr=None,
               threads=1, scale=None):
    out = np.full(c.out_shape, np.nan, np.float32)
    bits = None if next_thr is None else np.full(c.bits_shape, GARBAGE_WORD, WORD_DTYPE)
    be.bconv_float(c.x, wp, c.k_bits, c.stride, mult, bias, residual, rprelu, out,
                   bits, next_thr, threads, scale=scale)
    return out, bits


def _bits_out(be, c, wp, thr, threads=1):
    out = np.full(c.bits_shape, GARBAGE_WORD, WORD_DTYPE)
    be.bconv_bits(c.x, wp, c.k_bits, c.stride, thr, out, threads)
    return out


def _fma_exact(a, b, c) -> np.float32:
    """float32 a*b + c rounded once to nearest-even, from exact rational arithmetic."""
    from fractions import Fraction
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact == 0:  # IEEE: -0 only for (-0) + (-0); an exact cancellation gives +0
        neg = (a == 0 or b == 0) and c == 0 and (np.signbit(a) != np.signbit(b)) and np.signbit(c)
        return np.float32(-0.0 if neg else 0.0)
    near = np.float32(float(exact))          # within one float32 ulp of the answer
    cands = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    cands = [v for v in cands if np.isfinite(v)]
    err = [abs(Fraction(float(v)) - exact) for v in cands]
    best = min(err)
    ties = [v for v, e in zip(cands, err) if e == best]
    return min(ties, key=lambda v: int(np.float32(v).view(np.int32)) & 1)  # even mantissa wins
