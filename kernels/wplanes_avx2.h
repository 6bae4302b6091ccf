/*
 * wplanes_avx2.h -- the small-output path of the bit-plane conv (AVX2), by
 * weight planes.  Names: bnn_wp_.  bconv_select.h runs bnn_wp_unit where it
 * chooses this path (bnn_sel_choose); the struct and sizes at the top are
 * plain C, for every build.  Built on planes_avx2.h (its sums, counts and
 * epilogue); read that first.
 *
 * Small outputs (bnn_wp_unit).  A block costs the same whether its 256
 * pixels are all used or not, so an output of fewer pixels (a single image
 * at 8x8: 64) wastes most of it.  There the roles swap: a plane is one
 * weight bit k of 256 output channels, made once at load time, and a pixel
 * adds the planes of its input bits that are 1: S[c] = sum_{k: x_k=1} w_ck,
 * so popcount(x XOR w_c) = |X1| + |W1_c| - 2 S[c].  Pixels go in fours
 * whose input bits are split into 15 lists by which of the four have them
 * (built per call), so a plane two pixels need is added once, as channels
 * share lists above.  The same counts and epilogue follow.  Its gain at
 * batch 1 is in docs/benchmarks-history.md, "A path for outputs too small
 * to fill a bit-plane block" (tools/planes_ab.py).
 */
#ifndef BNNLITE_WPLANES_AVX2_H
#define BNNLITE_WPLANES_AVX2_H

#include "bnn_common.h"
#include "planes_avx2.h"

/* The weight planes of the small-output path (bnn_wp_unit; see
 * bnnlite/backends/planes.py, weight_planes).  The roles of pixels and channels swap:
 * a plane holds one input bit k of the weights of 256 output channels
 * (bit c of w[g*nplanes + k] = weight bit k of channel 256g + c; plane
 * nplanes-1 is zero), made once at load time, and the lists of planes to
 * add come from the input bits, per call. */
typedef struct {
    const void *w;           /* (groups, nplanes) planes of 32 bytes */
    const int16_t *a;        /* (groups * 256,) |W1| of channel c (0 past cout) */
    int nplanes;             /* kh*kw*cw*64 + 1 */
    int groups;              /* ceil(cout / 256) */
    int hi;                  /* sixteens-counter levels, BNN_PL_HI_MIN..MAX */
} bnn_wp_planes;

#define BNN_WP_LANES 256     /* channels per weight plane */
typedef char bnn_wp_lanes_are_block_pixels[BNN_WP_LANES == BNN_PL_PIX ? 1 : -1];
#define BNN_WP_PIX 4         /* pixels whose lists are built together (15 lists) */
#define BNN_WP_UNIT_MAX 64   /* conv pixels per unit on this path */

/* Per-thread scratch of the small-output path, 32-byte aligned. */
static inline size_t bnn_wp_ws_bytes(int nplanes, int cout)
{
    const size_t k = (size_t)nplanes - 1, cg = (size_t)(cout + 63) / 64 * 64;
    return ((size_t)BNN_PL_PATTERNS * (k + 16) * 2 + 31) / 32 * 32   /* lists */
         + (size_t)BNN_WP_PIX * (k / 64) * 8                          /* window words */
         + (size_t)BNN_WP_UNIT_MAX * cg * 4                            /* pc: [group][p][64] */
         + (size_t)BNN_WP_PIX * BNN_WP_LANES * 2                       /* counts: [pixel][256] */
         + (size_t)BNN_WP_UNIT_MAX * sizeof(void *);                   /* pixel pointers */
}
#if BNN_AVX2
/* Appends to lists[m-1] (lengths n[m-1]) the planes k = w*64 + b whose
 * bit b is set in exactly the pixels of pattern m (bit j: pixel j) among
 * the BNN_WP_PIX words a[j] = bits w*64 .. w*64+63 of pixel j's window. */
