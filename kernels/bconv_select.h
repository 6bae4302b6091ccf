/*
 * bconv_select.h -- the one place where a binary conv's way through the
 * kernels is chosen and named (as Larq Compute Engine's select_kernel.h).
 * Names: bnn_sel_.  kernels/_bconv.pxi fills a bnn_conv_params and a
 * bnn_io (bnn_common.h), calls bnn_sel_job_init once per call and
 * bnn_sel_run once per work item, in parallel.
 *
 * 1. The target (at compile time): the header of the build's instruction
 *    set (AVX-512, AVX2, NEON, else portable) gives the block (popcount core +
 *    epilogue of BNN_P pixels x one block of output channels) and the 2x2 pool of a block, named here as
 *    BNN_SEL_TARGET(block) and BNN_SEL_TARGET(pool_block).  A new target
 *    is one header with these two functions and one entry in the list
 *    below; it may add a pointwise run for 1x1 convs,
 *    BNN_SEL_TARGET(pointwise) (BNN_SEL_HAVE_POINTWISE: AVX-512, AVX2, NEON).
 * 2. The path (per call, bnn_sel_choose):
 *      BNN_SEL_CORE     for the 1x1 convs that the pointwise run takes in
 *                       preference to the bit planes (bnn_sel_prefer_pointwise:
 *                       AVX2, up to BNN_SEL_PREFER_POINTWISE_CW words per
 *                       pixel, where it measured faster);
 *      BNN_SEL_PLANES   else the bit-plane conv (planes_avx2.h), where the build
 *                       has it, the layer's plane lists were made, and the
 *                       output fills at least BNN_SEL_PLANES_MIN_PIXELS of
 *                       a block's 256 pixels;
 *      BNN_SEL_WPLANES  else its small-output path by weight planes
 *                       (wplanes_avx2.h), where the weight planes were
 *                       made and a unit (output row) fits it;
 *      BNN_SEL_CORE     else the popcount core, row by row
 *                       (bnn_sel_conv_row, bnn_sel_conv_row_pool2; 1x1
 *                       convs by the pointwise run where the target has it).
 *    Python asks the same function (select_path in _bconv.pxi) to know
 *    which prepared data and scratch to pass (bnnlite/backends/planes.py,
 *    call_path); all three give the same integers, so the same floats.
 */
#ifndef BNNLITE_BCONV_SELECT_H
#define BNNLITE_BCONV_SELECT_H

#include "bnn_common.h"

#if BNN_AVX512
#include "bconv_avx512.h"
#define BNN_SEL_TARGET(f) bnn_avx512_##f
#define BNN_SEL_HAVE_POINTWISE 1
#elif BNN_AVX2
#include "bconv_avx2.h"
#define BNN_SEL_TARGET(f) bnn_avx2_##f
#define BNN_SEL_HAVE_POINTWISE 1
#define BNN_SEL_POINTWISE_MAX_CW BNN_AVX2_PW_MAX_CW
/* 1x1 convs up to 4 words per pixel (Cin <= 256) take the pointwise run
 * even where the bit planes apply (bnn_sel_choose): measured 1.07x-2.2x
 * the bit-plane conv and 1.2x-1.8x the weight planes, one thread, on
 * outputs from 4x4 to 56x56, batch 1 to 4, Cin 32-256, stride 1 and 2
 * (the 1x1 layers of tools/random_bundle.py reactnet: 1.23x-2.17x,
 * tools/kernel_ab.py).  At 8 words (Cin 512) the bit planes were as fast
 * or faster (0.82x-0.97x) and the weight planes on some outputs
 * (0.88x-1.29x); at 16 (Cin 1024) both were faster (0.68x-0.86x). */
#define BNN_SEL_PREFER_POINTWISE_CW 4
#elif BNN_NEON
#include "bconv_neon.h"
#define BNN_SEL_TARGET(f) bnn_neon_##f
#define BNN_SEL_HAVE_POINTWISE 1
/* The uint16 accumulators' bound (BNN_NEON_MAX_STEPS); wider 1x1 convs
 * take the tile path, which hands them to the portable block. */
