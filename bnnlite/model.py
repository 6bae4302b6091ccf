"""``bnnlite.Model``: load a bundle, check inputs, run the graph.

Public names: Model, PRETRAINED.

    >>> import bnnlite
    >>> m = bnnlite.Model.pretrained()          # the shipped Bi-Real VGG-small
    >>> m.predict(images_uint8_nhwc)            # class indices
"""
from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

import numpy as np

from .backends import get_backend
from .bundle import read_bundle
from .graph import Graph

__all__ = ["Model", "PRETRAINED"]

#: Bundles shipped inside the package (bnnlite/data/).
PRETRAINED = {"birealnet": "birealnet.h5"}


class _SharedIter:
    """One iterator that several threads draw from, each item handed out once."""

    def __init__(self, items):
        self._it = iter(items)
        self._lock = threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            return next(self._it)


class _BlasThreads:
    """Context: these threadpoolctl BLAS controllers run ``n`` threads, then
    as many as before.  The same as ``ThreadpoolController.limit`` for one
    API, without its bookkeeping: that took about 30 us per call here, this
    about 8, on a batch-1 prediction of 1.3-2.5 ms (docs/benchmarks-history.md,
    "The BLAS thread limit around each prediction costs less")."""

    def __init__(self, controllers, n):
        self._controllers, self._n, self._before = controllers, n, None

    @staticmethod
    def _set(c, n):
        # threadpoolctl lets only the first Python thread that sets OpenBLAS's count set it
        # again (its pool is process-wide); from any other thread the limit was silently
        # ignored, and BLAS then summed in another order (a Model shared with a worker
        # thread gave other logits).  Calls of one Model hold its lock, so set it directly.
        getattr(c, "_real_set_num_threads", c.set_num_threads)(n)

    def __enter__(self):
        self._before = [c.num_threads for c in self._controllers]
        for c, before in zip(self._controllers, self._before):
            if before != self._n:
                self._set(c, self._n)
        return self

    def __exit__(self, *exc):
        for c, before in zip(self._controllers, self._before):
            if before != self._n:
                self._set(c, before)
        return False


