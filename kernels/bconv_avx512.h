/*
 * bconv_avx512.h -- the AVX-512 target of the binary conv (-mavx512f/bw/vl/
 * dq/vpopcntdq -mfma): 512-bit vpopcntq, a register tile of BNN_P pixels x
 * BNN_CO_BLOCK output channels of int64 accumulators, and the epilogue on
 * those registers, 16 channels at a time.  Names: bnn_avx512_.
 * bconv_select.h calls bnn_avx512_block and bnn_avx512_pool_block (as
 * BNN_SEL_TARGET(block), BNN_SEL_TARGET(pool_block)) in AVX-512 builds.
 */
#ifndef BNNLITE_BCONV_AVX512_H
#define BNNLITE_BCONV_AVX512_H

#include "bnn_common.h"

#if BNN_AVX512
/* The vector path assumes one word per 64-bit lane. */
typedef char bnn_avx512_word_is_epi64[(sizeof(bnn_word_t) * BNN_LANES == 64) ? 1 : -1];

/* acc[p][v] lane l = sum over (i, j, c) of
 *     popcount(x0[p*pstep + i*sxh + j*sxw + c] XOR wb[((i*kw + j)*cw + c)*NV*LANES + v*LANES + l]).
 * (j, c) in runs (bnn_row_runs, bnn_common.h).  The accumulators stay in
 * registers: the caller runs the epilogue on them directly
 * (bnn_avx512_epilogue). */
BNN_INLINE void bnn_avx512_core(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                                ptrdiff_t pstep, const bnn_word_t *wb, int kh, int kw,
                                int cw, const int P, const int NV,
                                __m512i acc[BNN_P][BNN_NV_MAX])
{
    for (int p = 0; p < P; p++)
        for (int v = 0; v < NV; v++)
            acc[p][v] = _mm512_setzero_si512();
    const int nj = bnn_row_runs(kw, cw, sxw), nq = bnn_run_words(kw, cw, sxw);
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
 * (co % BNN_WORD_BITS).  The float chain is bnn_chain16 (bnn_common.h),
 * so the results are those of the scalar epilogue. */
BNN_INLINE void bnn_avx512_epilogue(const bnn_conv_params *prm, const __m512i *pop,
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
        __m512 r = _mm512_setzero_ps();
        if (res_px) {
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
        }
        const int rp = prm->gamma != NULL;
        y = bnn_chain16(y, _mm512_maskz_loadu_ps(lm, prm->scale + co),
                        _mm512_maskz_loadu_ps(lm, prm->mult + co),
                        _mm512_maskz_loadu_ps(lm, prm->bias + co), res_px != NULL, r, rp,
                        rp ? _mm512_maskz_loadu_ps(lm, prm->gamma + co) : r,
                        rp ? _mm512_maskz_loadu_ps(lm, prm->beta + co) : r,
                        rp ? _mm512_maskz_loadu_ps(lm, prm->zeta + co) : r);
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
BNN_INLINE void bnn_avx512_tile(const bnn_conv_params *prm, const bnn_word_t *x0,
                                ptrdiff_t pstep, const bnn_word_t *wb, const int P,
                                const int NV, int co0, int nco,
                                const float *res_px, ptrdiff_t s_res_w,
                                float *out_px, ptrdiff_t s_out_w, int ocol,
                                bnn_word_t *wbits)
{
    __m512i acc[BNN_P][BNN_NV_MAX];
    bnn_avx512_core(x0, prm->sxh, prm->sxw, pstep, wb, prm->kh, prm->kw, prm->cw, P, NV, acc);
    for (int p = 0; p < P; p++)
        bnn_avx512_epilogue(prm, acc[p], NV, co0, nco,
                            res_px ? res_px + p * s_res_w : NULL,
                            out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
}

/* Core + epilogue of np (<= BNN_P) pixels x one output-channel block: the
 * contract of bnn_port_block (bconv_portable.h). */
BNN_INLINE void bnn_avx512_block(const bnn_conv_params *prm, const bnn_word_t *x0,
                                 ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                                 int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                                 float *out_px, ptrdiff_t s_out_w, int ocol,
                                 bnn_word_t *wbits)
{
    /* Constant P and NV so the accumulators live in registers. */
#define BNN_TILE_(P_, NV_, x_, r_, o_, wb_) \
    bnn_avx512_tile(prm, x_, pstep, wb, P_, NV_, co0, nco, r_, s_res_w, o_, s_out_w, ocol, wb_)
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
}

BNN_INLINE __m512 bnn_avx512_fmax16(__m512 a, __m512 b)
{
    const __mmask16 m = _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) |
                        _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(m, b, a);
}

/* 2x2 max-pool of one block, 16 channels at a time: the contract of
 * bnn_port_pool_block (bconv_portable.h). */
BNN_INLINE void bnn_avx512_pool_block(const float *y0, const float *y1, int npool, int co0,
                                      int nco, const float *next_thr, float *out_px,
                                      ptrdiff_t s_out_w, bnn_word_t *wbits)
{
    for (int q = 0; q < npool; q++) {
        const float *a = y0 + 2 * q * BNN_CO_BLOCK, *b = y1 + 2 * q * BNN_CO_BLOCK;
        float *o = out_px ? out_px + q * s_out_w + co0 : NULL;
        for (int g = 0; g < nco; g += 16) {
            const __mmask16 lm = (__mmask16)((1u << bnn_min(16, nco - g)) - 1u);
            const __m512 m0 = bnn_avx512_fmax16(_mm512_load_ps(a + g), _mm512_load_ps(a + BNN_CO_BLOCK + g));
            const __m512 m1 = bnn_avx512_fmax16(_mm512_load_ps(b + g), _mm512_load_ps(b + BNN_CO_BLOCK + g));
            const __m512 m = bnn_avx512_fmax16(m0, m1);
            if (o)
                _mm512_mask_storeu_ps(o + g, lm, m);
            if (next_thr) {
                const __m512 nt = _mm512_maskz_loadu_ps(lm, next_thr + co0 + g);
                const __mmask16 bm = _mm512_mask_cmp_ps_mask(lm, m, nt, _CMP_LT_OQ);
                wbits[q] |= (bnn_word_t)bm << ((co0 + g) % BNN_WORD_BITS);
            }
        }
    }
}
#endif /* BNN_AVX512 */
#endif /* BNNLITE_BCONV_AVX512_H */
