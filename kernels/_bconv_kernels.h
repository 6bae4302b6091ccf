/*
 * _bconv_kernels.h -- the hot loops of bnnlite's binary kernels (C99).
 *
 * Included (through kernels/_bconv.pxi) by the three Cython extensions
 * bnnlite._bconv_avx512 (built with -mavx512f/bw/vl/dq/vpopcntdq),
 * bnnlite._bconv_avx2 (-mavx2 -mpopcnt) and bnnlite._bconv_generic
 * (portable).  The same source compiles to three paths:
 *   BNN_AVX512 == 1: 512-bit vpopcntq, register tile of BNN_P pixels x
 *                    BNN_CO_BLOCK output channels of int64 accumulators;
 *   BNN_AVX2 == 1:   (AVX2, no AVX-512) 256-bit vpshufb nibble-lookup
 *                    popcount, three steps at a time through a carry-save
 *                    adder, with byte accumulators in ymm registers
 *                    (bnn_core_avx2) into an int64 tile, then the portable
 *                    epilogue's operations on 8 channels at a time;
 *   otherwise:       plain C with __builtin_popcountll.
 * All three use the same weight layout and the same float32 operation
 * order, so their results are bit-identical.
 *
 * Conventions (bnnlite/bitpack.py is the source of truth, mirrored in
 * kernels/_bitpack.pxd): word = uint64, bit 1 means -1, LSB first along the
 * channel axis, tail bits 0, zero word = +1 padding, and for K real bits
 * dot = K - 2 * popcount(a XOR w).
 *
 * Float order (must match reference.py and the numba backend bit for bit,
 * and is PyTorch's own order, docs/conventions.md; the build uses
 * -ffp-contract=off so only the fma() calls written below are fused):
 *   t = (float)acc * scale[co]; t = fma(t, mult[co], bias[co]);
 *   t = t + residual;
 *   rprelu: t >= gamma ? (t - gamma) + zeta : beta * (t - gamma) + zeta
 * and for the direct float conv: acc = fma(x, w, acc) over (i, j, c) in
 * row-major order, then y = fma(acc, mult[co], bias[co]) (acc + bias[co]
 * without mult).
 *
 * Public (to the .pxi): bnn_word_t, BNN_WORD_BITS, BNN_LANES, BNN_CO_BLOCK,
 * BNN_HAVE_AVX512, BNN_HAVE_AVX2, bnn_conv_params, bnn_conv_row, bnn_conv_row_pool2,
 * bnn_fconv_params, bnn_fconv_row, bnn_pack_row.
 */
#ifndef BNNLITE_BCONV_KERNELS_H
#define BNNLITE_BCONV_KERNELS_H

#include <math.h>
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

/* AVX2 without AVX-512: the vpshufb popcount core (bnn_core_avx2). */
#if !BNN_AVX512 && defined(__AVX2__)
#define BNN_AVX2 1
#include <immintrin.h>
#include <string.h>
#else
#define BNN_AVX2 0
#endif
#define BNN_HAVE_AVX2 BNN_AVX2

#if defined(__GNUC__)
#define BNN_INLINE static inline __attribute__((always_inline))
#else
#define BNN_INLINE static inline
#endif

/* Portable build on x86-64 Linux with GCC: baseline x86-64 has no popcnt
 * instruction (__builtin_popcountll becomes a libgcc call, ~10x slower), so
 * clone the row kernel for CPUs with popcnt / AVX2 and let the loader pick
 * one (ifunc).  Other compilers/targets get the single portable version. */
#if !BNN_AVX512 && !BNN_AVX2 && defined(__GNUC__) && !defined(__clang__) && \
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
    const float *scale, *mult, *bias;    /* float mode (NULL in bits mode) */
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
        y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(lm, prm->scale + co));
        y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(lm, prm->mult + co),
                            _mm512_maskz_loadu_ps(lm, prm->bias + co));
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
        float y = (float)a * prm->scale[co];
        y = fmaf(y, prm->mult[co], prm->bias[co]);
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

#if BNN_AVX2
/* The float chain of every AVX2 epilogue on 8 channels: the portable
 * epilogue's float32 operations in its order (vmulps, then one vfmadd for
 * fmaf), so the results are identical.  acc = K - 2*popcount as int32;
 * y = float(acc) * scale; y = fma(y, mult, bias); y += r (when res);
 * RPReLU (when rp): (y >= gamma ? y - gamma : beta*(y - gamma)) + zeta.
 * The int32 -> float conversion rounds like (float)(int64_t)acc. */
