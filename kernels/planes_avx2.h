/*
 * planes_avx2.h -- the AVX2 binary conv by bit planes (no popcount of
 * x XOR w at all).  Names: bnn_pl_.  bconv_select.h runs bnn_pl_block
 * where it chooses this path (bnn_sel_choose); the structs and sizes at
 * the top are plain C, for every build.  Plain AVX2 logic ops, which this
 * CPU class issues on all its vector pipes, where the vpshufb popcount
 * core is bound by the two shuffle pipes (its comment, bnn_avx2_core).
 *
 * The maths.  For one output pixel j and channel c, with x_k, w_k in {0,1}
 * the bits (1 = -1) of the K real taps k = (i, jj, ci):
 *   popcount(x XOR w) = sum_{k: w_k=0} x_k + sum_{k: w_k=1} (1 - x_k)
 *                     = 2*S0 + |W1| - T = T + |W1| - 2*S1
 * where T = sum_k x_k (per pixel, shared by all channels), W1 = {k: w_k=1},
 * S0 = sum_{k: w_k=0} x_k and S1 = sum_{k in W1} x_k.  The weights are
 * constant, so the XOR becomes a choice of which x_k to add: channel c adds
 * only the planes of one side, W1 (flag ``ones``) or W0, with no XOR.
 * Channels go in sets of four (BNN_PL_SET) whose sides are chosen so that
 * their union is smallest; the union is split by which of the set's
 * channels need a plane (15 lists, one per non-empty subset), each list is
 * summed once and a channel's sum is that of the lists holding it
 * (bit-sliced ripple adds), so a plane several channels need is added once:
 * about 15/16 K planes per set instead of four times K/2 (bnn_pl_set).
 * Sets of four measured 1.03-1.06x sets of three end to end and sets of
 * five no better than four (docs/benchmarks-history.md, "Channels in sets of
 * four"): a channel's
 * merges double with each channel added to the set.
 *
 * The layout.  A block is 256 output pixels, pixel p at bit p % 64 of lane
 * p / 64 of a ymm.  Plane k of the block is one ymm whose bit p is x_k of
 * pixel p; plane number k = (i*kw + jj)*cw*64 + ci (the bit of word ci/64
 * in the zero-bordered, channels-last input), and plane nplanes-1 is zero.
 * Planes are built per block by 64x64 bit transposes of the input words
 * (bnn_pl_build).  The lists of plane numbers are made once at load
 * time (bnnlite/backends/planes.py, plane_lists), each padded with the zero plane to a
 * multiple of 16.
 *
 * The sum of a channel's planes is kept bit-sliced (bit b of the count of
 * pixel p is bit p of plane S[b]): a Harley-Seal carry-save tree takes 16
 * planes into ones/twos/fours/eights and one "sixteens" plane, which a
 * ripple adder adds into the higher bits (bnn_pl_step).  Then
 * bnn_pl_counts turns the bit-sliced S into int16 counts and the
 * popcount above, and the float epilogue runs the float chain
 * (bnn_chain8) on them, so the floats are the very same as the other
 * paths.  Outputs too small for a block: wplanes_avx2.h.
 */
#ifndef BNNLITE_PLANES_AVX2_H
#define BNNLITE_PLANES_AVX2_H

#include "bnn_common.h"
#include "bconv_avx2.h"

#define BNN_PL_PIX 256     /* pixels per block: the 256 bits of a ymm */
#define BNN_PL_GROUP 64    /* output channels per epilogue pass: one bits word */
#define BNN_PL_SET 4       /* channels summed together (bnn_pl_set) */
#define BNN_PL_PATTERNS ((1 << BNN_PL_SET) - 1)  /* lists per set: its non-empty subsets */
#define BNN_PL_SETS ((BNN_PL_GROUP + BNN_PL_SET - 1) / BNN_PL_SET)   /* per group */
#define BNN_PL_HI_MIN 6    /* levels of the sixteens counter (variants 6..11) */
#define BNN_PL_HI_MAX 11   /* lists of up to 16 * 2^11 planes: K < 32768 */
#define BNN_PL_KW_RUN 16   /* kernel widths up to this take the sliding T sums */

typedef char bnn_pl_group_is_word[(BNN_PL_GROUP == BNN_WORD_BITS &&
                                   BNN_PL_GROUP % BNN_CO_BLOCK == 0) ? 1 : -1];

/* The plane lists (see bnnlite/backends/planes.py, plane_lists). */
typedef struct {
    const uint16_t *idx;     /* list m of set s: idx[off[P*s+m-1] .. off[P*s+m]), P = BNN_PL_PATTERNS */
    const int32_t *off;      /* (P * sets + 1,): P lists a set; m: bit i = its channel i */
    const int32_t *w1;       /* |W1| of channel c */
    const uint8_t *ones;     /* 1: channel c's side is W1, 0: it is W0 */
    int nplanes;             /* kh*kw*cw*64 + 1; the last plane is zero */
    int hi;                  /* sixteens-counter levels, BNN_PL_HI_MIN..MAX */
} bnn_pl_lists;

