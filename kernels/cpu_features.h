/*
 * cpu_features.h -- what the running CPU (and its OS) supports, asked of
 * the compiler's own CPU probe (cpuid + xgetbv, __builtin_cpu_supports), so
 * bnnlite.backends picks the fastest kernel build this CPU runs.  Names:
 * bnn_cpu_.  Compiled into bnnlite._cpu with no -m flags: it must load on
 * every CPU, the AVX-512 build's code need not.
 */
#ifndef BNNLITE_CPU_FEATURES_H
#define BNNLITE_CPU_FEATURES_H

#include <string.h>

/* 1 when the CPU has the feature (a name __builtin_cpu_supports knows:
 * "avx512f", "avx512bw", "avx512vpopcntdq", "avx2", "popcnt", "fma"; on
 * aarch64 "neon"),
 * 0 when not, -1 when this compiler/target cannot tell (then only the
 * portable build is safe).  The builtin wants a literal, hence the list. */
static int bnn_cpu_has(const char *name)
{
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
#define BNN_CPU_(f) if (strcmp(name, f) == 0) return __builtin_cpu_supports(f) != 0;
    BNN_CPU_("avx512f") BNN_CPU_("avx512bw") BNN_CPU_("avx512vl") BNN_CPU_("avx512dq")
    BNN_CPU_("avx512vpopcntdq") BNN_CPU_("avx2") BNN_CPU_("popcnt") BNN_CPU_("fma")
#undef BNN_CPU_
    return 0;
#elif defined(__aarch64__)
    /* Advanced SIMD is part of every ARMv8-A CPU: the NEON build runs. */
    return strcmp(name, "neon") == 0;
#else
    (void)name;
    return -1;
#endif
}

#endif /* BNNLITE_CPU_FEATURES_H */
