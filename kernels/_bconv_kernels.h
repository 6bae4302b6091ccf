/*
 * _bconv_kernels.h -- the hot loops of bnnlite's binary kernels (C99).
 *
 * Included (through kernels/_bconv.pxi) by the two Cython extensions
 * bnnlite._bconv_avx512 (built with -mavx512f/bw/vl/dq/vpopcntdq) and
 * bnnlite._bconv_generic (portable).  The same source compiles to two paths:
 *   BNN_AVX512 == 1: 512-bit vpopcntq, register tile of BNN_P pixels x
 *                    BNN_CO_BLOCK output channels of int64 accumulators;
 *   BNN_AVX512 == 0: plain C with __builtin_popcountll, same layout and
 *                    the same float32 operation order.
 *
 * Conventions (bnnlite/bitpack.py is the source of truth, mirrored in
 * kernels/_bitpack.pxd): word = uint64, bit 1 means -1, LSB first along the
 * channel axis, tail bits 0, zero word = +1 padding, and for K real bits
 * dot = K - 2 * popcount(a XOR w).
 *
 * Float order (must match reference.py and the numba backend bit for bit;
 * the build uses -ffp-contract=off so nothing is fused into an FMA):
 *   t = (float)acc * mult[co]; t = t + bias[co]; t = t + residual;
 *   rprelu: t >= gamma ? (t - gamma) + zeta : beta * (t - gamma) + zeta
 *
 * Public (to the .pxi): bnn_word_t, BNN_WORD_BITS, BNN_LANES, BNN_CO_BLOCK,
 * BNN_HAVE_AVX512, bnn_conv_params, bnn_conv_row, bnn_conv_row_pool2,
 * bnn_fconv_params, bnn_fconv_row, bnn_pack_row.
 */
#ifndef BNNLITE_BCONV_KERNELS_H
#define BNNLITE_BCONV_KERNELS_H

#include <stdint.h>
#include <stddef.h>

/* Mirrors bitpack.WORD_DTYPE; the width is derived, never spelled out. */
typedef uint64_t bnn_word_t;
#define BNN_WORD_BITS ((int)(8 * sizeof(bnn_word_t)))

/* Weight layout: output channels are grouped in blocks of BNN_CO_BLOCK =
 * BNN_NV_MAX vectors of BNN_LANES words.  One 512-bit load = BNN_LANES words
 * = the same (kh, kw, cw) word of BNN_LANES consecutive output channels. */
#define BNN_LANES 8
#define BNN_NV_MAX 4
#define BNN_CO_BLOCK (BNN_LANES * BNN_NV_MAX)
/* Pixels per register tile: BNN_P x BNN_NV_MAX accumulators + BNN_NV_MAX
 * weight vectors + 1 broadcast must fit in the 32 zmm registers. */
#define BNN_P 6

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VPOPCNTDQ__)
#define BNN_AVX512 1
#include <immintrin.h>
#else
#define BNN_AVX512 0
#endif
#define BNN_HAVE_AVX512 BNN_AVX512

#if defined(__GNUC__)
#define BNN_INLINE static inline __attribute__((always_inline))
#else
#define BNN_INLINE static inline
#endif

/* Portable build on x86-64 Linux with GCC: baseline x86-64 has no popcnt
 * instruction (__builtin_popcountll becomes a libgcc call, ~10x slower), so
 * clone the row kernel for CPUs with popcnt / AVX2 and let the loader pick
 * one (ifunc).  Other compilers/targets get the single portable version. */
#if !BNN_AVX512 && defined(__GNUC__) && !defined(__clang__) && \
    defined(__x86_64__) && defined(__linux__) && !defined(BNN_NO_CLONES)
#define BNN_CLONES __attribute__((target_clones("arch=x86-64-v3", "popcnt", "default")))
#else
#define BNN_CLONES
#endif

/* A block never straddles a word of the packed output bits. */
/* The direct float conv packs one output word per channel tile. */
typedef char bnn_fco_is_word[(BNN_WORD_BITS == 64) ? 1 : -1];
typedef char bnn_block_divides_word[(BNN_WORD_BITS % BNN_CO_BLOCK) == 0 ? 1 : -1];
#if BNN_AVX512
/* The vector path assumes one word per 64-bit lane. */
typedef char bnn_word_is_epi64[(sizeof(bnn_word_t) * BNN_LANES == 64) ? 1 : -1];
#endif

