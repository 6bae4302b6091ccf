/*
 * bconv_portable.h -- the portable target of the binary conv (plain C,
 * __builtin_popcountll): the popcount core and the epilogue of one block.
 * Names: bnn_port_.  bconv_select.h calls bnn_port_block and
 * bnn_port_pool_block (as BNN_SEL_TARGET(block), BNN_SEL_TARGET(pool_block))
 * when the build has neither AVX2 nor AVX-512.  The model of the others:
 * bconv_avx2.h and bconv_avx512.h compute the very same integers and floats.
 */
#ifndef BNNLITE_BCONV_PORTABLE_H
#define BNNLITE_BCONV_PORTABLE_H

#include "bnn_common.h"

/* Portable core: tile[p * BNN_CO_BLOCK + l] = popcount(x XOR w) summed over
 * (kh, kw, cw) for P pixels x NV*LANES output channels of one block. */
BNN_INLINE void bnn_port_core(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                              ptrdiff_t pstep, const bnn_word_t *wb, int kh, int kw,
                              int cw, const int P, const int NV, int64_t *tile)
{
    const int nl = NV * BNN_LANES;
    for (int p = 0; p < P; p++)
        for (int l = 0; l < nl; l++)
            tile[p * BNN_CO_BLOCK + l] = 0;
    const int nj = bnn_row_runs(kw, cw, sxw), nq = bnn_run_words(kw, cw, sxw);
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

/* Run the portable core for np pixels (np <= BNN_P) and nv vectors with
 * constant arguments so the compiler can specialise the loops. */
BNN_INLINE void bnn_port_core_tile(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                                   ptrdiff_t pstep, const bnn_word_t *wb, int kh, int kw,
                                   int cw, int np, int nv, int64_t *tile)
{
    if (np == BNN_P) {
        switch (nv) {
        case 4: bnn_port_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 4, tile); return;
        case 3: bnn_port_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 3, tile); return;
        case 2: bnn_port_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 2, tile); return;
        default: bnn_port_core(x0, sxh, sxw, pstep, wb, kh, kw, cw, BNN_P, 1, tile); return;
        }
    }
    for (int p = 0; p < np; p++) {
        const bnn_word_t *xp = x0 + p * pstep;
        int64_t *tp = tile + p * BNN_CO_BLOCK;
        switch (nv) {
        case 4: bnn_port_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 4, tp); break;
        case 3: bnn_port_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 3, tp); break;
        case 2: bnn_port_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 2, tp); break;
        default: bnn_port_core(xp, sxh, sxw, pstep, wb, kh, kw, cw, 1, 1, tp); break;
        }
    }
}

/* Core + epilogue of np (<= BNN_P) pixels x one output-channel block
 * (channels co0 .. co0+nco-1, nv = ceil(nco/LANES) vectors, weights wb).
 * x0: first pixel, pixel p at x0 + p*pstep.  res_px/out_px: the first
 * pixel's residual / output (or NULL), W strides s_res_w / s_out_w; channel
 * co is stored at out_px[co - ocol].  Fused pack bits are ORed into
 * wbits[p].  The same contract for every target (bconv_select.h). */
BNN_INLINE void bnn_port_block(const bnn_conv_params *prm, const bnn_word_t *x0,
                               ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                               int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                               float *out_px, ptrdiff_t s_out_w, int ocol,
                               bnn_word_t *wbits)
{
#if defined(__GNUC__)
    int64_t tile[BNN_P * BNN_CO_BLOCK] __attribute__((aligned(64)));
#else
    int64_t tile[BNN_P * BNN_CO_BLOCK];
#endif
    bnn_port_core_tile(x0, prm->sxh, prm->sxw, pstep, wb, prm->kh, prm->kw, prm->cw,
                       np, nv, tile);
    for (int p = 0; p < np; p++)
        bnn_epilogue(prm, tile + p * BNN_CO_BLOCK, co0, nco,
                     res_px ? res_px + p * s_res_w : NULL,
                     out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
}

/* 2x2 max-pool of one block: y0/y1 hold 2*npool pixels of conv rows 2i and
 * 2i+1 (pixel p at y + p*BNN_CO_BLOCK, channel co0+l at lane l < nco);
 * pooled pixel q = max(max(y0[2q], y0[2q+1]), max(y1[2q], y1[2q+1])) goes
 * to out_px[q*s_out_w + co] (if out_px) and bit co of wbits[q] is set when
 * it is < next_thr[co] (if next_thr).  The same contract for every target. */
BNN_INLINE void bnn_port_pool_block(const float *y0, const float *y1, int npool, int co0,
                                    int nco, const float *next_thr, float *out_px,
                                    ptrdiff_t s_out_w, bnn_word_t *wbits)
{
    for (int q = 0; q < npool; q++)
        bnn_pool_lanes(y0 + 2 * q * BNN_CO_BLOCK, y1 + 2 * q * BNN_CO_BLOCK, 0, nco, co0,
                       next_thr, out_px ? out_px + q * s_out_w + co0 : NULL, &wbits[q]);
}

#endif /* BNNLITE_BCONV_PORTABLE_H */