#define BNN_SEL_POINTWISE_MAX_CW BNN_NEON_PW_MAX_CW
#else
#include "bconv_portable.h"
#define BNN_SEL_TARGET(f) bnn_port_##f
#endif

/* The bit-plane paths: AVX2 builds only (their structs exist in all). */
#include "planes_avx2.h"
#include "wplanes_avx2.h"
#define BNN_SEL_HAVE_PLANES BNN_AVX2

/* The bit-plane conv runs only when a block holds at least this many of
 * its 256 pixels (a smaller batch of small images leaves most bits of
 * every plane idle, and the popcount core is then faster). */
#define BNN_SEL_PLANES_MIN_PIXELS 128

/* ------------------------------------------------------------------ */
/* The popcount core, row by row                                       */
/* ------------------------------------------------------------------ */

/* The target's block (contract: bnn_port_block, bconv_portable.h), after
 * asking for the residual it will add. */
BNN_INLINE void bnn_sel_block(const bnn_conv_params *prm, const bnn_word_t *x0,
                              ptrdiff_t pstep, const bnn_word_t *wb, int np, int nv,
                              int co0, int nco, const float *res_px, ptrdiff_t s_res_w,
                              float *out_px, ptrdiff_t s_out_w, int ocol,
                              bnn_word_t *wbits)
{
    if (res_px)
        bnn_prefetch_residual(res_px, s_res_w, np, bnn_res_channel(co0, prm->cres), nco);
    BNN_SEL_TARGET(block)(prm, x0, pstep, wb, np, nv, co0, nco, res_px, s_res_w,
                          out_px, s_out_w, ocol, wbits);
}

#ifndef BNN_SEL_HAVE_POINTWISE
#define BNN_SEL_HAVE_POINTWISE 0
#endif
#ifndef BNN_SEL_POINTWISE_MAX_CW      /* words per pixel the pointwise run takes */
#define BNN_SEL_POINTWISE_MAX_CW INT32_MAX
#endif
#ifndef BNN_SEL_PREFER_POINTWISE_CW   /* see the AVX2 entry above */
#define BNN_SEL_PREFER_POINTWISE_CW 0
#endif

/* A 1x1 conv row by the target's pointwise run (BNN_SEL_TARGET(pointwise):
 * channel block outer, pixel inner) where the target has one; the row may
 * be a flat run of several (bnn_sel_flat). */
static inline int bnn_sel_pointwise(const bnn_conv_params *prm)
{
    return BNN_SEL_HAVE_POINTWISE && prm->kh == 1 && prm->kw == 1 && prm->k_bits < (1 << 24) &&
           prm->cw <= BNN_SEL_POINTWISE_MAX_CW;
}

/* One output row (fixed n, ho): xrow = &x[n, ho*stride, 0, 0];
 * res_row/out_row/bits_row point at [n, ho, 0, 0] of their arrays (or NULL),
 * with W strides s_res_w/s_out_w (floats) and s_bits_w (words).
 * Loop order: pixel tile outer, output-channel block inner, so the input
 * pixels stay in L1 and the packed bits of a word are assembled in a
 * register and stored once. */
