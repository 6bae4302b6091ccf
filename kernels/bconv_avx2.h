/*
 * bconv_avx2.h -- the AVX2 target of the binary conv (AVX2 without
 * AVX-512; -mavx2 -mpopcnt -mfma): a vpshufb nibble-lookup popcount core
 * three steps at a time through a carry-save adder, with byte accumulators
 * in ymm registers, into an int64 tile; then the scalar epilogue's
 * operations (bnn_epilogue, bnn_common.h) on 8 channels at a time.  Names:
 * bnn_avx2_.  bconv_select.h calls bnn_avx2_block and bnn_avx2_pool_block
 * (as BNN_SEL_TARGET(block), BNN_SEL_TARGET(pool_block)) in AVX2 builds;
 * planes_avx2.h reuses the epilogue and the pool.  Where the bit-plane
 * conv (planes_avx2.h) applies it is faster (1.56x-1.97x the model on Zen 3,
 * README Benchmarks); this core takes the rest (bconv_select.h,
 * bnn_sel_choose).
 */
#ifndef BNNLITE_BCONV_AVX2_H
#define BNNLITE_BCONV_AVX2_H

#include "bnn_common.h"

#if BNN_AVX2
/* The scalar epilogue (bnn_epilogue) on one group of 8 channels co .. co+7
 * of one pixel: the same per-channel integer and float32 operations in the
 * same order (bnn_chain8), so the results are identical.
 * a: acc = K - 2*popcount as int32 lanes (|acc| <= K < 2^31).  rc: the
 * residual channel of co when cres is a multiple of 8 (see below).  Returns
 * the 8 bits (bits mode, or the fused pack), lane l at bit l. */
BNN_INLINE unsigned bnn_avx2_epilogue8(const bnn_conv_params *prm, __m256i a, int co,
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
    const __m256 y = bnn_chain8(
        _mm256_cvtepi32_ps(a), _mm256_loadu_ps(prm->scale + co), _mm256_loadu_ps(prm->mult + co),
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
BNN_INLINE void bnn_avx2_epilogue(const bnn_conv_params *prm, const int64_t *t64,
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
        bits |= (bnn_word_t)bnn_avx2_epilogue8(prm, a, co, res_px, rc, out_px, ocol)
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
 * (vpaddb) into a byte accumulator held in a register (bnn_avx2_popadd8).
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
 * (bnn_avx2_epilogue = bnn_epilogue on 8 lanes) turns it into
 * acc = K - 2 * popcount.
 *
 * Registers (16 ymm): NY <= 8 byte accumulators + LUT, LUT2, nibble mask +
 * 3 broadcast x words + temporaries (GCC 12 spills none in the whole-group
 * loop; one accumulator spilled to L1 measured no slower either).
 * ------------------------------------------------------------------ */
#define BNN_AVX2_NY_MAX (BNN_CO_BLOCK / 4)   /* ymm of 4 words per block */
#define BNN_AVX2_FLUSH 30     /* steps per byte-accumulator flush (8*30 < 256; a multiple of 3) */
/* nv groups of 8 words = 2*nv ymm (the NY = 2*nv of bnn_port_core_tile). */
typedef char bnn_avx2_group_is_2_ymm[(BNN_LANES == 8 && sizeof(bnn_word_t) == 8 &&
                                      BNN_AVX2_NY_MAX == 2 * BNN_NV_MAX) ? 1 : -1];
typedef char bnn_avx2_flush_fits_bytes[(8 * BNN_AVX2_FLUSH < 256 && BNN_AVX2_FLUSH % 3 == 0) ? 1 : -1];

/* acc (bytes) += lut[nibble] for both nibbles of each byte of t. */
BNN_INLINE __m256i bnn_avx2_popadd8(__m256i acc, __m256i t, __m256i lut, __m256i low4)
{
    const __m256i lo = _mm256_and_si256(t, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), low4);
    acc = _mm256_add_epi8(acc, _mm256_shuffle_epi8(lut, lo));
    return _mm256_add_epi8(acc, _mm256_shuffle_epi8(lut, hi));
}

/* tile (int64, channel 4v + l at tile[4v + l]) = (first) or += the
 * per-lane byte sums of the NY accumulators, which restart from 0. */
BNN_INLINE void bnn_avx2_flush(__m256i acc[BNN_AVX2_NY_MAX], const int NY, int64_t *tile, int first)
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
BNN_INLINE void bnn_avx2_step3(__m256i acc[BNN_AVX2_NY_MAX], const int NY, __m256i x1, __m256i x2,
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
        acc[v] = bnn_avx2_popadd8(acc[v], lo, lut, low4);
        acc[v] = bnn_avx2_popadd8(acc[v], hi, lut2, low4);
    }
}

/* x0: the pixel's first word; wb: the block's first weight word, wstep
 * words between steps (NV*LANES of the block); tile: the pixel's tile row
 * (4*NY channels, overwritten). */
BNN_INLINE void bnn_avx2_core(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                              const bnn_word_t *wb, ptrdiff_t wstep,
                              int kh, int kw, int cw, const int NY, int64_t *tile)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i lut2 = _mm256_add_epi8(lut, lut);     /* 2 * popcount(n) */
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i acc[BNN_AVX2_NY_MAX];
    for (int v = 0; v < NY; v++)
        acc[v] = _mm256_setzero_si256();
    const int nj = bnn_row_runs(kw, cw, sxw), nq = bnn_run_words(kw, cw, sxw);
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
                    bnn_avx2_step3(acc, NY, BNN_X3_(xp + q), wb, wstep, lut, lut2, low4);
                    if ((cnt += 3) == BNN_AVX2_FLUSH) {
                        bnn_avx2_flush(acc, NY, tile, first);
                        first = cnt = 0;
                    }
                }
            }
        if (cnt)
            bnn_avx2_flush(acc, NY, tile, first);
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
                    bnn_avx2_step3(acc, NY, BNN_X3_(xp + q), wb, wstep, lut, lut2, low4);
                /* The 1 or 2 steps left before e (flush or end of run). */
                for (; q < e; q++, wb += wstep) {
                    const __m256i xb = _mm256_set1_epi64x((long long)xp[q]);
                    for (int v = 0; v < NY; v++)
                        acc[v] = bnn_avx2_popadd8(acc[v], _mm256_xor_si256(xb, _mm256_loadu_si256(
                                                 (const __m256i *)(wb + 4 * v))), lut, low4);
                }
                if (cnt == BNN_AVX2_FLUSH) {
                    bnn_avx2_flush(acc, NY, tile, first);
                    first = cnt = 0;
                }
            }
        }
    }
    if (cnt)
        bnn_avx2_flush(acc, NY, tile, first);