/* Everything about one convolution call that does not change per row.
 * Pointers that are NULL switch the matching epilogue step off. */
typedef struct {
    int kh, kw, cw;          /* kernel size, words per pixel */
    int cout, stride, wo;    /* output channels, stride, output width */
    ptrdiff_t sxh, sxw;      /* input strides in words (H and W axes) */
    const bnn_word_t *w;     /* prepared weights (see prepare_weights) */
    int64_t k_bits;          /* K real bits: acc = K - 2 * popcount */
    const float *mult, *bias;            /* float mode (NULL in bits mode) */
    int cres;                            /* residual channels (co % cres) */
    const float *gamma, *beta, *zeta;    /* rprelu or NULL */
    const float *next_thr;               /* fused pack threshold or NULL */
    const int32_t *thr;                  /* bits mode threshold or NULL */
} bnn_conv_params;

static inline int bnn_min(int a, int b) { return a < b ? a : b; }

/* ------------------------------------------------------------------ */
/* Core: popcount(x XOR w) summed over (kh, kw, cw) for P pixels x NV*LANES
 * output channels of one block.                                          */
/* ------------------------------------------------------------------ */
#if BNN_AVX512
/* acc[p][v] lane l = sum over (i, j, c) of
 *     popcount(x0[p*pstep + i*sxh + j*sxw + c] XOR wb[((i*kw + j)*cw + c)*NV*LANES + v*LANES + l]).
 * When the words of neighbouring input pixels are adjacent (sxw == cw, the
 * normal case), the kw*cw words of kernel row i are one contiguous run in x
 * and in the weights, so (j, c) is one loop of kw*cw steps (6 for Cin=128)
 * instead of two short ones.  The accumulators stay in registers: the
 * caller runs the epilogue on them directly (bnn_epilogue_regs). */
BNN_INLINE void bnn_core_regs(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                              ptrdiff_t pstep, const bnn_word_t *wb, int kh, int kw,
                              int cw, const int P, const int NV,
                              __m512i acc[BNN_P][BNN_NV_MAX])
{
    for (int p = 0; p < P; p++)
        for (int v = 0; v < NV; v++)
            acc[p][v] = _mm512_setzero_si512();
    const int fused = (sxw == cw);
    const int nj = fused ? 1 : kw;
    const int nq = fused ? kw * cw : cw;
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < nj; j++) {
            const bnn_word_t *xp = x0 + i * sxh + j * sxw;
            for (int q = 0; q < nq; q++) {
                /* NV weight vectors feed all P pixels (register reuse). */
                __m512i wv[BNN_NV_MAX];
                for (int v = 0; v < NV; v++)
                    wv[v] = _mm512_loadu_si512((const void *)(wb + v * BNN_LANES));
                wb += NV * BNN_LANES;
                for (int p = 0; p < P; p++) {
                    const __m512i xb = _mm512_set1_epi64((long long)xp[p * pstep + q]);
                    for (int v = 0; v < NV; v++)
                        acc[p][v] = _mm512_add_epi64(
                            acc[p][v], _mm512_popcnt_epi64(_mm512_xor_si512(xb, wv[v])));
                }
            }
        }
    }
}

/* Epilogue of one pixel from its NV accumulator registers (popcounts of
 * output channels co0 .. co0+nco-1, nco <= NV*LANES): acc = K - 2*pop, then
 * the integer threshold (bits mode) or the float chain on 16 lanes at a
 * time + optional fused pack.  Bits of channel co go to *wbits at bit
 * (co % BNN_WORD_BITS).  Same per-lane float operations as the portable
 * epilogue, so the results are identical. */
