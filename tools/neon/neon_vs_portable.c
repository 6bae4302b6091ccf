/*
 * neon_vs_portable.c -- the NEON target of the binary conv against the
 * portable one, bit for bit, on random convs (tools/neon/build.sh builds
 * it static for aarch64 and runs it under qemu-aarch64).
 *
 * Each case is a whole conv through the selector's row loops (conv_tu.c,
 * built once per target): odd channel counts (word and lane tails),
 * padding (zero-word borders), stride 1/2, kernels 1..3, words between
 * pixels (sxw > cw), batch and pixel tails, bits output (threshold), float
 * output with residual (cres = cout or a divisor or not), RPReLU, fused
 * pack, 2x2 pool; every 4th case is followed by a 1x1 conv (the
 * pointwise run: Cin up to 600, a third of them long runs of up to 2,050
 * pixels, several flat chunks) and also pools random blocks (NaN, -0.0)
 * directly, and every 8th packs a row of floats (with a row of the first
 * layer's conv before it: the same portable C on both targets, digest
 * only).  Outputs start from a sentinel, so a missed or extra store
 * differs too.
 * Prints "N cases, N identical" and a digest of the outputs; exits 1 on
 * any mismatch.  Built natively on x86 (both builds
 * portable; tools/neon/build.sh native) it prints the digest of the same
 * cases there.
 *   neon_vs_portable [CASES] [SEED]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnn_common.h"
#include "fconv.h"   /* bnn_fconv_params */

const char *target_neon(void);
const char *target_port(void);
void conv_neon(const bnn_conv_params *prm, const bnn_io *io, ptrdiff_t n, ptrdiff_t ho);
void conv_port(const bnn_conv_params *prm, const bnn_io *io, ptrdiff_t n, ptrdiff_t ho);
void pool_neon(const float *y0, const float *y1, int npool, int co0, int nco,
               const float *next_thr, float *out_px, ptrdiff_t s_out_w, bnn_word_t *wbits);
void pool_port(const float *y0, const float *y1, int npool, int co0, int nco,
               const float *next_thr, float *out_px, ptrdiff_t s_out_w, bnn_word_t *wbits);
void fconv_row_neon(const bnn_fconv_params *fp, const float *xrow, float *out_row,
                    ptrdiff_t s_out_w, bnn_word_t *bits_row, ptrdiff_t s_bits_w);
void pack_row_neon(const float *x, ptrdiff_t sxw, const float *thr, int c, int w,
                   bnn_word_t *out, ptrdiff_t sow);
void pack_row_port(const float *x, ptrdiff_t sxw, const float *thr, int c, int w,
                   bnn_word_t *out, ptrdiff_t sow);

static uint64_t nv_state = 0x9E3779B97F4A7C15ull;
static uint64_t nv_u64(void)   /* xorshift64* */
{
    nv_state ^= nv_state >> 12;
    nv_state ^= nv_state << 25;
    nv_state ^= nv_state >> 27;
    return nv_state * 2685821657736338717ull;
}
static int nv_int(int lo, int hi) { return lo + (int)(nv_u64() % (uint64_t)(hi - lo + 1)); }
static int nv_chance(int percent) { return nv_int(0, 99) < percent; }
static float nv_float(float lo, float hi)
{
    return lo + (hi - lo) * (float)(nv_u64() >> 40) / (float)(1 << 24);
}
static float *nv_floats(size_t n, float lo, float hi)
{
    float *a = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        a[i] = nv_float(lo, hi);
    return a;
}
/* Floats with the edge values the epilogues must agree on, now and then. */
static void nv_specials(float *a, size_t n, int percent)
{
    for (size_t i = 0; i < n; i++)
        if (nv_chance(percent)) {
            const int k = nv_int(0, 3);
            a[i] = k == 0 ? NAN : k == 1 ? -0.0f : k == 2 ? 0.0f : -a[i];
        }
}

/* A word of `bits` random channel bits (the tail bits 0). */
static bnn_word_t nv_ones(int bits)
{
    return bits >= BNN_WORD_BITS ? ~(bnn_word_t)0 : ((bnn_word_t)1 << bits) - 1;
}
static bnn_word_t nv_word(int bits) { return nv_u64() & nv_ones(bits); }

