/*
 * bconv_neon.h -- the ARM64 NEON target of the binary conv (aarch64, where
 * Advanced SIMD is always there; no -m flags): a vcntq_u8 popcount core
 * with pairwise widening accumulation (vpadalq_u8 into uint16 lanes), a
 * register tile of 4 pixels x 8 output channels, then the epilogue on
 * 4 channels at a time (bnn_chain4).  Names: bnn_neon_.  bconv_select.h
 * calls bnn_neon_block and bnn_neon_pool_block (as BNN_SEL_TARGET(block),
 * BNN_SEL_TARGET(pool_block)) in NEON builds.  Bit-packing has a NEON
 * compare in pack.h; the first layer's real conv (fconv.h) uses its
 * portable C there.
 * Proven equal to the portable target bit for bit under qemu-aarch64:
 * tools/neon/ (tests/test_neon_qemu.py).
 */
#ifndef BNNLITE_BCONV_NEON_H
#define BNNLITE_BCONV_NEON_H

#include "bnn_common.h"
#include "bconv_portable.h"    /* the fallback for layers past the limits below */

#if BNN_NEON
/* A uint16 lane gains at most 16 per step (two bytes of popcount <= 8), so
 * the accumulators hold 65535 / 16 = 4095 steps (kh*kw*cw words; 72 for
 * Cin = 512, 3x3).  Longer kernels, and K >= 2^31 (the int32 epilogue),
 * take the portable block: the same integers, so the same bits. */
#define BNN_NEON_MAX_STEPS 4095

/* Pixels per register tile: 4 x 4 uint16 accumulators + 4 weights + the
 * broadcast + a temporary fit the 32 q registers; with 6 (BNN_P, sized for
 * AVX-512) GCC 12 spilled accumulators in the inner loop (102 instructions
 * per 24 popcount steps instead of 63 per 16; docs/benchmarks.md).  A
 * block of BNN_P pixels is run as tiles of 4 + 2. */
#define BNN_NEON_P 4

/* One weight vector of BNN_LANES = 8 words (8 output channels) is 4 q
 * registers of 2 words. */
#define BNN_NEON_Q (BNN_LANES / 2)
typedef char bnn_neon_lanes_are_q_pairs[(BNN_LANES % 2 == 0 && sizeof(bnn_word_t) == 8) ? 1 : -1];

/* tile[p * BNN_CO_BLOCK + v * BNN_LANES + l] = sum over the steps (i, j, c)
 * of popcount(x0[p*pstep + i*sxh + j*sxw + c] XOR wb[step*NV*LANES + v*LANES + l])
 * (runs: bnn_row_runs, bnn_common.h), as uint32, for P pixels and vectors
 * v < nv (P <= BNN_NEON_P).  One vector of 8 channels at a time: its 4
 * weight registers feed all P pixels (register reuse), P x 4 uint16
 * accumulators stay in registers. */
BNN_INLINE void bnn_neon_core(const bnn_word_t *x0, ptrdiff_t sxh, ptrdiff_t sxw,
                              ptrdiff_t pstep, const bnn_word_t *wb, int kh, int kw,
                              int cw, const int P, int nv, uint32_t *tile)
{
    const int nj = bnn_row_runs(kw, cw, sxw), nq = bnn_run_words(kw, cw, sxw);
    const ptrdiff_t nl = (ptrdiff_t)nv * BNN_LANES;
    for (int v = 0; v < nv; v++) {
        uint16x8_t acc[BNN_NEON_P][BNN_NEON_Q];
        for (int p = 0; p < P; p++)
            for (int r = 0; r < BNN_NEON_Q; r++)
                acc[p][r] = vdupq_n_u16(0);
        const bnn_word_t *w = wb + v * BNN_LANES;
        for (int i = 0; i < kh; i++) {
            for (int j = 0; j < nj; j++) {
                const bnn_word_t *xp = x0 + i * sxh + j * sxw;
                for (int q = 0; q < nq; q++, w += nl) {
                    uint8x16_t wv[BNN_NEON_Q];
                    for (int r = 0; r < BNN_NEON_Q; r++)
                        wv[r] = vreinterpretq_u8_u64(vld1q_u64((const uint64_t *)w + 2 * r));
                    for (int p = 0; p < P; p++) {
                        const uint8x16_t xb = vreinterpretq_u8_u64(
                            vld1q_dup_u64((const uint64_t *)xp + p * pstep + q));
                        for (int r = 0; r < BNN_NEON_Q; r++)
                            acc[p][r] = vpadalq_u8(acc[p][r], vcntq_u8(veorq_u8(xb, wv[r])));
                    }
                }
            }
        }
        /* uint16 x 4 per word -> uint32 x 2 -> one uint32 per channel. */
        for (int p = 0; p < P; p++)
            for (int r = 0; r < BNN_NEON_Q; r += 2)
                vst1q_u32(tile + p * BNN_CO_BLOCK + v * BNN_LANES + 2 * r,
                          vpaddq_u32(vpaddlq_u16(acc[p][r]), vpaddlq_u16(acc[p][r + 1])));
    }
}

