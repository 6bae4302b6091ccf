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

/* The epilogue constants of one group of 16 channels of a pointwise run
 * (bnn_avx512_pointwise), held in registers for the whole run. */
typedef struct {
    __m512 sc, mu, bi, gm, be, ze, nt;
    __mmask16 lm;
    int n, co, rc;
    int unit;          /* every scale is 1: the product by it is skipped */
} bnn_avx512_pw_group;

BNN_INLINE bnn_avx512_pw_group bnn_avx512_pw_group_init(const bnn_conv_params *prm, int co,
                                                        int n, const int RES, const int RP)
{
    bnn_avx512_pw_group c;
    const __m512 zero = _mm512_setzero_ps();
    c.co = co;
    c.n = n;
    c.lm = (__mmask16)((1u << n) - 1u);
    c.rc = RES ? bnn_res_channel(co, prm->cres) : 0;
    c.sc = bnn_avx512_load16(prm->scale + co, n, c.lm);
    c.unit = _mm512_mask_cmp_ps_mask(c.lm, c.sc, _mm512_set1_ps(1.0f), _CMP_EQ_OQ) == c.lm;
    c.mu = bnn_avx512_load16(prm->mult + co, n, c.lm);
    c.bi = bnn_avx512_load16(prm->bias + co, n, c.lm);
    c.gm = RP ? bnn_avx512_load16(prm->gamma + co, n, c.lm) : zero;
    c.be = RP ? bnn_avx512_load16(prm->beta + co, n, c.lm) : zero;
    c.ze = RP ? bnn_avx512_load16(prm->zeta + co, n, c.lm) : zero;
    c.nt = prm->next_thr ? bnn_avx512_load16(prm->next_thr + co, n, c.lm) : zero;
    return c;
}

/* The float epilogue of one group of one pixel from its two accumulator
 * vectors (lo: channels 0-7 of the group, hi: 8-15): bnn_avx512_float_epilogue's
 * operations.  Returns the fused pack's 16 bits. */
BNN_INLINE unsigned bnn_avx512_pw_epilogue(__m512i lo, __m512i hi, const bnn_avx512_pw_group c,
                                           __m512 kf, const int RES, const int RP, int cres,
                                           int pack, const float *res_p, float *out_p)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14,
                                           16, 18, 20, 22, 24, 26, 28, 30);
    /* t = K - 2*pop, exact in float (both < 2^24): one fnmadd where the
     * integer way takes an add and a sub */
    const __m512 pc = _mm512_cvtepi32_ps(_mm512_permutex2var_epi32(lo, even, hi));
    const __m512 t = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), pc, kf);
    /* RES 1: the group's residual channels are contiguous (cres % 16 == 0);
     * RES 2: any repeat.  No branch in the loop for the common case. */
    const __m512 r = RES == 1 ? _mm512_maskz_loadu_ps(c.lm, res_p + c.rc)
                   : RES == 2 ? bnn_avx512_residual16(res_p, c.co, c.n, c.lm, cres, c.rc)
                              : _mm512_setzero_ps();
    const __m512 y = bnn_chain16_scaled(c.unit ? t : _mm512_mul_ps(t, c.sc), c.mu, c.bi, RES, r,
                                        RP, c.gm, c.be, c.ze);
    if (out_p)
        _mm512_mask_storeu_ps(out_p + c.co, c.lm, y);
    return pack ? (unsigned)_mm512_mask_cmp_ps_mask(c.lm, y, c.nt, _CMP_LT_OQ) : 0u;
}