BNN_INLINE __m256 bnn_float_chain8(__m256i acc, __m256 scale, __m256 mult, __m256 bias, int res,
                                   __m256 r, int rp, __m256 gamma, __m256 beta, __m256 zeta)
{
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale);
    y = _mm256_fmadd_ps(y, mult, bias);
    if (res)
        y = _mm256_add_ps(y, r);
    if (rp) {
        const __m256 ge = _mm256_cmp_ps(y, gamma, _CMP_GE_OQ);
        const __m256 d = _mm256_sub_ps(y, gamma);
        y = _mm256_add_ps(_mm256_blendv_ps(_mm256_mul_ps(beta, d), d, ge), zeta);
    }
    return y;
}

/* The portable epilogue on one group of 8 channels co .. co+7 of one pixel:
 * the same per-channel integer and float32 operations in the same order
 * (vmulps, then one vfmadd for fmaf), so the results are identical.
 * a: acc = K - 2*popcount as int32 lanes (|acc| <= K < 2^31).  rc: the
 * residual channel of co when cres is a multiple of 8 (see below).  Returns
 * the 8 bits (bits mode, or the fused pack), lane l at bit l. */
BNN_INLINE unsigned bnn_epilogue8_avx2(const bnn_conv_params *prm, __m256i a, int co,
                                       const float *res_px, int rc, float *out_px, int ocol)
{
    if (prm->thr)   /* a < thr as int32 */
        return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(
            _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(prm->thr + co)), a)));
    __m256 r = _mm256_setzero_ps();
    if (res_px) {
        if (prm->cres % BNN_LANES == 0) {
            /* rc .. rc+7 is contiguous inside one residual copy. */
            r = _mm256_loadu_ps(res_px + rc);
        } else {
            float tmp[BNN_LANES];
            for (int k = 0; k < BNN_LANES; k++)
                tmp[k] = res_px[(co + k) % prm->cres];
            r = _mm256_loadu_ps(tmp);
        }
    }
    const int rp = prm->gamma != NULL;
    const __m256 y = bnn_float_chain8(
        a, _mm256_loadu_ps(prm->scale + co), _mm256_loadu_ps(prm->mult + co),
        _mm256_loadu_ps(prm->bias + co), res_px != NULL, r, rp,
        rp ? _mm256_loadu_ps(prm->gamma + co) : r, rp ? _mm256_loadu_ps(prm->beta + co) : r,
        rp ? _mm256_loadu_ps(prm->zeta + co) : r);
    if (out_px)
        _mm256_storeu_ps(out_px + (co - ocol), y);
    if (prm->next_thr)
        return (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(y, _mm256_loadu_ps(prm->next_thr + co), _CMP_LT_OQ));
    return 0;
}

/* The portable epilogue of one pixel, 8 channels at a time (a last group of
 * fewer than 8 goes through bnn_epilogue).  Popcounts of channel co0 + l:
 * t64[l] (int64) or, when t64 is NULL, t32[l] (int32). */
BNN_INLINE void bnn_epilogue_avx2(const bnn_conv_params *prm, const int64_t *t64,
                                  const int32_t *t32, int co0, int nco,
                                  const float *res_px, float *out_px, int ocol,
                                  bnn_word_t *wbits)
{
    const __m256i kv = _mm256_set1_epi32((int)prm->k_bits);
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const int cres = prm->cres;
    /* The int32 arithmetic below needs K < 2^31 (always so in practice). */
    const int nvec = prm->k_bits > INT32_MAX ? 0 : nco;
    /* rc = (co0 + l) % cres, the residual channel, stepped along with l:
     * perf showed an idiv per 8 channels, and the residual load waiting on
     * it, among the epilogue's hottest instructions.  Used only when cres
     * is a multiple of 8, so rc + 8 never passes cres. */
    int rc = res_px ? co0 % cres : 0;
    bnn_word_t bits = 0;      /* ORed into *wbits once, at the end */
    int l = 0;
    for (; l + BNN_LANES <= nvec; l += BNN_LANES, rc = (rc + BNN_LANES == cres) ? 0 : rc + BNN_LANES) {
        __m256i p;
        if (t64) {   /* |popcount| <= K < 2^31: the low dwords are the values */
            const __m256i lo = _mm256_permutevar8x32_epi32(
                _mm256_loadu_si256((const __m256i *)(t64 + l)), even);
            const __m256i hi = _mm256_permutevar8x32_epi32(
                _mm256_loadu_si256((const __m256i *)(t64 + l + 4)), even);
            p = _mm256_permute2x128_si256(lo, hi, 0x20);
        } else {
            p = _mm256_loadu_si256((const __m256i *)(t32 + l));
        }
        const __m256i a = _mm256_sub_epi32(kv, _mm256_add_epi32(p, p));
        const int co = co0 + l;
        bits |= (bnn_word_t)bnn_epilogue8_avx2(prm, a, co, res_px, rc, out_px, ocol)
                << (co % BNN_WORD_BITS);
    }
    *wbits |= bits;
    if (l < nco) {
        int64_t tail[BNN_LANES];
        const int64_t *t = t64 ? t64 + l : tail;
        if (!t64)
            for (int k = 0; k < nco - l && k < BNN_LANES; k++)
                tail[k] = t32[l + k];
        /* nvec == 0 (K >= 2^31) leaves up to a whole block: int64 only */
        bnn_epilogue(prm, t, co0 + l, nco - l, res_px, out_px, ocol, wbits);
    }
}
#endif

