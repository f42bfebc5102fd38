#!/usr/bin/env python3
"""Side-by-side exact-search benchmark: Squire's CPU similarity + top-k
kernels vs faiss-cpu flat search, same shapes, same threads, same machine.

Runs `squire bench kernels --json` (a batch of queries, compute bound, and a
single query, memory-bandwidth bound; f32 and f16 storage; roofline probed in
the same run), then faiss.IndexFlatIP (f32) and faiss.IndexScalarQuantizer
with QT_fp16 (f16 storage, inner product) on unit Gaussian vectors of the same
shape, and prints both with the ratio. Both sides return the top-k per query.

Needs numpy and faiss-cpu (PyPI) and a release build of squire. Usage:

    python3 benches/kernels.py [--rows 1000000 --dim 512 --queries 1000 --k 10] [--json out.json]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--stream-queries", type=int, default=1)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--precision", default="f32,f16")
    ap.add_argument("--squire", default=str(ROOT / "target" / "release" / "squire"))
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    precisions = a.precision.split(",")

    cmd = [a.squire, "bench", "kernels", "--device", "cpu", "--rows", str(a.rows), "--dim", str(a.dim),
           "--queries", str(a.queries), "--stream-queries", str(a.stream_queries), "--k", str(a.k),
           "--repeat", str(a.repeat), "--json"]
    for p in precisions:
        cmd += ["--precision", p]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"squire bench kernels failed:\n{out.stderr}")
    squire = json.loads(out.stdout)

    import faiss  # after squire has exited: the two never share the machine

    faiss.omp_set_num_threads(a.threads)
    rng = np.random.default_rng(1)
    base = rng.standard_normal((a.rows, a.dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    nq = max(a.queries, a.stream_queries)
    queries = rng.standard_normal((nq, a.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = []
    for p in precisions:
        if p == "f32":
            index = faiss.IndexFlatIP(a.dim)
        else:
            index = faiss.IndexScalarQuantizer(a.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            index.train(base[:1000])
        index.add(base)
        for case, n in (("streaming", a.stream_queries), ("batched", a.queries)):
            q = queries[:n]
            t = best_time(lambda: index.search(q, a.k), a.repeat)
            rows.append({"engine": "faiss", "precision": p, "case": case, "queries": n, "seconds": t})
        del index

    print(f"\n{cpu_name()}, {a.threads} threads, squire kernels {squire.get('kernel_path', '?')}; "
          f"{a.rows:,} × {a.dim}, k = {a.k}; "
          f"roofline {squire['roofline']['peak_gflops']:.1f} GFLOP/s, "
          f"{squire['roofline']['bandwidth_gb_per_s']:.1f} GB/s ({squire['roofline']['bandwidth_source']}); "
          f"squire peak RSS {squire['peak_rss_mib']:.0f} MiB")
    print(f"{'case':<10} {'prec':>4} {'queries':>7} {'squire s':>9} {'faiss s':>9} {'squire/faiss speed':>19} "
          f"{'squire GFLOP/s':>14} {'squire GB/s':>11} {'roofline':>9}")
    table = []
    for c in squire["cases"]:
        f = next(r for r in rows if r["precision"] == c["precision"] and r["case"] == c["case"])
        ratio = f["seconds"] / c["seconds"]
        table.append({**c, "faiss_seconds": f["seconds"], "speedup_vs_faiss": ratio})
        print(f"{c['case']:<10} {c['precision']:>4} {c['queries']:>7} {c['seconds']:>9.4f} {f['seconds']:>9.4f} "
              f"{ratio:>18.2f}× {c['gflops']:>14.1f} {c['gb_per_s']:>11.1f} "
              f"{100 * c['roofline_fraction']:>7.0f}% ({c['bound']})")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": cpu_name(), "threads": a.threads, "squire": squire,
                                            "faiss": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()