BNN_CLONES
static void bnn_sel_conv_row(const bnn_conv_params *prm, const bnn_word_t *xrow,
                             const float *res_row, ptrdiff_t s_res_w,
                             float *out_row, ptrdiff_t s_out_w,
                             bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
    const int cout = prm->cout;
    const int nblk = (cout + BNN_CO_BLOCK - 1) / BNN_CO_BLOCK;
    const ptrdiff_t pstep = (ptrdiff_t)prm->stride * prm->sxw;
    const ptrdiff_t wblk = (ptrdiff_t)prm->kh * prm->kw * prm->cw * BNN_CO_BLOCK;
#if BNN_SEL_HAVE_POINTWISE
    if (bnn_sel_pointwise(prm)) {
        for (int b = 0; b < nblk; b++) {
            const int co0 = b * BNN_CO_BLOCK;
            const int nco = bnn_min(BNN_CO_BLOCK, cout - co0);
            BNN_SEL_TARGET(pointwise)(prm, xrow, pstep, prm->w + b * wblk, prm->wo,
                                      (nco + BNN_LANES - 1) / BNN_LANES, co0, nco, res_row, s_res_w,
                                      out_row, s_out_w,
                                      bits_row ? bits_row + co0 / BNN_WORD_BITS : NULL, s_bits_w);
        }
        return;
    }
#endif
    for (int wo0 = 0; wo0 < prm->wo; wo0 += BNN_P) {
        const int np = bnn_min(BNN_P, prm->wo - wo0);
        bnn_word_t wbits[BNN_P];
        for (int b = 0; b < nblk; b++) {
            const int co0 = b * BNN_CO_BLOCK;
            const int nco = bnn_min(BNN_CO_BLOCK, cout - co0);
            const int nv = (nco + BNN_LANES - 1) / BNN_LANES;
            if (co0 % BNN_WORD_BITS == 0)
                for (int p = 0; p < np; p++)
                    wbits[p] = 0;
            bnn_sel_block(prm, xrow + wo0 * pstep, pstep, prm->w + b * wblk, np, nv, co0, nco,
                          res_row ? res_row + wo0 * s_res_w : NULL, s_res_w,
                          out_row ? out_row + wo0 * s_out_w : NULL, s_out_w, 0, wbits);
            if (bits_row && ((co0 + BNN_CO_BLOCK) % BNN_WORD_BITS == 0 || b == nblk - 1))
                for (int p = 0; p < np; p++)
                    bits_row[(wo0 + p) * s_bits_w + co0 / BNN_WORD_BITS] = wbits[p];
        }
    }
}

/* Float-mode conv fused with the 2x2/2 max-pool (and the sign_pack after
 * it): one pooled output row i (fixed n) from conv rows 2i and 2i+1.
 * xrow = &x[n, 2i*stride, 0, 0]; res_row = &residual[n, 2i, 0, 0] (conv
 * resolution, H/W strides s_res_h/s_res_w) or NULL; out_row = &out[n, i, 0, 0]
 * (pooled, W stride s_out_w) or NULL; bits_row = &out_bits[n, i, 0, 0] (W
 * stride s_bits_w) or NULL.  wpool = Wo // 2 pooled pixels.  Each conv value
 * is the float chain of bnn_epilogue; out = max(max(y[2i,2j], y[2i,2j+1]),
 * max(y[2i+1,2j], y[2i+1,2j+1])) and bit co = out < next_thr[co]. */
BNN_CLONES
static void bnn_sel_conv_row_pool2(const bnn_conv_params *prm, const bnn_word_t *xrow,
                                   const float *res_row, ptrdiff_t s_res_h, ptrdiff_t s_res_w,
                                   float *out_row, ptrdiff_t s_out_w,
                                   bnn_word_t *bits_row, ptrdiff_t s_bits_w, int wpool)
{
#if defined(__GNUC__)
    float ybuf[2][BNN_P * BNN_CO_BLOCK] __attribute__((aligned(64)));
#else
    float ybuf[2][BNN_P * BNN_CO_BLOCK];
#endif
    bnn_conv_params ep = *prm;
    ep.next_thr = NULL;           /* the pack is done after pooling */
    const int cout = prm->cout;
    const int nblk = (cout + BNN_CO_BLOCK - 1) / BNN_CO_BLOCK;
    const ptrdiff_t pstep = (ptrdiff_t)prm->stride * prm->sxw;
    const ptrdiff_t xrow1 = (ptrdiff_t)prm->stride * prm->sxh;
    const ptrdiff_t wblk = (ptrdiff_t)prm->kh * prm->kw * prm->cw * BNN_CO_BLOCK;
    const int wc = 2 * wpool;     /* conv pixels that reach the pooled output */
    for (int wo0 = 0; wo0 < wc; wo0 += BNN_P) {
        const int np = bnn_min(BNN_P, wc - wo0);   /* even */
        const int q0 = wo0 / 2, nq = np / 2;
        bnn_word_t wbits[BNN_P], unused[BNN_P];
        for (int b = 0; b < nblk; b++) {
            const int co0 = b * BNN_CO_BLOCK;
            const int nco = bnn_min(BNN_CO_BLOCK, cout - co0);
            const int nv = (nco + BNN_LANES - 1) / BNN_LANES;
            if (co0 % BNN_WORD_BITS == 0)
                for (int q = 0; q < nq; q++)
                    wbits[q] = 0;
            for (int r = 0; r < 2; r++)
                bnn_sel_block(&ep, xrow + r * xrow1 + wo0 * pstep, pstep, prm->w + b * wblk,
                              np, nv, co0, nco,
                              res_row ? res_row + r * s_res_h + wo0 * s_res_w : NULL, s_res_w,
                              ybuf[r], BNN_CO_BLOCK, co0, unused);
            BNN_SEL_TARGET(pool_block)(ybuf[0], ybuf[1], nq, co0, nco, bits_row ? prm->next_thr : NULL,
                                       out_row ? out_row + q0 * s_out_w : NULL, s_out_w, wbits);
            if (bits_row && ((co0 + BNN_CO_BLOCK) % BNN_WORD_BITS == 0 || b == nblk - 1))
                for (int q = 0; q < nq; q++)
                    bits_row[(q0 + q) * s_bits_w + co0 / BNN_WORD_BITS] = wbits[q];
        }
    }
}