/* FNV-1a digest of every output of the first build (conv_neon), the same
 * on any machine that computes the same bits: a native x86 build (where
 * both builds are the portable target) prints the digest the NEON run
 * under qemu must print (tests/test_neon_qemu.py).  NaNs count as one
 * value: their payload is not part of the contract. */
static uint64_t nv_digest = 1469598103934665603ull;
static void nv_hash(const void *p, size_t n, int floats)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (floats && i % 4 == 0) {
            float f;
            memcpy(&f, b + i, 4);
            if (f != f) {
                static const float qnan = NAN;
                memcpy(&f, &qnan, 4);
                const unsigned char *q = (const unsigned char *)&f;
                for (int k = 0; k < 4; k++)
                    nv_digest = (nv_digest ^ q[k]) * 1099511628211ull;
                i += 3;
                continue;
            }
        }
        nv_digest = (nv_digest ^ c) * 1099511628211ull;
    }
}

typedef struct { size_t n; void *a, *b; } nv_pair;
static int nv_same(nv_pair p) { return p.n == 0 || memcmp(p.a, p.b, p.n) == 0; }

/* One random conv; 1 when both targets wrote the same bytes.  big = 1 or
 * 2: x all ones (but the tail bits), weights 0, so every word has its
 * largest popcount, over kh*kw*cw = 4100 words (past the NEON core's
 * 4095-step limit: its portable fallback; raising the limit overflows) or
 * exactly 4095 (the uint16 accumulators' worst case).  pw: a 1x1 conv
 * (the pointwise run where the target has one; with big, the pointwise
 * run's limit of 4095 words and the tile path past it), not pooled, Cin up
 * to 600, and a third of them long runs (up to 2 x 25 x 41 pixels: several
 * flat chunks of bconv_select.h). */
