/*
 * bconv_neon.h -- the ARM64 NEON target of the binary conv (aarch64, where
 * Advanced SIMD is always there; no -m flags): a vcntq_u8 popcount core
 * with pairwise widening accumulation (vpadalq_u8 into uint16 lanes), a
 * register tile of 4 pixels x 8 output channels, then the epilogue on
 * 4 channels at a time (bnn_chain4).  Names: bnn_neon_.  bconv_select.h
 * calls bnn_neon_block, bnn_neon_pool_block and, for 1x1 convs,
 * bnn_neon_pointwise (as BNN_SEL_TARGET(block), BNN_SEL_TARGET(pool_block),
 * BNN_SEL_TARGET(pointwise)) in NEON builds.  Bit-packing has a NEON
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

/* ------------------------------------------------------------------ */
/* The pointwise run: a 1x1 conv's block of output channels over a run of
 * pixels, channel block outer, pixel inner (bnn_neon_pointwise).  A 1x1
 * conv has few popcount steps per output (2 for Cin = 128), so the tile
 * core's epilogue is most of its time: the tile stored as uint32 and
 * reloaded, prm's pointers and the residual's channel re-derived, every
 * step's branches (bits mode, residual, cres % 4, RPReLU, pack) taken per
 * pixel and group of 4, and one movemask (and, addv, shift, or) per group.
 * The run takes each variant as a loop without those branches
 * (BNN_PW_DISPATCH), copies the block's epilogue constants once into an
 * array of its own (loaded per group, never re-derived), goes from the
 * uint16 accumulators to the float chain in registers, and packs the
 * compare masks of a pixel's 32 channels into its bits with two narrowing
 * steps and three pairwise adds.  Under qemu-aarch64, a 1x1 conv of Cin
 * 128 -> 128 with residual, RPReLU, float output and pack executes 10.8
 * instructions per output against 25.6 by the tile core + epilogue
 * (docs/benchmarks.md, "ARM64 NEON (estimates)").
 * ------------------------------------------------------------------ */
/* Words per pixel that the pointwise run takes: the uint16 accumulators'
 * bound (a 1x1 conv has cw steps); bconv_select.h's BNN_SEL_POINTWISE_MAX_CW. */
#define BNN_NEON_PW_MAX_CW BNN_NEON_MAX_STEPS
/* Pixels ahead of the one in hand whose residual is prefetched. */
#define BNN_NEON_PW_AHEAD 8
/* Groups of 4 channels in a block. */
#define BNN_NEON_PW_G (BNN_CO_BLOCK / 4)
typedef char bnn_neon_pw_g_is_8[BNN_NEON_PW_G == 8 ? 1 : -1];   /* bnn_neon_pw_mask */

/* The popcounts of one pixel (words xp[0 .. cw-1]) against the block's NV
 * weight vectors (step q at wb + q*NV*LANES, as bnn_neon_core's layout):
 * pc[g] = uint32 sums of channels 4g .. 4g+3, g < 2*NV; the same uint16
 * accumulation and widening as bnn_neon_core, so the same integers. */
BNN_INLINE void bnn_neon_pw_count(const bnn_word_t *xp, const bnn_word_t *wb, int cw,
                                  const int NV, uint32x4_t *pc)
{
    uint16x8_t acc[BNN_NV_MAX][BNN_NEON_Q];
    const uint64_t *w = (const uint64_t *)wb;
    {   /* step 0 sets the accumulators (cw >= 1): 0 + its pairwise sums */
        const uint8x16_t xb = vreinterpretq_u8_u64(vld1q_dup_u64((const uint64_t *)xp));
        for (int v = 0; v < NV; v++)
            for (int r = 0; r < BNN_NEON_Q; r++)
                acc[v][r] = vpaddlq_u8(vcntq_u8(veorq_u8(
                    xb, vreinterpretq_u8_u64(vld1q_u64(w + v * BNN_LANES + 2 * r)))));
    }
    w += NV * BNN_LANES;
    for (int q = 1; q < cw; q++, w += NV * BNN_LANES) {
        const uint8x16_t xb = vreinterpretq_u8_u64(vld1q_dup_u64((const uint64_t *)xp + q));
        for (int v = 0; v < NV; v++)
            for (int r = 0; r < BNN_NEON_Q; r++)
                acc[v][r] = vpadalq_u8(acc[v][r], vcntq_u8(veorq_u8(
                    xb, vreinterpretq_u8_u64(vld1q_u64(w + v * BNN_LANES + 2 * r)))));
    }
    for (int v = 0; v < NV; v++)
        for (int r = 0; r < BNN_NEON_Q; r += 2)
            pc[2 * v + r / 2] = vpaddq_u32(vpaddlq_u16(acc[v][r]), vpaddlq_u16(acc[v][r + 1]));
}