#if BNN_AVX2
/* ------------------------------------------------------------------ */
/* AVX2 core (no vector popcount instruction): Mula's nibble lookup, with
 * a 3-input carry-save adder in front of it.
 *
 * For one pixel and one block of NY = 2*nv ymm of 4 output channels (all
 * the block's channels: the weight words wb[s*wstep + l], l < 4*NY, of step
 * s), it computes the same integers as the portable core:
 *   tile[l] = sum over steps s of popcount(x[s] XOR wb[s*wstep + l])
 * where the steps s = (i, j, c) run in the order of the weight layout
 * (kernel row i, then the kw*cw words of that row, one run when sxw == cw)
 * and x[s] = x0[i*sxh + j*sxw + c].
 *
 * popcount of a 64-bit lane t = sum over its 8 bytes b of
 *   LUT[b & 15] + LUT[b >> 4],   LUT[n] = popcount(n) for n < 16 (0..4),
 * where vpshufb does the 32 byte lookups of a ymm at once, added per byte
 * (vpaddb) into a byte accumulator held in a register (bnn_popadd8).
 *
 * Steps are taken three at a time inside a run: with a, b, c the XOR
 * words of steps s, s+1, s+2 (same channel), per bit
 *   a + b + c = lo + 2*hi,  lo = a ^ b ^ c,  hi = (a & b) | ((a ^ b) & c)
 * (a full adder, 5 logic ops), so the three popcounts are
 * popcount(lo) + 2*popcount(hi): two nibble lookups instead of three, the
 * second with LUT2[n] = 2*LUT[n].  Per 3 steps and ymm this is 22 vector
 * ops instead of 24, plus the 3 broadcasts of x, shared by the NY ymm.
 * The loop is bound by this op count (removing ops speeds it up in
 * proportion), so: one pixel with all NY <= 8 ymm of the block per call
 * (the broadcasts shared 8 ways instead of 2; weights are memory operands
 * of vpxor, loaded from L1 again for each pixel at no op cost).  (Measured
 * slower or no faster here: deeper Harley-Seal trees with 7 or 15 inputs
 * or ones/twos counters kept across steps, whose counters spill out of the
 * 16 ymm registers while the 18-72 steps of one output leave little to
 * amortise their final popcounts; tiles of 3 pixels x 2 ymm; scalar popcnt
 * on the integer ALUs for some of the channels, which costs 4 macro-ops per
 * word against ~2 in the vector loop.)  When runs are whole 3-step groups
 * (3x3 kernels: kw*cw = 3*cw) a loop without per-run bookkeeping takes
 * them; otherwise the 1 or 2 steps left before a flush or the end of a run
 * go one at a time.
 *
 * Byte bound: a step adds at most 8 to a byte (4 + 4, or 24 for a group
 * of 3), so BNN_AVX2_FLUSH = 30 steps stay below 256 (8 * 30 = 240).  Then
 * vpsadbw against zero sums the 8 bytes of each 64-bit lane (= one output
 * channel) into that lane's 64-bit total, which is stored (first flush) or
 * added to the int64 tile, and the byte accumulators restart from 0.  30
 * is a multiple of 3, so runs of kw*cw = 3*cw words (3x3 kernels) are cut
 * into whole groups.  So tile = exact popcount sum, and the epilogue
 * (bnn_epilogue_avx2 = bnn_epilogue on 8 lanes) turns it into
 * acc = K - 2 * popcount.
 *
 * Registers (16 ymm): NY <= 8 byte accumulators + LUT, LUT2, nibble mask +
 * 3 broadcast x words + temporaries (GCC 12 spills none in the whole-group
 * loop; one accumulator spilled to L1 measured no slower either).
 * ------------------------------------------------------------------ */
