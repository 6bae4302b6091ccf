# Shared body of bnnlite._bconv_avx512, bnnlite._bconv_avx2 and
# bnnlite._bconv_generic: declarations and thin typed wrappers only.
#
# The three tiny .pyx files ``include`` this; setup.py compiles them with
# different -m flags.  What runs is chosen in C: the instruction set by
# kernels/bconv_select.h from the predefined macros, and a binary conv's
# path (bit planes / weight planes / popcount core) by its bnn_sel_choose
# (the path's name: select_path below).  Every argument is validated
# (dtype, shape, contiguity of the last axis, aliasing) by bnnlite.backends
# (api.Backend) before it reaches us, so nothing below checks anything.
# 4-D views are declared fully strided ([:, :, :, :]) because Cython's
# [..., ::1] would demand a C-contiguous buffer; the kernels use the outer
# strides and assume the last is 1.
#
# Public names (raw, unchecked -- call them through bnnlite.backends):
#   pack_raw, bconv_raw, fconv_raw, bmaxpool2_raw, maxpool2_raw, lookup_u8_raw,
#   select_path, planes_block_pixels, wplanes_unit_pixels,
#   planes_workspace_bytes, wplanes_workspace_bytes,
#   HAVE_AVX512, HAVE_AVX2, HAVE_PLANES, PATH_CORE, PATH_PLANES, PATH_WPLANES,
#   PLANES_PIXELS, PLANES_HI, PLANES_SETS, PLANES_MIN_PIXELS, WORD_BITS_C,
#   LANES, CO_BLOCK.

from cython.parallel cimport prange
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t
cimport openmp

from _bitpack cimport word_t, WORD_BITS


cdef extern from "bconv_select.h" nogil:
    # bnn_common.h
    ctypedef word_t bnn_word_t
    int BNN_LANES
    int BNN_CO_BLOCK
    int BNN_HAVE_AVX512
    int BNN_HAVE_AVX2

    ctypedef struct bnn_conv_params:
        int kh, kw, cw
        int cout, stride, wo
        Py_ssize_t sxh, sxw
        const bnn_word_t *w
        int64_t k_bits
        const float *scale
        const float *mult
        const float *bias
        int cres
        const float *gamma
        const float *beta
        const float *zeta
        const float *next_thr
        const int32_t *thr
    ctypedef struct bnn_io:
        const bnn_word_t *x
        Py_ssize_t sxn
        const float *res
        Py_ssize_t srn, srh, srw
        float *out
        Py_ssize_t son, soh, sow
        bnn_word_t *bits
        Py_ssize_t sbn, sbh, sbw
        int rows
        int pool, wpool

    # planes_avx2.h, wplanes_avx2.h: the prepared data of the bit-plane paths
    int BNN_PL_PIX
    int BNN_PL_GROUP
    int BNN_PL_SET
    int BNN_PL_HI_MIN
    int BNN_PL_HI_MAX
    ctypedef struct bnn_pl_lists:
        const uint16_t *idx
        const int32_t *off
        const int32_t *w1
        const uint8_t *ones
        int nplanes
        int hi
    ctypedef struct bnn_wp_planes:
        const void *w
        const int16_t *a
        int nplanes
        int groups
        int hi

    # bconv_select.h: the path of a call and its work items
    int BNN_SEL_HAVE_PLANES
    int BNN_SEL_PLANES_MIN_PIXELS
    ctypedef enum bnn_sel_path:
        BNN_SEL_CORE, BNN_SEL_PLANES, BNN_SEL_WPLANES
    ctypedef struct bnn_sel_job:
        bnn_sel_path path
        Py_ssize_t items
        size_t ws_bytes
    Py_ssize_t bnn_sel_block_pixels(Py_ssize_t n, Py_ssize_t ho, Py_ssize_t wo, int pool)
    int bnn_sel_wp_unit_pixels(Py_ssize_t wo, int pool)
    bnn_sel_path bnn_sel_choose(int have_planes, int have_wplanes, Py_ssize_t n,
                                Py_ssize_t ho, Py_ssize_t wo, int pool, int kh, int kw, int cw)
    size_t bnn_sel_ws_bytes(bnn_sel_path path, int nplanes, int cout)
    Py_ssize_t bnn_sel_row_grain(Py_ssize_t rows, int threads)
    void bnn_sel_job_init(bnn_sel_job *job, const bnn_conv_params *prm, const bnn_io *io,
                          const bnn_pl_lists *pl, const bnn_wp_planes *wp, Py_ssize_t n,
                          Py_ssize_t ho)
    Py_ssize_t bnn_sel_grain(const bnn_sel_job *job, int threads)
    void bnn_sel_run(const bnn_sel_job *job, Py_ssize_t b, void *ws)


