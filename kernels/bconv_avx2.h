/*
 * bconv_avx2.h -- the AVX2 target of the binary conv (AVX2 without
 * AVX-512; -mavx2 -mpopcnt -mfma): a vpshufb nibble-lookup popcount core
 * three steps at a time through a carry-save adder, with byte accumulators
 * in ymm registers, into an int64 tile; then the scalar epilogue's
 * operations (bnn_epilogue, bnn_common.h) on 8 channels at a time.  Names:
 * bnn_avx2_.  bconv_select.h calls bnn_avx2_block, bnn_avx2_pool_block and,
 * for 1x1 convs, bnn_avx2_pointwise (as BNN_SEL_TARGET(block),
 * BNN_SEL_TARGET(pool_block), BNN_SEL_TARGET(pointwise)) in AVX2 builds;
 * planes_avx2.h reuses the epilogue and the pool.  Where the bit-plane
 * conv (planes_avx2.h) applies it is faster for 3x3 convs (1.56x-1.97x the
 * model on Zen 3, README Benchmarks); this core takes the rest, and the
 * 1x1 convs (bconv_select.h, bnn_sel_choose).
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

/* ------------------------------------------------------------------ */
/* The pointwise run: a 1x1 conv's block of output channels over a run of
 * pixels, channel block outer, pixel inner (bnn_avx2_pointwise).
 *
 * The nibble lookup of bnn_avx2_core splits each XOR word t = x ^ w into
 * its nibbles, t & 15 and (t >> 4) & 15 (3 ops per ymm and step).  Those
 * are (x & 15) ^ (w & 15) and ((x >> 4) & 15) ^ ((w >> 4) & 15): with the
 * weights' nibbles split once per run (the run's pixels share them) and a
 * pixel's once per step (its NY ymm share them), a ymm and step costs
 * 2 XOR + 2 vpshufb + 2 adds, against 8 ops (7.3 with the full adder, which
 * no longer pays).  A pixel's sums then go to the float chain in registers
 * (the tile core stores them as int64 and reloads them).  Per block of 32
 * channels: 1.1x-1.75x the tile core on ReActNet's 1x1 layers (Cin 32-512).
 * ------------------------------------------------------------------ */
/* Words per pixel that the pointwise run takes (Cin <= 2048): its split
 * weights, 512 bytes a word, are on the stack. */
#define BNN_AVX2_PW_MAX_CW 32
/* Pixels ahead of the one in hand whose residual is prefetched. */
#define BNN_AVX2_PW_AHEAD 8

/* The 8 int32 popcount sums of a group of 8 channels from its byte
 * accumulators a (channels 0-3, one per 64-bit lane) and b (4-7), in
 * channel order: vpsadbw sums each lane's bytes (< 2^16, so the 16-bit
 * pack is exact); per 128-bit half the pack gives [a0 a1 b0 b1 | a2 a3 b2 b3]
 * as int32, and a 64-bit permute puts them in order (immediates only, no
 * index register held through the loop). */
BNN_INLINE __m256i bnn_avx2_pw_sums(__m256i a, __m256i b)
{
    const __m256i zero = _mm256_setzero_si256();
    const __m256i s = _mm256_packus_epi32(_mm256_sad_epu8(a, zero), _mm256_sad_epu8(b, zero));
    return _mm256_permute4x64_epi64(s, 0xd8);   /* 64-bit lanes 0, 2, 1, 3 */
}

/* The nibble table (LUT of bnn_avx2_core) and mask. */
#define BNN_AVX2_PW_LUT_                                                                \
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, \
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4); \
    const __m256i low4 = _mm256_set1_epi8(0x0f)

/* The block's weights split into nibbles: wn[2*(q*NY + v)] = w & 15 and
 * wn[2*(q*NY + v) + 1] = (w >> 4) & 15 of ymm v of step q (cw <=
 * BNN_AVX2_PW_MAX_CW steps, wstep = NV*LANES words apart). */
BNN_INLINE void bnn_avx2_pw_split(const bnn_word_t *wb, int cw, const int NV, __m256i *wn)
{
    const int NY = 2 * NV;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int q = 0; q < cw; q++)
        for (int v = 0; v < NY; v++, wn += 2) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(wb + q * NV * BNN_LANES + 4 * v));
            wn[0] = _mm256_and_si256(w, low4);
            wn[1] = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
        }
}