/* Per-thread scratch, 32-byte aligned, bnn_pl_ws_bytes(nplanes) bytes. */
static inline size_t bnn_pl_ws_bytes(int nplanes)
{
    return (size_t)nplanes * 32                       /* planes */
         + (size_t)BNN_PL_GROUP * BNN_PL_PIX * 2      /* s16: [c][p] int16 */
         + (size_t)BNN_PL_PIX * BNN_PL_GROUP * 4      /* pc: [p][c] int32 */
         + (size_t)BNN_PL_PIX * 2                     /* T: int16 */
         + (size_t)BNN_PL_PIX * sizeof(void *) * 2;   /* pixel and residual pointers */
}

/* Conv pixels per unit (0 when a unit does not fit a block). */
static inline int bnn_pl_unit_pixels(int wo, int pool, int wpool)
{
    const int n = pool ? 4 * wpool : wo;
    return n <= BNN_PL_PIX ? n : 0;
}

#if BNN_AVX2
/* In-place transpose of the 64x64 bit matrix held in lane g of r[0..63]
 * (bit b of r[t] <-> bit t of r[b]), for the four lanes at once: swap the
 * off-diagonal s x s blocks for s = 32, 16, ..., 1 (Hacker's Delight 7-3). */
#define BNN_PL_T_STAGE_(s, m)                                                 \
    for (int t = 0; t < 64; t = (t + (s) + 1) & ~(s)) {                      \
        const __m256i a = _mm256_load_si256(r + t);                          \
        const __m256i b = _mm256_load_si256(r + t + (s));                    \
        const __m256i d = _mm256_and_si256(                                  \
            _mm256_xor_si256(_mm256_srli_epi64(a, (s)), b), _mm256_set1_epi64x((long long)(m))); \
        _mm256_store_si256(r + t + (s), _mm256_xor_si256(b, d));             \
        _mm256_store_si256(r + t, _mm256_xor_si256(a, _mm256_slli_epi64(d, (s)))); \
    }
BNN_INLINE void bnn_pl_transpose64x4(__m256i *r)
{
    BNN_PL_T_STAGE_(32, 0x00000000FFFFFFFFull)
    BNN_PL_T_STAGE_(16, 0x0000FFFF0000FFFFull)
    BNN_PL_T_STAGE_(8, 0x00FF00FF00FF00FFull)
    BNN_PL_T_STAGE_(4, 0x0F0F0F0F0F0F0F0Full)
    BNN_PL_T_STAGE_(2, 0x3333333333333333ull)
    BNN_PL_T_STAGE_(1, 0x5555555555555555ull)
}
#undef BNN_PL_T_STAGE_

/* Number of 1 bits in the kh input pixels of one window column (top at x). */
BNN_INLINE int bnn_pl_column_ones(const bnn_conv_params *prm, const bnn_word_t *x)
{
    int n = 0;
    for (int i = 0; i < prm->kh; i++)
        for (int w = 0; w < prm->cw; w++)
            n += __builtin_popcountll(x[i * prm->sxh + w]);
    return n;
}

/* T[p] = number of 1 bits in pixel p's window for p < np (0 after).  Along
 * a run of pixels one input column apart (stride 1: the windows of a row
 * overlap in kw - 1 columns), each column is counted once and T is a
 * sliding sum of kw column counts, instead of counting every window alone. */
static void bnn_pl_ones(const bnn_conv_params *prm, const bnn_word_t *const *pix, int np,
                        int16_t *T)
{
    const int kw = prm->kw;
    int col[BNN_PL_PIX + BNN_PL_KW_RUN];
    for (int p = 0; p < np;) {
        int run = 1;
        if (kw <= BNN_PL_KW_RUN)
            while (p + run < np && pix[p + run] == pix[p + run - 1] + prm->sxw)
                run++;
        for (int j = 0; j < run + kw - 1; j++)
            col[j] = bnn_pl_column_ones(prm, pix[p] + j * prm->sxw);
        for (int t = 0; t < run; t++) {
            int n = 0;
            for (int jj = 0; jj < kw; jj++)
                n += col[t + jj];
            T[p + t] = (int16_t)n;
        }
        p += run;
    }
    for (int p = np; p < BNN_PL_PIX; p++)
        T[p] = 0;
}

/* Planes of one block: planes[((i*kw + jj)*cw + w)*64 + b] bit p = bit b
 * of word w of tap (i, jj) of pixel p (pixel p's window starts at pix[p]);
 * the last plane is zero. */
static void bnn_pl_build(const bnn_conv_params *prm, const bnn_word_t *const *pix,
                         __m256i *planes, int nplanes)
{
    const int cw = prm->cw;
    for (int i = 0; i < prm->kh; i++)
        for (int jj = 0; jj < prm->kw; jj++)
            for (int w = 0; w < cw; w++) {
                const ptrdiff_t off = i * prm->sxh + jj * prm->sxw + w;
                __m256i *r = planes + ((ptrdiff_t)(i * prm->kw + jj) * cw + w) * 64;
                for (int t = 0; t < 64; t++)
                    r[t] = _mm256_setr_epi64x((long long)pix[t][off], (long long)pix[64 + t][off],
                                              (long long)pix[128 + t][off],
                                              (long long)pix[192 + t][off]);
                bnn_pl_transpose64x4(r);
            }
    planes[nplanes - 1] = _mm256_setzero_si256();
}