BNN_INLINE void bnn_epilogue_regs(const bnn_conv_params *prm, const __m512i *pop,
                                  const int NV, int co0, int nco,
                                  const float *res_px, float *out_px, int ocol,
                                  bnn_word_t *wbits)
{
    const __m512i kv = _mm512_set1_epi64((long long)prm->k_bits);
    if (prm->thr) {
        for (int v = 0; v < NV; v++) {
            const int co = co0 + v * BNN_LANES;
            const int n = bnn_min(BNN_LANES, nco - v * BNN_LANES);
            const __mmask8 lm = (__mmask8)((1u << n) - 1u);
            const __m512i a = _mm512_sub_epi64(kv, _mm512_add_epi64(pop[v], pop[v]));
            const __m512i th = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lm, prm->thr + co));
            const __mmask8 m = _mm512_mask_cmplt_epi64_mask(lm, a, th);
            *wbits |= (bnn_word_t)m << (co % BNN_WORD_BITS);
        }
        return;
    }
    for (int v = 0; v < NV; v += 2) {
        const int co = co0 + v * BNN_LANES;       /* a multiple of 16 */
        const int n = bnn_min(2 * BNN_LANES, nco - v * BNN_LANES);
        const __mmask16 lm = (__mmask16)((1u << n) - 1u);
        /* |acc| < 2^24, so the int64 -> float conversion is exact. */
        const __m512i a0 = _mm512_sub_epi64(kv, _mm512_add_epi64(pop[v], pop[v]));
        __m512 y = _mm512_castps256_ps512(_mm512_cvtepi64_ps(a0));
        if (v + 1 < NV) {
            const __m512i a1 = _mm512_sub_epi64(kv, _mm512_add_epi64(pop[v + 1], pop[v + 1]));
            y = _mm512_insertf32x8(y, _mm512_cvtepi64_ps(a1), 1);
        }
        y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(lm, prm->mult + co));
        y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lm, prm->bias + co));
        if (res_px) {
            __m512 r;
            const int cres = prm->cres;
            if (cres % (2 * BNN_LANES) == 0) {
                /* co % cres .. +16 is contiguous inside one residual copy. */
                r = _mm512_maskz_loadu_ps(lm, res_px + (co % cres));
            } else {
                float tmp[2 * BNN_LANES] = {0};
                for (int l = 0; l < n; l++)
                    tmp[l] = res_px[(co + l) % cres];
                r = _mm512_loadu_ps(tmp);
            }
            y = _mm512_add_ps(y, r);
        }
        if (prm->gamma) {
            const __m512 gm = _mm512_maskz_loadu_ps(lm, prm->gamma + co);
            const __mmask16 ge = _mm512_cmp_ps_mask(y, gm, _CMP_GE_OQ);
            __m512 d = _mm512_sub_ps(y, gm);
            const __m512 e = _mm512_mul_ps(_mm512_maskz_loadu_ps(lm, prm->beta + co), d);
            d = _mm512_mask_blend_ps(ge, e, d);   /* ge ? d : beta*d */
            y = _mm512_add_ps(d, _mm512_maskz_loadu_ps(lm, prm->zeta + co));
        }
        if (out_px)
            _mm512_mask_storeu_ps(out_px + (co - ocol), lm, y);
        if (prm->next_thr) {
            const __m512 nt = _mm512_maskz_loadu_ps(lm, prm->next_thr + co);
            const __mmask16 m = _mm512_mask_cmp_ps_mask(lm, y, nt, _CMP_LT_OQ);
            *wbits |= (bnn_word_t)m << (co % BNN_WORD_BITS);
        }
    }
}