#define BNN_NY_MAX (BNN_CO_BLOCK / 4)   /* ymm of 4 words per block */
#define BNN_AVX2_FLUSH 30     /* steps per byte-accumulator flush (8*30 < 256; a multiple of 3) */
/* nv groups of 8 words = 2*nv ymm (the NY = 2*nv of bnn_core_dispatch). */
typedef char bnn_avx2_group_is_2_ymm[(BNN_LANES == 8 && sizeof(bnn_word_t) == 8 &&
                                      BNN_NY_MAX == 2 * BNN_NV_MAX) ? 1 : -1];
typedef char bnn_avx2_flush_fits_bytes[(8 * BNN_AVX2_FLUSH < 256 && BNN_AVX2_FLUSH % 3 == 0) ? 1 : -1];

/* acc (bytes) += lut[nibble] for both nibbles of each byte of t. */
BNN_INLINE __m256i bnn_popadd8(__m256i acc, __m256i t, __m256i lut, __m256i low4)
{
    const __m256i lo = _mm256_and_si256(t, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), low4);
    acc = _mm256_add_epi8(acc, _mm256_shuffle_epi8(lut, lo));
    return _mm256_add_epi8(acc, _mm256_shuffle_epi8(lut, hi));
}

/* tile (int64, channel 4v + l at tile[4v + l]) = (first) or += the
 * per-lane byte sums of the NY accumulators, which restart from 0. */
BNN_INLINE void bnn_flush_avx2(__m256i acc[BNN_NY_MAX], const int NY, int64_t *tile, int first)
{
    const __m256i zero = _mm256_setzero_si256();
    for (int v = 0; v < NY; v++) {
        __m256i *t = (__m256i *)(tile + 4 * v);
        const __m256i sum = _mm256_sad_epu8(acc[v], zero);
        _mm256_storeu_si256(t, first ? sum : _mm256_add_epi64(_mm256_loadu_si256(t), sum));
        acc[v] = zero;
    }
}

/* Steps s, s+1, s+2 (x words x1, x2, x3; weights w, w + wstep, w + 2*wstep)
 * through one full adder into the NY byte accumulators. */
BNN_INLINE void bnn_step3_avx2(__m256i acc[BNN_NY_MAX], const int NY, __m256i x1, __m256i x2,
                               __m256i x3, const bnn_word_t *w, ptrdiff_t wstep,
                               __m256i lut, __m256i lut2, __m256i low4)
{
    for (int v = 0; v < NY; v++, w += 4) {
        const __m256i a = _mm256_xor_si256(x1, _mm256_loadu_si256((const __m256i *)w));
        const __m256i b = _mm256_xor_si256(x2, _mm256_loadu_si256((const __m256i *)(w + wstep)));
        const __m256i c = _mm256_xor_si256(x3, _mm256_loadu_si256((const __m256i *)(w + 2 * wstep)));
        const __m256i u = _mm256_xor_si256(a, b);
        const __m256i lo = _mm256_xor_si256(u, c);
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
        acc[v] = bnn_popadd8(acc[v], lo, lut, low4);
        acc[v] = bnn_popadd8(acc[v], hi, lut2, low4);
    }
}

/* x0: the pixel's first word; wb: the block's first weight word, wstep
 * words between steps (NV*LANES of the block); tile: the pixel's tile row
 * (4*NY channels, overwritten). */
BNN_INLINE void bnn_core_avx2(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                              const bnn_word_t *wb, ptrdiff_t wstep,
                              int kh, int kw, int cw, const int NY, int64_t *tile)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i lut2 = _mm256_add_epi8(lut, lut);     /* 2 * popcount(n) */
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i acc[BNN_NY_MAX];
    for (int v = 0; v < NY; v++)
        acc[v] = _mm256_setzero_si256();
    /* (j, c) fused into one run of kw*cw words when pixels are adjacent. */
    const int fused = (sxw == cw);
    const int nj = fused ? 1 : kw;
    const int nq = fused ? kw * cw : cw;
    int cnt = 0;              /* steps in the byte accumulators */
    int first = 1;            /* no flush yet: the tile is not written */