/* The scalar epilogue (bnn_epilogue) of one pixel, 4 channels at a time
 * (a last group of fewer than 4 goes through bnn_epilogue): acc = K - 2*pop
 * as int32, then the int32 threshold (bits mode) or bnn_chain4 + optional
 * fused pack.  Popcounts of channel co0 + l at t[l]. */
BNN_INLINE void bnn_neon_epilogue(const bnn_conv_params *prm, const uint32_t *t, int co0,
                                  int nco, const float *res_px, float *out_px, int ocol,
                                  bnn_word_t *wbits)
{
    const int32x4_t kv = vdupq_n_s32((int32_t)prm->k_bits);
    const int cres = prm->cres, rp = prm->gamma != NULL;
    int rc = res_px ? co0 % cres : 0;   /* the residual channel of co0 + l */
    bnn_word_t bits = 0;
    int l = 0;
    for (; l + 4 <= nco; l += 4, rc = (rc + 4 == cres) ? 0 : rc + 4) {
        const int co = co0 + l;
        const int32x4_t p = vreinterpretq_s32_u32(vld1q_u32(t + l));
        const int32x4_t a = vsubq_s32(kv, vaddq_s32(p, p));
        uint32x4_t m;
        if (prm->thr) {
            m = vcltq_s32(a, vld1q_s32(prm->thr + co));
        } else {
            float32x4_t r = vdupq_n_f32(0.0f);
            if (res_px) {
                if (cres % 4 == 0) {      /* rc .. rc+3 inside one residual copy */
                    r = vld1q_f32(res_px + rc);
                } else {
                    float tmp[4];
                    for (int k = 0; k < 4; k++)
                        tmp[k] = res_px[(co + k) % cres];
                    r = vld1q_f32(tmp);
                }
            }
            /* int32 -> float rounds to nearest, as the scalar (float)acc. */
            const float32x4_t y = bnn_chain4(
                vcvtq_f32_s32(a), vld1q_f32(prm->scale + co), vld1q_f32(prm->mult + co),
                vld1q_f32(prm->bias + co), res_px != NULL, r, rp,
                rp ? vld1q_f32(prm->gamma + co) : r, rp ? vld1q_f32(prm->beta + co) : r,
                rp ? vld1q_f32(prm->zeta + co) : r);
            if (out_px)
                vst1q_f32(out_px + (co - ocol), y);
            if (!prm->next_thr)
                continue;
            m = vcltq_f32(y, vld1q_f32(prm->next_thr + co));
        }
        bits |= (bnn_word_t)bnn_movemask4(m) << (co % BNN_WORD_BITS);
    }
    *wbits |= bits;
    if (l < nco) {
        int64_t tail[4];
        for (int k = 0; k < nco - l; k++)
            tail[k] = t[l + k];
        bnn_epilogue(prm, tail, co0 + l, nco - l, res_px, out_px, ocol, wbits);
    }
}

/* Core + epilogue of one tile of P pixels (constant, so the accumulators
 * live in registers). */
BNN_INLINE void bnn_neon_tile(const bnn_conv_params *prm, const bnn_word_t *x0,
                              ptrdiff_t pstep, const bnn_word_t *wb, const int P, int nv,
                              int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                              float *out_px, ptrdiff_t s_out_w, int ocol, bnn_word_t *wbits)
{
    uint32_t tile[BNN_NEON_P * BNN_CO_BLOCK] __attribute__((aligned(64)));
    bnn_neon_core(x0, prm->sxh, prm->sxw, pstep, wb, prm->kh, prm->kw, prm->cw, P, nv, tile);
    for (int p = 0; p < P; p++)
        bnn_neon_epilogue(prm, tile + p * BNN_CO_BLOCK, co0, nco,
                          res_px ? res_px + p * s_res_w : NULL,
                          out_px ? out_px + p * s_out_w : NULL, ocol, &wbits[p]);
}