static int nv_conv_case(int big, int pw, int verbose)
{
    const int n = nv_int(1, 2);
    const int longrun = pw && nv_chance(33);
    const int cin = big == 1 ? 4100 * BNN_WORD_BITS - nv_int(0, 63)
                  : big == 2 ? 4095 * BNN_WORD_BITS : nv_int(1, pw && !longrun ? 600 : 200);
    const int cw = (cin + BNN_WORD_BITS - 1) / BNN_WORD_BITS;
    const int kh = big || pw ? 1 : nv_int(1, 3), kw = big || pw ? 1 : nv_int(1, 3);
    const int stride = nv_int(1, 2), pad = big ? 0 : nv_int(0, 1);
    const int cout = big ? nv_int(1, 40) : (nv_chance(30) ? 32 * nv_int(1, 3) : nv_int(1, 140));
    const int bits_mode = nv_chance(25), pool = !bits_mode && !pw && nv_chance(35);
    const int hin = kh + nv_int(pool ? 1 : 0, big ? 1 : longrun ? 24 : 8);
    const int win = kw + nv_int(pool ? 1 : 0, big ? 2 : longrun ? 40 : 12);
    const int hp = hin + 2 * pad, wp = win + 2 * pad;
    const int ho = (hp - kh) / stride + 1, wo = (wp - kw) / stride + 1;
    if (pool && (ho < 2 || wo < 2))
        return nv_conv_case(big, pw, verbose);
    const int sxw = cw + (nv_chance(20) ? nv_int(1, 2) : 0);   /* words between pixels */
    const ptrdiff_t sxh = (ptrdiff_t)wp * sxw, sxn = (ptrdiff_t)hp * sxh;

    /* x: zero words are the +1 padding border; the gap words are garbage. */
    bnn_word_t *x = calloc((size_t)n * sxn, sizeof(bnn_word_t));
    for (ptrdiff_t i = 0; i < n * sxn; i++)
        x[i] = nv_u64();
    for (int b = 0; b < n; b++)
        for (int h = 0; h < hp; h++)
            for (int w = 0; w < wp; w++) {
                bnn_word_t *px = x + b * sxn + h * sxh + (ptrdiff_t)w * sxw;
                const int border = h < pad || h >= hp - pad || w < pad || w >= wp - pad;
                for (int c = 0; c < cw; c++)
                    px[c] = border ? 0 : big ? nv_ones(cin - c * BNN_WORD_BITS)
                                           : nv_word(cin - c * BNN_WORD_BITS);
            }
    /* Weights in the blocked layout (backend._blocked_layout). */
    const int cpad = (cout + BNN_LANES - 1) / BNN_LANES * BNN_LANES;
    const ptrdiff_t kwords = (ptrdiff_t)kh * kw * cw;
    bnn_word_t *wdata = malloc((size_t)cpad * kwords * sizeof(bnn_word_t));
    for (int c0 = 0; c0 < cpad; c0 += BNN_CO_BLOCK) {
        const int width = bnn_min(BNN_CO_BLOCK, cpad - c0);
        bnn_word_t *blk = wdata + (ptrdiff_t)c0 * kwords;
        for (ptrdiff_t s = 0; s < kwords; s++)
            for (int l = 0; l < width; l++)
                blk[s * width + l] = c0 + l < cout && !big ? nv_word(cin - (int)(s % cw) * BNN_WORD_BITS) : 0;
    }

    bnn_conv_params prm;
    memset(&prm, 0, sizeof prm);
    prm.kh = kh; prm.kw = kw; prm.cw = cw; prm.cout = cout; prm.stride = stride; prm.wo = wo;
    prm.sxh = sxh; prm.sxw = sxw; prm.w = wdata;
    prm.k_bits = (int64_t)kh * kw * cin;
    prm.cres = 1;
    bnn_io io;
    memset(&io, 0, sizeof io);
    io.x = x; io.sxn = sxn;
    io.pool = pool; io.wpool = wo / 2; io.rows = pool ? ho / 2 : ho;
    const int oh = pool ? ho / 2 : ho, ow = pool ? wo / 2 : wo;

    float *scale = NULL, *mult = NULL, *bias = NULL, *gamma = NULL, *beta = NULL, *zeta = NULL;
    float *nthr = NULL, *res = NULL;
    int32_t *thr = NULL;
    int want_out = 1, want_bits = 1;
    if (bits_mode) {
        thr = malloc((size_t)cout * sizeof(int32_t));
        for (int c = 0; c < cout; c++)
            thr[c] = nv_int(-(int)(prm.k_bits / 8) - 2, (int)(prm.k_bits / 8) + 2);
        prm.thr = thr;
        want_out = 0;
    } else {
        /* y ~ acc * scale * mult spans a few units: thresholds hit both sides */
        const float s = 2.0f / sqrtf((float)prm.k_bits);
        scale = nv_floats(cout, 0.2f * s, s);
        mult = nv_floats(cout, -2.0f, 2.0f);
        bias = nv_floats(cout, -1.0f, 1.0f);
        nv_specials(mult, cout, 3);
        prm.scale = scale; prm.mult = mult; prm.bias = bias;
        if (nv_chance(50)) {
            gamma = nv_floats(cout, -0.5f, 0.5f);
            beta = nv_floats(cout, -0.5f, 1.5f);
            zeta = nv_floats(cout, -0.5f, 0.5f);
            prm.gamma = gamma; prm.beta = beta; prm.zeta = zeta;
        }
        if (nv_chance(50)) {
            const int k = nv_int(0, 3);
            int cres = cout;
            if (k == 1 && cout % 2 == 0) cres = cout / 2;
            if (k == 2) cres = nv_int(1, cout);
            if (k == 3 && cout % 8 == 0) cres = 8;
            const size_t nres = (size_t)n * ho * wo * cres;
            res = nv_floats(nres, -2.0f, 2.0f);
            nv_specials(res, nres, 1);
            prm.cres = cres;
            io.res = res; io.srw = cres; io.srh = (ptrdiff_t)wo * cres; io.srn = (ptrdiff_t)ho * wo * cres;
        }
        const int k = nv_int(0, 2);      /* out only, fused pack only, or both */
        want_out = k != 1;
        want_bits = k != 0;
        if (want_bits) {
            nthr = nv_floats(cout, -1.0f, 1.0f);
            prm.next_thr = nthr;
        }
    }
    const int owords = (cout + BNN_WORD_BITS - 1) / BNN_WORD_BITS;
    const ptrdiff_t sow = cout + (nv_chance(20) ? nv_int(1, 5) : 0);
    const ptrdiff_t sbw = owords + (nv_chance(20) ? 1 : 0);
    const size_t nout = want_out ? (size_t)n * oh * ow * sow : 0;
    const size_t nbits = want_bits ? (size_t)n * oh * ow * sbw : 0;
    float *out[2];
    bnn_word_t *bits[2];
    for (int t = 0; t < 2; t++) {
        out[t] = malloc((nout ? nout : 1) * sizeof(float));
        bits[t] = malloc((nbits ? nbits : 1) * sizeof(bnn_word_t));
        memset(out[t], 0x5a, (nout ? nout : 1) * sizeof(float));
        memset(bits[t], 0xa5, (nbits ? nbits : 1) * sizeof(bnn_word_t));
    }
    for (int t = 0; t < 2; t++) {
        io.out = want_out ? out[t] : NULL;
        io.sow = sow; io.soh = (ptrdiff_t)ow * sow; io.son = (ptrdiff_t)oh * ow * sow;
        io.bits = want_bits ? bits[t] : NULL;
        io.sbw = sbw; io.sbh = (ptrdiff_t)ow * sbw; io.sbn = (ptrdiff_t)oh * ow * sbw;
        (t == 0 ? conv_neon : conv_port)(&prm, &io, n, ho);
    }
    nv_hash(out[0], nout * sizeof(float), 1);
    nv_hash(bits[0], nbits * sizeof(bnn_word_t), 0);
    const int ok = nv_same((nv_pair){nout * sizeof(float), out[0], out[1]}) &&
                   nv_same((nv_pair){nbits * sizeof(bnn_word_t), bits[0], bits[1]});
    if (!ok || verbose)
        fprintf(stderr, "%s: n=%d cin=%d cout=%d k=%dx%d stride=%d pad=%d in=%dx%d sxw=%d "
                "bits_mode=%d pool=%d res=%d(cres=%d) rprelu=%d out=%d pack=%d\n",
                ok ? "same" : "MISMATCH", n, cin, cout, kh, kw, stride, pad, hin, win, sxw,
                bits_mode, pool, res != NULL, prm.cres, gamma != NULL, want_out, want_bits);
    free(x); free(wdata); free(scale); free(mult); free(bias); free(gamma); free(beta);
    free(zeta); free(nthr); free(res); free(thr);
    for (int t = 0; t < 2; t++) {
        free(out[t]);
        free(bits[t]);
    }
    return ok;
}

