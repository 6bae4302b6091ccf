"""Print binary GMAC/s of bconv_float (and bconv_bits) per backend for one layer.

binary MACs = N * Ho * Wo * Cout * KH * KW * Cin.  Timings are the best of
``--repeat`` runs after one warm-up (which also triggers numba compilation).
Two rates are printed: wall-clock GMAC/s, and GMAC per CPU-second of this
process (time.process_time), which stays meaningful when another job
competes for the cores (the kernel is then descheduled, not slower).

    python tools/bench_kernels.py                      # 32x32x128 -> 128, 3x3, N=128
    python tools/bench_kernels.py --batch 32 --threads 2 --backends cython numba
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bnnlite.backends import available_backends, get_backend
from bnnlite.bitpack import WORD_DTYPE, pack_bits, words_for


def bench(be, args, rng):
    n, h, w, cin, cout, k, s = (args.batch, args.size, args.size, args.cin,
                                args.cout, args.kernel, args.stride)
    pad = k // 2
    x = np.zeros((n, h + 2 * pad, w + 2 * pad, words_for(cin)), WORD_DTYPE)
    x[:, pad:pad + h, pad:pad + w] = pack_bits(rng.standard_normal((n, h, w, cin)))
    wts = pack_bits(rng.standard_normal((cout, k, k, cin)))
    wp = be.prepare_weights(wts)
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    mult = np.full(cout, 0.01, np.float32)
    bias = np.zeros(cout, np.float32)
    nthr = np.zeros(cout, np.float32)
    ithr = np.zeros(cout, np.int32)
    out = np.empty((n, ho, wo, cout), np.float32)
    bits = np.empty((n, ho, wo, words_for(cout)), WORD_DTYPE)
    macs = n * ho * wo * cout * k * k * cin

    def timeit(fn):
        fn()  # warm-up / compile
        best = best_cpu = float("inf")
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        return best, max(best_cpu, 1e-9)

    t_f, c_f = timeit(lambda: be.bconv_float(x, wp, k * k * cin, s, mult, bias, None, None,
                                             out, bits, nthr, args.threads))
    t_b, c_b = timeit(lambda: be.bconv_bits(x, wp, k * k * cin, s, ithr, bits, args.threads))
    print(f"{be.name:>7s} ({be.variant:>7s}) threads={args.threads}: "
          f"bconv_float+pack {macs / t_f / 1e9:7.1f} GMAC/s ({macs / c_f / 1e9:7.1f} per "
          f"CPU-s)   bconv_bits {macs / t_b / 1e9:7.1f} GMAC/s "
          f"({macs / c_b / 1e9:7.1f} per CPU-s)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="input H = W (before padding)")
    p.add_argument("--cin", type=int, default=128)
    p.add_argument("--cout", type=int, default=128)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backends", nargs="*", default=None,
                   help="default: every available one except numpy")
    args = p.parse_args(argv)
    names = args.backends or [b for b in available_backends() if b not in ("numpy", "cython")]
    rng = np.random.default_rng(0)
    print(f"layer: N={args.batch} {args.size}x{args.size}x{args.cin} -> {args.cout}, "
          f"{args.kernel}x{args.kernel}, stride {args.stride}")
    for name in names:
        bench(get_backend(name), args, rng)


if __name__ == "__main__":
    main()