/* Full adder on 256 lanes: a + b + c = l + 2*h (5 logic ops). */
#define BNN_PL_CSA_(h, l, a, b, c) do {                                       \
        const __m256i u_ = _mm256_xor_si256((a), (b));                       \
        const __m256i c_ = (c);                                              \
        h = _mm256_or_si256(_mm256_and_si256((a), (b)), _mm256_and_si256(u_, c_)); \
        l = _mm256_xor_si256(u_, c_);                                        \
    } while (0)

/* One step of a bit-sliced sum: the 16 planes planes[idx[0..16)] added
 * into acc[0..4+H) (count bit b of pixel p at bit p of acc[b]).  15 full
 * adders (Harley-Seal) take them into ones, twos, fours, eights and one
 * sixteens plane, which half adders ripple into the H higher bits. */
BNN_INLINE void bnn_pl_step(const __m256i *planes, const uint16_t *idx, const int H,
                            __m256i *acc)
{
    __m256i ones = acc[0], twos = acc[1], fours = acc[2], eights = acc[3];
#define BNN_PL_LD_(q) _mm256_load_si256(planes + idx[q])
    __m256i tA, tB, fA, fB, eA, eB, c;
    /* 8 planes from q0 into ones and twos; e: their carry into eights. */
#define BNN_PL_HS8_(q0, e) do {                                               \
        BNN_PL_CSA_(tA, ones, ones, BNN_PL_LD_(q0), BNN_PL_LD_(q0 + 1));       \
        BNN_PL_CSA_(tB, ones, ones, BNN_PL_LD_(q0 + 2), BNN_PL_LD_(q0 + 3));   \
        BNN_PL_CSA_(fA, twos, twos, tA, tB);                                   \
        BNN_PL_CSA_(tA, ones, ones, BNN_PL_LD_(q0 + 4), BNN_PL_LD_(q0 + 5));   \
        BNN_PL_CSA_(tB, ones, ones, BNN_PL_LD_(q0 + 6), BNN_PL_LD_(q0 + 7));   \
        BNN_PL_CSA_(fB, twos, twos, tA, tB);                                   \
        BNN_PL_CSA_(e, fours, fours, fA, fB);                                  \
    } while (0)
    BNN_PL_HS8_(0, eA);
    BNN_PL_HS8_(8, eB);
#undef BNN_PL_HS8_
#undef BNN_PL_LD_
    BNN_PL_CSA_(c, eights, eights, eA, eB);
    acc[0] = ones; acc[1] = twos; acc[2] = fours; acc[3] = eights;
#pragma GCC unroll 16
    for (int b = 4; b < 4 + H; b++) {        /* += c (weight 16) */
        const __m256i carry = _mm256_and_si256(acc[b], c);
        acc[b] = _mm256_xor_si256(acc[b], c);
        c = carry;
    }
}

/* The bit-sliced sums S[l] (4+H planes each) of the three lists
 * idx[l][0..n[l]) (multiples of 16), their steps interleaved: each sum is
 * one long dependency chain through "ones", and several chains keep the
 * vector pipes busier than one. */
BNN_INLINE void bnn_pl_sum3(const __m256i *planes, const uint16_t *const idx[3],
                            const int n[3], const int H, __m256i S[3][4 + BNN_PL_HI_MAX])
{
    for (int l = 0; l < 3; l++)
#pragma GCC unroll 16
        for (int b = 0; b < 4 + H; b++)
            S[l][b] = _mm256_setzero_si256();
    const int nmin = bnn_min(n[0], bnn_min(n[1], n[2]));
    int i = 0;
    for (; i < nmin; i += 16) {             /* all three */
        bnn_pl_step(planes, idx[0] + i, H, S[0]);
        bnn_pl_step(planes, idx[1] + i, H, S[1]);
        bnn_pl_step(planes, idx[2] + i, H, S[2]);
    }
    for (int l = 0; l < 3; l++)             /* the longer ones' tails */
        for (int j = i; j < n[l]; j += 16)
            bnn_pl_step(planes, idx[l] + j, H, S[l]);
}

/* S = a + b, bit-sliced (nb planes; the sum fits them): a ripple of full
 * adders.  S may be a (plane k is read before it is written). */
BNN_INLINE void bnn_pl_add(const __m256i *a, const __m256i *b, int nb, __m256i *S)
{
    __m256i carry = _mm256_setzero_si256();
#pragma GCC unroll 16
    for (int k = 0; k < nb; k++)
        BNN_PL_CSA_(carry, S[k], a[k], b[k], carry);
}

/* Bit-sliced to bytes: from 8 planes P[0..8) (bit p = pixel p) to bytes
 * R[q] (q < 8) whose byte for pixel p holds bit b of P[b], b < 8.  Lane 0
 * of R[q] is pixels 16q .. 16q+15, lane 1 pixels 128+16q .. 128+16q+15.
 * First the bytes j (pixels 8j .. 8j+7) of the 8 planes are gathered into
 * one 64-bit word (byte b from P[b]; three rounds of unpacks, which work
 * within 128-bit lanes: R[q] gets j = 16*lane + 2q + e in its word e),
 * then each word's 8x8 bit matrix (bit 8b + i) is transposed (bit 8i + b):
 * three delta swaps (Hacker's Delight 7-3). */
