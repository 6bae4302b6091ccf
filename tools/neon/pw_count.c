/*
 * pw_count.c -- one 1x1 binary conv for counting instructions under
 * qemu-aarch64 (docs/benchmarks.md, "ARM64 NEON (estimates)"): Cin 128 ->
 * Cout 128 over HW x HW pixels (argv[1]), residual (cres 128), RPReLU,
 * float output and fused pack, through the selector (bconv_select.h) as
 * bconv_raw runs it, one thread.  Built static with the NEON target:
 *   aarch64-linux-gnu-gcc -O3 -ffp-contract=off -static -Ikernels tools/neon/pw_count.c -o pw_count
 *   qemu-aarch64 -singlestep -d exec,nochain -D trace32 ./pw_count 32
 * One trace line per executed instruction; the lines of two sizes (outside
 * main, whose fill loops differ) differ by the conv's instructions for the
 * pixels between them.
 */
#include <stdlib.h>
#include <string.h>

#include "bconv_select.h"

int main(int argc, char **argv)
{
    const int hw = argc > 1 ? atoi(argv[1]) : 16, cin = 128, cout = 128, cw = cin / BNN_WORD_BITS;
    const int px = hw * hw, owords = (cout + BNN_WORD_BITS - 1) / BNN_WORD_BITS;
    bnn_word_t *x = malloc(sizeof(bnn_word_t) * px * cw), *w = malloc(sizeof(bnn_word_t) * cout * cw);
    uint64_t s = 12345;
    for (int i = 0; i < px * cw; i++)
        x[i] = (s = s * 6364136223846793005ull + 1442695040888963407ull);
    for (int i = 0; i < cout * cw; i++)   /* any layout: only the count matters */
        w[i] = (s = s * 6364136223846793005ull + 1442695040888963407ull);
    float *k = malloc(sizeof(float) * cout * 7), *res = malloc(sizeof(float) * px * cout);
    float *out = malloc(sizeof(float) * px * cout);
    bnn_word_t *bits = malloc(sizeof(bnn_word_t) * px * owords);
    for (int i = 0; i < cout * 7; i++)
        k[i] = 0.01f * (float)(i % 97) - 0.3f;
    for (int i = 0; i < px * cout; i++)
        res[i] = 0.001f * (float)(i % 1001) - 0.5f;
    bnn_conv_params prm;
    memset(&prm, 0, sizeof prm);
    prm.kh = prm.kw = 1; prm.cw = cw; prm.cout = cout; prm.stride = 1; prm.wo = hw;
    prm.sxw = cw; prm.sxh = (ptrdiff_t)hw * cw; prm.w = w; prm.k_bits = cin;
    prm.scale = k; prm.mult = k + cout; prm.bias = k + 2 * cout; prm.cres = cout;
    prm.gamma = k + 3 * cout; prm.beta = k + 4 * cout; prm.zeta = k + 5 * cout;
    prm.next_thr = k + 6 * cout;
    bnn_io io;
    memset(&io, 0, sizeof io);
    io.x = x; io.sxn = (ptrdiff_t)px * cw; io.rows = hw;
    io.res = res; io.srw = cout; io.srh = (ptrdiff_t)hw * cout; io.srn = (ptrdiff_t)px * cout;
    io.out = out; io.sow = cout; io.soh = (ptrdiff_t)hw * cout; io.son = (ptrdiff_t)px * cout;
    io.bits = bits; io.sbw = owords; io.sbh = (ptrdiff_t)hw * owords; io.sbn = (ptrdiff_t)px * owords;
    bnn_sel_job job;
    bnn_sel_job_init(&job, &prm, &io, NULL, NULL, 1, hw);
    for (ptrdiff_t b = 0; b < job.items; b++)
        bnn_sel_run(&job, b, NULL);
    return 0;
}
