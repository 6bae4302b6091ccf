/*
 * fconv.h -- the real-valued direct conv of the first layer (few input
 * channels: Cin = 3), with the following sign_pack fused.  Names:
 * bnn_fconv_.  Called by kernels/_bconv.pxi (fconv_raw) through
 * bnn_fconv_row, which picks this build's tile: AVX2 (bnn_fconv_row_avx2),
 * AVX-512 (bnn_fconv_tile_avx512) or portable (bnn_fconv_tile_port; also
 * cloned for popcnt / x86-64-v3 CPUs, BNN_CLONES).  Every one rounds as
 * one FMA per tap in (kh, kw, cin) order, then fma(acc, mult, bias):
 * PyTorch's oneDNN order on an FMA CPU (docs/conventions.md).
 * bnn_fconv_fma_rows is that epilogue alone, for the real-valued convs
 * that run as im2col + BLAS (fma_rows_raw).
 */
#ifndef BNNLITE_FCONV_H
#define BNNLITE_FCONV_H

#include "bnn_common.h"

typedef struct {
    int kh, kw, cin, cout, stride, wo;
    ptrdiff_t sxh, sxw;      /* input strides in floats (H and W axes) */
    const float *w;          /* (kh, kw, cin, cout), C-contiguous */
    const float *mult;       /* (cout,) folded BN multiplier, or NULL */
    const float *bias;       /* (cout,) */
    int relu;                /* y = y > 0 || y != y ? y : 0 (np.maximum(y, 0)) */
    const float *thr;        /* fused pack threshold or NULL */
} bnn_fconv_params;

#define BNN_FCONV_P 4              /* pixels per register tile */
#define BNN_FCONV_CO 64            /* output channels per tile (one output word) */

#if BNN_AVX2
/* Store the low nb (1, 2, 4 or 8) bytes of m at dst (any alignment). */
BNN_INLINE void bnn_fconv_store_bytes(unsigned char *dst, uint64_t m, const int nb)
{
    if (nb == 1) { const uint8_t u = (uint8_t)m; memcpy(dst, &u, 1); }
    else if (nb == 2) { const uint16_t u = (uint16_t)m; memcpy(dst, &u, 2); }
    else if (nb == 4) { const uint32_t u = (uint32_t)m; memcpy(dst, &u, 4); }
    else memcpy(dst, &m, 8);
}

/* AVX2 tiling of the direct float conv.  A register tile is P pixels x V
 * vectors of 8 output channels (P*V ymm accumulators, at most 12, plus V
 * weight vectors and one broadcast in the 16 ymm registers):
 *   acc[p][v] lane l = 0; for (i, j, c) in row-major order:
 *       acc = fma(x0[p*pstep + i*sxh + j*sxw + c], w[i, j, c, co + 8v + l], acc)
 * then the epilogue runs on the registers (no round trip through memory):
 *   y = fma(acc, mult, bias) (acc + bias without mult), relu, store,
 *   bits = y < thr (the 8V bits of the tile's channels, written as V bytes
 *   of the pixel's output word; 8V divides 64 and co is a multiple of 8V).
 * FMA latency 4 x 2 pipes: >= 8 independent accumulators keep both pipes
 * busy, so the main tile is 6 x 2 (12 chains) and the row-end tiles trade
 * pixels for channels (2 x 4, 1 x 8).  When neighbouring pixels are
 * adjacent in memory (sxw == cin, the normal case) the kw*cin taps of
 * kernel row i are one contiguous run of x and of w, one loop of kwc steps
 * (9 for 3x3 RGB, then fully unrolled: kwc9 is the constant 9 or 0).
 * full: all 8V channels exist; else lanes >= nco are masked (weights 0,
 * nothing stored, bit 0). */
#define BNN_FCONV_P_AVX2 6         /* pixels of the main AVX2 tile */