cdef extern from "fconv.h" nogil:
    ctypedef struct bnn_fconv_params:
        int kh, kw, cin, cout, stride, wo
        Py_ssize_t sxh, sxw
        const float *w
        const float *mult
        const float *bias
        int relu
        const float *thr
    void bnn_fconv_row(const bnn_fconv_params *fp, const float *xrow,
                       float *out_row, Py_ssize_t s_out_w,
                       bnn_word_t *bits_row, Py_ssize_t s_bits_w)
    void bnn_fconv_fma_rows(float *y, Py_ssize_t sy, Py_ssize_t nrows, int c,
                            const float *mult, const float *bias, int relu)


cdef extern from "pack.h" nogil:
    void bnn_pack_row(const float *x, Py_ssize_t sxw, const float *thr, int c,
                      int w, bnn_word_t *out, Py_ssize_t sow)


cdef inline float _fmax_np(float a, float b) noexcept nogil:
    # np.maximum semantics: NaN propagates, ties (0.0 vs -0.0) give b.
    return a if (a > b or a != a) else b


cdef inline Py_ssize_t _chunk(Py_ssize_t rows, int threads) noexcept nogil:
    return bnn_sel_row_grain(rows, threads)


HAVE_AVX512 = bool(BNN_HAVE_AVX512)
HAVE_AVX2 = bool(BNN_HAVE_AVX2)
HAVE_PLANES = bool(BNN_SEL_HAVE_PLANES)
#: The paths of a binary conv (kernels/bconv_select.h, bnn_sel_path).
PATH_CORE, PATH_PLANES, PATH_WPLANES = BNN_SEL_CORE, BNN_SEL_PLANES, BNN_SEL_WPLANES
PLANES_PIXELS = BNN_PL_PIX
PLANES_HI = (BNN_PL_HI_MIN, BNN_PL_HI_MAX)
#: Channels per group (one output word) and per set summed together.
PLANES_SETS = (BNN_PL_GROUP, BNN_PL_SET)
PLANES_MIN_PIXELS = BNN_SEL_PLANES_MIN_PIXELS
WORD_BITS_C = WORD_BITS
LANES = BNN_LANES
CO_BLOCK = BNN_CO_BLOCK


def select_path(Py_ssize_t n, Py_ssize_t ho, Py_ssize_t wo, bint pool, bint have_planes,
                bint have_wplanes, int kh, int kw, int cw):
    """The path (PATH_*) a binary conv of n x ho x wo conv pixels takes, given
    whether its plane lists / weight planes were made, its kernel kh x kw and
    its words per pixel cw (bnn_sel_choose: 1x1 convs of few words may take
    the popcount core's pointwise run where the planes would apply)."""
    return <int>bnn_sel_choose(have_planes, have_wplanes, n, ho, wo, pool, kh, kw, cw)


def planes_workspace_bytes(int nplanes):
    """Scratch bytes per thread of the bit-plane conv (a multiple of 64)."""
    return bnn_sel_ws_bytes(BNN_SEL_PLANES, nplanes, 0)