/* Core + epilogue of one tile (P pixels x one block of NV vectors). */
BNN_INLINE void bnn_tile(const bnn_conv_params *prm, const bnn_word_t *x0,
                         ptrdiff_t pstep, const bnn_word_t *wb, const int P,
                         const int NV, int co0, int nco,
                         const float *res_px, ptrdiff_t s_res_w,
                         float *out_px, ptrdiff_t s_out_w, int ocol,
                         bnn_word_t *wbits)
{
    __m512i acc[BNN_P][BNN_NV_MAX];
    bnn_core_regs(x0, prm->sxh, prm->sxw, pstep, wb, prm->kh, prm->kw, prm->cw, P, NV, acc);
    for (int p = 0; p < P; p++)
        bnn_epilogue_regs(prm, acc[p], NV, co0, nco,
                          res_px ? res_px + p * s_res_w : NULL,
                          out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
}
#else
/* Portable core: tile[p * BNN_CO_BLOCK + l] = popcount(x XOR w) summed over
 * (kh, kw, cw) for P pixels x NV*LANES output channels of one block. */
BNN_INLINE void bnn_core(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                         ptrdiff_t pstep, const bnn_word_t *wb, int kh, int kw,
                         int cw, const int P, const int NV, int64_t *tile)
{
    const int nl = NV * BNN_LANES;
    for (int p = 0; p < P; p++)
        for (int l = 0; l < nl; l++)
            tile[p * BNN_CO_BLOCK + l] = 0;
    /* (j, c) fused into one run of kw*cw words when pixels are adjacent. */
    const int fused = (sxw == cw);
    const int nj = fused ? 1 : kw;
    const int nq = fused ? kw * cw : cw;
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < nj; j++) {
            const bnn_word_t *xp = x0 + i * sxh + j * sxw;
            for (int c = 0; c < nq; c++) {
                for (int p = 0; p < P; p++) {
                    const bnn_word_t xv = xp[p * pstep + c];
                    int64_t *t = tile + p * BNN_CO_BLOCK;
                    for (int l = 0; l < nl; l++)
                        t[l] += __builtin_popcountll((unsigned long long)(xv ^ wb[l]));
                }
                wb += nl;
            }
        }
    }
}

/* Portable epilogue for one pixel and one block: acc = K - 2*pop, then
 * either the integer threshold (bits mode) or the float chain + optional
 * fused pack.  Bits of channel co go to *wbits at bit (co % BNN_WORD_BITS). */
BNN_INLINE void bnn_epilogue(const bnn_conv_params *prm, const int64_t *t,
                             int co0, int nco, const float *res_px,
                             float *out_px, int ocol, bnn_word_t *wbits)
{
    for (int l = 0; l < nco; l++) {
        const int co = co0 + l;
        const int64_t a = prm->k_bits - 2 * t[l];
        const int sh = co % BNN_WORD_BITS;
        if (prm->thr) {
            *wbits |= (bnn_word_t)(a < (int64_t)prm->thr[co]) << sh;
            continue;
        }
        float y = (float)a * prm->mult[co];
        y = y + prm->bias[co];
        if (res_px)
            y = y + res_px[co % prm->cres];
        if (prm->gamma) {
            const float gm = prm->gamma[co];
            const float d = y - gm;
            y = (y >= gm) ? d + prm->zeta[co] : prm->beta[co] * d + prm->zeta[co];
        }
        if (out_px)
            out_px[co - ocol] = y;
        if (prm->next_thr)
            *wbits |= (bnn_word_t)(y < prm->next_thr[co]) << sh;
    }
}
#endif

#if !BNN_AVX512
/* Run the portable core for np pixels (np <= BNN_P) and nv vectors with
 * constant arguments so the compiler can specialise the loops. */
BNN_INLINE void bnn_core_dispatch(const bnn_word_t *x0, ptrdiff_t sxh,
                                     ptrdiff_t sxw, ptrdiff_t pstep,
                                     const bnn_word_t *wb, int kh, int kw,
                                     int cw, int np, int nv, int64_t *tile)
{
    if (np == BNN_P) {
        switch (nv) {
        case 4: bnn_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 4, tile); return;
        case 3: bnn_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 3, tile); return;
        case 2: bnn_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 2, tile); return;
        default: bnn_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 1, tile); return;
        }
    }
    for (int p = 0; p < np; p++) {
        const bnn_word_t *xp = x0 + p * pstep;
        int64_t *tp = tile + p * BNN_CO_BLOCK;
        switch (nv) {
        case 4: bnn_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 4, tp); break;
        case 3: bnn_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 3, tp); break;
        case 2: bnn_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 2, tp); break;
        default: bnn_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 1, tp); break;
        }
    }
}
#endif

/* Core + epilogue of np (<= BNN_P) pixels x one output-channel block
 * (channels co0 .. co0+nco-1, nv = ceil(nco/LANES) vectors, weights wb).
 * x0: first pixel, pixel p at x0 + p*pstep.  res_px/out_px: the first
 * pixel's residual / output (or NULL), W strides s_res_w / s_out_w; channel
 * co is stored at out_px[co - ocol].  Fused pack bits are ORed into
 * wbits[p]. */
