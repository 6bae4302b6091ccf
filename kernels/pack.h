/*
 * pack.h -- floats to packed bits: bit c of word c / BNN_WORD_BITS of a
 * pixel = x[c] < thr[c] (bit 1 = -1, LSB first, tail bits 0; bitpack.py).
 * Names: bnn_pack_.  Called by kernels/_bconv.pxi (pack_raw); the convs
 * fuse the same compare into their epilogues.
 */
#ifndef BNNLITE_PACK_H
#define BNNLITE_PACK_H

#include "bnn_common.h"

/* Bits l < n (n <= BNN_WORD_BITS) of one word: x[l] < thr[l]. */
#if BNN_AVX512
BNN_INLINE bnn_word_t bnn_pack_word(const float *x, const float *thr, int n)
{
    bnn_word_t bits = 0;
    for (int q = 0; q < n; q += 16) {
        const int nq = bnn_min(16, n - q);
        const __mmask16 lm = (__mmask16)((1u << nq) - 1u);
        const __m512 xv = _mm512_maskz_loadu_ps(lm, x + q);
        const __m512 tv = _mm512_maskz_loadu_ps(lm, thr + q);
        const __mmask16 m = _mm512_mask_cmp_ps_mask(lm, xv, tv, _CMP_LT_OQ);
        bits |= (bnn_word_t)m << q;
    }
    return bits;
}
#elif BNN_NEON
/* 4 channels per compare (GCC 12 leaves the scalar loop below at 9
 * instructions per channel). */
BNN_INLINE bnn_word_t bnn_pack_word(const float *x, const float *thr, int n)
{
    bnn_word_t bits = 0;
    int l = 0;
    for (; l + 4 <= n; l += 4)
        bits |= (bnn_word_t)bnn_movemask4(vcltq_f32(vld1q_f32(x + l), vld1q_f32(thr + l))) << l;
    for (; l < n; l++)
        bits |= (bnn_word_t)(x[l] < thr[l]) << l;
    return bits;
}
#else
BNN_INLINE bnn_word_t bnn_pack_word(const float *x, const float *thr, int n)
{
    bnn_word_t bits = 0;
    for (int l = 0; l < n; l++)
        bits |= (bnn_word_t)(x[l] < thr[l]) << l;
    return bits;
}
#endif

/* Pack one row of w pixels of c floats (W stride sxw floats) into out (W
 * stride sow words). */
static void bnn_pack_row(const float *x, ptrdiff_t sxw, const float *thr, int c,
                         int w, bnn_word_t *out, ptrdiff_t sow)
{
    const int nwords = (c + BNN_WORD_BITS - 1) / BNN_WORD_BITS;
    for (int px = 0; px < w; px++) {
        const float *xp = x + px * sxw;
        bnn_word_t *op = out + px * sow;
        for (int k = 0; k < nwords; k++) {
            const int c0 = k * BNN_WORD_BITS;
            op[k] = bnn_pack_word(xp + c0, thr + c0, bnn_min(BNN_WORD_BITS, c - c0));
        }
    }
}

#endif /* BNNLITE_PACK_H */