BNN_INLINE void bnn_pl_bytes(const __m256i *P, __m256i *R)
{
    __m256i a[8], b[8];
    for (int k = 0; k < 4; k++) {
        a[2 * k] = _mm256_unpacklo_epi8(P[2 * k], P[2 * k + 1]);       /* j = 16L + e */
        a[2 * k + 1] = _mm256_unpackhi_epi8(P[2 * k], P[2 * k + 1]);   /* j = 16L + 8 + e */
    }
    for (int h = 0; h < 2; h++) {                /* planes 4h .. 4h+3 */
        b[4 * h] = _mm256_unpacklo_epi16(a[4 * h], a[4 * h + 2]);       /* j = 16L + e */
        b[4 * h + 1] = _mm256_unpackhi_epi16(a[4 * h], a[4 * h + 2]);   /* 16L + 4 + e */
        b[4 * h + 2] = _mm256_unpacklo_epi16(a[4 * h + 1], a[4 * h + 3]); /* 16L + 8 + e */
        b[4 * h + 3] = _mm256_unpackhi_epi16(a[4 * h + 1], a[4 * h + 3]); /* 16L + 12 + e */
    }
    for (int t = 0; t < 4; t++) {
        R[2 * t] = _mm256_unpacklo_epi32(b[t], b[4 + t]);               /* 16L + 4t + e */
        R[2 * t + 1] = _mm256_unpackhi_epi32(b[t], b[4 + t]);           /* 16L + 4t + 2 + e */
    }
#define BNN_PL_SWAP_(x, s, m) do {                                            \
        const __m256i d_ = _mm256_and_si256(                                 \
            _mm256_xor_si256((x), _mm256_srli_epi64((x), (s))), _mm256_set1_epi64x((long long)(m))); \
        (x) = _mm256_xor_si256((x), _mm256_xor_si256(d_, _mm256_slli_epi64(d_, (s)))); \
    } while (0)
    for (int q = 0; q < 8; q++) {
        BNN_PL_SWAP_(R[q], 7, 0x00AA00AA00AA00AAull);
        BNN_PL_SWAP_(R[q], 14, 0x0000CCCC0000CCCCull);
        BNN_PL_SWAP_(R[q], 28, 0x00000000F0F0F0F0ull);
    }
#undef BNN_PL_SWAP_
}

/* From the bit-sliced sum S (10 <= nb <= 16 planes) of channel c to its
 * popcounts: out[p] = ones ? T[p] + w1 - 2*s[p] : 2*s[p] + w1 - T[p], where
 * s[p] = sum_b 2^b * bit p of S[b]: bits 0-7 and 8-15 of s as bytes
 * (bnn_pl_bytes), interleaved into int16. */
BNN_INLINE void bnn_pl_counts(const __m256i *S, int nb, const int16_t *T, int w1,
                              int ones, int16_t *out)
{
    __m256i lo[8], hi[8], up[8];
    bnn_pl_bytes(S, lo);
    for (int b = 0; b < 8; b++)
        up[b] = 8 + b < nb ? S[8 + b] : _mm256_setzero_si256();
    bnn_pl_bytes(up, hi);
    const __m256i w1v = _mm256_set1_epi16((short)w1);
    for (int q = 0; q < 8; q++) {
        const __m256i x0 = _mm256_unpacklo_epi8(lo[q], hi[q]), x1 = _mm256_unpackhi_epi8(lo[q], hi[q]);
        const __m256i s[2] = {_mm256_permute2x128_si256(x0, x1, 0x20),    /* pixels 16q + .. */
                              _mm256_permute2x128_si256(x0, x1, 0x31)};   /* 128 + 16q + .. */
        for (int h = 0; h < 2; h++) {
            int16_t *o = out + 128 * h + 16 * q;
            const __m256i t = _mm256_loadu_si256((const __m256i *)(T + 128 * h + 16 * q));
            const __m256i s2 = _mm256_add_epi16(s[h], s[h]);
            const __m256i r = ones ? _mm256_sub_epi16(_mm256_add_epi16(t, w1v), s2)
                                   : _mm256_sub_epi16(_mm256_add_epi16(s2, w1v), t);
            _mm256_storeu_si256((__m256i *)o, r);
        }
    }
}

/* The 8x8 int16 block s[r*256 + k] (channel r, pixel k) transposed and
 * widened: v[k] = the 8 channels of pixel k as int32 (unpack 16/32/64). */
