#!/usr/bin/env python3
"""Side-by-side ANN benchmark: Squire's stores (usearch, hnsw_rs) vs faiss-cpu
HNSW and hnswlib on the same vectors, the same parameters, the same machine.

`squire bench query --dump` synthesises real-like vectors from a collection's
embeddings (mixtures of two real embeddings plus Gaussian noise), computes the
exact top-10 of each query, measures its own stores and writes the vectors as
.npy; this script then builds faiss.IndexHNSWFlat (inner product) and
hnswlib (space "ip") with the same M and ef_construction and measures recall@10,
single-thread query latency (p50/p99) and all-thread QPS at the same ef values.

Needs numpy, faiss-cpu, hnswlib (PyPI) and a release build of squire. Usage:

    python3 benches/ann.py --index f8k-index [--size 100000 --size 1000000] [--json out.json]
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


def latency_and_recall(search_one, queries, truth):
    lat, found = [], 0
    for q, want in zip(queries, truth):
        t = time.perf_counter()
        got = search_one(q)
        lat.append((time.perf_counter() - t) * 1e3)
        found += len(set(int(g) for g in got) & set(int(w) for w in want))
    lat.sort()
    pick = lambda p: lat[round((len(lat) - 1) * p)]
    return found / (10 * len(truth)), pick(0.5), pick(0.99), len(queries) / (sum(lat) / 1e3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True, help="a Squire collection (e.g. the lite pack over Flickr8k-1k)")
    ap.add_argument("--size", type=int, action="append")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", default="16,32,64,128,256")
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--stores", default="usearch,hnsw_rs", help="squire stores to build")
    ap.add_argument("--peers", default="faiss,hnswlib")
    ap.add_argument("--workdir", default="/tmp/squire-bench-ann")
    ap.add_argument("--squire", default=str(ROOT / "target" / "release" / "squire"))
    ap.add_argument("--json")
    a = ap.parse_args()
    sizes = a.size or [100_000]
    efs = [int(e) for e in a.ef.split(",")]
    cmd = [a.squire, "bench", "query", "--index", a.index, "--queries", str(a.queries), "--dump", a.workdir,
           "--connectivity", str(a.M), "--ef-construction", str(a.ef_construction), "--json"]
    for n in sizes:
        cmd += ["--size", str(n)]
    for s in a.stores.split(","):
        if s:
            cmd += ["--store", s]
    for e in efs:
        cmd += ["--ef", str(e)]
    print("running:", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"squire bench query failed:\n{out.stderr}")
    squire = json.loads(out.stdout)
    rows = []
    for s in squire["sizes"]:
        for st in s["stores"]:
            for r in st["results"]:
                rows.append({"n": s["n"], "engine": "squire " + st["store"], "build_s": st["build_seconds"], **r})
    peers = [p for p in a.peers.split(",") if p]
    for n in sizes:
        d = Path(a.workdir) / f"n{n}"
        base, queries, truth = np.load(d / "base.npy"), np.load(d / "queries.npy"), np.load(d / "truth.npy")
        dim = base.shape[1]
        if "faiss" in peers:
            import faiss
            faiss.omp_set_num_threads(a.threads)
            index = faiss.IndexHNSWFlat(dim, a.M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = a.ef_construction
            t = time.perf_counter()
            index.add(base)
            build = time.perf_counter() - t
            print(f"n = {n}: faiss built in {build:.1f} s", flush=True)
            for ef in efs:
                index.hnsw.efSearch = ef
                faiss.omp_set_num_threads(1)
                rec, p50, p99, qps1 = latency_and_recall(lambda q: index.search(q[None, :], 10)[1][0], queries, truth)
                faiss.omp_set_num_threads(a.threads)
                t = time.perf_counter()
                index.search(queries, 10)
                qps_all = len(queries) / (time.perf_counter() - t)
                rows.append({"n": n, "engine": "faiss HNSWFlat", "build_s": build, "ef": ef, "recall_at_10": rec,
                             "p50_ms": p50, "p99_ms": p99, "qps_1_thread": qps1, "qps_all_threads": qps_all})
            del index
        if "hnswlib" in peers:
            import hnswlib
            index = hnswlib.Index(space="ip", dim=dim)
            index.init_index(max_elements=n, ef_construction=a.ef_construction, M=a.M)
            t = time.perf_counter()
            index.add_items(base, np.arange(n), num_threads=a.threads)
            build = time.perf_counter() - t
            print(f"n = {n}: hnswlib built in {build:.1f} s", flush=True)
            for ef in efs:
                index.set_ef(ef)
                rec, p50, p99, qps1 = latency_and_recall(lambda q: index.knn_query(q, k=10, num_threads=1)[0][0],
                                                         queries, truth)
                t = time.perf_counter()
                index.knn_query(queries, k=10, num_threads=a.threads)
                qps_all = len(queries) / (time.perf_counter() - t)
                rows.append({"n": n, "engine": "hnswlib", "build_s": build, "ef": ef, "recall_at_10": rec,
                             "p50_ms": p50, "p99_ms": p99, "qps_1_thread": qps1, "qps_all_threads": qps_all})
            del index
    print(f"\n{cpu_name()}, {a.threads} threads; dim {squire['sizes'][0]['dim']}, M {a.M}, "
          f"ef_construction {a.ef_construction}, {a.queries} queries; seeds: {squire['seed_vectors']} "
          f"`{squire['vector']}` vectors of {a.index}")
    print("| n | engine | build s | ef | recall@10 | p50 ms | p99 ms | QPS 1 thread | QPS all threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["n"], r["ef"], r["engine"])):
        print(f"| {r['n']} | {r['engine']} | {r['build_s']:.1f} | {r['ef']} | {r['recall_at_10']:.4f} | "
              f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['qps_1_thread']:.0f} | {r['qps_all_threads']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": {"cpu": cpu_name(), "threads": a.threads},
                                            "squire": squire, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
