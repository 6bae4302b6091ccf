/*
 * conv_tu.c -- one build of the kernels (bconv_select.h) behind names of
 * its own, for neon_vs_portable.c: compiled twice into one aarch64
 * program, as conv_neon (the NEON target) and, with -DBNN_NO_NEON,
 * conv_port (the portable target).  BNN_TU names the build.
 */
#include "bconv_select.h"
#include "fconv.h"
#include "pack.h"

#define NV_CAT_(a, b) a##_##b
#define NV_CAT(a, b) NV_CAT_(a, b)
#define NV_TU(f) NV_CAT(f, BNN_TU)

/* The target this build compiled (BNN_SEL_TARGET of bconv_select.h). */
const char *NV_TU(target)(void) { return BNN_NEON ? "neon" : "portable"; }

/* A whole binary conv, as bconv_raw runs it (kernels/_bconv.pxi), on the
 * popcount core path, one thread. */
void NV_TU(conv)(const bnn_conv_params *prm, const bnn_io *io, ptrdiff_t n, ptrdiff_t ho)
{
    bnn_sel_job job;
    bnn_sel_job_init(&job, prm, io, NULL, NULL, n, ho);
    for (ptrdiff_t b = 0; b < job.items; b++)
        bnn_sel_run(&job, b, NULL);
}

/* The target's 2x2 pool of one block (bnn_port_pool_block's contract). */
void NV_TU(pool)(const float *y0, const float *y1, int npool, int co0, int nco,
                 const float *next_thr, float *out_px, ptrdiff_t s_out_w, bnn_word_t *wbits)
{
    BNN_SEL_TARGET(pool_block)(y0, y1, npool, co0, nco, next_thr, out_px, s_out_w, wbits);
}

/* The first layer's real conv (fconv.h: portable C in both builds here)
 * and the float packing (pack.h): into the digest that the x86 run must
 * reproduce. */
void NV_TU(fconv_row)(const bnn_fconv_params *fp, const float *xrow, float *out_row,
                      ptrdiff_t s_out_w, bnn_word_t *bits_row, ptrdiff_t s_bits_w)
{
    bnn_fconv_row(fp, xrow, out_row, s_out_w, bits_row, s_bits_w);
}

void NV_TU(pack_row)(const float *x, ptrdiff_t sxw, const float *thr, int c, int w,
                     bnn_word_t *out, ptrdiff_t sow)
{
    bnn_pack_row(x, sxw, thr, c, w, out, sow);
}