BNN_INLINE void bnn_pl_t8x8(const int16_t *s, __m256i v[8])
{
    __m128i a[8], b[8], c[8];
    for (int r = 0; r < 8; r++)
        a[r] = _mm_loadu_si128((const __m128i *)(s + r * BNN_PL_PIX));
    for (int r = 0; r < 8; r += 2) {
        b[r] = _mm_unpacklo_epi16(a[r], a[r + 1]);
        b[r + 1] = _mm_unpackhi_epi16(a[r], a[r + 1]);
    }
    /* b[0..3]: rows 0-3 (lo: pixels 0-3, hi: 4-7); b[4..7]: rows 4-7 */
    c[0] = _mm_unpacklo_epi32(b[0], b[2]); c[1] = _mm_unpackhi_epi32(b[0], b[2]);
    c[2] = _mm_unpacklo_epi32(b[1], b[3]); c[3] = _mm_unpackhi_epi32(b[1], b[3]);
    c[4] = _mm_unpacklo_epi32(b[4], b[6]); c[5] = _mm_unpackhi_epi32(b[4], b[6]);
    c[6] = _mm_unpacklo_epi32(b[5], b[7]); c[7] = _mm_unpackhi_epi32(b[5], b[7]);
    for (int q = 0; q < 4; q++) {           /* c[q]: pixels 2q, 2q+1 of rows 0-3 */
        v[2 * q] = _mm256_cvtepi16_epi32(_mm_unpacklo_epi64(c[q], c[q + 4]));
        v[2 * q + 1] = _mm256_cvtepi16_epi32(_mm_unpackhi_epi64(c[q], c[q + 4]));
    }
}

/* pc[p*64 + c] = (int32) s16[c*256 + p] for c < nc (rounded up to 8),
 * p < np (rounded up to 8). */
static void bnn_pl_transpose(const int16_t *s16, int nc, int np, int32_t *pc)
{
    for (int c0 = 0; c0 < nc; c0 += 8)
        for (int p0 = 0; p0 < np; p0 += 8) {
            __m256i v[8];
            bnn_pl_t8x8(s16 + c0 * BNN_PL_PIX + p0, v);
            for (int k = 0; k < 8; k++)
                _mm256_storeu_si256((__m256i *)(pc + (p0 + k) * BNN_PL_GROUP + c0), v[k]);
        }
}

/* The sums of a set's P lists idx[l][0..n[l]) (multiples of 16), three
 * chains at a time, then member i's sum (the lists whose pattern holds bit
 * i) as counts: bnn_pl_counts(S_i, T, w1[i], ones[i]) into out + i*256,
 * i < g.  The members are channels (bnn_pl_set_) or pixels (the
 * small-output path, bnn_wp_group_).  H is a constant (see bnn_pl_set),
 * so that the merges and the counts of the 4 + H planes are unrolled and
 * stay in registers. */
BNN_INLINE void bnn_pl_members_(const __m256i *planes, const uint16_t *const *idx, const int *n,
                                int g, const int16_t *T, const int32_t *w1, const uint8_t *ones,
                                int16_t *out, const int H)
{
    enum { L = (BNN_PL_PATTERNS + 2) / 3 * 3 };   /* rounded up to chains of three */
    __m256i P[L][4 + BNN_PL_HI_MAX], S[4 + BNN_PL_HI_MAX];
    const int nb = 4 + H;
    for (int l = 0; l < L; l += 3)
        bnn_pl_sum3(planes, idx + l, n + l, H, P + l);
    for (int i = 0; i < g; i++) {
        for (int k = 0; k < nb; k++)
            S[k] = _mm256_setzero_si256();
        for (int m = 1; m <= BNN_PL_PATTERNS; m++)
            if ((m >> i & 1) && n[m - 1])
                bnn_pl_add(S, P[m - 1], nb, S);
        bnn_pl_counts(S, nb, T, w1[i], ones[i], out + i * BNN_PL_PIX);
    }
}

/* Counts of the set of g (1..BNN_PL_SET) channels c .. c+g-1, set number
 * ``set`` (out + i*256 for channel c+i): list m-1 of the set holds the
 * planes that exactly the channels in bit pattern m need
 * (bnnlite/backends/planes.py, plane_lists). */
BNN_INLINE void bnn_pl_set_(const __m256i *planes, const bnn_pl_lists *pl, int set, int c,
                            int g, const int16_t *T, int16_t *out, const int H)
{
    enum { L = (BNN_PL_PATTERNS + 2) / 3 * 3 };
    const int32_t *off = pl->off + BNN_PL_PATTERNS * set;
    const uint16_t *idx[L];
    int n[L];
    for (int l = 0; l < L; l++) {
        idx[l] = pl->idx + off[bnn_min(l, BNN_PL_PATTERNS)];
        n[l] = l < BNN_PL_PATTERNS ? off[l + 1] - off[l] : 0;
    }
    bnn_pl_members_(planes, idx, n, g, T, pl->w1 + c, pl->ones + c, out, H);
}

/* bnn_pl_set_ for the layer's number of sixteens levels. */
static void bnn_pl_set(const __m256i *planes, const bnn_pl_lists *pl, int set, int c, int g,
                       const int16_t *T, int16_t *out)
{
    switch (pl->hi) {
    case 6: bnn_pl_set_(planes, pl, set, c, g, T, out, 6); break;
    case 7: bnn_pl_set_(planes, pl, set, c, g, T, out, 7); break;
    case 8: bnn_pl_set_(planes, pl, set, c, g, T, out, 8); break;
    case 9: bnn_pl_set_(planes, pl, set, c, g, T, out, 9); break;
    case 10: bnn_pl_set_(planes, pl, set, c, g, T, out, 10); break;
    default: bnn_pl_set_(planes, pl, set, c, g, T, out, 11); break;
    }
}