/* The 2x2 pool of one block on random floats with NaN / -0.0 / ties. */
static int nv_pool_case(void)
{
    const int npool = nv_int(1, BNN_P / 2), nco = nv_int(1, BNN_CO_BLOCK);
    const int co0 = BNN_CO_BLOCK * nv_int(0, 3);
    const size_t ny = (size_t)BNN_P * BNN_CO_BLOCK;
    float *y0 = nv_floats(ny, -1.0f, 1.0f), *y1 = nv_floats(ny, -1.0f, 1.0f);
    nv_specials(y0, ny, 10);
    nv_specials(y1, ny, 10);
    for (size_t i = 0; i + BNN_CO_BLOCK < ny; i++)   /* ties between pooled pixels */
        if (nv_chance(5))
            y0[i + BNN_CO_BLOCK] = y0[i];
    float *nthr = nv_floats((size_t)co0 + BNN_CO_BLOCK, -1.0f, 1.0f);
    const ptrdiff_t sow = co0 + nco + nv_int(0, 3);
    float out[2][BNN_P / 2 * (4 * BNN_CO_BLOCK + 3)];
    bnn_word_t wb[2][BNN_P / 2];
    memset(out, 0x5a, sizeof out);
    memset(wb, 0xa5, sizeof wb);
    pool_neon(y0, y1, npool, co0, nco, nthr, out[0], sow, wb[0]);
    pool_port(y0, y1, npool, co0, nco, nthr, out[1], sow, wb[1]);
    nv_hash(out[0], sizeof out[0], 1);
    nv_hash(wb[0], sizeof wb[0], 0);
    const int ok = memcmp(out[0], out[1], sizeof out[0]) == 0 && memcmp(wb[0], wb[1], sizeof wb[0]) == 0;
    if (!ok)
        fprintf(stderr, "MISMATCH: pool npool=%d co0=%d nco=%d\n", npool, co0, nco);
    free(y0); free(y1); free(nthr);
    return ok;
}