/* ------------------------------------------------------------------ */
/* The path                                                            */
/* ------------------------------------------------------------------ */
typedef enum { BNN_SEL_CORE = 0, BNN_SEL_PLANES = 1, BNN_SEL_WPLANES = 2 } bnn_sel_path;

/* Conv pixels in the first block of the bit-plane conv of an output of
 * n x ho x wo conv pixels (0: it does not apply). */
static inline ptrdiff_t bnn_sel_block_pixels(ptrdiff_t n, ptrdiff_t ho, ptrdiff_t wo, int pool)
{
    const int upix = bnn_pl_unit_pixels((int)wo, pool, (int)(wo / 2));
    if (upix == 0 || !BNN_SEL_HAVE_PLANES)
        return 0;
    const ptrdiff_t units = n * (pool ? ho / 2 : ho), per = BNN_PL_PIX / upix;
    return (per < units ? per : units) * upix;
}

/* Conv pixels per unit (output row, or pooled pair of rows) on the
 * small-output path, or 0 when a unit is too wide for it. */
static inline int bnn_sel_wp_unit_pixels(ptrdiff_t wo, int pool)
{
    const int upix = bnn_pl_unit_pixels((int)wo, pool, (int)(wo / 2));
    return BNN_SEL_HAVE_PLANES && 0 < upix && upix <= BNN_WP_UNIT_MAX ? upix : 0;
}

/* Whether a conv of kernel kh x kw and cw words per pixel (its fused
 * pool: pool) takes the popcount core's pointwise run rather than either
 * bit-plane path: 1x1, not pooled (the pooled row loop has no pointwise
 * run), at most BNN_SEL_PREFER_POINTWISE_CW words per pixel (within
 * BNN_SEL_POINTWISE_MAX_CW). */
static inline int bnn_sel_prefer_pointwise(int kh, int kw, int cw, int pool)
{
    return BNN_SEL_HAVE_POINTWISE && kh == 1 && kw == 1 && !pool &&
           cw <= BNN_SEL_PREFER_POINTWISE_CW && cw <= BNN_SEL_POINTWISE_MAX_CW;
}

/* The path of one call (see the top of this file): have_planes /
 * have_wplanes say whether the layer's plane lists / weight planes exist;
 * kh, kw, cw: its kernel and words per pixel (of the weights). */