BNN_INLINE void bnn_block(const bnn_conv_params *prm, const bnn_word_t *x0,
                          ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                          int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                          float *out_px, ptrdiff_t s_out_w, int ocol,
                          bnn_word_t *wbits)
{
#if BNN_AVX512
    /* Constant P and NV so the accumulators live in registers. */
#define BNN_TILE_(P_, NV_, x_, r_, o_, wb_) \
    bnn_tile(prm, x_, pstep, wb, P_, NV_, co0, nco, r_, s_res_w, o_, s_out_w, ocol, wb_)
    if (np == BNN_P) {
        switch (nv) {
        case 4: BNN_TILE_(BNN_P, 4, x0, res_px, out_px, wbits); return;
        case 3: BNN_TILE_(BNN_P, 3, x0, res_px, out_px, wbits); return;
        case 2: BNN_TILE_(BNN_P, 2, x0, res_px, out_px, wbits); return;
        default: BNN_TILE_(BNN_P, 1, x0, res_px, out_px, wbits); return;
        }
    }
    for (int p = 0; p < np; p++) {
        const bnn_word_t *xp = x0 + p * pstep;
        const float *rp = res_px ? res_px + p * s_res_w : NULL;
        float *op = out_px ? out_px + p * s_out_w : NULL;
        switch (nv) {
        case 4: BNN_TILE_(1, 4, xp, rp, op, wbits + p); break;
        case 3: BNN_TILE_(1, 3, xp, rp, op, wbits + p); break;
        case 2: BNN_TILE_(1, 2, xp, rp, op, wbits + p); break;
        default: BNN_TILE_(1, 1, xp, rp, op, wbits + p); break;
        }
    }
#undef BNN_TILE_
#else
#if defined(__GNUC__)
    int64_t tile[BNN_P * BNN_CO_BLOCK] __attribute__((aligned(64)));
#else
    int64_t tile[BNN_P * BNN_CO_BLOCK];
#endif
    bnn_core_dispatch(x0, prm->sxh, prm->sxw, pstep, wb, prm->kh, prm->kw, prm->cw,
                      np, nv, tile);
    for (int p = 0; p < np; p++)
        bnn_epilogue(prm, tile + p * BNN_CO_BLOCK, co0, nco,
                     res_px ? res_px + p * s_res_w : NULL,
                     out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
#endif
}

/* One output row (fixed n, ho): xrow = &x[n, ho*stride, 0, 0];
 * res_row/out_row/bits_row point at [n, ho, 0, 0] of their arrays (or NULL),
 * with W strides s_res_w/s_out_w (floats) and s_bits_w (words).
 * Loop order: pixel tile outer, output-channel block inner, so the input
 * pixels stay in L1 and the packed bits of a word are assembled in a
 * register and stored once. */
BNN_CLONES
static void bnn_conv_row(const bnn_conv_params *prm, const bnn_word_t *xrow,
                         const float *res_row, ptrdiff_t s_res_w,
                         float *out_row, ptrdiff_t s_out_w,
                         bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
    const int cout = prm->cout;
    const int nblk = (cout + BNN_CO_BLOCK - 1) / BNN_CO_BLOCK;
    const ptrdiff_t pstep = (ptrdiff_t)prm->stride * prm->sxw;
    const ptrdiff_t wblk = (ptrdiff_t)prm->kh * prm->kw * prm->cw * BNN_CO_BLOCK;
    for (int wo0 = 0; wo0 < prm->wo; wo0 += BNN_P) {
        const int np = bnn_min(BNN_P, prm->wo - wo0);
        bnn_word_t wbits[BNN_P];
        for (int b = 0; b < nblk; b++) {
            const int co0 = b * BNN_CO_BLOCK;
            const int nco = bnn_min(BNN_CO_BLOCK, cout - co0);
            const int nv = (nco + BNN_LANES - 1) / BNN_LANES;
            if (co0 % BNN_WORD_BITS == 0)
                for (int p = 0; p < np; p++)
                    wbits[p] = 0;
            bnn_block(prm, xrow + wo0 * pstep, pstep, prm->w + b * wblk, np, nv, co0, nco,
                      res_row ? res_row + wo0 * s_res_w : NULL, s_res_w,
                      out_row ? out_row + wo0 * s_out_w : NULL, s_out_w, 0, wbits);
            if (bits_row && ((co0 + BNN_CO_BLOCK) % BNN_WORD_BITS == 0 || b == nblk - 1))
                for (int p = 0; p < np; p++)
                    bits_row[(wo0 + p) * s_bits_w + co0 / BNN_WORD_BITS] = wbits[p];
        }
    }
}

/* np.maximum semantics: NaN propagates, ties (0.0 vs -0.0) give b. */
static inline float bnn_fmax_np(float a, float b) { return (a > b || a != a) ? a : b; }
#if BNN_AVX512
BNN_INLINE __m512 bnn_fmax_np16(__m512 a, __m512 b)
{
    const __mmask16 m = _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) |
                        _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(m, b, a);
}
#endif