/* bnn_chain8 on popcounts p (acc = K - 2p), the channel constants
 * already in registers, the residual (if res) read at res. */
BNN_INLINE __m256 bnn_pl_chain(__m256i kv, __m256i p, __m256 sc, __m256 mu, __m256 bi,
                               const float *res, int rp, __m256 gm, __m256 be, __m256 ze)
{
    return bnn_chain8(_mm256_cvtepi32_ps(_mm256_sub_epi32(kv, _mm256_add_epi32(p, p))), sc, mu, bi,
                      res != NULL, res ? _mm256_loadu_ps(res) : _mm256_setzero_ps(), rp, gm, be, ze);
}

/* Whether bnn_pl_epilogue_f8 can take this layer's group of nco:
 * float mode, nco % 8 == 0, cres % 8 == 0, rows of conv pixels in whole
 * octets. */
static int bnn_pl_f8_fits(const bnn_conv_params *prm, const bnn_io *io, int nco)
{
    return !prm->thr && nco % BNN_LANES == 0 && (!io->res || prm->cres % BNN_LANES == 0) &&
           (io->pool ? 2 * io->wpool : prm->wo) % 8 == 0;
}

/* The float epilogue of one channel group for the block's pixels, with the
 * channel octets outer and the pixels inner so that the eight channels'
 * constants stay in registers (the per-pixel epilogue reloads seven vectors
 * per eight outputs).  It reads the counts s16 ([c][256] int16) itself, 8x8
 * at a time (bnn_pl_t8x8), so no [p][c] copy goes through memory.  Only
 * where bnn_pl_f8_fits; bit-identical to bnn_pl_epilogue (same
 * chain, same pooling pairs).  pool, res (a residual is added) and rp
 * (RPReLU) are constants (see bnn_pl_epilogue_f8): the inner loops
 * unroll, with no tests and no address products left in them. */
BNN_INLINE void bnn_pl_epilogue_f8_(const bnn_conv_params *prm, const bnn_io *io,
                                    int u0, int nu, int g0, int nco, const int16_t *s16,
                                    const int pool, const int res, const int rp)
{
    const int wo = prm->wo, wc = 2 * io->wpool;
    const int per_u = pool ? io->wpool : wo;       /* output pixels per unit */
    const int step = pool ? 4 : 8;                 /* output pixels per 8x8 block */
    const ptrdiff_t srw = io->srw, sow = io->sow;
    bnn_word_t wb[BNN_PL_PIX];
    for (int p = 0; p < nu * per_u; p++)
        wb[p] = 0;
    const __m256i kv = _mm256_set1_epi32((int)prm->k_bits);
    for (int o = 0; o < nco; o += BNN_LANES) {
        const int co = g0 + o;
        const int16_t *so = s16 + o * BNN_PL_PIX;
        const __m256 sc = _mm256_loadu_ps(prm->scale + co), mu = _mm256_loadu_ps(prm->mult + co);
        const __m256 bi = _mm256_loadu_ps(prm->bias + co);
        const __m256 gm = rp ? _mm256_loadu_ps(prm->gamma + co) : _mm256_setzero_ps();
        const __m256 be = rp ? _mm256_loadu_ps(prm->beta + co) : _mm256_setzero_ps();
        const __m256 ze = rp ? _mm256_loadu_ps(prm->zeta + co) : _mm256_setzero_ps();
        const __m256 nt = prm->next_thr ? _mm256_loadu_ps(prm->next_thr + co) : _mm256_setzero_ps();
        const int sh = co % BNN_WORD_BITS;
        for (int u = 0; u < nu; u++) {
            const int n = (u0 + u) / io->rows, i = (u0 + u) % io->rows;
            /* Residual of the unit's (first) conv row, channel co; the second row of a pool pair. */
            const float *r0 = res ? io->res + n * io->srn + (pool ? 2 * i : i) * io->srh + co % prm->cres
                                  : NULL;
            const float *r1 = res && pool ? r0 + io->srh : NULL;
            float *on = io->out ? io->out + n * io->son + i * io->soh + co : NULL;
            bnn_word_t *wu = wb + u * per_u;
            for (int q0 = 0; q0 < per_u; q0 += step) {
                __m256 y[8];
                if (!pool) {
                    __m256i v[8];
                    bnn_pl_t8x8(so + u * wo + q0, v);
                    const float *rq = res ? r0 + q0 * srw : NULL;
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++)
                        y[k] = bnn_pl_chain(kv, v[k], sc, mu, bi, res ? rq + k * srw : NULL,
                                            rp, gm, be, ze);
                } else {
                    __m256i va[8], vb[8];           /* conv rows 2i and 2i+1 */
                    bnn_pl_t8x8(so + u * 2 * wc + 2 * q0, va);
                    bnn_pl_t8x8(so + u * 2 * wc + wc + 2 * q0, vb);
                    const float *ra = res ? r0 + 2 * q0 * srw : NULL;
                    const float *rb = res ? r1 + 2 * q0 * srw : NULL;
#pragma GCC unroll 4
                    for (int k = 0; k < 4; k++) {
                        const __m256 a0 = bnn_pl_chain(kv, va[2 * k], sc, mu, bi,
                                                       res ? ra + 2 * k * srw : NULL, rp, gm, be, ze);
                        const __m256 a1 = bnn_pl_chain(kv, va[2 * k + 1], sc, mu, bi,
                                                       res ? ra + (2 * k + 1) * srw : NULL, rp, gm, be, ze);
                        const __m256 b0 = bnn_pl_chain(kv, vb[2 * k], sc, mu, bi,
                                                       res ? rb + 2 * k * srw : NULL, rp, gm, be, ze);
                        const __m256 b1 = bnn_pl_chain(kv, vb[2 * k + 1], sc, mu, bi,
                                                       res ? rb + (2 * k + 1) * srw : NULL, rp, gm, be, ze);
                        y[k] = bnn_avx2_fmax8(bnn_avx2_fmax8(a0, a1), bnn_avx2_fmax8(b0, b1));
                    }
                }
#pragma GCC unroll 8
                for (int k = 0; k < step; k++) {
                    if (on)
                        _mm256_storeu_ps(on + (q0 + k) * sow, y[k]);
                    if (prm->next_thr)
                        wu[q0 + k] |= (bnn_word_t)(unsigned)_mm256_movemask_ps(
                            _mm256_cmp_ps(y[k], nt, _CMP_LT_OQ)) << sh;
                }
            }
        }
    }
    if (io->bits)
        for (int u = 0; u < nu; u++) {
            const int n = (u0 + u) / io->rows, i = (u0 + u) % io->rows;
            for (int q = 0; q < per_u; q++)
                io->bits[n * io->sbn + i * io->sbh + q * io->sbw + g0 / BNN_WORD_BITS] =
                    wb[u * per_u + q];
        }
}