BNN_INLINE void bnn_wp_bucket(const uint64_t a[BNN_WP_PIX], int w, uint16_t *lists, size_t stride,
                              int n[BNN_PL_PATTERNS])
{
    typedef char four_pixels[BNN_WP_PIX == 4 ? 1 : -1];
    const uint64_t lo[4] = {~a[0] & ~a[1], a[0] & ~a[1], ~a[0] & a[1], a[0] & a[1]};
    const uint64_t hi[4] = {~a[2] & ~a[3], a[2] & ~a[3], ~a[2] & a[3], a[2] & a[3]};
    for (int m = 1; m <= BNN_PL_PATTERNS; m++) {
        uint64_t v = lo[m & 3] & hi[m >> 2];
        uint16_t *L = lists + (size_t)(m - 1) * stride;
        int k = n[m - 1];
        while (v) {
            L[k++] = (uint16_t)(w * 64 + __builtin_ctzll(v));
            v &= v - 1;
        }
        n[m - 1] = k;
    }
}

/* Popcounts of the four pixels pix[0..4) against the 256 channels of group
 * g: the lists of planes (input bits) that exactly the pixels of pattern m
 * have set, each summed once over the weight planes, then pixel j's sum
 * S_j = sum over the lists holding j (bnn_pl_members_, with pixels as
 * the members).  S_j[c] = sum_{k: x_k = 1} w_ck, so popcount(x XOR w_c) =
 * |X1| + |W1_c| - 2 S_j[c] (bnn_pl_counts with T = |W1|, w1 = |X1|).
 * cnt + j*256: the counts of pixel j, channel order. */
BNN_INLINE void bnn_wp_group_(const bnn_wp_planes *wp, int g, const uint16_t *lists, size_t stride,
                              const int n[BNN_PL_PATTERNS], const int32_t x1[BNN_WP_PIX], int npx,
                              int16_t *cnt, const int H)
{
    enum { L = (BNN_PL_PATTERNS + 2) / 3 * 3 };
    static const uint8_t ones[BNN_WP_PIX] = {1, 1, 1, 1};  /* the sums are over X1 */
    const uint16_t *idx[L];
    int len[L];
    for (int l = 0; l < L; l++) {
        idx[l] = lists + (size_t)bnn_min(l, BNN_PL_PATTERNS - 1) * stride;
        len[l] = l < BNN_PL_PATTERNS ? n[l] : 0;
    }
    bnn_pl_members_((const __m256i *)wp->w + (size_t)g * wp->nplanes, idx, len, npx,
                    wp->a + (size_t)g * BNN_WP_LANES, x1, ones, cnt, H);
}

static void bnn_wp_group(const bnn_wp_planes *wp, int g, const uint16_t *lists, size_t stride,
                         const int n[BNN_PL_PATTERNS], const int32_t x1[BNN_WP_PIX], int npx,
                         int16_t *cnt)
{
    switch (wp->hi) {
    case 6: bnn_wp_group_(wp, g, lists, stride, n, x1, npx, cnt, 6); break;
    case 7: bnn_wp_group_(wp, g, lists, stride, n, x1, npx, cnt, 7); break;
    case 8: bnn_wp_group_(wp, g, lists, stride, n, x1, npx, cnt, 8); break;
    case 9: bnn_wp_group_(wp, g, lists, stride, n, x1, npx, cnt, 9); break;
    case 10: bnn_wp_group_(wp, g, lists, stride, n, x1, npx, cnt, 10); break;
    default: bnn_wp_group_(wp, g, lists, stride, n, x1, npx, cnt, 11); break;
    }
}

/* One unit (an output row, or a pooled pair of conv rows; at most
 * BNN_WP_UNIT_MAX conv pixels) of a layer whose output has too few pixels
 * to fill the 256 lanes of bit-plane blocks (a single small image, say).
 * The conv pixels go four at a time: their window words are gathered, the
 * input bits bucketed into 15 lists (bnn_wp_bucket), the lists summed over
 * the weight planes of each group of 256 channels (bnn_wp_group); then the
 * epilogue of the bit-plane conv (bnn_pl_epilogue) on the unit's
 * popcounts.  The same integers as the popcount core, so the same floats
 * and bits.  ws: this thread's scratch (bnn_wp_ws_bytes). */
