#!/usr/bin/env python3
"""Side-by-side encoder benchmark: Squire vs ONNX Runtime vs PyTorch.

Builds a full-size CLIP ViT-B/32 with random weights (transformers' default
CLIPConfig), saves it in the Hugging Face layout, exports the image and text
towers to ONNX, and times, on the same machine in the same run:

  * PyTorch (transformers CLIPModel, eager, torch.set_num_threads(N))
  * ONNX Runtime (CPU, intra_op_num_threads=N)
  * squire bench encode --impl fast   (Squire's fused CPU path)
  * squire bench encode --impl stock  (candle-transformers' stock ClipModel)

Needs: torch, transformers, onnx, onnxruntime (PyPI) and a release build of
squire (cargo build --release). Usage:

    python3 benches/encode.py [--seconds 10] [--threads 2] [--json out.json]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402
from transformers import CLIPConfig, CLIPModel

ROOT = Path(__file__).resolve().parent.parent


def timeit(fn, seconds, min_iters=3):
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--workdir", default="/tmp/squire-bench-vit-b32")
    ap.add_argument("--squire", default=str(ROOT / "target" / "release" / "squire"))
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)

    model_dir = work / "model"
    if not (model_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        m = CLIPModel(CLIPConfig()).eval()  # defaults are ViT-B/32
        m.save_pretrained(model_dir, safe_serialization=True)
        shutil.copy(ROOT / "models/tests/fixtures/tiny-clip/tokenizer.json", model_dir / "tokenizer.json")
    model = CLIPModel.from_pretrained(model_dir).eval()
    text_tokens = 16
    results = {"machine": {"cpu": cpu_name(), "threads": a.threads, "python": sys.version.split()[0],
                           "torch": torch.__version__}, "rows": []}

    current_round = [0]

    def add(runtime, tower, batch, sec):
        results["rows"].append({"runtime": runtime, "tower": tower, "batch": batch, "per_second": batch / sec,
                                "round": current_round[0]})

    # ONNX export of each tower.
    import onnxruntime as ort

    class Img(torch.nn.Module):
        def __init__(s, m):
            super().__init__(); s.m = m
        def forward(s, px):
            return s.m.get_image_features(pixel_values=px)

    class Txt(torch.nn.Module):
        def __init__(s, m):
            super().__init__(); s.m = m
        def forward(s, ids):
            return s.m.get_text_features(input_ids=ids)

    img_onnx, txt_onnx = work / "image.onnx", work / "text.onnx"
    ids_example = torch.randint(300, 40000, (2, text_tokens))
    ids_example[:, -1] = 49407
    if not img_onnx.exists():
        torch.onnx.export(Img(model), (torch.randn(2, 3, 224, 224),), str(img_onnx), input_names=["px"],
                          output_names=["out"], dynamic_axes={"px": {0: "b"}}, opset_version=17, dynamo=False)
    if not txt_onnx.exists():
        torch.onnx.export(Txt(model), (ids_example,), str(txt_onnx), input_names=["ids"], output_names=["out"],
                          dynamic_axes={"ids": {0: "b"}}, opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    s_img = ort.InferenceSession(str(img_onnx), so, providers=["CPUExecutionProvider"])
    s_txt = ort.InferenceSession(str(txt_onnx), so, providers=["CPUExecutionProvider"])
    results["machine"]["onnxruntime"] = ort.__version__

    def run_squire(impl):
        cmd = [a.squire, "bench", "encode", "--model", str(model_dir), "--impl", impl, "--json",
               "--seconds", str(a.seconds), "--text-tokens", str(text_tokens)]
        for b in batches:
            cmd += ["--batch", str(b)]
        if impl == "stock" or "squire" in results:
            cmd.append("--no-probe")
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        name = "squire" if impl == "fast" else "candle-stock"
        for r in out["results"]:
            add(name, r["tower"], r["batch"], r["seconds_per_batch"])
        if impl == "fast" and "squire" not in results:
            results["squire"] = {k: out.get(k) for k in ["kernel_path", "matmul_peak_gflops", "image_gflop_per_item", "image_gflop_per_item_full_model", "peak_rss_bytes"]}

    # Rounds interleave the runtimes so that slow phases of a shared machine hit all of them alike;
    # each figure reported is the median over rounds.
    for rnd in range(a.rounds):
        current_round[0] = rnd
        for b in batches:
            px = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
            ids = np.random.default_rng(1).integers(300, 40000, (b, text_tokens)).astype(np.int64)
            ids[:, 0], ids[:, -1] = 49406, 49407
            add("onnxruntime", "image", b, timeit(lambda: s_img.run(None, {"px": px}), a.seconds))
            add("onnxruntime", "text", b, timeit(lambda: s_txt.run(None, {"ids": ids}), a.seconds))
            if not a.skip_torch:
                tpx, tids = torch.from_numpy(px), torch.from_numpy(ids)
                with torch.inference_mode():
                    add("pytorch", "image", b, timeit(lambda: model.get_image_features(pixel_values=tpx), a.seconds))
                    add("pytorch", "text", b, timeit(lambda: model.get_text_features(input_ids=tids), a.seconds))
        run_squire("fast")
        if rnd == 0:
            run_squire("stock")
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)

    rows = results["rows"]
    def get(rt, tw, b):
        v = [r["per_second"] for r in rows if r["runtime"] == rt and r["tower"] == tw and r["batch"] == b]
        return float(np.median(v)) if v else None

    def round_ratio(tw, b):
        # Squire ÷ ONNX Runtime within each round, then the median: the machine's drift between
        # rounds cancels out of each ratio, where a ratio of medians keeps it.
        per = {}
        for r in rows:
            if r["tower"] == tw and r["batch"] == b and r["runtime"] in ("squire", "onnxruntime"):
                per.setdefault(r["round"], {})[r["runtime"]] = r["per_second"]
        v = [d["squire"] / d["onnxruntime"] for d in per.values() if len(d) == 2]
        return (float(np.median(v)), min(v), max(v)) if v else None

    results["median_round_ratio_vs_onnxruntime"] = {f"{tw}/{b}": round_ratio(tw, b) for tw in ["image", "text"] for b in batches}
    results["median"] = {f"{rt}/{tw}/{b}": get(rt, tw, b) for rt in ["squire", "onnxruntime", "pytorch", "candle-stock"]
                         for tw in ["image", "text"] for b in batches}
    print(f"# CLIP ViT-B/32 (random weights), {results['machine']['cpu']}, {a.threads} threads, "
          f"squire kernels {results.get('squire', {}).get('kernel_path', '?')}, "
          f"items/s, median of {a.rounds} interleaved rounds of {a.seconds:.0f} s")
    print(f"{'tower':<6} {'batch':>5} {'squire':>9} {'ORT':>9} {'PyTorch':>9} {'candle':>9} {'vs ORT':>7} {'vs PT':>7}")
    for tw in ["image", "text"]:
        for b in batches:
            s, o, p, c = (get(rt, tw, b) for rt in ["squire", "onnxruntime", "pytorch", "candle-stock"])
            f = lambda v: f"{v:9.2f}" if v else f"{'-':>9}"
            r = lambda x, y: f"{x / y:6.2f}x" if x and y else f"{'-':>7}"
            print(f"{tw:<6} {b:>5} {f(s)} {f(o)} {f(p)} {f(c)} {r(s, o)} {r(s, p)}")
    print("squire ÷ ORT round by round (median, min–max of the rounds):")
    for tw in ["image", "text"]:
        for b in batches:
            q = round_ratio(tw, b)
            if q:
                print(f"  {tw:<6} {b:>5} {q[0]:.2f}x ({q[1]:.2f}–{q[2]:.2f})")
    sq = results.get("squire", {})
    if sq.get("matmul_peak_gflops"):
        limit = sq["matmul_peak_gflops"] / sq["image_gflop_per_item"]
        best = max((get("squire", "image", b) or 0) for b in batches)
        full = sq.get("image_gflop_per_item_full_model") or sq["image_gflop_per_item"]
        print(f"compute limit ≈ {limit:.1f} img/s (matmul probe {sq['matmul_peak_gflops']:.0f} GFLOP/s, "
              f"{sq['image_gflop_per_item']:.2f} GFLOP/img as squire runs it; the whole model, as ONNX Runtime and "
              f"PyTorch run it, {full:.2f} GFLOP/img = {sq['matmul_peak_gflops'] / full:.1f} img/s); "
              f"squire reaches {100 * best / limit:.0f}%")
        results["compute_limit_img_s"] = limit
    if sq.get("peak_rss_bytes"):
        print(f"squire peak RSS: {sq['peak_rss_bytes'] / 2**20:.0f} MiB")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
