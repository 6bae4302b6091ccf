"""What ``bnnlite-bench`` prints: the engines table, the import and thread-scaling lines, the layers table.

Public names: engines_table, import_line, scaling_line, layers_table.
"""
from __future__ import annotations

__all__ = ["engines_table", "import_line", "scaling_line", "layers_table"]


def engines_table(rows, ref_engine="torch-fp32") -> str:
    """One line per engine; speed-ups against ``ref_engine`` and ort-fp32 from the same run."""
    ref = next((r for r in rows if r["engine"] == ref_engine and "error" not in r), None)
    ort = next((r for r in rows if r["engine"] == "ort-fp32" and "error" not in r), None)
    head = (f"{'engine':<14} {'accuracy':>9} {'b1 ms':>8} {'img/s':>9} {'x torch':>8} {'x ort-fp32':>10} "
            f"{'b1 x torch':>10} {'peak MB':>8} {'weights B':>12}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"{r['engine']:<14} {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']}")
            continue
        xt = f"{r['throughput_ips'] / ref['throughput_ips']:.1f}x" if ref else "-"
        xo = f"{r['throughput_ips'] / ort['throughput_ips']:.1f}x" if ort else "-"
        lt = f"{ref['latency_ms_b1'] / r['latency_ms_b1']:.1f}x" if ref else "-"
        lines.append(f"{r['engine']:<14} {100 * r['accuracy']:>8.2f}% {r['latency_ms_b1']:>8.2f} "
                     f"{r['throughput_ips']:>9.1f} {xt:>8} {xo:>10} {lt:>10} {r['peak_rss_mb']:>8.1f} "
                     f"{r['weight_bytes']:>12,}  {r['note']}")
    return "\n".join(lines)


def import_line(imp) -> str:
    if "error" in imp:
        return f"import bnnlite: failed ({imp['error']})"
    return (f"import bnnlite: {imp['import_s']:.3f} s (then Model.pretrained(): {imp['load_s']:.3f} s); "
            f"numba imported: {'yes' if imp['numba'] else 'no'}, torch imported: "
            f"{'yes' if imp['torch'] else 'no'}")


def scaling_line(sc) -> str:
    """The thread-scaling result, each ratio next to what it is the ratio of: the rates'
    own ratio, and the median of the pairs' ratios (which can differ from it when the
    machine's speed drifts during the pairs)."""
    head = f"bnnlite with {sc['threads']} threads: "
    if "error" in sc:
        return head + f"failed ({sc['error']})"
    return (head + f"{sc['throughput_ips']:.1f} img/s against {sc['base_ips']:.1f} with {sc['base_threads']}: "
            f"{sc['throughput_ips'] / sc['base_ips']:.2f}x (rates from median times over {sc['pairs']} "
            f"alternating pairs in one process; median of the pairs' own ratios {sc['speedup']:.2f}x)")


def layers_table(rows, batch) -> str:
    chunk = rows[0]["chunk"] if rows else "-"
    lines = [f"batch {batch}; bnnlite runs each layer {chunk} images at a time, as Model.predict does; "
             "torch runs the whole batch"]
    head = (f"{'layer':<8} {'shape':<18} {'kernel':<7} {'bnnlite ms':>10} {'binary GMAC/s':>14} {'torch ms':>9} "
            f"{'torch GMAC/s':>13} {'speedup':>8}")
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:<8} {r['shape']:<18} {r.get('kernel', '-'):<7} {r['bnnlite_ms']:>10.2f} {r['binary_gmacs']:>14.1f} "
                     f"{r.get('torch_ms', float('nan')):>9.2f} {r.get('torch_gmacs', float('nan')):>13.1f} "
                     f"{r.get('speedup', float('nan')):>7.1f}x")
    return "\n".join(lines)