BNN_INLINE void bnn_fconv_tile_avx2(const float *x0, ptrdiff_t pstep, ptrdiff_t sxh,
                                    ptrdiff_t sxw, int kh, int kw, int cin, const int kwc9,
                                    const float *wt, ptrdiff_t cout, const int P, const int V,
                                    const int full, int nco, const float *mult,
                                    const float *bias, int relu, const float *thr,
                                    float *out, ptrdiff_t s_out_w, unsigned char *bits,
                                    ptrdiff_t s_bits)
{
    __m256 acc[BNN_FCONV_P_AVX2][8];
    __m256i lm[8];
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#pragma GCC unroll 8
    for (int v = 0; v < V; v++)
        lm[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(nco - 8 * v), lane);
#pragma GCC unroll 8
    for (int p = 0; p < P; p++)
#pragma GCC unroll 8
        for (int v = 0; v < V; v++)
            acc[p][v] = _mm256_setzero_ps();
    /* One tap: x broadcast per pixel, V weight vectors, P*V FMAs. */
#define BNN_FCONV_TAP(xo, wp)                                                         \
    do {                                                                              \
        __m256 wv[8];                                                                 \
        _Pragma("GCC unroll 8") for (int v = 0; v < V; v++)                           \
            wv[v] = full ? _mm256_loadu_ps((wp) + 8 * v)                              \
                         : _mm256_maskload_ps((wp) + 8 * v, lm[v]);                   \
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++) {                         \
            const __m256 xb = _mm256_broadcast_ss(x0 + p * pstep + (xo));             \
            _Pragma("GCC unroll 8") for (int v = 0; v < V; v++)                       \
                acc[p][v] = _mm256_fmadd_ps(xb, wv[v], acc[p][v]);                    \
        }                                                                             \
    } while (0)
    if (sxw == cin) {
        const int kwc = kwc9 ? kwc9 : kw * cin;
        for (int i = 0; i < kh; i++) {
            const ptrdiff_t xi = i * sxh;
            const float *wi = wt + (ptrdiff_t)i * kwc * cout;
#pragma GCC unroll 9
            for (int t = 0; t < kwc; t++)
                BNN_FCONV_TAP(xi + t, wi + t * cout);
        }
    } else {
        for (int i = 0; i < kh; i++)
            for (int j = 0; j < kw; j++)
                for (int c = 0; c < cin; c++)
                    BNN_FCONV_TAP(i * sxh + j * sxw + c, wt + ((ptrdiff_t)(i * kw + j) * cin + c) * cout);
    }
#undef BNN_FCONV_TAP
    /* Epilogue in passes, so each optional step is one branch per tile. */
    if (mult) {
#pragma GCC unroll 8
        for (int v = 0; v < V; v++) {
            const __m256 m = full ? _mm256_loadu_ps(mult + 8 * v) : _mm256_maskload_ps(mult + 8 * v, lm[v]);
            const __m256 b = full ? _mm256_loadu_ps(bias + 8 * v) : _mm256_maskload_ps(bias + 8 * v, lm[v]);
#pragma GCC unroll 8
            for (int p = 0; p < P; p++)
                acc[p][v] = _mm256_fmadd_ps(acc[p][v], m, b);
        }
    } else {
#pragma GCC unroll 8
        for (int v = 0; v < V; v++) {
            const __m256 b = full ? _mm256_loadu_ps(bias + 8 * v) : _mm256_maskload_ps(bias + 8 * v, lm[v]);
#pragma GCC unroll 8
            for (int p = 0; p < P; p++)
                acc[p][v] = _mm256_add_ps(acc[p][v], b);
        }
    }
    if (relu) {
        const __m256 z = _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int p = 0; p < P; p++)
#pragma GCC unroll 8
            for (int v = 0; v < V; v++) {
                const __m256 y = acc[p][v];
                const __m256 keep = _mm256_or_ps(_mm256_cmp_ps(y, z, _CMP_GT_OQ),
                                                 _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
                acc[p][v] = _mm256_blendv_ps(z, y, keep);
            }
    }
    if (out)