#undef BNN_X3_
}

/* Run the AVX2 core for np pixels (np <= BNN_P) and nv vectors with
 * constant arguments so the compiler can specialise the loops. */
BNN_INLINE void bnn_avx2_core_tile(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                                   ptrdiff_t pstep, const bnn_word_t *wb, int kh, int kw,
                                   int cw, int np, int nv, int64_t *tile)
{
    /* One pixel x all the block's channels per call (see bnn_avx2_core). */
    const ptrdiff_t nl = (ptrdiff_t)nv * BNN_LANES;
    for (int p = 0; p < np; p++) {
        const bnn_word_t *xp = x0 + p * pstep;
        int64_t *tp = tile + p * BNN_CO_BLOCK;
        switch (nv) {
        case 4: bnn_avx2_core(xp, sxh, sxw, wb, nl, kh, kw, cw, 8, tp); break;
        case 3: bnn_avx2_core(xp, sxh, sxw, wb, nl, kh, kw, cw, 6, tp); break;
        case 2: bnn_avx2_core(xp, sxh, sxw, wb, nl, kh, kw, cw, 4, tp); break;
        default: bnn_avx2_core(xp, sxh, sxw, wb, nl, kh, kw, cw, 2, tp); break;
        }
    }
}

/* Core + epilogue of np (<= BNN_P) pixels x one output-channel block: the
 * contract of bnn_port_block (bconv_portable.h). */
BNN_INLINE void bnn_avx2_block(const bnn_conv_params *prm, const bnn_word_t *x0,
                               ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                               int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                               float *out_px, ptrdiff_t s_out_w, int ocol,
                               bnn_word_t *wbits)
{
    int64_t tile[BNN_P * BNN_CO_BLOCK] __attribute__((aligned(64)));
    bnn_avx2_core_tile(x0, prm->sxh, prm->sxw, pstep, wb, prm->kh, prm->kw, prm->cw,
                       np, nv, tile);
    for (int p = 0; p < np; p++)
        bnn_avx2_epilogue(prm, tile + p * BNN_CO_BLOCK, NULL, co0, nco,
                          res_px ? res_px + p * s_res_w : NULL,
                          out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
}

/* bnn_fmax_np on 8 lanes, without branches (the scalar one mispredicts on
 * real data). */
BNN_INLINE __m256 bnn_avx2_fmax8(__m256 a, __m256 b)
{
    const __m256 m = _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ),
                                  _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    return _mm256_blendv_ps(b, a, m);
}

/* 2x2 max-pool of one block, 8 channels at a time: the contract of
 * bnn_port_pool_block (bconv_portable.h). */
BNN_INLINE void bnn_avx2_pool_block(const float *y0, const float *y1, int npool, int co0,
                                    int nco, const float *next_thr, float *out_px,
                                    ptrdiff_t s_out_w, bnn_word_t *wbits)
{
    for (int q = 0; q < npool; q++) {
        const float *a = y0 + 2 * q * BNN_CO_BLOCK, *b = y1 + 2 * q * BNN_CO_BLOCK;
        float *o = out_px ? out_px + q * s_out_w + co0 : NULL;
        int l = 0;
        for (; l + 8 <= nco; l += 8) {
            const __m256 m0 = bnn_avx2_fmax8(_mm256_loadu_ps(a + l), _mm256_loadu_ps(a + BNN_CO_BLOCK + l));
            const __m256 m1 = bnn_avx2_fmax8(_mm256_loadu_ps(b + l), _mm256_loadu_ps(b + BNN_CO_BLOCK + l));
            const __m256 m = bnn_avx2_fmax8(m0, m1);
            if (o)
                _mm256_storeu_ps(o + l, m);
            if (next_thr) {
                const __m256 lt = _mm256_cmp_ps(m, _mm256_loadu_ps(next_thr + co0 + l), _CMP_LT_OQ);
                wbits[q] |= (bnn_word_t)(unsigned)_mm256_movemask_ps(lt) << ((co0 + l) % BNN_WORD_BITS);
            }
        }
        bnn_pool_lanes(a, b, l, nco, co0, next_thr, o, &wbits[q]);
    }
}
#endif /* BNN_AVX2 */
#endif /* BNNLITE_BCONV_AVX2_H */
