"""The loops of a disassembly that contain a given instruction, smallest
first: each backward branch's body (branch target .. branch), its length and
its mix of mnemonics.  For docs/benchmarks.md, "ARM64 NEON (estimates)":

    aarch64-linux-gnu-objdump -d --no-show-raw-insn neon.o > neon.s
    python tools/neon/inner_loops.py neon.s uadalp
"""
import collections
import re
import sys

TARGET = re.compile(r"\b([0-9a-f]+)\s*<")


def loops(path, key):
    ins = []
    for line in open(path):
        m = re.match(r"\s+([0-9a-f]+):\s+(\S+)\s*(.*)", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2), m.group(3)))
    index = {a: i for i, (a, _, _) in enumerate(ins)}
    found = set()
    for i, (a, op, args) in enumerate(ins):
        m = TARGET.search(args)
        if not (op.startswith(("b", "j", "cb", "tb")) and m):
            continue
        t = int(m.group(1), 16)
        if t < a and t in index and (t, a) not in found:
            body = ins[index[t]:i + 1]
            n = sum(1 for b in body if b[1] == key)
            if n:
                found.add((t, a))
                yield len(body), n, t, a, collections.Counter(b[1] for b in body)


def main():
    path, key = sys.argv[1], sys.argv[2]
    for size, n, t, a, mix in sorted(loops(path, key))[:int(sys.argv[3]) if len(sys.argv) > 3 else 10]:
        print(f"{t:x}-{a:x}: {size} insns, {n} x {key}; "
              + " ".join(f"{k}:{v}" for k, v in mix.most_common()))


if __name__ == "__main__":
    main()
