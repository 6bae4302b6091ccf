/*
 * bnn_common.h -- what every kernel of bnnlite shares (C99): the word type,
 * the tile sizes, the build's instruction set, the parameters of a binary
 * conv and of its layer, and the float epilogue chain.  Names: bnn_ (no
 * further prefix); every other header adds its own (bnn_port_, bnn_avx2_,
 * bnn_avx512_, bnn_pl_, bnn_wp_, bnn_fconv_, bnn_pack_, bnn_sel_, bnn_cpu_).
 *
 * The files, in the order a call goes through them (kernels/_bconv.pxi is
 * the Cython wrapper; it declares and fills the structs below and calls
 * bconv_select.h, which includes the rest):
 *   bconv_select.h   the one place the path of a binary conv is chosen
 *                    (bit planes / weight planes / popcount core) and the
 *                    target's block is named; the row loops
 *   bconv_portable.h bconv_avx2.h bconv_avx512.h bconv_neon.h
 *                    the popcount core + epilogue of one block, per target
 *   planes_avx2.h    the bit-plane conv (AVX2)
 *   wplanes_avx2.h   its small-output path, by weight planes (AVX2)
 *   fconv.h          the first layer's real-valued conv + fused pack;
 *                    the fma(y, mult, bias) epilogue of the other real convs
 *   pack.h           floats -> packed bits
 *
 * Conventions (bnnlite/bitpack.py is the source of truth, mirrored in
 * kernels/_bitpack.pxd; docs/conventions.md): word = uint64, bit 1 means
 * -1, LSB first along the channel axis, tail bits 0, zero word = +1
 * padding, and for K real bits dot = K - 2 * popcount(a XOR w).
 *
 * Float order (docs/conventions.md, "The maths of the folded output
 * transform"; PyTorch's own order, and that of bnnlite/backends/reference.py
 * and the numba backend bit for bit; the build uses -ffp-contract=off so only
 * the fma() calls written out are fused), written once below as bnn_chain:
 *   t = (float)acc * scale[co]; t = fma(t, mult[co], bias[co]);
 *   t = t + residual;
 *   rprelu: t >= gamma ? (t - gamma) + zeta : beta * (t - gamma) + zeta
 * with its copies on 8 lanes (bnn_chain8, AVX2), 16 lanes (bnn_chain16,
 * AVX-512) and 4 lanes (bnn_chain4, NEON), operation for operation, so
 * every target gives the same bits.
 */
#ifndef BNNLITE_BNN_COMMON_H
#define BNNLITE_BNN_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

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

/* The instruction set of this build, from the compiler's flags (setup.py
 * builds the source three times).  bconv_select.h picks the target header
 * from these. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VPOPCNTDQ__)
#define BNN_AVX512 1
#include <immintrin.h>
#else
#define BNN_AVX512 0
#endif
#define BNN_HAVE_AVX512 BNN_AVX512

/* AVX2 without AVX-512: the vpshufb popcount core and the bit planes. */
#if !BNN_AVX512 && defined(__AVX2__)
#define BNN_AVX2 1
#include <immintrin.h>
#else
#define BNN_AVX2 0
#endif
#define BNN_HAVE_AVX2 BNN_AVX2

/* ARM64 with NEON (Advanced SIMD is part of the base ARMv8-A ISA, so every
 * aarch64 build has it): the vcntq_u8 popcount core.  BNN_NO_NEON forces
 * the portable target there (the cross-compiled test, tools/neon/, builds
 * both into one program to compare them). */
#if !BNN_AVX512 && !BNN_AVX2 && defined(__aarch64__) && defined(__ARM_NEON) && \
    !defined(BNN_NO_NEON)
#define BNN_NEON 1
#include <arm_neon.h>
#else
#define BNN_NEON 0
#endif

#if defined(__GNUC__)
#define BNN_INLINE static inline __attribute__((always_inline))
#else
#define BNN_INLINE static inline
#endif

/* Portable build on x86-64 Linux with GCC: baseline x86-64 has no popcnt
 * instruction (__builtin_popcountll becomes a libgcc call, ~10x slower), so
 * clone the row kernels for CPUs with popcnt / AVX2 and let the loader pick
 * one (ifunc).  Other compilers/targets get the single portable version. */
#if !BNN_AVX512 && !BNN_AVX2 && defined(__GNUC__) && !defined(__clang__) && \
    defined(__x86_64__) && defined(__linux__) && !defined(BNN_NO_CLONES)
#define BNN_CLONES __attribute__((target_clones("arch=x86-64-v3", "popcnt", "default")))
#else
#define BNN_CLONES
#endif

/* A block never straddles a word of the packed output bits. */
typedef char bnn_block_divides_word[(BNN_WORD_BITS % BNN_CO_BLOCK) == 0 ? 1 : -1];

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