#pragma GCC unroll 8
        for (int p = 0; p < P; p++)
#pragma GCC unroll 8
            for (int v = 0; v < V; v++) {
                /* masked stores only for a partial tile (vmaskmovps stores are slow) */
                if (full)
                    _mm256_storeu_ps(out + p * s_out_w + 8 * v, acc[p][v]);
                else
                    _mm256_maskstore_ps(out + p * s_out_w + 8 * v, lm[v], acc[p][v]);
            }
    if (thr) {
        __m256 t[8];
#pragma GCC unroll 8
        for (int v = 0; v < V; v++)
            t[v] = full ? _mm256_loadu_ps(thr + 8 * v) : _mm256_maskload_ps(thr + 8 * v, lm[v]);
#pragma GCC unroll 8
        for (int p = 0; p < P; p++) {
            uint64_t m = 0;
#pragma GCC unroll 8
            for (int v = 0; v < V; v++) {
                __m256 lt = _mm256_cmp_ps(acc[p][v], t[v], _CMP_LT_OQ);
                if (!full)
                    lt = _mm256_and_ps(lt, _mm256_castsi256_ps(lm[v]));
                m |= (uint64_t)(unsigned)_mm256_movemask_ps(lt) << (8 * v);
            }
            /* little-endian: bits 8v.. of the word are its byte v (x86 only) */
            bnn_fconv_store_bytes(bits + p * s_bits, m, V);
        }
    }
}

/* Prefetch the output lines of nc floats from out, for n pixels s_out_w
 * apart: the lines the next tile will store to.  When the output is not in
 * L2 (it usually is not: the rest of the network ran in between), the
 * stores' misses otherwise stall the tiles instead of overlapping them. */
BNN_INLINE void bnn_fconv_prefetch_avx2(const float *out, ptrdiff_t s_out_w, int n, int nc)
{
    for (int q = 0; q < n; q++)
        for (int c = 0; c < nc; c += 16)
            _mm_prefetch((const char *)(out + q * s_out_w + c), _MM_HINT_T0);
}

/* The channel slices of P pixels starting at x0 / out / bits (the byte
 * pointers address the pixel's first output word). */
BNN_INLINE void bnn_fconv_pixels_avx2(const bnn_fconv_params *fp, const float *x0,
                                      ptrdiff_t pstep, const int kwc9, const int P,
                                      const int V, float *out, ptrdiff_t s_out_w,
                                      unsigned char *bits, ptrdiff_t s_bits, int npf)
{
    const int cout = fp->cout, kh = fp->kh, kw = fp->kw, cin = fp->cin, relu = fp->relu;
    const ptrdiff_t sxh = fp->sxh, sxw = fp->sxw;
    const float *const w = fp->w, *const mult = fp->mult, *const bias = fp->bias,
                *const thr = fp->thr;
    int co = 0;
    for (; co + 8 * V <= cout; co += 8 * V) {
        if (out)
            bnn_fconv_prefetch_avx2(out + P * s_out_w + co, s_out_w, npf, 8 * V);
        bnn_fconv_tile_avx2(x0, pstep, sxh, sxw, kh, kw, cin, kwc9, w + co, cout, P, V, 1,
                            8 * V, mult ? mult + co : NULL, bias + co, relu,
                            bits ? thr + co : NULL, out ? out + co : NULL, s_out_w,
                            bits ? bits + co / 8 : NULL, s_bits);
    }
    if (co < cout)
        bnn_fconv_tile_avx2(x0, pstep, sxh, sxw, kh, kw, cin, kwc9, w + co, cout, P, V, 0,
                            cout - co, mult ? mult + co : NULL, bias + co, relu,
                            bits ? thr + co : NULL, out ? out + co : NULL, s_out_w,
                            bits ? bits + co / 8 : NULL, s_bits);
}

