#!/usr/bin/env python3
"""Side-by-side indexing benchmark: `squire bench index` vs the fastest Python
pipelines we could build with the same model on the same machine.

Python pipelines (what immich and rclip do, made as fast as we could):
  * Pillow decode + resize in a thread pool (prefetching the next batch while
    the model runs) feeding ONNX Runtime (CPU, intra_op_num_threads=N);
  * the same decode pool feeding PyTorch (eager, torch.set_num_threads(N)).
Preprocessing is the model's own (identical outputs to Squire's), the model
produces every vector Squire stores, and the images are the same folder.

Models:
  * lite: EfficientNet-Lite0 (the lite pack's real weights, read from
    ~/.squire/models/lite) → GeM descriptor and ConSE text-space vector;
  * vit-b32: full-size CLIP ViT-B/32 image tower with random weights (built
    by benches/encode.py's recipe in --workdir).

Runs are interleaved (squire, ORT, PyTorch, squire, ...) to share the
machine's noise. Needs numpy, Pillow, torch, onnx, onnxruntime, transformers
(vit-b32) from PyPI and a release build of squire. Usage:

    python3 benches/index.py --images ../shared/data/flickr8k-1k/images [--model lite|vit-b32]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_lite_fixtures import effnet  # noqa: E402  (the reference EfficientNet-Lite0 forward)

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def preprocess(path, short, crop, mean, std):
    """Pillow: decode, EXIF transpose, RGB, bicubic shortest side, centre crop, normalise (CHW f32)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        s = short / min(w, h)
        nw, nh = max(round(w * s), short), max(round(h * s), short)
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - crop) // 2, (nh - crop) // 2
        im = im.crop((left, top, left + crop, top + crop))
        x = np.asarray(im, dtype=np.float32) / 255.0
    return ((x - mean) / std).transpose(2, 0, 1)


class LiteModel(torch.nn.Module):
    """EfficientNet-Lite0 → (GeM p=3 descriptor, ConSE vector), as the lite pack computes them."""

    def __init__(self, sd, class_vectors, top=30, tau=2.0):
        super().__init__()
        self.sd = {k: v for k, v in sd.items()}
        for i, (k, v) in enumerate(self.sd.items()):
            self.register_buffer(f"w{i}", v)
        self.names = list(self.sd)
        self.register_buffer("cv", class_vectors)
        self.top, self.tau = top, tau

    def forward(self, px):
        sd = {n: getattr(self, f"w{i}") for i, n in enumerate(self.names)}
        fmap, logits = effnet(sd, px)
        gem = fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1.0 / 3)
        gem = gem / gem.norm(dim=1, keepdim=True)
        p = torch.softmax(logits / self.tau, dim=1)
        w, idx = p.topk(self.top, dim=1)
        txt = (w.unsqueeze(2) * self.cv[idx]).sum(1)
        txt = txt / txt.norm(dim=1, keepdim=True)
        return gem, txt


class ClipVision(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, px):
        v = self.m.get_image_features(pixel_values=px)
        if not torch.is_tensor(v):  # transformers 5 returns the vision output, projected pooler_output
            v = v.pooler_output
        return v / v.norm(dim=1, keepdim=True)