def planes_block_pixels(Py_ssize_t n, Py_ssize_t ho, Py_ssize_t wo, bint pool):
    """Conv pixels in the first block of the bit-plane conv of an output of
    n x ho x wo conv pixels (0: it does not apply)."""
    return bnn_sel_block_pixels(n, ho, wo, pool)


def wplanes_workspace_bytes(int nplanes, int cout):
    """Scratch bytes per thread of the small-output path (a multiple of 64)."""
    return bnn_sel_ws_bytes(BNN_SEL_WPLANES, nplanes, cout)


def wplanes_unit_pixels(Py_ssize_t wo, bint pool):
    """Conv pixels per unit (output row, or pooled pair of rows) on the
    small-output path, or 0 when a unit is too wide for it."""
    return bnn_sel_wp_unit_pixels(wo, pool)


def pack_raw(const float[:, :, :, :] x, const float[::1] thr,
             word_t[:, :, :, :] out, int threads):
    """out[n,h,w] bit c = x[n,h,w,c] < thr[c]; see Backend.pack."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef int C = <int>x.shape[3]
    if N * H * W == 0:
        return
    cdef const float *xb = &x[0, 0, 0, 0]
    cdef word_t *ob = &out[0, 0, 0, 0]
    cdef const float *tb = &thr[0]
    cdef Py_ssize_t sxn = x.strides[0] // sizeof(float), sxh = x.strides[1] // sizeof(float)
    cdef Py_ssize_t sxw = x.strides[2] // sizeof(float)
    cdef Py_ssize_t son = out.strides[0] // sizeof(word_t), soh = out.strides[1] // sizeof(word_t)
    cdef Py_ssize_t sow = out.strides[2] // sizeof(word_t)
    cdef Py_ssize_t r, n, h
    cdef Py_ssize_t chunk = _chunk(N * H, threads)
    for r in prange(N * H, nogil=True, schedule="dynamic", chunksize=chunk,
                    num_threads=threads):
        n = r // H
        h = r % H
        bnn_pack_row(xb + n * sxn + h * sxh, sxw, tb, C, <int>W,
                     <bnn_word_t *>(ob + n * son + h * soh), sow)


def bconv_raw(const word_t[:, :, :, :] x, const word_t[::1] wdata,
              int kh, int kw, int cw, int cout, long long k_bits, int stride,
              scale, mult, bias, residual, gamma, beta, zeta,
              out, out_bits, next_thr, thr, int threads, bint pool=False,
              planes=None, workspace=None, wplanes=None):
    """Valid binary conv, acc = K - 2*popcount(x XOR w); see Backend.bconv_float
    (scale/mult/bias given; pool: fused 2x2/2 max-pool, out/out_bits pooled) and
    Backend.bconv_bits (thr given).  planes, workspace, wplanes: a CallPath
    (bnnlite/backends/planes.py, call_path: the data of the path select_path
    names).  planes: None, or the plane lists of the bit-plane conv (a
    PlaneLists: idx, off, w1, ones, nplanes, hi); wplanes: None, or the
    weight planes of its small-output path (a WeightPlanes: w, a, nplanes,
    hi); workspace: a uint8 array of threads * the chosen path's workspace
    bytes, 64-byte aligned.  The path itself is bnn_sel_choose's
    (kernels/bconv_select.h)."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t Ho = (x.shape[1] - kh) // stride + 1
    cdef Py_ssize_t Wo = (x.shape[2] - kw) // stride + 1
    if N * Ho * Wo == 0:
        return
    cdef bnn_conv_params prm
    prm.kh = kh
    prm.kw = kw
    prm.cw = cw
    prm.cout = cout
    prm.stride = stride
    prm.wo = <int>Wo
    prm.sxh = x.strides[1] // sizeof(word_t)
    prm.sxw = x.strides[2] // sizeof(word_t)
    prm.w = <const bnn_word_t *>&wdata[0]
    prm.k_bits = k_bits
    prm.scale = NULL
    prm.mult = NULL
    prm.bias = NULL
    prm.cres = 1
    prm.gamma = NULL
    prm.beta = NULL
    prm.zeta = NULL
    prm.next_thr = NULL
    prm.thr = NULL
    cdef bnn_io io
    io.x = <const bnn_word_t *>&x[0, 0, 0, 0]
    io.sxn = x.strides[0] // sizeof(word_t)
    io.res = NULL
    io.srn = io.srh = io.srw = 0
    io.out = NULL
    io.son = io.soh = io.sow = 0
    io.bits = NULL
    io.sbn = io.sbh = io.sbw = 0
    io.pool = 1 if pool else 0
    io.wpool = <int>(Wo // 2)
    io.rows = <int>(Ho // 2 if pool else Ho)

    # Typed views of the optional arrays; unused ones stay empty / NULL.
    cdef const float[::1] scale_v, mult_v, bias_v, gamma_v, beta_v, zeta_v, nthr_v
    cdef const int32_t[::1] thr_v
    cdef const float[:, :, :, :] res_v
    cdef float[:, :, :, :] out_v
    cdef word_t[:, :, :, :] bits_v
    if thr is not None:
        thr_v = thr
        prm.thr = &thr_v[0]
    else:
        scale_v = scale
        mult_v = mult
        bias_v = bias
        prm.scale = &scale_v[0]
        prm.mult = &mult_v[0]
        prm.bias = &bias_v[0]
        if gamma is not None:
            gamma_v = gamma
            beta_v = beta
            zeta_v = zeta
            prm.gamma = &gamma_v[0]
            prm.beta = &beta_v[0]
            prm.zeta = &zeta_v[0]
        if residual is not None:
            res_v = residual
            prm.cres = <int>res_v.shape[3]
            io.res = &res_v[0, 0, 0, 0]
            io.srn = res_v.strides[0] // sizeof(float)
            io.srh = res_v.strides[1] // sizeof(float)
            io.srw = res_v.strides[2] // sizeof(float)
        if out is not None:
            out_v = out
            io.out = &out_v[0, 0, 0, 0]
            io.son = out_v.strides[0] // sizeof(float)
            io.soh = out_v.strides[1] // sizeof(float)
            io.sow = out_v.strides[2] // sizeof(float)
        if next_thr is not None:
            nthr_v = next_thr
            prm.next_thr = &nthr_v[0]
    if out_bits is not None:
        bits_v = out_bits
        io.bits = <bnn_word_t *>&bits_v[0, 0, 0, 0]
        io.sbn = bits_v.strides[0] // sizeof(word_t)
        io.sbh = bits_v.strides[1] // sizeof(word_t)
        io.sbw = bits_v.strides[2] // sizeof(word_t)

    # The prepared data of the bit-plane paths, as C structs.
    cdef bnn_pl_lists pl
    cdef bnn_wp_planes wpl
    cdef const bnn_pl_lists *plp = NULL
    cdef const bnn_wp_planes *wpp = NULL
    cdef const uint16_t[::1] pidx_v
    cdef const int32_t[::1] poff_v, pw1_v
    cdef const uint8_t[::1] pones_v
    cdef const uint8_t[:, :, ::1] wpw_v
    cdef const int16_t[::1] wpa_v
    if planes is not None:
        pidx_v, poff_v, pw1_v, pones_v = planes.idx, planes.off, planes.w1, planes.ones
        pl.idx = &pidx_v[0]
        pl.off = &poff_v[0]
        pl.w1 = &pw1_v[0]
        pl.ones = &pones_v[0]
        pl.nplanes = planes.nplanes
        pl.hi = planes.hi
        plp = &pl
    if wplanes is not None:
        wpw_v, wpa_v = wplanes.w, wplanes.a
        wpl.w = &wpw_v[0, 0, 0]
        wpl.a = &wpa_v[0]
        wpl.nplanes = wplanes.nplanes
        wpl.groups = <int>wpw_v.shape[0]
        wpl.hi = wplanes.hi
        wpp = &wpl
    cdef uint8_t[::1] ws_v
    cdef char *wsb = NULL
    if workspace is not None:
        ws_v = workspace
        wsb = <char *>&ws_v[0]

    cdef bnn_sel_job job
    bnn_sel_job_init(&job, &prm, &io, plp, wpp, N, Ho)
    cdef Py_ssize_t b, grain = bnn_sel_grain(&job, threads)
    cdef size_t wsz = job.ws_bytes
    for b in prange(job.items, nogil=True, schedule="dynamic", chunksize=grain,
                    num_threads=threads):
        bnn_sel_run(&job, b, wsb + openmp.omp_get_thread_num() * wsz)


def fconv_raw(const float[:, :, :, :] x, const float[::1] w, int kh, int kw, int cin,
              int cout, int stride, mult, const float[::1] bias, bint relu, out, out_bits,
              next_thr, int threads):
    """Valid float conv of a zero-padded input (small Cin) + fused pack; see
    backend.conv_float."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t Ho = (x.shape[1] - kh) // stride + 1
    cdef Py_ssize_t Wo = (x.shape[2] - kw) // stride + 1
    if N * Ho * Wo == 0:
        return
    cdef bnn_fconv_params fp
    fp.kh = kh
    fp.kw = kw
    fp.cin = cin
    fp.cout = cout
    fp.stride = stride
    fp.wo = <int>Wo
    fp.sxh = x.strides[1] // sizeof(float)
    fp.sxw = x.strides[2] // sizeof(float)
    fp.w = &w[0]
    fp.bias = &bias[0]
    fp.mult = NULL
    cdef const float[::1] mult_v
    if mult is not None:
        mult_v = mult
        fp.mult = &mult_v[0]
    fp.relu = 1 if relu else 0
    fp.thr = NULL
    cdef const float[::1] thr_v
    cdef float[:, :, :, :] out_v
    cdef word_t[:, :, :, :] bits_v
    cdef float *out_b = NULL
    cdef word_t *bits_b = NULL
    cdef Py_ssize_t son = 0, soh = 0, sow = 0, sbn = 0, sbh = 0, sbw = 0
    if out is not None:
        out_v = out
        out_b = &out_v[0, 0, 0, 0]
        son = out_v.strides[0] // sizeof(float)
        soh = out_v.strides[1] // sizeof(float)
        sow = out_v.strides[2] // sizeof(float)
    if out_bits is not None:
        thr_v = next_thr
        fp.thr = &thr_v[0]
        bits_v = out_bits
        bits_b = &bits_v[0, 0, 0, 0]
        sbn = bits_v.strides[0] // sizeof(word_t)
        sbh = bits_v.strides[1] // sizeof(word_t)
        sbw = bits_v.strides[2] // sizeof(word_t)
    cdef const float *xb = &x[0, 0, 0, 0]
    cdef Py_ssize_t sxn = x.strides[0] // sizeof(float)
    cdef Py_ssize_t r, n, ho
    cdef Py_ssize_t chunk = _chunk(N * Ho, threads)
    for r in prange(N * Ho, nogil=True, schedule="dynamic", chunksize=chunk,
                    num_threads=threads):
        n = r // Ho
        ho = r % Ho
        bnn_fconv_row(&fp, xb + n * sxn + ho * stride * fp.sxh,
                      (out_b + n * son + ho * soh) if out_b != NULL else NULL, sow,
                      (<bnn_word_t *>(bits_b + n * sbn + ho * sbh)) if bits_b != NULL else NULL,
                      sbw)


def fma_rows_raw(float[:, :] y, const float[::1] mult, const float[::1] bias, bint relu,
                 int threads):
    """y[r, c] = fma(y[r, c], mult[c], bias[c]), then max(y, 0) when relu, in
    place (bnn_fconv_fma_rows); see Backend.fma_epilogue."""
    cdef Py_ssize_t R = y.shape[0], sy = y.strides[0] // sizeof(float), b
    cdef int C = <int>y.shape[1]
    if R * C == 0:
        return
    cdef float *yb = &y[0, 0]
    cdef const float *mb = &mult[0]
    cdef const float *bb = &bias[0]
    cdef int rl = 1 if relu else 0
    # blocks of rows (as many as _chunk's work items would be), one call each
    cdef Py_ssize_t rows = _chunk(R, threads)
    for b in prange((R + rows - 1) // rows, nogil=True, schedule="dynamic",
                    num_threads=threads):
        bnn_fconv_fma_rows(yb + b * rows * sy, sy, min(rows, R - b * rows), C, mb, bb, rl)


def bmaxpool2_raw(const word_t[:, :, :, :] x, word_t[:, :, :, :] out, int threads):
    """out[n,i,j,k] = AND of x[n,2i+a,2j+b,k] for a,b in {0,1} (bit 1 = -1)."""
    cdef Py_ssize_t N = out.shape[0], Ho = out.shape[1], Wo = out.shape[2]
    cdef Py_ssize_t C = out.shape[3]
    cdef Py_ssize_t sw = x.strides[2] // sizeof(word_t)
    cdef Py_ssize_t r, n, i, j, k
    cdef const word_t *a
    cdef const word_t *b
    cdef word_t *o
    cdef Py_ssize_t chunk = _chunk(N * Ho, threads)
    for r in prange(N * Ho, nogil=True, schedule="dynamic", chunksize=chunk,
                    num_threads=threads):
        n = r // Ho
        i = r % Ho
        for j in range(Wo):
            a = &x[n, 2 * i, 2 * j, 0]
            b = &x[n, 2 * i + 1, 2 * j, 0]
            o = &out[n, i, j, 0]
            for k in range(C):
                # -1 (bit 1) survives the max only if all four are -1.
                o[k] = a[k] & a[k + sw] & b[k] & b[k + sw]


def lookup_u8_raw(const uint8_t[:, ::1] x, const float[:, ::1] table, float[:, ::1] out):
    """out[i, c] = table[x[i, c], c]: a table of the 256 byte values per
    channel (the input normalisation); see backend.lookup_u8."""
    cdef Py_ssize_t P = x.shape[0], C = x.shape[1], i, c
    with nogil:
        for i in range(P):
            for c in range(C):
                out[i, c] = table[x[i, c], c]


def maxpool2_raw(const float[:, :, :, :] x, float[:, :, :, :] out, int threads):
    """out[n,i,j,c] = max of x[n,2i+a,2j+b,c] for a,b in {0,1}, float32."""
    cdef Py_ssize_t N = out.shape[0], Ho = out.shape[1], Wo = out.shape[2]
    cdef Py_ssize_t C = out.shape[3]
    cdef Py_ssize_t sw = x.strides[2] // sizeof(float)
    cdef Py_ssize_t r, n, i, j, k
    cdef const float *a
    cdef const float *b
    cdef float *o
    cdef float m0, m1
    cdef Py_ssize_t chunk = _chunk(N * Ho, threads)
    for r in prange(N * Ho, nogil=True, schedule="dynamic", chunksize=chunk,
                    num_threads=threads):
        n = r // Ho
        i = r % Ho
        for j in range(Wo):
            a = &x[n, 2 * i, 2 * j, 0]
            b = &x[n, 2 * i + 1, 2 * j, 0]
            o = &out[n, i, j, 0]
            for k in range(C):
                # Same pairing as reference.maxpool2: max(max(a0,a1), max(b0,b1)).
                m0 = _fmax_np(a[k], a[k + sw])
                m1 = _fmax_np(b[k], b[k + sw])
                o[k] = _fmax_np(m0, m1)