/* bnn_fconv_row for AVX2: tiles of BNN_FCONV_P_AVX2 pixels, then the rest of
 * the row with a smaller tile of more channels. */
static void bnn_fconv_row_avx2(const bnn_fconv_params *fp, const float *xrow,
                               float *out_row, ptrdiff_t s_out_w,
                               bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
    const int wo = fp->wo, cout = fp->cout;
    const int kwc9 = (fp->kw * fp->cin == 9) ? 9 : 0;
    const ptrdiff_t pstep = (ptrdiff_t)fp->stride * fp->sxw;
    unsigned char *bits = (unsigned char *)bits_row;
    const ptrdiff_t s_bits = s_bits_w * (ptrdiff_t)sizeof(bnn_word_t);
    if (!fp->thr)   /* (the caller passes thr with bits_row) */
        bits = NULL;
    /* The tiles write only their channels' bytes: zero the last word of a
     * partial one (its bits past cout stay 0). */
    if (bits && cout % BNN_WORD_BITS)
        for (int q = 0; q < wo; q++)
            bits_row[q * s_bits_w + cout / BNN_WORD_BITS] = 0;
    /* main tiles, then the rest of the row (>= 8 accumulators where possible) */
#define BNN_FCONV_PX(K, P, V)                                                          \
    bnn_fconv_pixels_avx2(fp, xrow + wo0 * pstep, pstep, K, P, V,                     \
                          out_row ? out_row + wo0 * s_out_w : NULL, s_out_w,          \
                          bits ? bits + wo0 * s_bits : NULL, s_bits,               \
                          bnn_min(BNN_FCONV_P_AVX2, wo - wo0 - (P)))
#define BNN_FCONV_ROW(K)                                                               \
    do {                                                                               \
        int wo0 = 0;                                                                   \
        for (; wo0 + BNN_FCONV_P_AVX2 <= wo; wo0 += BNN_FCONV_P_AVX2)                            \
            BNN_FCONV_PX(K, BNN_FCONV_P_AVX2, 2);                                           \
        switch (wo - wo0) {                                                            \
        case 5: BNN_FCONV_PX(K, 5, 2); break;                                          \
        case 4: BNN_FCONV_PX(K, 4, 2); break;                                          \
        case 3: BNN_FCONV_PX(K, 3, 2); break;                                          \
        case 2: BNN_FCONV_PX(K, 2, 4); break;                                          \
        case 1: BNN_FCONV_PX(K, 1, 8); break;                                          \
        default: break;                                                                \
        }                                                                              \
    } while (0)
    if (out_row)   /* the first tile's lines (the tiles prefetch the next one's) */
        bnn_fconv_prefetch_avx2(out_row, s_out_w, bnn_min(BNN_FCONV_P_AVX2, wo), cout);
    if (bits)      /* the row's output words (a few lines) */
        for (ptrdiff_t b = 0; b < wo * s_bits; b += 64)
            _mm_prefetch((const char *)(bits + b), _MM_HINT_T0);
    if (kwc9)
        BNN_FCONV_ROW(9);   /* the 3x3 RGB layer: its own copy, taps unrolled */
    else
        BNN_FCONV_ROW(0);
#undef BNN_FCONV_ROW
#undef BNN_FCONV_PX
}
#endif

/* Channels co0 .. co0+nco-1 (nco <= BNN_FCONV_CO) of the np pixels
 * wo0 .. wo0+np-1 (np <= BNN_FCONV_P) of one output row, portable. */