static inline bnn_sel_path bnn_sel_choose(int have_planes, int have_wplanes, ptrdiff_t n,
                                          ptrdiff_t ho, ptrdiff_t wo, int pool, int kh, int kw,
                                          int cw)
{
    if (bnn_sel_prefer_pointwise(kh, kw, cw, pool))
        return BNN_SEL_CORE;
    if (have_planes && bnn_sel_block_pixels(n, ho, wo, pool) >= BNN_SEL_PLANES_MIN_PIXELS)
        return BNN_SEL_PLANES;
    if (have_wplanes && bnn_sel_wp_unit_pixels(wo, pool))
        return BNN_SEL_WPLANES;
    return BNN_SEL_CORE;
}

/* Scratch bytes per thread of a path (a multiple of 64). */
static inline size_t bnn_sel_ws_bytes(bnn_sel_path path, int nplanes, int cout)
{
    const size_t b = path == BNN_SEL_PLANES ? bnn_pl_ws_bytes(nplanes)
                   : path == BNN_SEL_WPLANES ? bnn_wp_ws_bytes(nplanes, cout) : 0;
    return (b + 63) / 64 * 64;
}

/* Dynamic schedule with ~16 chunks per thread: rows cost the same, but a
 * thread may be preempted (the machine is shared), so no static split. */
static inline ptrdiff_t bnn_sel_row_grain(ptrdiff_t rows, int threads)
{
    const ptrdiff_t c = rows / (16 * (ptrdiff_t)threads);
    return c > 1 ? c : 1;
}

/* ------------------------------------------------------------------ */
/* One call: its path and its work items                               */
/* ------------------------------------------------------------------ */
typedef struct {
    const bnn_conv_params *prm;
    const bnn_io *io;
    const bnn_pl_lists *pl;      /* NULL unless path == BNN_SEL_PLANES */
    const bnn_wp_planes *wp;     /* NULL unless path == BNN_SEL_WPLANES */
    bnn_sel_path path;
    ptrdiff_t units;             /* output rows, or pooled rows (io->rows per image) */
    ptrdiff_t items;             /* work items: units, or blocks of units */
    int units_per_block;         /* BNN_SEL_PLANES: units in a block */
    ptrdiff_t flat_pixels;       /* BNN_SEL_CORE on a flat run (bnn_sel_flat): its pixels, else 0 */
    size_t ws_bytes;             /* scratch per thread */
} bnn_sel_job;

/* Pixels per work item of a flat run: a multiple of BNN_P (only the last
 * item has a partial tile) and few enough items for the dynamic schedule. */
#define BNN_SEL_FLAT_CHUNK (32 * BNN_P)

/* A 1x1 stride-1 conv is a matrix product over pixels: where every array
 * steps from one output row to the next (and one image to the next) as
 * from one pixel to the next, its n*ho rows are one run of n*ho*wo pixels.
 * The core then works through it in whole tiles of BNN_P pixels, instead of
 * ending each short row (16 pixels = 6 + 6 + 4) with single-pixel tiles:
 * those cost a 1x1 layer a third of its time. */
static inline int bnn_sel_flat(const bnn_conv_params *prm, const bnn_io *io)
{
    const ptrdiff_t wo = prm->wo, rows = io->rows;
    if (prm->kh != 1 || prm->kw != 1 || prm->stride != 1 || io->pool)
        return 0;
    if (prm->sxh != wo * prm->sxw || io->sxn != rows * prm->sxh)
        return 0;
    if (io->res && (io->srh != wo * io->srw || io->srn != rows * io->srh))
        return 0;
    if (io->out && (io->soh != wo * io->sow || io->son != rows * io->soh))
        return 0;
    if (io->bits && (io->sbh != wo * io->sbw || io->sbn != rows * io->sbh))
        return 0;
    return 1;
}

/* The job of one call of n images (io->rows units each): pl / wp are the
 * layer's plane lists / weight planes, or NULL where they were not made. */