BNN_INLINE void bnn_avx512_pw_loop(const bnn_conv_params *prm, const bnn_word_t *x0,
                                   ptrdiff_t pstep, const bnn_word_t *wb, int np, const int NV,
                                   const int RES, const int RP, int co0, int nco,
                                   const float *res_px, ptrdiff_t s_res_w,
                                   float *out_px, ptrdiff_t s_out_w,
                                   bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
    /* prm's fields in locals: the stores below could alias them, so the
     * compiler would reload each one for every pixel. */
    const int bitsmode = prm->thr != NULL, pack = prm->next_thr != NULL, cw = prm->cw;
    const int cres = prm->cres;
    const __m512 kf = _mm512_set1_ps((float)prm->k_bits);
    const __m512i kv = _mm512_set1_epi64((long long)prm->k_bits);
    /* The block's constants: two groups of 16 channels (float mode), or
     * one int64 threshold vector per 8 channels (bits mode). */
    bnn_avx512_pw_group c0, c1;
    __m512i th[BNN_NV_MAX];
    for (int v = 0; v < BNN_NV_MAX; v++)
        th[v] = _mm512_setzero_si512();
    if (bitsmode) {
        for (int v = 0; v < NV; v++) {
            const int k = bnn_min(BNN_LANES, nco - v * BNN_LANES);
            th[v] = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(
                (__mmask8)((1u << k) - 1u), prm->thr + co0 + v * BNN_LANES));
        }
    } else {
        c0 = bnn_avx512_pw_group_init(prm, co0, bnn_min(2 * BNN_LANES, nco), RES, RP);
        if (NV > 2)
            c1 = bnn_avx512_pw_group_init(prm, co0 + 2 * BNN_LANES, nco - 2 * BNN_LANES, RES, RP);
    }
    const int sh = co0 % BNN_WORD_BITS;
    const uint64_t keep = ((uint64_t)1 << nco) - 1u;   /* nco <= BNN_CO_BLOCK < 64 */
    for (int p = 0; p < np; p++) {
        const bnn_word_t *xp = x0 + p * pstep, *w = wb;
        __m512i acc[BNN_NV_MAX];
        __m512i xb = _mm512_set1_epi64((long long)xp[0]);
        for (int v = 0; v < NV; v++)
            acc[v] = _mm512_popcnt_epi64(_mm512_xor_si512(
                xb, _mm512_loadu_si512((const void *)(w + v * BNN_LANES))));
        for (int q = 1; q < cw; q++) {
            w += NV * BNN_LANES;
            xb = _mm512_set1_epi64((long long)xp[q]);
            for (int v = 0; v < NV; v++)
                acc[v] = _mm512_add_epi64(acc[v], _mm512_popcnt_epi64(_mm512_xor_si512(
                    xb, _mm512_loadu_si512((const void *)(w + v * BNN_LANES)))));
        }
        uint64_t m = 0;
        if (bitsmode) {   /* acc = K - 2*pop < thr, as int64 */
            for (int v = 0; v < NV; v++)
                m |= (uint64_t)_mm512_cmplt_epi64_mask(
                         _mm512_sub_epi64(kv, _mm512_add_epi64(acc[v], acc[v])), th[v])
                     << (v * BNN_LANES);
        } else {
            const float *rp = RES ? res_px + p * s_res_w : NULL;
            float *op = out_px ? out_px + p * s_out_w : NULL;
            m = bnn_avx512_pw_epilogue(acc[0], acc[NV > 1 ? 1 : 0], c0, kf, RES, RP, cres, pack,
                                       rp, op);
            if (NV > 2)
                m |= (uint64_t)bnn_avx512_pw_epilogue(acc[2], acc[NV > 3 ? 3 : 2], c1, kf, RES, RP,
                                                      cres, pack, rp, op) << (2 * BNN_LANES);
        }
        if (bits_px)
            bnn_pw_store_bits(bits_px, s_bits_w, p, m, sh, keep);
    }
}

/* A 1x1 conv's block of output channels (co0 .. co0+nco-1, nv vectors,
 * weights wb) over a run of np pixels (any np; pixel p at x0 + p*pstep):
 * channel block outer, pixel inner, with the block's epilogue constants in
 * registers for the whole run.  With only a few words per pixel, the
 * popcounts are a small part of a 1x1 conv; the tile core (bnn_avx512_block)
 * reloads those constants for every tile of BNN_P pixels and spills its
 * accumulators around them, which cost a 1x1 layer most of its time.
 * Outputs as bnn_avx512_block (out_px[co], no ocol); the fused pack or
 * bits-mode bits of pixel p go to the word bits_px[p*s_bits_w] that holds
 * channel co0 (set when co0 starts the word, ORed into it otherwise).  The
 * same integers and float chain as the tile core, so the same results. */
BNN_INLINE void bnn_avx512_pointwise(const bnn_conv_params *prm, const bnn_word_t *x0,
                                     ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                                     int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                                     float *out_px, ptrdiff_t s_out_w,
                                     bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
    const int res = res_px == NULL || prm->thr ? 0 : prm->cres % (2 * BNN_LANES) == 0 ? 1 : 2;
    const int rp = prm->gamma != NULL && !prm->thr;
#define BNN_PW_(NV_, R_, G_) \
    bnn_avx512_pw_loop(prm, x0, pstep, wb, np, NV_, R_, G_, co0, nco, res_px, s_res_w, out_px, \
                       s_out_w, bits_px, s_bits_w)
    BNN_PW_DISPATCH(BNN_PW_, nv, res, rp);
#undef BNN_PW_
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