/* One row of the first layer's real conv (fused pack; the same C on both
 * targets, so only into the digest, which says whether ARM computes x86's
 * bits), then its output packed by both targets (pack.h); 1 when the
 * packed bits are the same. */
static int nv_fconv_pack_case(void)
{
    bnn_fconv_params fp;
    memset(&fp, 0, sizeof fp);
    fp.kh = nv_int(1, 3); fp.kw = nv_int(1, 3); fp.cin = nv_int(1, 4);
    fp.cout = nv_int(1, 140); fp.stride = nv_int(1, 2);
    const int win = fp.kw + nv_int(0, 10);
    fp.wo = (win - fp.kw) / fp.stride + 1;
    fp.sxw = fp.cin; fp.sxh = (ptrdiff_t)win * fp.cin;
    const size_t nx = (size_t)fp.kh * win * fp.cin, nw = (size_t)fp.kh * fp.kw * fp.cin * fp.cout;
    float *x = nv_floats(nx, -2.0f, 2.0f), *w = nv_floats(nw, -0.5f, 0.5f);
    float *mult = nv_floats(fp.cout, -2.0f, 2.0f), *bias = nv_floats(fp.cout, -1.0f, 1.0f);
    float *thr = nv_floats(fp.cout, -1.0f, 1.0f);
    nv_specials(x, nx, 1);
    fp.w = w; fp.bias = bias; fp.mult = nv_chance(70) ? mult : NULL;
    fp.relu = nv_chance(50); fp.thr = thr;
    const int owords = (fp.cout + BNN_WORD_BITS - 1) / BNN_WORD_BITS;
    float *out = malloc((size_t)fp.wo * fp.cout * sizeof(float));
    bnn_word_t *bits = calloc((size_t)fp.wo * owords, sizeof(bnn_word_t));
    fconv_row_neon(&fp, x, out, fp.cout, bits, owords);
    nv_hash(out, (size_t)fp.wo * fp.cout * sizeof(float), 1);
    nv_hash(bits, (size_t)fp.wo * owords * sizeof(bnn_word_t), 0);
    const int c = fp.cout, px = fp.wo;
    for (int l = 0; l < c; l++)      /* ties: a threshold equal to an output */
        if (nv_chance(30))
            thr[l] = out[(size_t)nv_int(0, px - 1) * c + l];
    nv_specials(thr, c, 5);
    const size_t nb = (size_t)px * owords * sizeof(bnn_word_t);
    bnn_word_t *bits2 = malloc(nb);
    memset(bits, 0xa5, nb);
    memset(bits2, 0xa5, nb);
    pack_row_neon(out, c, thr, c, px, bits, owords);
    pack_row_port(out, c, thr, c, px, bits2, owords);
    nv_hash(bits, nb, 0);
    const int ok = memcmp(bits, bits2, nb) == 0;
    if (!ok)
        fprintf(stderr, "MISMATCH: pack c=%d w=%d\n", c, px);
    free(x); free(w); free(mult); free(bias); free(thr); free(out); free(bits); free(bits2);
    return ok;
}

int main(int argc, char **argv)
{
    const int cases = argc > 1 ? atoi(argv[1]) : 2400;
    if (argc > 2)
        nv_state = strtoull(argv[2], NULL, 0) | 1;
#if defined(__aarch64__)
    if (strcmp(target_neon(), "neon") != 0 || strcmp(target_port(), "portable") != 0) {
        fprintf(stderr, "the builds compiled %s and %s, not neon and portable\n",
                target_neon(), target_port());
        return 2;
    }
#endif
    int run = 0, same = 0;
    for (int i = 0; i < cases; i++) {
        same += nv_conv_case(i < 2 ? i + 1 : 0, 0, getenv("NV_VERBOSE") != NULL);
        run++;
        if (i % 4 == 3) {
            same += nv_conv_case(i == 3 ? 2 : i == 7 ? 1 : 0, 1, getenv("NV_VERBOSE") != NULL);
            same += nv_pool_case();
            run += 2;
        }
        if (i % 8 == 7) {
            same += nv_fconv_pack_case();
            run++;
        }
    }
    printf("%d cases, %d identical\n", run, same);
    printf("%s digest %016llx\n", target_neon(), (unsigned long long)nv_digest);
    return same == run ? 0 : 1;
}