/* Where a layer's pixels come from and where their outputs go (the whole
 * layer; strides in elements; NULL arrays are not there).  Units: one
 * output row (pool == 0), or one pooled row = conv rows 2i and 2i+1
 * (pool == 1); unit u = n*rows + i. */
typedef struct {
    const bnn_word_t *x; ptrdiff_t sxn;            /* sxh/sxw: in the params */
    const float *res; ptrdiff_t srn, srh, srw;     /* conv resolution */
    float *out; ptrdiff_t son, soh, sow;           /* pooled when pool */
    bnn_word_t *bits; ptrdiff_t sbn, sbh, sbw;
    int rows;                                      /* units per image */
    int pool, wpool;                               /* wpool = Wo // 2 */
} bnn_io;

static inline int bnn_min(int a, int b) { return a < b ? a : b; }

/* A kernel row of the binary cores as runs of words: nj runs of nq words,
 * run (i, j) at x0 + i*sxh + j*sxw.  When neighbouring pixels' words are
 * adjacent (sxw == cw, the normal case) the kw*cw words of a kernel row are
 * one run in x and in the weights: one loop of kw*cw steps (6 for
 * Cin = 128) instead of two short ones. */
BNN_INLINE int bnn_row_runs(int kw, int cw, ptrdiff_t sxw) { return sxw == cw ? 1 : kw; }
BNN_INLINE int bnn_run_words(int kw, int cw, ptrdiff_t sxw) { return sxw == cw ? kw * cw : cw; }

/* co % cres, the residual channel of output channel co, without the
 * division in the common case co < cres (perf put an idiv per 16 channels,
 * and the residual load waiting on it, at the top of a 1x1 layer). */
BNN_INLINE int bnn_res_channel(int co, int cres) { return co < cres ? co : co % cres; }

/* np.maximum semantics: NaN propagates, ties (0.0 vs -0.0) give b. */
static inline float bnn_fmax_np(float a, float b) { return (a > b || a != a) ? a : b; }

/* The float epilogue chain of channel co (see the top of this file):
 * acc -> scale, fma with the folded batch-norm, + residual (res_px: the
 * pixel's residual, or NULL), RPReLU (when gamma). */
BNN_INLINE float bnn_chain(const bnn_conv_params *prm, int64_t acc, int co, const float *res_px)
{
    float y = (float)acc * prm->scale[co];
    y = fmaf(y, prm->mult[co], prm->bias[co]);
    if (res_px)
        y = y + res_px[co % prm->cres];
    if (prm->gamma) {
        const float gm = prm->gamma[co];
        const float d = y - gm;
        y = (y >= gm) ? d + prm->zeta[co] : prm->beta[co] * d + prm->zeta[co];
    }
    return y;
}

#if BNN_AVX2
/* bnn_chain on 8 channels: t = float(acc) (int32 -> float rounds like the
 * scalar (float)acc), the channels' constants in registers, the residual r
 * used when res, RPReLU when rp (gamma, beta, zeta unused otherwise). */
BNN_INLINE __m256 bnn_chain8(__m256 t, __m256 scale, __m256 mult, __m256 bias, int res,
                             __m256 r, int rp, __m256 gamma, __m256 beta, __m256 zeta)
{
    __m256 y = _mm256_mul_ps(t, scale);
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
#endif

#if BNN_AVX512
/* bnn_chain16 after its first step, from y = t * scale: a caller whose
 * scales are all exactly 1 (no weight scale) may skip that product, as
 * t * 1 == t. */
BNN_INLINE __m512 bnn_chain16_scaled(__m512 y, __m512 mult, __m512 bias, int res, __m512 r,
                                     int rp, __m512 gamma, __m512 beta, __m512 zeta)
{
    y = _mm512_fmadd_ps(y, mult, bias);
    if (res)
        y = _mm512_add_ps(y, r);
    if (rp) {
        /* beta * d where not y >= gamma (NaN included), else d: blend(ge, beta*d, d) in one step */
        const __mmask16 lt = _mm512_cmp_ps_mask(y, gamma, _CMP_NGE_UQ);
        const __m512 d = _mm512_sub_ps(y, gamma);
        y = _mm512_add_ps(_mm512_mask_mul_ps(d, lt, beta, d), zeta);
    }
    return y;
}

/* bnn_chain8 on 16 channels (|acc| < 2^24: the int64 -> float conversion
 * before it is exact). */
BNN_INLINE __m512 bnn_chain16(__m512 t, __m512 scale, __m512 mult, __m512 bias, int res,
                              __m512 r, int rp, __m512 gamma, __m512 beta, __m512 zeta)
{
    return bnn_chain16_scaled(_mm512_mul_ps(t, scale), mult, bias, res, r, rp, gamma, beta, zeta);
}
#endif

#if BNN_NEON
/* Lane l of a 4-lane compare mask (all ones / zero) at bit l: x86's
 * movemask. */
BNN_INLINE unsigned bnn_movemask4(uint32x4_t m)
{
    static const uint32_t bitv[4] = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(m, vld1q_u32(bitv)));
}