def pipeline(paths, batch, threads, prep, run):
    """Decode in a pool (one batch ahead) while the model runs; returns (seconds, decode_wait_s)."""
    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    t0 = time.perf_counter()
    waited = 0.0
    with ThreadPoolExecutor(threads) as pool:
        pending = pool.map(prep, chunks[0]) if chunks else None
        for i, _ in enumerate(chunks):
            w0 = time.perf_counter()
            x = np.stack(list(pending))
            waited += time.perf_counter() - w0
            if i + 1 < len(chunks):
                pending = pool.map(prep, chunks[i + 1])
            run(x)
    return time.perf_counter() - t0, waited


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(ROOT.parent / "shared/data/flickr8k-1k/images"))
    ap.add_argument("--model", default="lite", choices=["lite", "vit-b32"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="index only the first N images")
    ap.add_argument("--home", default=os.environ.get("SQUIRE_HOME", str(Path.home() / ".squire")))
    ap.add_argument("--workdir", default="/tmp/squire-bench-vit-b32")
    ap.add_argument("--squire", default=str(ROOT / "target" / "release" / "squire"))
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import onnxruntime as ort

    paths = sorted(p for p in Path(a.images).rglob("*") if p.suffix.lower() in EXTS)
    if a.limit:
        paths = paths[:a.limit]
    folder = Path(a.images)
    if a.limit:
        folder = Path("/tmp/squire-bench-index-subset")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for p in paths:
            os.symlink(p.resolve(), folder / p.name)

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if a.model == "lite":
        from safetensors.torch import load_file
        lite = Path(a.home) / "models" / "lite"
        sd = load_file(str(lite / "efficientnet-lite0" / "model.safetensors"))
        caches = sorted((lite / "cache").glob("class-vectors-*.f32"))
        cv = np.fromfile(caches[0], dtype="<f4").reshape(1000, -1) if caches else np.random.rand(1000, 384).astype("f4")
        model = LiteModel(sd, torch.from_numpy(cv.copy())).eval()
        short, crop, (mean, std) = 256, 224, IMAGENET
        squire_model = "lite"
        onnx_path = work / "lite.onnx"
        outs = ["gem", "txt"]
    else:
        from transformers import CLIPConfig, CLIPModel
        model_dir = work / "model"
        if not (model_dir / "model.safetensors").exists():
            torch.manual_seed(0)
            CLIPModel(CLIPConfig()).eval().save_pretrained(model_dir, safe_serialization=True)
            shutil.copy(ROOT / "models/tests/fixtures/tiny-clip/tokenizer.json", model_dir / "tokenizer.json")
        prep_cfg = model_dir / "preprocessor_config.json"
        if not prep_cfg.exists():
            prep_cfg.write_text(json.dumps({
                "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
                "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "image_mean": CLIP[0], "image_std": CLIP[1], "do_convert_rgb": True}))
        model = ClipVision(CLIPModel.from_pretrained(model_dir).eval()).eval()
        short, crop, (mean, std) = 224, 224, CLIP
        squire_model = str(model_dir)
        onnx_path = work / "image-norm.onnx"
        outs = ["clip"]
    mean, std = np.array(mean, np.float32), np.array(std, np.float32)
    if not onnx_path.exists():
        torch.onnx.export(model, (torch.randn(2, 3, crop, crop),), str(onnx_path), input_names=["px"],
                          output_names=outs, dynamic_axes={"px": {0: "b"}}, opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    def prep(p):
        return preprocess(p, short, crop, mean, std)

    def run_ort(x):
        sess.run(None, {"px": x})

    def run_torch(x):
        with torch.inference_mode():
            model(torch.from_numpy(x))

    def run_squire():
        out = subprocess.run([a.squire, "bench", "index", str(folder), "--model", squire_model,
                              "--batch", str(a.batch), "--json"], capture_output=True, text=True,
                             env={**os.environ, "SQUIRE_HOME": a.home})
        if out.returncode != 0:
            sys.exit(f"squire bench index failed:\n{out.stderr}")
        return json.loads(out.stdout)

    n = len(paths)
    # Warm-up: page cache, ORT session, torch allocator.
    pipeline(paths[:a.batch], a.batch, a.threads, prep, run_ort)
    rows = {"squire": [], "onnxruntime": [], "pytorch": []}
    details = []
    for r in range(a.rounds):
        s = run_squire()
        details.append(s)
        rows["squire"].append(s["images_per_second"])
        sec, wait = pipeline(paths, a.batch, a.threads, prep, run_ort)
        rows["onnxruntime"].append(n / sec)
        if not a.skip_torch:
            sec, _ = pipeline(paths, a.batch, a.threads, prep, run_torch)
            rows["pytorch"].append(n / sec)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rows.items() if v), flush=True)

    best = {k: max(v) for k, v in rows.items() if v}
    last = details[-1]
    print(f"\n{a.model}: {n} images from {a.images}, batch {a.batch}, {a.threads} threads, {cpu_name()}")
    print("| pipeline | images/s (best of %d) | squire ÷ it |" % a.rounds)
    print("|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.1f} | {best['squire'] / v:.2f}× |")
    print(f"squire: model waited for decoding {100 * last['decode_wait_share']:.1f}% of the run; decoding, storage and "
          f"checkpoints added {100 * last['pipeline_overhead_share']:.1f}% over the model alone "
          f"({last['model_only_seconds']:.1f} s for {last['images']} images); peak RSS {last['peak_rss_bytes'] / 2**20:.0f} MiB")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": {"cpu": cpu_name(), "threads": a.threads},
                                            "model": a.model, "images": n, "rounds": rows, "best": best,
                                            "squire": details}, indent=2))


if __name__ == "__main__":
    main()