/* Steps q .. e-1 of the pixel at xp (e = q + at most BNN_AVX2_FLUSH: the
 * byte bound of bnn_avx2_core; a step adds at most 4 + 4 to a byte) into
 * pc[g], the popcount sums of channels 8g .. 8g+7 of the block. */
BNN_INLINE void bnn_avx2_pw_chunk(const bnn_word_t *xp, const __m256i *wn, int q, int e,
                                  const int NV, __m256i pc[BNN_NV_MAX], __m256i lut, __m256i low4)
{
    const int NY = 2 * NV;
    __m256i acc[BNN_AVX2_NY_MAX];
    for (int v = 0; v < NY; v++)
        acc[v] = _mm256_setzero_si256();
    for (wn += 2 * q * NY; q < e; q++, wn += 2 * NY) {
        const __m256i xb = _mm256_set1_epi64x((long long)xp[q]);
        const __m256i xl = _mm256_and_si256(xb, low4);
        const __m256i xh = _mm256_and_si256(_mm256_srli_epi16(xb, 4), low4);
        for (int v = 0; v < NY; v++)
            acc[v] = _mm256_add_epi8(acc[v], _mm256_add_epi8(
                _mm256_shuffle_epi8(lut, _mm256_xor_si256(xl, wn[2 * v])),
                _mm256_shuffle_epi8(lut, _mm256_xor_si256(xh, wn[2 * v + 1]))));
    }
    for (int g = 0; g < NV; g++)
        pc[g] = bnn_avx2_pw_sums(acc[2 * g], acc[2 * g + 1]);
}

/* All cw steps of one pixel: one flush up to Cin = 64 * BNN_AVX2_FLUSH. */
BNN_INLINE void bnn_avx2_pw_count(const bnn_word_t *xp, const __m256i *wn, int cw, const int NV,
                                  __m256i pc[BNN_NV_MAX], __m256i lut, __m256i low4)
{
    bnn_avx2_pw_chunk(xp, wn, 0, bnn_min(cw, BNN_AVX2_FLUSH), NV, pc, lut, low4);
    for (int q = BNN_AVX2_FLUSH; q < cw; q += BNN_AVX2_FLUSH) {
        __m256i more[BNN_NV_MAX];
        bnn_avx2_pw_chunk(xp, wn, q, bnn_min(cw, q + BNN_AVX2_FLUSH), NV, more, lut, low4);
        for (int g = 0; g < NV; g++)
            pc[g] = _mm256_add_epi32(pc[g], more[g]);
    }
}

/* Lanes < n of a group (n <= 8). */
BNN_INLINE __m256i bnn_avx2_lanes(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* n <= 8 floats from p (lanes n.. zero; lm = bnn_avx2_lanes(n)): a plain
 * load when n == 8. */
BNN_INLINE __m256 bnn_avx2_load8(const float *p, int n, __m256i lm)
{
    return n == BNN_LANES ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lm);
}

/* The epilogue constants of one group of 8 channels co .. co+n-1 of a
 * pointwise run, loaded once for the whole run. */
typedef struct {
    __m256 sc, mu, bi, gm, be, ze, nt;
    __m256 kf, two;    /* K and 2 (float) */
    __m256i lm;        /* lanes < n */
    int n, co, rc;     /* rc = co % cres (used when cres % 8 == 0) */
} bnn_avx2_pw_group;

BNN_INLINE bnn_avx2_pw_group bnn_avx2_pw_group_init(const bnn_conv_params *prm, int co, int n,
                                                    const int RES, const int RP)
{
    bnn_avx2_pw_group c;
    const __m256 zero = _mm256_setzero_ps();
    c.co = co;
    c.n = n;
    c.kf = _mm256_set1_ps((float)prm->k_bits);
    c.two = _mm256_set1_ps(2.0f);
    c.lm = bnn_avx2_lanes(n);
    c.rc = RES ? bnn_res_channel(co, prm->cres) : 0;
    c.sc = bnn_avx2_load8(prm->scale + co, n, c.lm);
    c.mu = bnn_avx2_load8(prm->mult + co, n, c.lm);
    c.bi = bnn_avx2_load8(prm->bias + co, n, c.lm);
    c.gm = RP ? bnn_avx2_load8(prm->gamma + co, n, c.lm) : zero;
    c.be = RP ? bnn_avx2_load8(prm->beta + co, n, c.lm) : zero;
    c.ze = RP ? bnn_avx2_load8(prm->zeta + co, n, c.lm) : zero;
    c.nt = prm->next_thr ? bnn_avx2_load8(prm->next_thr + co, n, c.lm) : zero;
    return c;
}