/* bnn_pl_epilogue_f8_ for this layer's pooling, residual and RPReLU. */
static void bnn_pl_epilogue_f8(const bnn_conv_params *prm, const bnn_io *io,
                               int u0, int nu, int g0, int nco, const int16_t *s16)
{
#define BNN_PL_F8_(pool, res, rp) \
    bnn_pl_epilogue_f8_(prm, io, u0, nu, g0, nco, s16, pool, res, rp)
    const int res = io->res != NULL, rp = prm->gamma != NULL;
    if (io->pool) {
        if (res) { if (rp) BNN_PL_F8_(1, 1, 1); else BNN_PL_F8_(1, 1, 0); }
        else     { if (rp) BNN_PL_F8_(1, 0, 1); else BNN_PL_F8_(1, 0, 0); }
    } else {
        if (res) { if (rp) BNN_PL_F8_(0, 1, 1); else BNN_PL_F8_(0, 1, 0); }
        else     { if (rp) BNN_PL_F8_(0, 0, 1); else BNN_PL_F8_(0, 0, 0); }
    }
#undef BNN_PL_F8_
}

/* Epilogue of one channel group (g0 .. g0+nco-1) for the block's pixels,
 * popcounts in pc ([p][64] int32): the same calls as bnn_sel_conv_row /
 * bnn_sel_conv_row_pool2 make on the popcount core's tile. */
static void bnn_pl_epilogue(const bnn_conv_params *prm, const bnn_io *io,
                            int u0, int nu, int g0, int nco, const int32_t *pc)
{
    const int wo = prm->wo;
    const int wrd = g0 / BNN_WORD_BITS;
    if (!io->pool) {
        for (int u = 0; u < nu; u++) {
            const int n = (u0 + u) / io->rows, ho = (u0 + u) % io->rows;
            for (int q = 0; q < wo; q++) {
                const int p = u * wo + q;
                bnn_word_t wbits = 0;
                bnn_avx2_epilogue(prm, NULL, pc + p * BNN_PL_GROUP, g0, nco,
                                  io->res ? io->res + n * io->srn + ho * io->srh + q * io->srw : NULL,
                                  io->out ? io->out + n * io->son + ho * io->soh + q * io->sow : NULL,
                                  0, &wbits);
                if (io->bits)
                    io->bits[n * io->sbn + ho * io->sbh + q * io->sbw + wrd] = wbits;
            }
        }
        return;
    }
    float ybuf[2][2 * BNN_CO_BLOCK] __attribute__((aligned(64)));
    bnn_word_t unused;
    bnn_conv_params ep = *prm;
    ep.next_thr = NULL;           /* the pack is done after pooling */
    const int wc = 2 * io->wpool;
    for (int u = 0; u < nu; u++) {
        const int n = (u0 + u) / io->rows, i = (u0 + u) % io->rows;
        for (int q = 0; q < io->wpool; q++) {
            bnn_word_t wbits = 0;
            for (int b0 = 0; b0 < nco; b0 += BNN_CO_BLOCK) {
                const int nb = bnn_min(BNN_CO_BLOCK, nco - b0);
                for (int r = 0; r < 2; r++)
                    for (int d = 0; d < 2; d++) {
                        const int p = u * 2 * wc + r * wc + 2 * q + d;
                        const float *res = io->res ? io->res + n * io->srn + (2 * i + r) * io->srh
                                                            + (2 * q + d) * io->srw : NULL;
                        bnn_avx2_epilogue(&ep, NULL, pc + p * BNN_PL_GROUP + b0, g0 + b0, nb,
                                          res, ybuf[r] + d * BNN_CO_BLOCK, g0 + b0, &unused);
                    }
                bnn_avx2_pool_block(ybuf[0], ybuf[1], 1, g0 + b0, nb,
                                    io->bits ? prm->next_thr : NULL,
                                    io->out ? io->out + n * io->son + i * io->soh + q * io->sow : NULL,
                                    io->sow, &wbits);
            }
            if (io->bits)
                io->bits[n * io->sbn + i * io->sbh + q * io->sbw + wrd] = wbits;
        }
    }
}