/* acc = K - 2*pop as int32 (K < 2^24), as bnn_neon_epilogue computes it. */
BNN_INLINE int32x4_t bnn_neon_pw_acc(int32x4_t kv, uint32x4_t pc)
{
    return vmlsq_n_s32(kv, vreinterpretq_s32_u32(pc), 2);
}

/* The 32 bits of the block from its compare masks m[g] (all ones / zero
 * per lane; channel 4g + l at lane l), g < NG (even; the rest 0): bit c of the
 * result is channel c.  Narrowed to one byte per channel (uzp1 twice),
 * each byte masked to its bit within its 8, and summed by 3 pairwise
 * adds: byte k of lane 0 = channels 8k .. 8k+7. */
BNN_INLINE uint32_t bnn_neon_pw_mask(const uint32x4_t *m, const int NG)
{
    static const uint8_t bitv[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint16x8_t h[4];
    for (int k = 0; k < 4; k++)
        h[k] = 2 * k < NG ? vuzp1q_u16(vreinterpretq_u16_u32(m[2 * k]),
                                       vreinterpretq_u16_u32(m[2 * k + 1]))
                          : vdupq_n_u16(0);
    const uint8x16_t bw = vld1q_u8(bitv);
    const uint8x16_t b0 = vandq_u8(vuzp1q_u8(vreinterpretq_u8_u16(h[0]), vreinterpretq_u8_u16(h[1])), bw);
    uint8x16_t s;
    if (NG > 4) {
        const uint8x16_t b1 = vandq_u8(vuzp1q_u8(vreinterpretq_u8_u16(h[2]), vreinterpretq_u8_u16(h[3])), bw);
        s = vpaddq_u8(b0, b1);
    } else {
        s = vpaddq_u8(b0, b0);
    }
    s = vpaddq_u8(s, s);
    s = vpaddq_u8(s, s);
    return NG > 4 ? vgetq_lane_u32(vreinterpretq_u32_u8(s), 0)
                  : (uint32_t)vgetq_lane_u16(vreinterpretq_u16_u8(s), 0);
}

/* Bits mode: acc = K - 2*pop < thr[co], as int32, the block's thresholds
 * loaded once (lanes past nco: 0, their bits dropped by keep). */
BNN_INLINE void bnn_neon_pw_bits_loop(const bnn_conv_params *prm, const bnn_word_t *x0,
                                      ptrdiff_t pstep, const bnn_word_t *wb, int np,
                                      const int NV, int co0, int nco,
                                      bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
    const int NG = 2 * NV, cw = prm->cw;
    int32_t thr[BNN_CO_BLOCK] __attribute__((aligned(16)));
    for (int l = 0; l < 4 * NG; l++)
        thr[l] = l < nco ? prm->thr[co0 + l] : 0;
    int32x4_t th[BNN_NEON_PW_G];
    for (int g = 0; g < NG; g++)
        th[g] = vld1q_s32(thr + 4 * g);
    const int32x4_t kv = vdupq_n_s32((int32_t)prm->k_bits);
    const int sh = co0 % BNN_WORD_BITS;
    const uint64_t keep = ((uint64_t)1 << nco) - 1u;   /* nco <= BNN_CO_BLOCK < 64 */
    for (int p = 0; p < np; p++) {
        uint32x4_t pc[BNN_NEON_PW_G], mk[BNN_NEON_PW_G];
        bnn_neon_pw_count(x0 + p * pstep, wb, cw, NV, pc);
        for (int g = 0; g < NG; g++)
            mk[g] = vcltq_s32(bnn_neon_pw_acc(kv, pc[g]), th[g]);
        bnn_pw_store_bits(bits_px, s_bits_w, p, bnn_neon_pw_mask(mk, NG), sh, keep);
    }
}

/* The epilogue constants of a block of a pointwise run, copied once, group
 * by group (lanes past nco: 0): k[g][BNN_NEON_PW_*] holds the 4 floats of
 * group g, so a group's loads pair up.  ri[l]: the residual channel of
 * co0 + l (RES 2). */
enum { BNN_NEON_PW_SC, BNN_NEON_PW_MU, BNN_NEON_PW_BI, BNN_NEON_PW_GM, BNN_NEON_PW_BE,
       BNN_NEON_PW_ZE, BNN_NEON_PW_NT, BNN_NEON_PW_K };
typedef struct {
    float k[BNN_NEON_PW_G][BNN_NEON_PW_K + 1][4];
    int ri[BNN_CO_BLOCK];
} bnn_neon_pw_consts;

/* The float chain of group g of one pixel from its popcount sums pc and
 * its residual r (RES): acc = K - 2*pop, its float, then bnn_chain4: the
 * floats of bnn_neon_epilogue. */
BNN_INLINE float32x4_t bnn_neon_pw_chain(const bnn_neon_pw_consts *c, int g, int32x4_t kv,
                                         uint32x4_t pc, const int RES, float32x4_t r,
                                         const int RP)
{
    const float (*k)[4] = c->k[g];
    /* int32 -> float rounds to nearest (exact here), as the scalar (float)acc. */
    return bnn_chain4(vcvtq_f32_s32(bnn_neon_pw_acc(kv, pc)), vld1q_f32(k[BNN_NEON_PW_SC]),
                      vld1q_f32(k[BNN_NEON_PW_MU]), vld1q_f32(k[BNN_NEON_PW_BI]), RES != 0, r,
                      RP, RP ? vld1q_f32(k[BNN_NEON_PW_GM]) : r,
                      RP ? vld1q_f32(k[BNN_NEON_PW_BE]) : r, RP ? vld1q_f32(k[BNN_NEON_PW_ZE]) : r);
}

/* Float mode: the block's constants copied once, then the pixels.  RES 0:
 * no residual; 1: the block's residual channels are rc0 .. rc0+nco-1 of
 * one copy (cres % 4 == 0, no wrap), loaded 4 at a time; both on a full
 * block (nco == NV * LANES), without a branch per group.  RES 2: the
 * rest (a residual of any repeat, gathered lane by lane, or none; a
 * partial block), through buffers of a whole block. */
BNN_INLINE void bnn_neon_pw_loop(const bnn_conv_params *prm, const bnn_word_t *x0,
                                 ptrdiff_t pstep, const bnn_word_t *wb, int np, const int NV,
                                 const int RES, const int RP, int co0, int nco,
                                 const float *res_px, ptrdiff_t s_res_w,
                                 float *out_px, ptrdiff_t s_out_w,
                                 bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
    const int NG = 2 * NV;
    /* prm's fields in locals: the stores below could alias them. */
    const int pack = prm->next_thr != NULL, cw = prm->cw, cres = prm->cres;
    bnn_neon_pw_consts c __attribute__((aligned(16)));
    for (int l = 0; l < 4 * NG; l++) {
        const int in = l < nco, co = co0 + l;
        float *k = &c.k[l / 4][0][l % 4];
        k[4 * BNN_NEON_PW_SC] = in ? prm->scale[co] : 0.0f;
        k[4 * BNN_NEON_PW_MU] = in ? prm->mult[co] : 0.0f;
        k[4 * BNN_NEON_PW_BI] = in ? prm->bias[co] : 0.0f;
        k[4 * BNN_NEON_PW_GM] = in && RP ? prm->gamma[co] : 0.0f;
        k[4 * BNN_NEON_PW_BE] = in && RP ? prm->beta[co] : 0.0f;
        k[4 * BNN_NEON_PW_ZE] = in && RP ? prm->zeta[co] : 0.0f;
        k[4 * BNN_NEON_PW_NT] = in && pack ? prm->next_thr[co] : 0.0f;
        k[4 * BNN_NEON_PW_K] = 0.0f;
        c.ri[l] = in && res_px ? co % cres : 0;
    }
    const int32x4_t kv = vdupq_n_s32((int32_t)prm->k_bits);
    const int sh = co0 % BNN_WORD_BITS;
    const uint64_t keep = ((uint64_t)1 << nco) - 1u;   /* nco <= BNN_CO_BLOCK < 64 */
    const int rc0 = res_px ? c.ri[0] : 0;
    for (int p = 0; p < np; p++) {
        if (RES == 1 && p + BNN_NEON_PW_AHEAD < np)   /* the residual, often in L2 only: ask early */
            for (int l = 0; l < 4 * NG; l += 16)
                __builtin_prefetch(res_px + (p + BNN_NEON_PW_AHEAD) * s_res_w + rc0 + l, 0, 3);
        uint32x4_t pc[BNN_NEON_PW_G];
        float32x4_t y[BNN_NEON_PW_G];
        bnn_neon_pw_count(x0 + p * pstep, wb, cw, NV, pc);
        /* The constants from memory, not held in registers through the
         * popcounts (GCC 12 spilled the accumulators for them): cp is &c,
         * but the compiler cannot know it before the popcounts are done. */
        const bnn_neon_pw_consts *cp = &c;
        __asm__("" : "+r"(cp) : "w"(pc[0]));
        float *op = out_px ? out_px + p * s_out_w + co0 : NULL;
        if (RES == 2) {
            float rb[BNN_CO_BLOCK] __attribute__((aligned(16))) = {0.0f};
            const float *rp = res_px ? res_px + p * s_res_w : NULL;
            if (rp)
                for (int l = 0; l < nco; l++)
                    rb[l] = rp[cp->ri[l]];
            for (int g = 0; g < NG; g++)
                y[g] = bnn_neon_pw_chain(cp, g, kv, pc[g], rp != NULL, vld1q_f32(rb + 4 * g), RP);
            if (op) {
                float ob[BNN_CO_BLOCK] __attribute__((aligned(16)));
                for (int g = 0; g < NG; g++)
                    vst1q_f32(ob + 4 * g, y[g]);
                for (int l = 0; l < nco; l++)
                    op[l] = ob[l];
            }
        } else {
            const float *rp = RES ? res_px + p * s_res_w + rc0 : NULL;
            for (int g = 0; g < NG; g++)
                y[g] = bnn_neon_pw_chain(cp, g, kv, pc[g], RES,
                                         RES ? vld1q_f32(rp + 4 * g) : vdupq_n_f32(0.0f), RP);
            if (op)
                for (int g = 0; g < NG; g++)
                    vst1q_f32(op + 4 * g, y[g]);
        }
        if (bits_px) {
            uint32_t m = 0;
            if (pack) {
                uint32x4_t mk[BNN_NEON_PW_G];
                for (int g = 0; g < NG; g++)
                    mk[g] = vcltq_f32(y[g], vld1q_f32(cp->k[g][BNN_NEON_PW_NT]));
                m = bnn_neon_pw_mask(mk, NG);
            }
            bnn_pw_store_bits(bits_px, s_bits_w, p, m, sh, keep);
        }
    }
}

/* A 1x1 conv's block of output channels (co0 .. co0+nco-1, nv vectors,
 * weights wb) over a run of np pixels (any np; pixel p at x0 + p*pstep):
 * the contract of bnn_avx512_pointwise (bconv_avx512.h), for
 * bconv_select.h's BNN_SEL_TARGET(pointwise) (cw <= BNN_NEON_PW_MAX_CW,
 * K < 2^24).  Outputs as bnn_neon_block (out_px[co], no ocol); the fused
 * pack or bits-mode bits of pixel p go to the word bits_px[p*s_bits_w]
 * that holds channel co0 (set when co0 starts the word, ORed into it
 * otherwise).  The same integers as the tile core (bnn_neon_core's
 * accumulation) and the same float chain (bnn_chain4), so the same
 * results. */
BNN_INLINE void bnn_neon_pointwise(const bnn_conv_params *prm, const bnn_word_t *x0,
                                   ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                                   int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                                   float *out_px, ptrdiff_t s_out_w,
                                   bnn_word_t *bits_px, ptrdiff_t s_bits_w)
{
    if (prm->thr) {
        if (!bits_px)
            return;
#define BNN_PWB_(NV_) bnn_neon_pw_bits_loop(prm, x0, pstep, wb, np, NV_, co0, nco, bits_px, s_bits_w)
        switch (nv) {
        case 4: BNN_PWB_(4); return;
        case 3: BNN_PWB_(3); return;
        case 2: BNN_PWB_(2); return;
        default: BNN_PWB_(1); return;
        }
#undef BNN_PWB_
    }
    const int rc0 = res_px ? bnn_res_channel(co0, prm->cres) : 0;
    const int res = nco != nv * BNN_LANES ? 2 : res_px == NULL ? 0
                  : prm->cres % 4 == 0 && rc0 + nco <= prm->cres ? 1 : 2;
    const int rp = prm->gamma != NULL;
#define BNN_PW_(NV_, R_, G_) \
    bnn_neon_pw_loop(prm, x0, pstep, wb, np, NV_, R_, G_, co0, nco, res_px, s_res_w, out_px, \
                     s_out_w, bits_px, s_bits_w)
    BNN_PW_DISPATCH(BNN_PW_, nv, res, rp);
#undef BNN_PW_
}

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