/* The float epilogue of one group of one pixel from its popcount sums pc:
 * t = K - 2*pop, exact in float (both < 2^24), as one fnmadd; then
 * bnn_chain8, so the floats of bnn_avx2_epilogue8.  full: all 8 lanes are
 * channels (else masked loads and stores).  RES 1: the group's residual
 * channels are contiguous (cres % 8 == 0); RES 2: any repeat.  Returns the
 * fused pack's 8 bits. */
BNN_INLINE unsigned bnn_avx2_pw_epilogue(__m256i pc, const bnn_avx2_pw_group *c, int full,
                                         const int RES, const int RP, int cres,
                                         int pack, const float *res_p, float *out_p)
{
    const __m256 t = _mm256_fnmadd_ps(c->two, _mm256_cvtepi32_ps(pc), c->kf);
    __m256 r = _mm256_setzero_ps();
    if (RES == 1) {
        r = full ? _mm256_loadu_ps(res_p + c->rc) : _mm256_maskload_ps(res_p + c->rc, c->lm);
    } else if (RES == 2) {
        float tmp[BNN_LANES] = {0};
        for (int l = 0; l < c->n; l++)
            tmp[l] = res_p[(c->co + l) % cres];
        r = _mm256_loadu_ps(tmp);
    }
    const __m256 y = bnn_chain8(t, c->sc, c->mu, c->bi, RES != 0, r, RP, c->gm, c->be, c->ze);
    if (out_p) {
        if (full)
            _mm256_storeu_ps(out_p + c->co, y);
        else
            _mm256_maskstore_ps(out_p + c->co, c->lm, y);
    }
    return pack ? (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(y, c->nt, _CMP_LT_OQ)) : 0u;
}

/* Bits mode: acc = K - 2*pop < thr[co], as int32 (K < 2^24), the block's
 * thresholds loaded once. */
BNN_INLINE void bnn_avx2_pw_bits_loop(const bnn_conv_params *prm, const bnn_word_t *x0,
                                      ptrdiff_t pstep, const bnn_word_t *wb, int np,
                                      const int NV, int co0, int nco,
                                      bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
    BNN_AVX2_PW_LUT_;
    const int cw = prm->cw;
    __m256i wn[2 * BNN_AVX2_PW_MAX_CW * BNN_AVX2_NY_MAX];
    bnn_avx2_pw_split(wb, cw, NV, wn);
    const __m256i kv = _mm256_set1_epi32((int)prm->k_bits);
    __m256i th[BNN_NV_MAX];
    for (int g = 0; g < NV; g++) {
        const int n = bnn_min(BNN_LANES, nco - g * BNN_LANES);
        const int32_t *t = prm->thr + co0 + g * BNN_LANES;
        th[g] = n == BNN_LANES ? _mm256_loadu_si256((const __m256i *)t)
                               : _mm256_maskload_epi32((const int *)t, bnn_avx2_lanes(n));
    }
    const int sh = co0 % BNN_WORD_BITS;
    const uint64_t keep = ((uint64_t)1 << nco) - 1u;   /* nco <= BNN_CO_BLOCK < 64 */
    for (int p = 0; p < np; p++) {
        __m256i pc[BNN_NV_MAX];
        bnn_avx2_pw_count(x0 + p * pstep, wn, cw, NV, pc, lut, low4);
        uint64_t m = 0;
        for (int g = 0; g < NV; g++)
            m |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(
                     th[g], _mm256_sub_epi32(kv, _mm256_add_epi32(pc[g], pc[g]))))) << (g * BNN_LANES);
        if (bits_px)
            bnn_pw_store_bits(bits_px, s_bits_w, p, m, sh, keep);
    }
}

/* Float mode: the block's constants (NV groups) loaded once, then the
 * pixels. */