/* Prefetch (into L2) the residual of a conv pixel (px: its channel 0),
 * channels g0 .. g0+nco-1 (taken mod cres). */
BNN_INLINE void bnn_pl_prefetch_res(const bnn_conv_params *prm, const float *px, int g0,
                                    int nco)
{
    const int rc = g0 % prm->cres, nr = bnn_min(nco, prm->cres);
    for (int l = 0; l < nr; l += 16)
        __builtin_prefetch(px + rc + l, 0, 2);
}

/* Appends the conv pixels of unit u (an output row, or the two conv rows
 * of a pooled row, row by row) to pix (the first word of each window) and,
 * when the layer has a residual, to rpx (its residual pixel); returns the
 * new count.  The order the epilogues read the pixels in. */
static int bnn_pl_unit_windows(const bnn_conv_params *prm, const bnn_io *io, int u,
                               const bnn_word_t **pix, const float **rpx, int np)
{
    const ptrdiff_t sh = prm->stride * prm->sxh, sw = prm->stride * prm->sxw;
    const int n = u / io->rows, i = u % io->rows;
    const bnn_word_t *xn = io->x + n * io->sxn;
    const float *rn = io->res ? io->res + n * io->srn : NULL;
    const int rows = io->pool ? 2 : 1, cols = io->pool ? 2 * io->wpool : prm->wo;
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < cols; q++) {
            const int h = rows * i + r;
            if (rn && rpx)
                rpx[np] = rn + h * io->srh + q * io->srw;
            pix[np++] = xn + h * sh + q * sw;
        }
    return np;
}

/* One block: units u0 .. u0+nu-1 (nu * unit pixels <= 256) of the layer,
 * all output channels.  ws: this thread's scratch (bnn_pl_ws_bytes). */
static void bnn_pl_block(const bnn_conv_params *prm, const bnn_pl_lists *pl,
                         const bnn_io *io, int u0, int nu, void *ws)
{
    __m256i *planes = (__m256i *)ws;
    int16_t *s16 = (int16_t *)(planes + pl->nplanes);
    int32_t *pc = (int32_t *)(s16 + BNN_PL_GROUP * BNN_PL_PIX);
    int16_t *T = (int16_t *)(pc + BNN_PL_PIX * BNN_PL_GROUP);
    const bnn_word_t **pix = (const bnn_word_t **)(T + BNN_PL_PIX);
    const float **rpx = (const float **)(pix + BNN_PL_PIX);   /* residual pixels, if any */
    int np = 0;
    for (int u = 0; u < nu; u++)
        np = bnn_pl_unit_windows(prm, io, u0 + u, pix, rpx, np);
    /* Unused pixels repeat pixel 0: computed, never stored. */
    for (int p = np; p < BNN_PL_PIX; p++)
        pix[p] = pix[0];
    bnn_pl_build(prm, pix, planes, pl->nplanes);
    bnn_pl_ones(prm, pix, np, T);
    for (int g0 = 0; g0 < prm->cout; g0 += BNN_PL_GROUP) {
        const int nco = bnn_min(BNN_PL_GROUP, prm->cout - g0);
        for (int c = 0; c < nco; c += BNN_PL_SET) {
            const int g = bnn_min(BNN_PL_SET, nco - c);
            /* The residual (the previous layer's output, often in L3 only)
             * of the group's channels, a few pixels per channel, into L2:
             * perf showed the epilogue waiting on it. */
            if (io->res)
                for (int p = c * np / nco; p < (c + g) * np / nco; p++)
                    bnn_pl_prefetch_res(prm, rpx[p], g0, nco);
            bnn_pl_set(planes, pl, g0 / BNN_PL_GROUP * BNN_PL_SETS + c / BNN_PL_SET, g0 + c, g,
                       T, s16 + c * BNN_PL_PIX);
        }
        if (bnn_pl_f8_fits(prm, io, nco)) {
            bnn_pl_epilogue_f8(prm, io, u0, nu, g0, nco, s16);
        } else {
            bnn_pl_transpose(s16, nco, np, pc);
            bnn_pl_epilogue(prm, io, u0, nu, g0, nco, pc);
        }
    }
}
#endif /* BNN_AVX2 */
#endif /* BNNLITE_PLANES_AVX2_H */