/* 2x2 max-pool of one block: y0/y1 hold 2*npool pixels of conv rows 2i and
 * 2i+1 (pixel p at y + p*BNN_CO_BLOCK, channel co0+l at lane l < nco);
 * pooled pixel q = max(max(y0[2q], y0[2q+1]), max(y1[2q], y1[2q+1])) goes
 * to out_px[q*s_out_w + co] (if out_px) and bit co of wbits[q] is set when
 * it is < next_thr[co] (if next_thr). */
BNN_INLINE void bnn_pool_block(const float *y0, const float *y1, int npool, int co0,
                               int nco, const float *next_thr, float *out_px,
                               ptrdiff_t s_out_w, bnn_word_t *wbits)
{
    for (int q = 0; q < npool; q++) {
        const float *a = y0 + 2 * q * BNN_CO_BLOCK, *b = y1 + 2 * q * BNN_CO_BLOCK;
        float *o = out_px ? out_px + q * s_out_w + co0 : NULL;
#if BNN_AVX512
        for (int g = 0; g < nco; g += 16) {
            const __mmask16 lm = (__mmask16)((1u << bnn_min(16, nco - g)) - 1u);
            const __m512 m0 = bnn_fmax_np16(_mm512_load_ps(a + g), _mm512_load_ps(a + BNN_CO_BLOCK + g));
            const __m512 m1 = bnn_fmax_np16(_mm512_load_ps(b + g), _mm512_load_ps(b + BNN_CO_BLOCK + g));
            const __m512 m = bnn_fmax_np16(m0, m1);
            if (o)
                _mm512_mask_storeu_ps(o + g, lm, m);
            if (next_thr) {
                const __m512 nt = _mm512_maskz_loadu_ps(lm, next_thr + co0 + g);
                const __mmask16 bm = _mm512_mask_cmp_ps_mask(lm, m, nt, _CMP_LT_OQ);
                wbits[q] |= (bnn_word_t)bm << ((co0 + g) % BNN_WORD_BITS);
            }
        }
#else
        for (int l = 0; l < nco; l++) {
            const float m = bnn_fmax_np(bnn_fmax_np(a[l], a[BNN_CO_BLOCK + l]),
                                        bnn_fmax_np(b[l], b[BNN_CO_BLOCK + l]));
            if (o)
                o[l] = m;
            if (next_thr)
                wbits[q] |= (bnn_word_t)(m < next_thr[co0 + l]) << ((co0 + l) % BNN_WORD_BITS);
        }
#endif
    }
}

/* Float-mode conv fused with the 2x2/2 max-pool (and the sign_pack after
 * it): one pooled output row i (fixed n) from conv rows 2i and 2i+1.
 * xrow = &x[n, 2i*stride, 0, 0]; res_row = &residual[n, 2i, 0, 0] (conv
 * resolution, H/W strides s_res_h/s_res_w) or NULL; out_row = &out[n, i, 0, 0]
 * (pooled, W stride s_out_w) or NULL; bits_row = &out_bits[n, i, 0, 0] (W
 * stride s_bits_w) or NULL.  wpool = Wo // 2 pooled pixels.  Each conv value
 * is the float chain of bnn_epilogue; out = max(max(y[2i,2j], y[2i,2j+1]),
 * max(y[2i+1,2j], y[2i+1,2j+1])) and bit co = out < next_thr[co]. */