static void bnn_wp_unit(const bnn_conv_params *prm, const bnn_wp_planes *wp,
                        const bnn_io *io, int u, void *ws)
{
    const int kwords = (wp->nplanes - 1) / 64, ng = (prm->cout + BNN_PL_GROUP - 1) / BNN_PL_GROUP;
    const size_t stride = (size_t)wp->nplanes - 1 + 16;
    uint16_t *lists = (uint16_t *)ws;
    uint64_t *xw = (uint64_t *)((char *)ws + ((size_t)BNN_PL_PATTERNS * stride * 2 + 31) / 32 * 32);
    int32_t *pc = (int32_t *)(xw + (size_t)BNN_WP_PIX * kwords);
    int16_t *cnt = (int16_t *)(pc + (size_t)BNN_WP_UNIT_MAX * ng * BNN_PL_GROUP);
    const bnn_word_t **pix = (const bnn_word_t **)(cnt + BNN_WP_PIX * BNN_WP_LANES);
    const int np = bnn_pl_unit_windows(prm, io, u, pix, NULL, 0);
    for (int p0 = 0; p0 < np; p0 += BNN_WP_PIX) {
        const int npx = bnn_min(BNN_WP_PIX, np - p0);
        int32_t x1[BNN_WP_PIX];
        int len[BNN_PL_PATTERNS];
        for (int j = 0; j < BNN_WP_PIX; j++) {      /* missing pixels: all zero, in no list */
            uint64_t *d = xw + (size_t)j * kwords;   /* word (i*kw + jj)*cw + c: plane numbering */
            int ones = 0;
            for (int i = 0; i < prm->kh; i++)
                for (int jj = 0; jj < prm->kw; jj++)
                    for (int c = 0; c < prm->cw; c++) {
                        const uint64_t v = j < npx ? (uint64_t)pix[p0 + j][i * prm->sxh + jj * prm->sxw + c] : 0;
                        *d++ = v;
                        ones += __builtin_popcountll(v);
                    }
            x1[j] = ones;
        }
        for (int m = 0; m < BNN_PL_PATTERNS; m++)
            len[m] = 0;
        for (int w = 0; w < kwords; w++) {
            uint64_t a[BNN_WP_PIX];
            for (int j = 0; j < BNN_WP_PIX; j++)
                a[j] = xw[(size_t)j * kwords + w];
            bnn_wp_bucket(a, w, lists, stride, len);
        }
        for (int m = 0; m < BNN_PL_PATTERNS; m++) {  /* pad to whole steps with the zero plane */
            uint16_t *L = lists + (size_t)m * stride;
            while (len[m] % 16)
                L[len[m]++] = (uint16_t)(wp->nplanes - 1);
        }
        for (int g = 0; g < wp->groups; g++) {
            bnn_wp_group(wp, g, lists, stride, len, x1, npx, cnt);
            for (int j = 0; j < npx; j++)           /* to pc[group of 64][pixel][64], int32 */
                for (int c0 = 0; c0 < BNN_WP_LANES && g * BNN_WP_LANES + c0 < prm->cout; c0 += 8) {
                    const int co = g * BNN_WP_LANES + c0;
                    const __m256i v = _mm256_cvtepi16_epi32(
                        _mm_loadu_si128((const __m128i *)(cnt + j * BNN_WP_LANES + c0)));
                    _mm256_storeu_si256((__m256i *)(pc + ((size_t)(co / BNN_PL_GROUP) * BNN_WP_UNIT_MAX
                                                          + p0 + j) * BNN_PL_GROUP + co % BNN_PL_GROUP), v);
                }
        }
    }
    for (int g0 = 0; g0 < prm->cout; g0 += BNN_PL_GROUP)
        bnn_pl_epilogue(prm, io, u, 1, g0, bnn_min(BNN_PL_GROUP, prm->cout - g0),
                        pc + (size_t)(g0 / BNN_PL_GROUP) * BNN_WP_UNIT_MAX * BNN_PL_GROUP);
}
#endif /* BNN_AVX2 */
#endif /* BNNLITE_WPLANES_AVX2_H */