BNN_INLINE void bnn_fconv_tile_port(const bnn_fconv_params *fp, const float *xrow,
                                    ptrdiff_t pstep, int wo0, int np, int co0, int nco,
                                    float *out_row, ptrdiff_t s_out_w,
                                    bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
    const int cout = fp->cout;
    for (int p = 0; p < np; p++) {
        const float *xq = xrow + (wo0 + p) * pstep;
        float acc[BNN_FCONV_CO];
        for (int l = 0; l < nco; l++)
            acc[l] = 0.0f;
        for (int t = 0, i = 0; i < fp->kh; i++)
            for (int j = 0; j < fp->kw; j++)
                for (int c = 0; c < fp->cin; c++, t++) {
                    const float xv = xq[i * fp->sxh + j * fp->sxw + c];
                    const float *wt = fp->w + (ptrdiff_t)t * cout + co0;
                    for (int l = 0; l < nco; l++)
                        acc[l] = fmaf(xv, wt[l], acc[l]);
                }
        bnn_word_t bits = 0;
        for (int l = 0; l < nco; l++) {
            float y = fp->mult ? fmaf(acc[l], fp->mult[co0 + l], fp->bias[co0 + l])
                               : acc[l] + fp->bias[co0 + l];
            if (fp->relu)
                y = (y > 0.0f || y != y) ? y : 0.0f;
            if (out_row)
                out_row[(wo0 + p) * s_out_w + co0 + l] = y;
            if (fp->thr)
                bits |= (bnn_word_t)(y < fp->thr[co0 + l]) << l;
        }
        if (bits_row)
            bits_row[(wo0 + p) * s_bits_w + co0 / BNN_WORD_BITS] = bits;
    }
}

#if BNN_AVX512
/* bnn_fconv_tile_port on AVX-512: BNN_FCONV_P pixels x 4 vectors of 16
 * channels in registers. */
BNN_INLINE void bnn_fconv_tile_avx512(const bnn_fconv_params *fp, const float *xrow,
                                      ptrdiff_t pstep, int wo0, int np, int co0, int nco,
                                      float *out_row, ptrdiff_t s_out_w,
                                      bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
    const int cout = fp->cout;
    __m512 acc[BNN_FCONV_P][4];
    __mmask16 lm[4];
    const float *xp[BNN_FCONV_P];
    for (int v = 0; v < 4; v++) {
        const int n = nco - 16 * v;
        lm[v] = n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
    }
    for (int p = 0; p < BNN_FCONV_P; p++) {
        /* Pixels past the row end recompute the last one (discarded). */
        xp[p] = xrow + (wo0 + bnn_min(p, np - 1)) * pstep;
        for (int v = 0; v < 4; v++)
            acc[p][v] = _mm512_setzero_ps();
    }
    for (int i = 0; i < fp->kh; i++)
        for (int j = 0; j < fp->kw; j++)
            for (int c = 0; c < fp->cin; c++) {
                const ptrdiff_t xo = i * fp->sxh + j * fp->sxw + c;
                const float *wt = fp->w + ((ptrdiff_t)(i * fp->kw + j) * fp->cin + c) * cout + co0;
                __m512 wv[4];
                for (int v = 0; v < 4; v++)
                    wv[v] = _mm512_maskz_loadu_ps(lm[v], wt + 16 * v);
                for (int p = 0; p < BNN_FCONV_P; p++) {
                    const __m512 xb = _mm512_set1_ps(xp[p][xo]);
                    for (int v = 0; v < 4; v++)
                        acc[p][v] = _mm512_fmadd_ps(xb, wv[v], acc[p][v]);
                }
            }
    for (int p = 0; p < np; p++) {
        bnn_word_t bits = 0;
        for (int v = 0; v < 4 && 16 * v < nco; v++) {
            const int co = co0 + 16 * v;
            const __m512 b = _mm512_maskz_loadu_ps(lm[v], fp->bias + co);
            __m512 y = fp->mult ? _mm512_fmadd_ps(acc[p][v], _mm512_maskz_loadu_ps(lm[v], fp->mult + co), b)
                                : _mm512_add_ps(acc[p][v], b);
            if (fp->relu) {
                const __m512 z = _mm512_setzero_ps();
                const __mmask16 keep = _mm512_cmp_ps_mask(y, z, _CMP_GT_OQ) |
                                       _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
                y = _mm512_mask_blend_ps(keep, z, y);
            }
            if (out_row)
                _mm512_mask_storeu_ps(out_row + (wo0 + p) * s_out_w + co, lm[v], y);
            if (fp->thr) {
                const __m512 t = _mm512_maskz_loadu_ps(lm[v], fp->thr + co);
                bits |= (bnn_word_t)_mm512_mask_cmp_ps_mask(lm[v], y, t, _CMP_LT_OQ) << (16 * v);
            }
        }
        if (bits_row)
            bits_row[(wo0 + p) * s_bits_w + co0 / BNN_WORD_BITS] = bits;
    }
}
#endif