#define BNN_X3_(xq) _mm256_set1_epi64x((long long)(xq)[0]), _mm256_set1_epi64x((long long)(xq)[1]), \
                    _mm256_set1_epi64x((long long)(xq)[2])
    if (nq % 3 == 0) {
        /* Whole 3-step groups (3x3 kernels): no steps left over, and a
         * flush falls between groups (BNN_AVX2_FLUSH % 3 == 0), so the
         * loop needs no bookkeeping per run. */
        for (int i = 0; i < kh; i++)
            for (int j = 0; j < nj; j++) {
                const bnn_word_t *xp = x0 + i * sxh + j * sxw;
                for (int q = 0; q < nq; q += 3, wb += 3 * wstep) {
                    bnn_step3_avx2(acc, NY, BNN_X3_(xp + q), wb, wstep, lut, lut2, low4);
                    if ((cnt += 3) == BNN_AVX2_FLUSH) {
                        bnn_flush_avx2(acc, NY, tile, first);
                        first = cnt = 0;
                    }
                }
            }
        if (cnt)
            bnn_flush_avx2(acc, NY, tile, first);
        return;
    }
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < nj; j++) {
            const bnn_word_t *xp = x0 + i * sxh + j * sxw;
            for (int q = 0; q < nq;) {
                const int e = q + bnn_min(nq - q, BNN_AVX2_FLUSH - cnt);
                cnt += e - q;
                /* Steps q, q+1, q+2 through one full adder. */
                for (; q + 3 <= e; q += 3, wb += 3 * wstep)
                    bnn_step3_avx2(acc, NY, BNN_X3_(xp + q), wb, wstep, lut, lut2, low4);
                /* The 1 or 2 steps left before e (flush or end of run). */
                for (; q < e; q++, wb += wstep) {
                    const __m256i xb = _mm256_set1_epi64x((long long)xp[q]);
                    for (int v = 0; v < NY; v++)
                        acc[v] = bnn_popadd8(acc[v], _mm256_xor_si256(xb, _mm256_loadu_si256(
                                                 (const __m256i *)(wb + 4 * v))), lut, low4);
                }
                if (cnt == BNN_AVX2_FLUSH) {
                    bnn_flush_avx2(acc, NY, tile, first);
                    first = cnt = 0;
                }
            }
        }
    }
    if (cnt)
        bnn_flush_avx2(acc, NY, tile, first);
#undef BNN_X3_
}
#endif

#if !BNN_AVX512
/* Run the portable (or AVX2) core for np pixels (np <= BNN_P) and nv
 * vectors with constant arguments so the compiler can specialise the loops. */
BNN_INLINE void bnn_core_dispatch(const bnn_word_t *x0, ptrdiff_t sxh,
                                     ptrdiff_t sxw, ptrdiff_t pstep,
                                     const bnn_word_t *wb, int kh, int kw,
                                     int cw, int np, int nv, int64_t *tile)
{
#if BNN_AVX2
    /* One pixel x all the block's channels per call (see bnn_core_avx2). */
    const ptrdiff_t nl = (ptrdiff_t)nv * BNN_LANES;
    for (int p = 0; p < np; p++) {
        const bnn_word_t *xp = x0 + p * pstep;
        int64_t *tp = tile + p * BNN_CO_BLOCK;
        switch (nv) {
        case 4: bnn_core_avx2(xp, sxh, sxw, wb, nl, kh, kw, cw, 8, tp); break;
        case 3: bnn_core_avx2(xp, sxh, sxw, wb, nl, kh, kw, cw, 6, tp); break;
        case 2: bnn_core_avx2(xp, sxh, sxw, wb, nl, kh, kw, cw, 4, tp); break;
        default: bnn_core_avx2(xp, sxh, sxw, wb, nl, kh, kw, cw, 2, tp); break;
        }
    }
#else
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
#endif
}
#endif

/* Ask for the residual floats the epilogue of this block will add (np
 * pixels from res_px, W stride s_res_w, channels rc0 .. rc0+nco-1, wrapping
 * at cres is ignored: a hint only) before the core starts: the residual is
 * the previous layer's float output, often in L3 only, and perf showed the
 * epilogue's residual add waiting on it; the popcount core hides the fetch. */
