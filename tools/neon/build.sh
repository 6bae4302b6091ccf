#!/usr/bin/env bash
# Cross-build tools/neon/neon_vs_portable (static aarch64) and run it under
# qemu-aarch64: the NEON target against the portable one, bit for bit.
#   tools/neon/build.sh [OUTDIR] [CASES]     (KERNELS=dir overrides kernels/)
#   NATIVE=1 tools/neon/build.sh ...  builds it for this machine instead (on
#   x86 both builds are then the portable target): the same cases, whose
#   output digest the aarch64 run must reproduce.
# -ffp-contract=off as in setup.py: without it GCC fuses the plain
# multiply-adds of both targets (arm_neon.h's vmulq_f32 is a C '*').
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernels="${KERNELS:-$here/../../kernels}"
out="${1:-$(mktemp -d)}"
cases="${2:-2400}"
cc="${CC_AARCH64:-aarch64-linux-gnu-gcc}"
run=("${QEMU_AARCH64:-qemu-aarch64}")
if [ "${NATIVE:-0}" = 1 ]; then   # this machine's portable build, same cases
    cc="${CC:-gcc}"
    run=()
fi
flags=(-O2 -static -ffp-contract=off -Wall -Wextra -Werror -Wno-unused-function -Wno-unused-parameter -I"$kernels")
mkdir -p "$out"
"$cc" "${flags[@]}" -DBNN_TU=neon -c "$here/conv_tu.c" -o "$out/conv_neon.o"
"$cc" "${flags[@]}" -DBNN_TU=port -DBNN_NO_NEON -c "$here/conv_tu.c" -o "$out/conv_port.o"
"$cc" "${flags[@]}" "$here/neon_vs_portable.c" "$out/conv_neon.o" "$out/conv_port.o" \
    -lm -o "$out/neon_vs_portable"
exec "${run[@]}" "$out/neon_vs_portable" "$cases"