BNN_INLINE void bnn_avx2_pw_loop(const bnn_conv_params *prm, const bnn_word_t *x0,
                                 ptrdiff_t pstep, const bnn_word_t *wb, int np, const int NV,
                                 const int RES, const int RP, int co0, int nco,
                                 const float *res_px, ptrdiff_t s_res_w,
                                 float *out_px, ptrdiff_t s_out_w,
                                 bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
    BNN_AVX2_PW_LUT_;
    /* prm's fields in locals: the stores below could alias them, so the
     * compiler would reload each one for every pixel. */
    const int pack = prm->next_thr != NULL, cw = prm->cw, cres = prm->cres;
    __m256i wn[2 * BNN_AVX2_PW_MAX_CW * BNN_AVX2_NY_MAX];
    bnn_avx2_pw_split(wb, cw, NV, wn);
    bnn_avx2_pw_group c[BNN_NV_MAX];
    for (int g = 0; g < NV; g++)
        c[g] = bnn_avx2_pw_group_init(prm, co0 + g * BNN_LANES,
                                      bnn_min(BNN_LANES, nco - g * BNN_LANES), RES, RP);
    const int last_full = nco == NV * BNN_LANES;
    const int sh = co0 % BNN_WORD_BITS;
    const uint64_t keep = ((uint64_t)1 << nco) - 1u;
    const int rc0 = RES ? c[0].rc : 0;
    for (int p = 0; p < np; p++) {
        __m256i pc[BNN_NV_MAX];
        if (RES && p + BNN_AVX2_PW_AHEAD < np)   /* the residual, often in L2 only: ask early */
            for (int l = 0; l < NV * BNN_LANES; l += 16)
                _mm_prefetch((const char *)(res_px + (p + BNN_AVX2_PW_AHEAD) * s_res_w + rc0 + l),
                             _MM_HINT_T0);
        bnn_avx2_pw_count(x0 + p * pstep, wn, cw, NV, pc, lut, low4);
        const float *rp = RES ? res_px + p * s_res_w : NULL;
        float *op = out_px ? out_px + p * s_out_w : NULL;
        /* The constants from memory (an operand of each use), not held
         * in registers through the popcounts, which spilled their
         * accumulators for them: cp is c, but the compiler cannot know it
         * before the popcounts are done. */
        const bnn_avx2_pw_group *cp = c;
        __asm__("" : "+r"(cp) : "x"(pc[0]));
        uint64_t m = 0;
        for (int g = 0; g < NV; g++) {
            const int full = g < NV - 1 || __builtin_expect(last_full, 1);
            m |= (uint64_t)bnn_avx2_pw_epilogue(pc[g], &cp[g], full, RES, RP, cres, pack, rp, op)
                 << (g * BNN_LANES);
        }
        if (bits_px)
            bnn_pw_store_bits(bits_px, s_bits_w, p, m, sh, keep);
    }
}
#undef BNN_AVX2_PW_LUT_

/* A 1x1 conv's block of output channels (co0 .. co0+nco-1, nv groups of 8,
 * weights wb) over a run of np pixels (any np; pixel p at x0 + p*pstep):
 * the contract of bnn_avx512_pointwise (bconv_avx512.h), for
 * bconv_select.h's BNN_SEL_TARGET(pointwise).  Channel block outer, pixel
 * inner: the block's epilogue constants are loaded once for the run (the
 * tile core, bnn_avx2_block, reloads them for every pixel), and a pixel's
 * popcounts go from the byte accumulators to the float chain in registers
 * (the tile core stores them as int64 and reloads them).  The same integers
 * as the tile core (per-pixel sums of the nibble lookups, exact) and the
 * same float chain, so the same results. */
BNN_INLINE void bnn_avx2_pointwise(const bnn_conv_params *prm, const bnn_word_t *x0,
                                   ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                                   int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                                   float *out_px, ptrdiff_t s_out_w,
                                   bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
#define BNN_PWB_(NV_) bnn_avx2_pw_bits_loop(prm, x0, pstep, wb, np, NV_, co0, nco, bits_px, s_bits_w)
    if (prm->thr) {
        switch (nv) {
        case 4: BNN_PWB_(4); return;
        case 3: BNN_PWB_(3); return;
        case 2: BNN_PWB_(2); return;
        default: BNN_PWB_(1); return;
        }
    }
#undef BNN_PWB_
    const int res = res_px == NULL ? 0 : prm->cres % BNN_LANES == 0 ? 1 : 2;
    const int rp = prm->gamma != NULL;
#define BNN_PW_(NV_, R_, G_) \
    bnn_avx2_pw_loop(prm, x0, pstep, wb, np, NV_, R_, G_, co0, nco, res_px, s_res_w, out_px, \
                     s_out_w, bits_px, s_bits_w)
    BNN_PW_DISPATCH(BNN_PW_, nv, res, rp);
#undef BNN_PW_
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
