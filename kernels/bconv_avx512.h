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

/* Bits-mode epilogue of one pixel from its NV accumulator registers
 * (popcounts of output channels co0 .. co0+nco-1, nco <= NV*LANES):
 * acc = K - 2*pop, bit co = acc < thr[co] (int64), at bit co % BNN_WORD_BITS
 * of *wbits. */
BNN_INLINE void bnn_avx512_bits_epilogue(const bnn_conv_params *prm, const __m512i *pop,
                                         const int NV, int co0, int nco, bnn_word_t *wbits)
{
    const __m512i kv = _mm512_set1_epi64((long long)prm->k_bits);
    for (int v = 0; v < NV; v++) {
        const int co = co0 + v * BNN_LANES;
        const int n = bnn_min(BNN_LANES, nco - v * BNN_LANES);
        const __mmask8 lm = (__mmask8)((1u << n) - 1u);
        const __m512i a = _mm512_sub_epi64(kv, _mm512_add_epi64(pop[v], pop[v]));
        const __m512i th = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lm, prm->thr + co));
        const __mmask8 m = _mm512_mask_cmplt_epi64_mask(lm, a, th);
        *wbits |= (bnn_word_t)m << (co % BNN_WORD_BITS);
    }
}

/* n <= 16 floats from p (lanes n.. zero; lm: the first n lanes): a plain
 * load when n == 16 (masked loads and stores cost a 1x1 layer 5-10%). */
BNN_INLINE __m512 bnn_avx512_load16(const float *p, int n, __mmask16 lm)
{
    return n == 2 * BNN_LANES ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(lm, p);
}

/* The residual of channels co .. co+n-1 of one pixel (lanes n.. zero):
 * rc = co % cres when cres is a multiple of 16 (then rc .. rc+15 lie in
 * one residual copy), else each lane's own co % cres. */
BNN_INLINE __m512 bnn_avx512_residual16(const float *res_px, int co, int n, __mmask16 lm,
                                        int cres, int rc)
{
    if (cres % (2 * BNN_LANES) == 0)
        return bnn_avx512_load16(res_px + rc, n, lm);
    float tmp[2 * BNN_LANES] = {0};
    for (int l = 0; l < n; l++)
        tmp[l] = res_px[(co + l) % cres];
    return _mm512_loadu_ps(tmp);
}

/* Float-mode epilogue of a tile of P pixels from their accumulator
 * registers acc[p][0 .. NV-1] (popcounts of output channels co0 ..
 * co0+nco-1, nco <= NV*LANES): acc = K - 2*pop, the float chain
 * bnn_chain16 (bnn_common.h) on 16 channels at a time, so the results are
 * those of the scalar epilogue, stored to out (if out_px) and/or packed
 * (if next_thr: bit co of wbits[p] at co % BNN_WORD_BITS).
 * Channel group outer, pixel inner: a group's constants are loaded once
 * per tile, not once per pixel; the residual channel of a group is
 * stepped along, never divided for (an idiv per 16 channels, and the
 * residual load waiting on it, was the hottest spot of a 1x1 layer). */
BNN_INLINE void bnn_avx512_float_epilogue(const bnn_conv_params *prm,
                                          __m512i acc[BNN_P][BNN_NV_MAX], const int P,
                                          const int NV, int co0, int nco,
                                          const float *res_px, ptrdiff_t s_res_w,
                                          float *out_px, ptrdiff_t s_out_w, int ocol,
                                          bnn_word_t *wbits)
{
    if (prm->k_bits > INT32_MAX) {   /* the int32 arithmetic below needs K < 2^31 */
        for (int p = 0; p < P; p++) {
            int64_t t[BNN_CO_BLOCK];
            for (int v = 0; v < NV; v++)
                _mm512_storeu_si512((void *)(t + v * BNN_LANES), acc[p][v]);
            bnn_epilogue(prm, t, co0, nco, res_px ? res_px + p * s_res_w : NULL,
                         out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
        }
        return;
    }
    /* Lanes 0-7: the low dwords of a's lanes, 8-15: those of b's. */
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14,
                                           16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i kv = _mm512_set1_epi32((int)prm->k_bits);
    const int cres = prm->cres, rp = prm->gamma != NULL;
    const float *nthr = prm->next_thr;
    bnn_word_t bits[BNN_P] = {0};
    int rc = res_px ? bnn_res_channel(co0, cres) : 0;   /* co % cres, cres % 16 == 0 */
    for (int v = 0; v < NV; v += 2, rc = (rc + 2 * BNN_LANES == cres) ? 0 : rc + 2 * BNN_LANES) {
        const int co = co0 + v * BNN_LANES;       /* a multiple of 16 */
        const int n = bnn_min(2 * BNN_LANES, nco - v * BNN_LANES);
        const __mmask16 lm = (__mmask16)((1u << n) - 1u);
        const __m512 zero = _mm512_setzero_ps();
        const __m512 sc = bnn_avx512_load16(prm->scale + co, n, lm);
        const __m512 mu = bnn_avx512_load16(prm->mult + co, n, lm);
        const __m512 bi = bnn_avx512_load16(prm->bias + co, n, lm);
        const __m512 gm = rp ? bnn_avx512_load16(prm->gamma + co, n, lm) : zero;
        const __m512 be = rp ? bnn_avx512_load16(prm->beta + co, n, lm) : zero;
        const __m512 ze = rp ? bnn_avx512_load16(prm->zeta + co, n, lm) : zero;
        const __m512 nt = nthr ? bnn_avx512_load16(nthr + co, n, lm) : zero;
        for (int p = 0; p < P; p++) {
            /* 0 <= pop <= K < 2^31: the int32 lanes hold the same integers,
             * and int32 -> float rounds as the scalar (float)acc. */
            const __m512i pc = _mm512_permutex2var_epi32(acc[p][v], even,
                                                         acc[p][v + 1 < NV ? v + 1 : v]);
            const __m512 t = _mm512_cvtepi32_ps(_mm512_sub_epi32(kv, _mm512_add_epi32(pc, pc)));
            const __m512 r = res_px ? bnn_avx512_residual16(res_px + p * s_res_w, co, n, lm,
                                                            cres, rc) : zero;
            const __m512 y = bnn_chain16(t, sc, mu, bi, res_px != NULL, r, rp, gm, be, ze);
            if (out_px) {
                if (n == 2 * BNN_LANES)
                    _mm512_storeu_ps(out_px + p * s_out_w + (co - ocol), y);
                else
                    _mm512_mask_storeu_ps(out_px + p * s_out_w + (co - ocol), lm, y);
            }
            if (nthr)
                bits[p] |= (bnn_word_t)_mm512_mask_cmp_ps_mask(lm, y, nt, _CMP_LT_OQ)
                           << (co % BNN_WORD_BITS);
        }
    }
    if (nthr)
        for (int p = 0; p < P; p++)
            wbits[p] |= bits[p];
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
    if (prm->thr) {
        for (int p = 0; p < P; p++)
            bnn_avx512_bits_epilogue(prm, acc[p], NV, co0, nco, &wbits[p]);
        return;
    }
    bnn_avx512_float_epilogue(prm, acc, P, NV, co0, nco, res_px, s_res_w, out_px, s_out_w,
                              ocol, wbits);
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