class Model:
    """A bnnlite bundle ready to run.

    # Arguments
        bundle: a validated :class:`bnnlite.bundle.Bundle`.
        threads: kernel and BLAS threads (int >= 1).
        backend: "cython", "numba" or "numpy" (default: best available, or
            $BNNLITE_BACKEND).
        chunk: images run through the graph at a time (buffers are planned
            once per chunk size and reused).  Default (None): 4: the bit-plane
            conv (AVX2) fills its 256-pixel blocks from four 8x8 images, and
            the activations stay small (2 measured ~2x faster than 16 on Zen 5;
            on AVX2, 4 ran the model 1.23x faster than 2 (``tools/planes_ab.py``),
            and 8 within 3% of 4 when timed in alternation; docs/benchmarks-history.md,
            "Default chunk 4").

    With ``threads`` > 1, a batch of several chunks is shared out chunk by
    chunk: each of ``threads`` Python threads takes the next chunk from one
    queue and runs it whole through the graph, with buffers of its own and one
    kernel thread (the kernels release the GIL), so the threads never wait for
    each other between layers, and a thread on a core slowed by other load
    takes fewer chunks.  A
    batch of one chunk (batch 1, say) instead splits each layer's rows
    between ``threads`` OpenMP threads, as does every batch on a backend
    whose ``concurrent_calls`` is False.  Either way an image's result does
    not depend on the batch, the chunk or the thread count.

    Thread safety: a Model may be shared by several threads.  A lock around
    the planned buffers makes concurrent calls take turns (each gets exactly
    its serial result); an uncontended lock costs a microsecond or less of a
    1-2 ms batch-1 call, and batch-1 latency measured the same with and
    without it (docs/benchmarks.md, issue 16).  For calls that run at the
    same time, give each thread its own Model (the kernels release the GIL).
    """

    def __init__(self, bundle, *, threads: int = 1, backend: str | None = None, chunk: int | None = None,
                 source: str = "<memory>"):
        self.bundle = bundle
        self.header = bundle.header
        self.source = source
        self.backend = get_backend(backend)
        self.graph = Graph(bundle, self.backend)
        # The graph's buffers, the BLAS thread setting and the pool are shared by every
        # call: one call at a time (per-call buffers would re-plan, per-thread sets multiply memory).
        self._lock = threading.Lock()
        self._pool = None  # ThreadPoolExecutor for chunk-parallel batches, made on first use
        self.chunk = chunk
        self.threads = threads
        self._mean = np.asarray(self.header["normalization_mean"], np.float32)
        self._std = np.asarray(self.header["normalization_std"], np.float32)
        self._limiter = None
        # The normalised value of each byte, per channel, by the arithmetic below.
        values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], len(self._mean), axis=1)
        self._byte_table = np.empty(values.shape, np.float32)
        self._normalize_arith(values, self._byte_table)

    # ------------------------------------------------------------ construction
    @classmethod
    def load(cls, path, **kwargs) -> "Model":
        """Read and validate ``path`` (raises BundleError), then build the graph."""
        return cls(read_bundle(path), source=str(path), **kwargs)

    @classmethod
    def pretrained(cls, name: str = "birealnet", **kwargs) -> "Model":
        """The bundle shipped inside the package (``PRETRAINED`` lists them)."""
        if name not in PRETRAINED:
            raise ValueError(f"no pretrained model {name!r}; shipped: {', '.join(PRETRAINED)}")
        path = resources.files("bnnlite") / "data" / PRETRAINED[name]
        with resources.as_file(path) as p:
            return cls.load(Path(p), **kwargs)

    # ------------------------------------------------------------ properties
    @staticmethod
    def _positive_int(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        return int(v)

    @property
    def chunk(self) -> int:
        """Images per pass through the graph (see the class docstring)."""
        return 4 if self._chunk is None else self._chunk

    @chunk.setter
    def chunk(self, value):
        self._chunk = None if value is None else self._positive_int("chunk", value)

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, v):
        v = self._positive_int("threads", v)
        with self._lock:  # not while a call uses the pool
            self._threads = v
            if self._pool is not None:  # sized for the old count
                self._pool.shutdown(wait=False)
                self._pool = None

    @property
    def input_shape(self) -> tuple:
        return tuple(self.header["input_shape"])

    @property
    def class_names(self) -> list:
        return list(self.header["class_names"])

    @property
    def architecture(self) -> str:
        return self.header["architecture"]

    @property
    def metrics(self) -> dict:
        return dict(self.header["metrics"])

    @property
    def ops(self):
        return list(self.graph.ops)

    # ------------------------------------------------------------ inference
    def _prepare(self, images) -> tuple[np.ndarray, bool]:
        """Check shape/dtype/values; return (batch, was_single_image)."""
        x = np.asarray(images)
        hwc = self.input_shape
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != hwc:
            raise ValueError(f"images must have shape (N, {hwc[0]}, {hwc[1]}, {hwc[2]}) or "
                             f"{hwc} (NHWC), got {np.shape(images)}")
        if x.dtype == np.uint8:
            return x, single
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"images must be uint8 (0-255) or float (0-1), got dtype {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise ValueError("images contain NaN or infinity")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"float images must lie in [0, 1], got values in [{x.min()}, {x.max()}]; "
                             f"pass uint8 for 0-255 data")
        return x, single

    def _normalize_into(self, x, out):
        if x.dtype == np.uint8 and x.flags.c_contiguous:
            # The same floats from the table of the 256 byte values, in 0.3-0.6
            # of the time (a kernel that releases the GIL; docs/benchmarks-history.md,
            # "uint8 images are normalised by a table").
            self.backend.lookup_u8(x, self._byte_table, out)
        else:
            self._normalize_arith(x, out)

    def _normalize_arith(self, x, out):
        # Same float32 operation order as training: x/255, then (x - mean)/std.
        if x.dtype == np.uint8:
            np.divide(x, np.float32(255.0), out=out, dtype=np.float32)
        else:
            out[...] = x
        out -= self._mean
        out /= self._std

    def _blas_limit(self, threads):
        if self._limiter is None:
            from threadpoolctl import ThreadpoolController
            self._limiter = ThreadpoolController().select(user_api="blas").lib_controllers
        return _BlasThreads(self._limiter, threads)

    def _executor(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="bnnlite")
        return self._pool

    def _run_chunks(self, x, starts, step, out, threads, slot):
        """out[i:i+step] = logits of x[i:i+step] for each i that ``starts`` yields, on the
        buffers of ``slot``.  Parallel workers share one iterator of starts, so a worker
        on a core that runs slower (another tenant's load) simply takes fewer chunks."""
        for i in starts:
            part = x[i:i + step]
            buf = self.graph.input_buffer(len(part), slot)
            self._normalize_into(part, buf)
            out[i:i + len(part)] = self.graph.run(buf, threads, slot)

    def logits(self, images) -> np.ndarray:
        """Raw class scores, float32 (N, K) (or (K,) for one image)."""
        x, single = self._prepare(images)
        with self._lock:
            out = self._logits(x)
        return out[0] if single else out

    def _logits(self, x):
        out = np.empty((len(x), self.graph.shapes["logits"][0]), np.float32)
        step = min(self.chunk, self.graph.max_chunk or self.chunk)
        starts = range(0, len(x), step)
        workers = min(self._threads, len(starts)) if self.backend.concurrent_calls else 1
        if workers <= 1:  # one chunk: the kernels split each layer between the threads
            with self._blas_limit(self._threads):
                self._run_chunks(x, starts, step, out, self._threads, 0)
        else:             # whole chunks in parallel, one kernel thread (and one BLAS thread) each
            with self._blas_limit(1):
                pool = self._executor()
                shared = _SharedIter(starts)
                jobs = [pool.submit(self._run_chunks, x, shared, step, out, 1, k) for k in range(workers)]
                for job in jobs:
                    job.result()
        return out

    def predict_proba(self, images) -> np.ndarray:
        """Softmax of :meth:`logits`."""
        z = self.logits(images)
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def predict(self, images):
        """Class indices, int64 (N,) (or one int for one image)."""
        z = self.logits(images)
        return int(np.argmax(z)) if z.ndim == 1 else np.argmax(z, axis=1)

    # ------------------------------------------------------------ description
    @property
    def weight_bytes(self) -> int:
        return sum(op.nbytes for op in self.graph.ops)

    def summary(self) -> str:
        lines = [f"bnnlite model {self.architecture!r} from {self.source}",
                 f"  input {self.input_shape} NHWC uint8 or float in [0, 1]; {len(self.class_names)} classes",
                 f"  backend {self.backend.name}, threads {self.threads}, chunk {self.chunk}"]
        width = max(len(op.name) for op in self.graph.ops)
        for op in self.graph.ops:
            lines.append(f"  {op.name:<{width}}  {type(op).__name__:<10} {str(op.in_shape):>15} -> "
                         f"{str(op.out_shape):<15} {op.bits:>2}-bit {op.nbytes:>9,} B  {op.describe()}")
        lines.append(f"  weights: {self.weight_bytes:,} bytes")
        acc = {k: v for k, v in self.metrics.items() if "acc" in k}
        if acc:
            lines.append("  recorded at export: " + ", ".join(
                f"{k} {100 * v:.2f}%" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in acc.items()))
        return "\n".join(lines)

    def __repr__(self):
        acc = self.metrics.get("bnnlite_test_acc", self.metrics.get("pytorch_test_acc"))
        acc_s = f", test_acc={100 * acc:.2f}%" if isinstance(acc, (int, float)) else ""
        n_bin = sum(op.bits == 1 for op in self.graph.ops)
        return (f"Model({self.architecture!r}, input={self.input_shape}, classes={len(self.class_names)}, "
                f"ops={len(self.graph.ops)} ({n_bin} binary), weights={self.weight_bytes:,} B{acc_s}, "
                f"backend={self.backend.name!r}, threads={self.threads})")