BNN_INLINE void bnn_prefetch_residual(const float *res_px, ptrdiff_t s_res_w, int np,
                                      int rc0, int nco)
{
#if defined(__GNUC__)
    for (int p = 0; p < np; p++)
        for (int l = 0; l < nco; l += 16)      /* one 64-byte line per 16 floats */
            __builtin_prefetch(res_px + p * s_res_w + rc0 + l, 0, 3);
#else
    (void)res_px; (void)s_res_w; (void)np; (void)rc0; (void)nco;
#endif
}

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
    if (res_px)
        bnn_prefetch_residual(res_px, s_res_w, np, co0 % prm->cres, nco);
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
#if BNN_AVX2
        bnn_epilogue_avx2(prm, tile + p * BNN_CO_BLOCK, NULL, co0, nco,
                          res_px ? res_px + p * s_res_w : NULL,
                          out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
#else
        bnn_epilogue(prm, tile + p * BNN_CO_BLOCK, co0, nco,
                     res_px ? res_px + p * s_res_w : NULL,
                     out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
#endif
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
#if BNN_AVX2
/* bnn_fmax_np on 8 lanes, without branches (the scalar one mispredicts on
 * real data). */
BNN_INLINE __m256 bnn_fmax_np8(__m256 a, __m256 b)
{
    const __m256 m = _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ),
                                  _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    return _mm256_blendv_ps(b, a, m);
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
        int l = 0;
#if BNN_AVX2
        for (; l + 8 <= nco; l += 8) {
            const __m256 m0 = bnn_fmax_np8(_mm256_loadu_ps(a + l), _mm256_loadu_ps(a + BNN_CO_BLOCK + l));
            const __m256 m1 = bnn_fmax_np8(_mm256_loadu_ps(b + l), _mm256_loadu_ps(b + BNN_CO_BLOCK + l));
            const __m256 m = bnn_fmax_np8(m0, m1);
            if (o)
                _mm256_storeu_ps(o + l, m);
            if (next_thr) {
                const __m256 lt = _mm256_cmp_ps(m, _mm256_loadu_ps(next_thr + co0 + l), _CMP_LT_OQ);
                wbits[q] |= (bnn_word_t)(unsigned)_mm256_movemask_ps(lt) << ((co0 + l) % BNN_WORD_BITS);
            }
        }
#endif
        for (; l < nco; l++) {
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
    const float *mult;       /* (cout,) folded BN multiplier, or NULL */
    const float *bias;       /* (cout,) */
    int relu;                /* y = y > 0 || y != y ? y : 0 (np.maximum(y, 0)) */
    const float *thr;        /* fused pack threshold or NULL */
} bnn_fconv_params;

#define BNN_FP 4              /* pixels per register tile */
#define BNN_FCO 64            /* output channels per tile (one output word) */

#if BNN_AVX2
/* Store the low nb (1, 2, 4 or 8) bytes of m at dst (any alignment). */
BNN_INLINE void bnn_store_bytes(unsigned char *dst, uint64_t m, const int nb)
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
#define BNN_FP_AVX2 6         /* pixels of the main AVX2 tile */

BNN_INLINE void bnn_fconv_tile_avx2(const float *x0, ptrdiff_t pstep, ptrdiff_t sxh,
                                    ptrdiff_t sxw, int kh, int kw, int cin, const int kwc9,
                                    const float *wt, ptrdiff_t cout, const int P, const int V,
                                    const int full, int nco, const float *mult,
                                    const float *bias, int relu, const float *thr,
                                    float *out, ptrdiff_t s_out_w, unsigned char *bits,
                                    ptrdiff_t s_bits)
{
    __m256 acc[BNN_FP_AVX2][8];
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
            bnn_store_bytes(bits + p * s_bits, m, V);
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

/* bnn_fconv_row for AVX2: tiles of BNN_FP_AVX2 pixels, then the rest of
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
                          bnn_min(BNN_FP_AVX2, wo - wo0 - (P)))
#define BNN_FCONV_ROW(K)                                                               \
    do {                                                                               \
        int wo0 = 0;                                                                   \
        for (; wo0 + BNN_FP_AVX2 <= wo; wo0 += BNN_FP_AVX2)                            \
            BNN_FCONV_PX(K, BNN_FP_AVX2, 2);                                           \
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
        bnn_fconv_prefetch_avx2(out_row, s_out_w, bnn_min(BNN_FP_AVX2, wo), cout);
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
#endif
        }
    }
    (void)taps;
#endif
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

#include "_bconv_planes.h"

#endif /* BNNLITE_BCONV_KERNELS_H */