/* bnn_chain8 on 4 channels.  vfmaq_f32(b, y, m) = fused y*m + b, where the
 * scalar chain has fmaf; arm_neon.h writes vmulq_f32 / vaddq_f32 as plain
 * C operators, so only -ffp-contract=off keeps GCC from fusing the others. */
BNN_INLINE float32x4_t bnn_chain4(float32x4_t t, float32x4_t scale, float32x4_t mult,
                                  float32x4_t bias, int res, float32x4_t r, int rp,
                                  float32x4_t gamma, float32x4_t beta, float32x4_t zeta)
{
    float32x4_t y = vmulq_f32(t, scale);
    y = vfmaq_f32(bias, y, mult);
    if (res)
        y = vaddq_f32(y, r);
    if (rp) {
        const uint32x4_t ge = vcgeq_f32(y, gamma);
        const float32x4_t d = vsubq_f32(y, gamma);
        y = vaddq_f32(vbslq_f32(ge, d, vmulq_f32(beta, d)), zeta);
    }
    return y;
}
#endif

/* A pointwise run's bits of pixel p (channels co0.. of its block, m & keep)
 * into the word that holds channel co0 (sh = co0 % BNN_WORD_BITS): the
 * first block of a word sets it, the next one ORs into it. */
static inline void bnn_pw_store_bits(bnn_word_t *bits_px, ptrdiff_t s_bits_w, int p, uint64_t m,
                                     int sh, uint64_t keep)
{
    bnn_word_t *b = bits_px + p * s_bits_w;
    *b = sh ? (*b | ((m & keep) << sh)) : (m & keep);
}

/* The variants of a target's pointwise run (bnn_avx512_pointwise,
 * bnn_avx2_pointwise): LOOP(NV, RES, RP), the caller's macro, with nv
 * weight vectors, the residual kind res (0 none, 1 contiguous channels,
 * 2 any repeat) and RPReLU rp as constants where they are common, so each
 * variant is a loop without branches on them; returns after it. */
#define BNN_PW_NV_CASES(LOOP, nv, R_, G_)                    \
    switch (nv) {                                            \
    case 4: LOOP(4, R_, G_); return;                         \
    case 3: LOOP(3, R_, G_); return;                         \
    case 2: LOOP(2, R_, G_); return;                         \
    default: LOOP(1, R_, G_); return;                        \
    }
#define BNN_PW_DISPATCH(LOOP, nv, res, rp)                   \
    do {                                                     \
        if ((res) == 1 && (rp)) BNN_PW_NV_CASES(LOOP, nv, 1, 1) \
        if ((res) == 1) BNN_PW_NV_CASES(LOOP, nv, 1, 0)      \
        if ((res) == 2) BNN_PW_NV_CASES(LOOP, nv, 2, rp)     \
        if (rp) BNN_PW_NV_CASES(LOOP, nv, 0, 1)              \
        BNN_PW_NV_CASES(LOOP, nv, 0, 0)                      \
    } while (0)

/* Scalar epilogue for one pixel and one block: acc = K - 2*pop, then
 * either the integer threshold (bits mode) or the float chain + optional
 * fused pack.  Bits of channel co go to *wbits at bit (co % BNN_WORD_BITS).
 * The portable target's epilogue, and the vector ones' tail. */
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
        const float y = bnn_chain(prm, a, co, res_px);
        if (out_px)
            out_px[co - ocol] = y;
        if (prm->next_thr)
            *wbits |= (bnn_word_t)(y < prm->next_thr[co]) << sh;
    }
}

/* The scalar 2x2 max-pool of lanes l0 .. nco-1 of one pooled pixel: a/b
 * hold its two conv pixels of conv rows 2i / 2i+1, BNN_CO_BLOCK apart
 * (channel co0 + l at lane l); the max goes to o[l] (if o) and bit co of
 * *wbits is set when it is < next_thr[co] (if next_thr).  The pairing is
 * reference.maxpool2's: max(max(a0, a1), max(b0, b1)). */
BNN_INLINE void bnn_pool_lanes(const float *a, const float *b, int l0, int nco, int co0,
                               const float *next_thr, float *o, bnn_word_t *wbits)
{
    for (int l = l0; l < nco; l++) {
        const float m = bnn_fmax_np(bnn_fmax_np(a[l], a[BNN_CO_BLOCK + l]),
                                    bnn_fmax_np(b[l], b[BNN_CO_BLOCK + l]));
        if (o)
            o[l] = m;
        if (next_thr)
            *wbits |= (bnn_word_t)(m < next_thr[co0 + l]) << ((co0 + l) % BNN_WORD_BITS);
    }
}

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

#endif /* BNNLITE_BNN_COMMON_H */
