#!/usr/bin/env python3
"""GPU peer for `squire bench kernels --device gpu`: exact inner-product
search with PyTorch (cuBLAS GEMM/GEMV + torch.topk) on the same shapes, run
right after Squire's wgpu kernels on the same machine by benches/gpu.sh.

Same protocol as Squire's bench: a database of unit Gaussian vectors resident
on the device (f32 or f16), queries uploaded from the host each time, top-k
ids and scores read back to the host, best of --repeat runs. Prints JSON with
the same case names (streaming, batched) so the two can be put side by side.

Needs torch with CUDA. Usage:

    python3 benches/kernels_torch.py [--rows 1000000 --dim 512 --queries 1000 --k 10]
"""
import argparse
import json
import time

import torch


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--stream-queries", type=int, default=1)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--precision", default="f32,f16")
    a = ap.parse_args()
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    base32 = torch.randn(a.rows, a.dim, device=dev, generator=g)
    base32 = torch.nn.functional.normalize(base32, dim=1)
    queries = torch.nn.functional.normalize(torch.randn(max(a.queries, a.stream_queries), a.dim), dim=1)
    # Copy bandwidth (read + write), the same roofline Squire's bench probes.
    buf = torch.empty(1 << 28, dtype=torch.float32, device=dev)
    dst = torch.empty_like(buf)
    t = best_time(lambda: dst.copy_(buf), 5)
    bandwidth = 2 * buf.numel() * 4 / t / 1e9
    del buf, dst
    cases = []
    for p in a.precision.split(","):
        dtype = {"f32": torch.float32, "f16": torch.float16}[p]
        # TF32 off: Squire's f32 path is full f32.
        torch.backends.cuda.matmul.allow_tf32 = False
        db = base32.to(dtype)
        nbytes = db.numel() * db.element_size()
        for case, nq in (("streaming", a.stream_queries), ("batched", a.queries)):
            if nq == 0:
                continue
            qh = queries[:nq].to(dtype).pin_memory()

            def run():
                q = qh.to(dev, non_blocking=True)
                # Chunk the score matrix like any serving system would (≤ 2^31 elements).
                step = max(1, (1 << 30) // a.rows)
                outs = []
                for i in range(0, nq, step):
                    s = q[i:i + step] @ db.T
                    v, ix = torch.topk(s, a.k, dim=1)
                    outs.append((v.float().cpu(), ix.cpu()))
                return outs

            secs = best_time(run, a.repeat)
            flops = 2.0 * nq * a.rows * a.dim
            cases.append({
                "case": case, "precision": p, "queries": nq, "rows": a.rows, "dim": a.dim, "k": a.k,
                "seconds": secs, "queries_per_s": nq / secs, "gflops": flops / secs / 1e9,
                "gb_per_s": nbytes / secs / 1e9, "roofline_fraction": (nbytes / (bandwidth * 1e9)) / secs,
            })
        del db
    # SuperGlobal refinement on the GPU: M×M Gram product, top-K neighbours,
    # weighted neighbour average, renormalise (host → device → host).
    m, d, kk = 400, 1280, 9
    cand = torch.nn.functional.normalize(torch.randn(m, d), dim=1).pin_memory()

    def refine():
        x = cand.to(dev, non_blocking=True)
        s, ix = torch.topk(x @ x.T, kk, dim=1)
        w = s.clamp(min=0) ** 0.15
        out = torch.nn.functional.normalize((x[ix] * w.unsqueeze(2)).sum(1), dim=1)
        return out.cpu()

    refine_ms = best_time(refine, 25) * 1e3
    print(json.dumps({
        "peer": f"torch {torch.__version__} (cuBLAS + torch.topk)",
        "device": torch.cuda.get_device_name(0),
        "roofline": {"bandwidth_gb_per_s": bandwidth, "bandwidth_source": "device tensor copy (read + write)"},
        "cases": cases,
        "refine": {"m": m, "dim": d, "k": kk, "ms": refine_ms},
    }, indent=2))


if __name__ == "__main__":
    main()