/* Core + epilogue of np (<= BNN_P) pixels x one output-channel block: the
 * contract of bnn_port_block (bconv_portable.h). */
BNN_INLINE void bnn_neon_block(const bnn_conv_params *prm, const bnn_word_t *x0,
                               ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                               int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                               float *out_px, ptrdiff_t s_out_w, int ocol,
                               bnn_word_t *wbits)
{
    if ((ptrdiff_t)prm->kh * prm->kw * prm->cw > BNN_NEON_MAX_STEPS || prm->k_bits > INT32_MAX) {
        bnn_port_block(prm, x0, pstep, wb, np, nv, co0, nco, res_px, s_res_w, out_px, s_out_w,
                       ocol, wbits);
        return;
    }
#define BNN_TILE_(P_)                                                                  \
    bnn_neon_tile(prm, x0 + p0 * pstep, pstep, wb, P_, nv, co0, nco,                   \
                  res_px ? res_px + p0 * s_res_w : NULL, s_res_w,                      \
                  out_px ? out_px + p0 * s_out_w : NULL, s_out_w, ocol, wbits + p0)
    for (int p0 = 0; p0 < np; p0 += BNN_NEON_P) {
        switch (bnn_min(BNN_NEON_P, np - p0)) {   /* constant P: registers */
        case 4: BNN_TILE_(4); break;
        case 3: BNN_TILE_(3); break;
        case 2: BNN_TILE_(2); break;
        default: BNN_TILE_(1); break;
        }
    }
#undef BNN_TILE_
}
typedef char bnn_neon_p_is_4[(BNN_NEON_P == 4 && BNN_NEON_P <= BNN_P) ? 1 : -1];   /* the switch */

/* np.maximum on 4 lanes (bnn_fmax_np): a where a > b or a is NaN, else b. */
BNN_INLINE float32x4_t bnn_neon_fmax4(float32x4_t a, float32x4_t b)
{
    const uint32x4_t m = vorrq_u32(vcgtq_f32(a, b), vmvnq_u32(vceqq_f32(a, a)));
    return vbslq_f32(m, a, b);
}

/* 2x2 max-pool of one block, 4 channels at a time (the rest through
 * bnn_pool_lanes): the contract of bnn_port_pool_block (bconv_portable.h). */
BNN_INLINE void bnn_neon_pool_block(const float *y0, const float *y1, int npool, int co0,
                                    int nco, const float *next_thr, float *out_px,
                                    ptrdiff_t s_out_w, bnn_word_t *wbits)
{
    for (int q = 0; q < npool; q++) {
        const float *a = y0 + 2 * q * BNN_CO_BLOCK, *b = y1 + 2 * q * BNN_CO_BLOCK;
        float *o = out_px ? out_px + q * s_out_w + co0 : NULL;
        bnn_word_t bits = 0;
        int l = 0;
        for (; l + 4 <= nco; l += 4) {
            const float32x4_t m0 = bnn_neon_fmax4(vld1q_f32(a + l), vld1q_f32(a + BNN_CO_BLOCK + l));
            const float32x4_t m1 = bnn_neon_fmax4(vld1q_f32(b + l), vld1q_f32(b + BNN_CO_BLOCK + l));
            const float32x4_t m = bnn_neon_fmax4(m0, m1);
            if (o)
                vst1q_f32(o + l, m);
            if (next_thr) {
                const uint32x4_t lt = vcltq_f32(m, vld1q_f32(next_thr + co0 + l));
                bits |= (bnn_word_t)bnn_movemask4(lt) << ((co0 + l) % BNN_WORD_BITS);
            }
        }
        wbits[q] |= bits;
        bnn_pool_lanes(a, b, l, nco, co0, next_thr, o, &wbits[q]);
    }
}
#endif /* BNN_NEON */
#endif /* BNNLITE_BCONV_NEON_H */