/* One output row of a valid float conv over an already zero-padded input:
 *   acc = 0; for (i, j, c) in row-major order: acc = fma(x[ho*s+i, wo*s+j, c], w[i, j, c, co], acc)
 *   y = fma(acc, mult[co], bias[co])  (y = acc + bias[co] if mult is NULL)
 *   if relu: y = (y > 0 || y != y) ? y : 0
 * (the order of reference.conv_float and of PyTorch's oneDNN conv + BN on
 * an FMA CPU), stored to out_row[wo*s_out_w + co] (if out_row)
 * and packed as bit co = y < thr[co] into bits_row[wo*s_bits_w + co/64]
 * (if bits_row).  xrow = &x[n, ho*stride, 0, 0]. */
BNN_CLONES
static void bnn_fconv_row(const bnn_fconv_params *fp, const float *xrow,
                          float *out_row, ptrdiff_t s_out_w,
                          bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
#if BNN_AVX2
    bnn_fconv_row_avx2(fp, xrow, out_row, s_out_w, bits_row, s_bits_w);
#else
    const ptrdiff_t pstep = (ptrdiff_t)fp->stride * fp->sxw;
    for (int wo0 = 0; wo0 < fp->wo; wo0 += BNN_FCONV_P) {
        const int np = bnn_min(BNN_FCONV_P, fp->wo - wo0);
        for (int co0 = 0; co0 < fp->cout; co0 += BNN_FCONV_CO) {
            const int nco = bnn_min(BNN_FCONV_CO, fp->cout - co0);
#if BNN_AVX512
            bnn_fconv_tile_avx512(fp, xrow, pstep, wo0, np, co0, nco, out_row, s_out_w,
                                  bits_row, s_bits_w);
#else
            bnn_fconv_tile_port(fp, xrow, pstep, wo0, np, co0, nco, out_row, s_out_w,
                                bits_row, s_bits_w);
#endif
        }
    }
#endif
}

/* The epilogue of the other real-valued convs (im2col + BLAS,
 * bnnlite/ops/conv.py), in place on nrows rows of c floats, sy floats
 * apart: y[c] = fma(y[c], mult[c], bias[c]) (one rounding, as fconv's
 * own epilogue and floatmath.fma32), then with relu y = max(y, 0) with
 * np.maximum's semantics (bnn_fmax_np: NaN kept, -0 -> +0).  The c loop
 * vectorises (fmaf is vfmadd with -mfma, and on the x86-64-v3 clone). */
BNN_CLONES
static void bnn_fconv_fma_rows(float *y, ptrdiff_t sy, ptrdiff_t nrows, int c,
                               const float *mult, const float *bias, int relu)
{
    for (ptrdiff_t r = 0; r < nrows; r++) {
        float *yr = y + r * sy;
        if (relu)
            for (int k = 0; k < c; k++)
                yr[k] = bnn_fmax_np(fmaf(yr[k], mult[k], bias[k]), 0.0f);
        else
            for (int k = 0; k < c; k++)
                yr[k] = fmaf(yr[k], mult[k], bias[k]);
    }
}

#endif /* BNNLITE_FCONV_H */