BNN_CLONES
static void bnn_conv_row_pool2(const bnn_conv_params *prm, const bnn_word_t *xrow,
                               const float *res_row, ptrdiff_t s_res_h, ptrdiff_t s_res_w,
                               float *out_row, ptrdiff_t s_out_w,
                               bnn_word_t *bits_row, ptrdiff_t s_bits_w, int wpool)
{
#if defined(__GNUC__)
    float ybuf[2][BNN_P * BNN_CO_BLOCK] __attribute__((aligned(64)));
#else
    float ybuf[2][BNN_P * BNN_CO_BLOCK];
#endif
    bnn_conv_params ep = *prm;
    ep.next_thr = NULL;           /* the pack is done after pooling */
    const int cout = prm->cout;
    const int nblk = (cout + BNN_CO_BLOCK - 1) / BNN_CO_BLOCK;
    const ptrdiff_t pstep = (ptrdiff_t)prm->stride * prm->sxw;
    const ptrdiff_t xrow1 = (ptrdiff_t)prm->stride * prm->sxh;
    const ptrdiff_t wblk = (ptrdiff_t)prm->kh * prm->kw * prm->cw * BNN_CO_BLOCK;
    const int wc = 2 * wpool;     /* conv pixels that reach the pooled output */
    for (int wo0 = 0; wo0 < wc; wo0 += BNN_P) {
        const int np = bnn_min(BNN_P, wc - wo0);   /* even */
        const int q0 = wo0 / 2, nq = np / 2;
        bnn_word_t wbits[BNN_P], unused[BNN_P];
        for (int b = 0; b < nblk; b++) {
            const int co0 = b * BNN_CO_BLOCK;
            const int nco = bnn_min(BNN_CO_BLOCK, cout - co0);
            const int nv = (nco + BNN_LANES - 1) / BNN_LANES;
            if (co0 % BNN_WORD_BITS == 0)
                for (int q = 0; q < nq; q++)
                    wbits[q] = 0;
            for (int r = 0; r < 2; r++)
                bnn_block(&ep, xrow + r * xrow1 + wo0 * pstep, pstep, prm->w + b * wblk,
                          np, nv, co0, nco,
                          res_row ? res_row + r * s_res_h + wo0 * s_res_w : NULL, s_res_w,
                          ybuf[r], BNN_CO_BLOCK, co0, unused);
            bnn_pool_block(ybuf[0], ybuf[1], nq, co0, nco, bits_row ? prm->next_thr : NULL,
                           out_row ? out_row + q0 * s_out_w : NULL, s_out_w, wbits);
            if (bits_row && ((co0 + BNN_CO_BLOCK) % BNN_WORD_BITS == 0 || b == nblk - 1))
                for (int q = 0; q < nq; q++)
                    bits_row[(q0 + q) * s_bits_w + co0 / BNN_WORD_BITS] = wbits[q];
        }
    }
}

/* ------------------------------------------------------------------ */
/* Real-valued direct conv for a small number of input channels (the first
 * layer, Cin = 3), with the following sign_pack fused.                   */
/* ------------------------------------------------------------------ */
typedef struct {
    int kh, kw, cin, cout, stride, wo;
    ptrdiff_t sxh, sxw;      /* input strides in floats (H and W axes) */
    const float *w;          /* (kh, kw, cin, cout), C-contiguous */
    const float *bias;       /* (cout,) */
    int relu;                /* y = y > 0 || y != y ? y : 0 (np.maximum(y, 0)) */
    const float *thr;        /* fused pack threshold or NULL */
} bnn_fconv_params;

#define BNN_FP 4              /* pixels per register tile */
#define BNN_FCO 64            /* output channels per tile (one output word) */

/* One output row of a valid float conv over an already zero-padded input:
 *   acc = 0; for (i, j, c) in row-major order: acc = acc + x[ho*s+i, wo*s+j, c] * w[i, j, c, co]
 *   y = acc + bias[co];  if relu: y = (y > 0 || y != y) ? y : 0
 * (separate multiply and add, -ffp-contract=off, the order of
 * reference.conv_float), stored to out_row[wo*s_out_w + co] (if out_row)
 * and packed as bit co = y < thr[co] into bits_row[wo*s_bits_w + co/64]
 * (if bits_row).  xrow = &x[n, ho*stride, 0, 0]. */
