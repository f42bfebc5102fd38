#!/usr/bin/env python3
"""Reference outputs for the lite model pack, computed by the original PyTorch
model (EfficientNet-Lite0) and by sentence-transformers (all-MiniLM-L6-v2).

Run by hand after `squire models fetch lite` (needs torch, sentence-transformers,
transformers and Pillow from PyPI):

    python3 scripts/make_lite_fixtures.py [--home ~/.squire]

Writes models/tests/fixtures/lite-reference.json: logits and GeM descriptors
of a few Flickr8k-1k photos (by file name; the photos themselves stay in
../shared and are never committed) and MiniLM embeddings of a few captions.
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k-1k" / "images"
IMAGES = [  # three dog photos, a cyclist, boats, a car scene
    "2098418613_85a0c9afea.jpg", "2095444126_201ff9f222.jpg", "2094323311_27d58b1513.jpg",
    "110595925_f3395c8bd6.jpg", "1042020065_fb3d3ba5ba.jpg", "114051287_dd85625a04.jpg",
]
CAPTIONS = [
    "a dog runs across the grass", "", "A cyclist is riding a bicycle on a curved road up a hill .",
    "two children play football", "a photo of a golden retriever.", "café au lait 🐶",
    "a very long sentence " + "with many words " * 60,
]
STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def same_pad(x, k, s):
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def conv_bn(x, sd, conv, bn, stride, groups=1):
    w = sd[f"{conv}.weight"]
    x = F.conv2d(same_pad(x, w.shape[-1], stride), w, stride=stride, groups=groups)
    return F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                        training=False, eps=1e-3)


def effnet(sd, x):
    x = F.relu6(conv_bn(x, sd, "_conv_stem", "_bn0", 2))
    for i, s in enumerate(STRIDES):
        p = f"_blocks.{i}"
        inp = x
        if f"{p}._expand_conv.weight" in sd:
            x = F.relu6(conv_bn(x, sd, f"{p}._expand_conv", f"{p}._bn0", 1))
        x = F.relu6(conv_bn(x, sd, f"{p}._depthwise_conv", f"{p}._bn1", s, groups=x.shape[1]))
        x = conv_bn(x, sd, f"{p}._project_conv", f"{p}._bn2", 1)
        if s == 1 and inp.shape == x.shape:
            x = x + inp
    fmap = F.relu6(conv_bn(x, sd, "_conv_head", "_bn1", 1))
    logits = F.linear(fmap.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    return fmap, logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("SQUIRE_HOME", str(Path.home() / ".squire")))
    a = ap.parse_args()
    lite = Path(a.home) / "models" / "lite"
    sd = load_file(str(lite / "efficientnet-lite0" / "model.safetensors"))
    classes = (ROOT / "models" / "data" / "imagenet_classes.txt").read_text().splitlines()
    pre = CLIPImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                image_mean=MEAN, image_std=STD)
    out = {"generator": "scripts/make_lite_fixtures.py", "preprocessing": "shortest side 256 (Pillow bicubic), centre crop 224, ImageNet mean/std",
           "images": [], "captions": CAPTIONS, "versions": {"torch": torch.__version__}}
    for name in IMAGES:
        img = ImageOps.exif_transpose(Image.open(FLICKR / name)).convert("RGB")
        px = torch.from_numpy(pre(images=img, return_tensors="np")["pixel_values"])
        with torch.no_grad():
            fmap, logits = effnet(sd, px)
        gem = fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
        gem = gem / gem.norm(dim=-1, keepdim=True)
        top5 = logits[0].topk(5).indices.tolist()
        print(name, [classes[i] for i in top5])
        out["images"].append({"file": name, "logits": logits[0].tolist(), "gem_p3": gem[0].tolist(),
                              "top5": top5, "feature_map_shape": list(fmap.shape[1:])})
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(lite / "minilm"), device="cpu")
    emb = st.encode(CAPTIONS, normalize_embeddings=True, convert_to_numpy=True)
    out["minilm_embeddings"] = emb.astype(np.float64).tolist()
    out["versions"]["sentence_transformers"] = __import__("sentence_transformers").__version__
    dst = ROOT / "models" / "tests" / "fixtures" / "lite-reference.json"
    dst.write_text(json.dumps(out) + "\n")
    print(f"wrote {dst} ({dst.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