static void bnn_sel_job_init(bnn_sel_job *job, const bnn_conv_params *prm, const bnn_io *io,
                             const bnn_pl_lists *pl, const bnn_wp_planes *wp, ptrdiff_t n,
                             ptrdiff_t ho)
{
    const ptrdiff_t units = n * io->rows;
    job->prm = prm;
    job->io = io;
    job->path = bnn_sel_choose(pl != NULL, wp != NULL, n, ho, prm->wo, io->pool, prm->kh, prm->kw,
                               prm->cw);
    job->pl = job->path == BNN_SEL_PLANES ? pl : NULL;
    job->wp = job->path == BNN_SEL_WPLANES ? wp : NULL;
    job->units_per_block = 1;
    job->units = job->items = units;
    job->flat_pixels = 0;
    if (job->path == BNN_SEL_CORE && bnn_sel_flat(prm, io)) {
        job->flat_pixels = units * prm->wo;
        job->items = (job->flat_pixels + BNN_SEL_FLAT_CHUNK - 1) / BNN_SEL_FLAT_CHUNK;
    }
    if (job->path == BNN_SEL_PLANES) {
        job->units_per_block = BNN_PL_PIX / bnn_pl_unit_pixels(prm->wo, io->pool, io->wpool);
        job->items = (units + job->units_per_block - 1) / job->units_per_block;
    }
    job->ws_bytes = bnn_sel_ws_bytes(job->path, pl ? pl->nplanes : wp ? wp->nplanes : 0,
                                     prm->cout);
}

/* Items per chunk of the dynamic schedule: one block or unit (they are
 * few and heavy), or bnn_sel_row_grain rows. */
static inline ptrdiff_t bnn_sel_grain(const bnn_sel_job *job, int threads)
{
    return job->path == BNN_SEL_CORE && !job->flat_pixels ? bnn_sel_row_grain(job->items, threads) : 1;
}

/* Work item b of the job (ws: this thread's scratch, job->ws_bytes).
 * Items are whole output rows, so threads never share an output word. */
static void bnn_sel_run(const bnn_sel_job *job, ptrdiff_t b, void *ws)
{
    const bnn_conv_params *prm = job->prm;
    const bnn_io *io = job->io;
    switch (job->path) {
#if BNN_SEL_HAVE_PLANES
    case BNN_SEL_PLANES: {
        const ptrdiff_t u0 = b * job->units_per_block, left = job->units - u0;
        bnn_pl_block(prm, job->pl, io, (int)u0,
                     (int)(left < job->units_per_block ? left : job->units_per_block), ws);
        return;
    }
    case BNN_SEL_WPLANES:
        bnn_wp_unit(prm, job->wp, io, (int)b, ws);
        return;
#endif
    default: {
        if (job->flat_pixels) {   /* pixels p0 .. p0+np-1 of the flat run */
            const ptrdiff_t p0 = b * BNN_SEL_FLAT_CHUNK, left = job->flat_pixels - p0;
            bnn_conv_params run = *prm;
            run.wo = (int)(left < BNN_SEL_FLAT_CHUNK ? left : BNN_SEL_FLAT_CHUNK);
            bnn_sel_conv_row(&run, io->x + p0 * prm->sxw, io->res ? io->res + p0 * io->srw : NULL,
                             io->srw, io->out ? io->out + p0 * io->sow : NULL, io->sow,
                             io->bits ? io->bits + p0 * io->sbw : NULL, io->sbw);
            return;
        }
        const ptrdiff_t n = b / io->rows, i = b % io->rows;
        const ptrdiff_t h = io->pool ? 2 * i : i;       /* the (first) conv row */
        const bnn_word_t *xrow = io->x + n * io->sxn + h * prm->stride * prm->sxh;
        const float *res_row = io->res ? io->res + n * io->srn + h * io->srh : NULL;
        float *out_row = io->out ? io->out + n * io->son + i * io->soh : NULL;
        bnn_word_t *bits_row = io->bits ? io->bits + n * io->sbn + i * io->sbh : NULL;
        if (io->pool)
            bnn_sel_conv_row_pool2(prm, xrow, res_row, io->srh, io->srw, out_row, io->sow,
                                   bits_row, io->sbw, io->wpool);
        else
            bnn_sel_conv_row(prm, xrow, res_row, io->srw, out_row, io->sow, bits_row, io->sbw);
        return;
    }
    }
}

#endif /* BNNLITE_BCONV_SELECT_H */