BNN_CLONES
static void bnn_fconv_row(const bnn_fconv_params *fp, const float *xrow,
                          float *out_row, ptrdiff_t s_out_w,
                          bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
    const int cout = fp->cout, taps = fp->kh * fp->kw * fp->cin;
    const ptrdiff_t pstep = (ptrdiff_t)fp->stride * fp->sxw;
    for (int wo0 = 0; wo0 < fp->wo; wo0 += BNN_FP) {
        const int np = bnn_min(BNN_FP, fp->wo - wo0);
        for (int co0 = 0; co0 < cout; co0 += BNN_FCO) {
            const int nco = bnn_min(BNN_FCO, cout - co0);
#if BNN_AVX512
            __m512 acc[BNN_FP][4];
            __mmask16 lm[4];
            const float *xp[BNN_FP];
            for (int v = 0; v < 4; v++) {
                const int n = nco - 16 * v;
                lm[v] = n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
            }
            for (int p = 0; p < BNN_FP; p++) {
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
                        for (int p = 0; p < BNN_FP; p++) {
                            const __m512 xb = _mm512_set1_ps(xp[p][xo]);
                            for (int v = 0; v < 4; v++)
                                acc[p][v] = _mm512_add_ps(acc[p][v], _mm512_mul_ps(xb, wv[v]));
                        }
                    }
            for (int p = 0; p < np; p++) {
                bnn_word_t bits = 0;
                for (int v = 0; v < 4 && 16 * v < nco; v++) {
                    const int co = co0 + 16 * v;
                    __m512 y = _mm512_add_ps(acc[p][v], _mm512_maskz_loadu_ps(lm[v], fp->bias + co));
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
#else
            for (int p = 0; p < np; p++) {
                const float *xq = xrow + (wo0 + p) * pstep;
                float acc[BNN_FCO];
                for (int l = 0; l < nco; l++)
                    acc[l] = 0.0f;
                for (int t = 0, i = 0; i < fp->kh; i++)
                    for (int j = 0; j < fp->kw; j++)
                        for (int c = 0; c < fp->cin; c++, t++) {
                            const float xv = xq[i * fp->sxh + j * fp->sxw + c];
                            const float *wt = fp->w + (ptrdiff_t)t * cout + co0;
                            for (int l = 0; l < nco; l++)
                                acc[l] = acc[l] + xv * wt[l];
                        }
                bnn_word_t bits = 0;
                for (int l = 0; l < nco; l++) {
                    float y = acc[l] + fp->bias[co0 + l];
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
#endif
        }
    }
    (void)taps;
}

/* Pack one row of w pixels: bit c of word c / WORD_BITS = x[c] < thr[c]
 * (LSB first, tail bits 0).  x: w pixels of c floats, W stride sxw floats;
 * out: W stride sow words. */
static void bnn_pack_row(const float *x, ptrdiff_t sxw, const float *thr, int c,
                         int w, bnn_word_t *out, ptrdiff_t sow)
{
    const int nwords = (c + BNN_WORD_BITS - 1) / BNN_WORD_BITS;
    for (int px = 0; px < w; px++) {
        const float *xp = x + px * sxw;
        bnn_word_t *op = out + px * sow;
        for (int k = 0; k < nwords; k++) {
            const int c0 = k * BNN_WORD_BITS;
            const int n = bnn_min(BNN_WORD_BITS, c - c0);
            bnn_word_t bits = 0;
#if BNN_AVX512
            for (int q = 0; q < n; q += 16) {
                const int nq = bnn_min(16, n - q);
                const __mmask16 lm = (__mmask16)((1u << nq) - 1u);
                const __m512 xv = _mm512_maskz_loadu_ps(lm, xp + c0 + q);
                const __m512 tv = _mm512_maskz_loadu_ps(lm, thr + c0 + q);
                const __mmask16 m = _mm512_mask_cmp_ps_mask(lm, xv, tv, _CMP_LT_OQ);
                bits |= (bnn_word_t)m << q;
            }
#else
            for (int l = 0; l < n; l++)
                bits |= (bnn_word_t)(xp[c0 + l] < thr[c0 + l]) << l;
#endif
            op[k] = bits;
        }
    }
}

#endif /* BNNLITE_BCONV_KERNELS_H */
