#!/usr/bin/env python3
"""Generate the CLIP parity fixtures under models/tests/fixtures/.

Run by hand, never in CI (it needs torch, transformers, open-clip-torch,
scikit-image and Pillow from PyPI):

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install torch transformers open-clip-torch scikit-image pillow numpy safetensors
    /tmp/fx/bin/python scripts/make_clip_fixtures.py

It writes:
  tiny-clip/            a random-weight CLIPModel in the standard Hugging Face layout
                        (config.json, model.safetensors, tokenizer.json, preprocessor_config.json)
  images/               small test images made from public-domain scikit-image photos
                        (JPEG baseline/progressive, greyscale, CMYK, EXIF-rotated, RGBA PNG, palette GIF)
  clip-reference.safetensors   reference tensors computed by transformers
  clip-reference.json          captions, token ids and the list of reference tensors

The tokenizer.json is built from the CLIP BPE merges that ship in the
open-clip-torch wheel (MIT), and its ids are checked against open_clip's own
tokenizer before anything is written.
"""
import gzip
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

import open_clip
from safetensors.numpy import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "tests" / "fixtures"
SEED = 20261127

CAPTIONS = [
    "a dog runs across the grass",
    "",
    "   ",
    "A photo of a CAT sitting on a red sofa.",
    "two children playing football in the park at sunset",
    "make it red and sleeveless",
    "café au lait on a wooden table",
    "Ünïcödé naïve résumé façade",
    "東京の夜景",
    "a 🐶 wearing sunglasses 😎🌴",
    "emoji only 🎉🎉🎉",
    "numbers 1234567890 and symbols !@#$%^&*()",
    "don't won't can't it's we'll they've I'd",
    "hyphenated-word and under_score and slash/separated",
    "tabs\tand\nnewlines\r\nin text",
    "UPPER lower MiXeD",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "a very long caption " + "with many many words " * 30,
    "x" * 500,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Ελληνικά κείμενο και русский текст",
    "عربي نص",
    "a man in a blue shirt rides a bicycle down a city street .",
    "zero\u200bwidth\u00a0spaces",
]


FULL_SIZE = ["astronaut.jpg", "chelsea-420.jpg", "cmyk.jpg", "rotated-exif6.jpg", "alpha.png"]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer(tmp: Path) -> CLIPTokenizer:
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=77)
    tok.save_pretrained(tmp)
    # Written without indentation (3.6 MB pretty-printed, 1.7 MB compact);
    # the content is what transformers saved.
    path = tmp / "tokenizer.json"
    path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return tok


def hf_ids(tok, text):
    return tok(text, truncation=True, max_length=77)["input_ids"]


def check_tokenizer(tok):
    ref = open_clip.get_tokenizer("ViT-B-32")
    assert hf_ids(tok, "a dog runs across the grass") == [49406, 320, 1929, 5586, 2500, 518, 5922, 49407]
    mismatches = []
    for c in CAPTIONS:
        a = hf_ids(tok, c)
        b = [int(t) for t in ref([c])[0].tolist()]
        b = b[: b.index(49407) + 1] if 49407 in b else b
        if a != b:
            mismatches.append((c, a, b))
    return mismatches


def make_images():
    from skimage import data

    out = {}
    astro = Image.fromarray(data.astronaut()).resize((300, 300))  # NASA, public domain
    coffee = Image.fromarray(data.coffee()).resize((400, 267))  # public domain (Rachel Michetti)
    chelsea = Image.fromarray(data.chelsea())  # 451x300, CC0 (Stéfan van der Walt)
    rocket = Image.fromarray(data.rocket()).resize((320, 213))  # NASA, public domain

    def jpeg(img, **kw):
        b = io.BytesIO()
        img.save(b, "JPEG", **kw)
        return b.getvalue()

    def png(img):
        b = io.BytesIO()
        img.save(b, "PNG")
        return b.getvalue()

    out["astronaut.jpg"] = jpeg(astro, quality=90)
    out["coffee-progressive.jpg"] = jpeg(coffee, quality=85, progressive=True)
    out["chelsea-420.jpg"] = jpeg(chelsea, quality=75, subsampling=2)
    out["rocket-444.jpg"] = jpeg(rocket, quality=95, subsampling=0)
    out["grey.jpg"] = jpeg(chelsea.convert("L").resize((240, 160)), quality=90)
    out["cmyk.jpg"] = jpeg(coffee.resize((200, 133)).convert("CMYK"), quality=90)
    # EXIF orientation 6 (rotate 90 CW to display): stored landscape, shown portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    out["rotated-exif6.jpg"] = jpeg(rocket.resize((240, 160)), quality=90, exif=exif.tobytes())
    rgba = astro.resize((180, 120)).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 180, dtype=np.uint8), (120, 1))
    rgba.putalpha(Image.fromarray(alpha))
    out["alpha.png"] = png(rgba)
    out["palette.gif"] = (lambda b: (chelsea.resize((150, 100)).convert("P", palette=Image.ADAPTIVE).save(b, "GIF"), b.getvalue())[1])(io.BytesIO())
    out["tiny-5x3.png"] = png(coffee.resize((5, 3)))
    return out


def load_like_reference(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def randomise(model: CLIPModel):
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)[:, None, None]
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)[:, None, None]


def encode_pixels_u8(px):
    """A CLIP-normalised CHW tensor as the 8-bit values it came from; asserts
    that decoding ((v / 255 - mean) / std in f32) gives it back within 1e-6."""
    px = np.asarray(px, dtype=np.float32)
    v = np.round((px * CLIP_STD + CLIP_MEAN) * 255.0)
    assert v.min() >= 0 and v.max() <= 255
    decoded = ((v / 255.0).astype(np.float32) - CLIP_MEAN) / CLIP_STD
    assert np.abs(decoded - px).max() <= 1e-6, np.abs(decoded - px).max()
    return v.astype(np.uint8)


def main():
    tmp = OUT / "tiny-clip"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tok = build_tokenizer(tmp)
    mismatches = check_tokenizer(tok)
    for c, a, b in mismatches:
        print(f"open_clip differs on {c!r}:\n  hf {a}\n  oc {b}")

    cfg = CLIPConfig(
        # Text width 16: the 49408-token embedding is most of the checkpoint
        # (49408 × 16 in f16 = 1.6 MB; every committed file stays under 2 MiB).
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=32,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(cfg).eval()
    randomise(model)
    # Stored as f16 (halves the fixture); the reference runs in f32 on the same rounded weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.half().save_pretrained(tmp, safe_serialization=True)
    model.float()
    for extra in ["special_tokens_map.json", "tokenizer_config.json", "vocab.json", "merges.txt"]:
        (tmp / extra).unlink(missing_ok=True)
    tiny_pre = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tiny_pre.save_pretrained(tmp)

    imgs_dir = OUT / "images"
    if imgs_dir.exists():
        shutil.rmtree(imgs_dir)
    imgs_dir.mkdir()
    images = make_images()
    names = sorted(images)
    for n in names:
        (imgs_dir / n).write_bytes(images[n])

    pil = [load_like_reference(images[n]) for n in names]
    tensors = {}
    pre224_pil = CLIPImageProcessorPil()
    pre224_tv = CLIPImageProcessor()
    # Full-size (224 px) pixel references for a subset, stored as the 8-bit
    # values the processor normalised (a quarter of the f32 size).
    for n, im in zip(names, pil):
        key = n.replace(".", "_")
        if n in FULL_SIZE:
            px224 = pre224_pil(images=im, return_tensors="np")["pixel_values"][0]
            tensors[f"pixels224_pil_u8.{key}"] = encode_pixels_u8(px224)
        if n == "astronaut.jpg":
            px224 = pre224_tv(images=im, return_tensors="np")["pixel_values"][0]
            tensors[f"pixels224_torchvision_u8.{key}"] = encode_pixels_u8(px224)
    px = tiny_pre(images=pil, return_tensors="pt")["pixel_values"]
    tensors["pixels32"] = px.numpy().astype(np.float32)

    ids = [hf_ids(tok, c) for c in CAPTIONS]
    maxlen = max(len(i) for i in ids)
    padded = torch.tensor([i + [49407] * (maxlen - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (maxlen - len(i)) for i in ids])
    with torch.no_grad():
        img_emb = model.get_image_features(pixel_values=px)
        img_emb = getattr(img_emb, "pooler_output", img_emb)
        txt_emb = model.get_text_features(input_ids=padded, attention_mask=mask)
        txt_emb = getattr(txt_emb, "pooler_output", txt_emb)
        out = model(input_ids=padded, attention_mask=mask, pixel_values=px)
    img_emb = img_emb / img_emb.norm(dim=-1, keepdim=True)
    txt_emb = txt_emb / txt_emb.norm(dim=-1, keepdim=True)
    tensors["image_embeds"] = img_emb.numpy().astype(np.float32)
    tensors["text_embeds"] = txt_emb.numpy().astype(np.float32)
    tensors["logits_per_image"] = out.logits_per_image.numpy().astype(np.float32)
    assert np.allclose(out.image_embeds.numpy(), tensors["image_embeds"], atol=1e-6)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, str(OUT / "clip-reference.safetensors"))

    meta = {
        "generator": "scripts/make_clip_fixtures.py",
        "seed": SEED,
        "model_dir": "tiny-clip",
        "images": names,
        "captions": CAPTIONS,
        "token_ids": ids,
        "open_clip_mismatches": [c for c, _, _ in mismatches],
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "open_clip": open_clip.__version__,
            "pillow": Image.__version__,
        },
        "notes": "pixels224_pil_u8: CLIPImageProcessorPil (Pillow bicubic, the original CLIP preprocessing); "
        "pixels224_torchvision_u8: transformers 5 CLIPImageProcessor (torchvision backend); both stored losslessly "
        "as the 8-bit values the processor normalised: decode as (v / 255 - CLIP_MEAN) / CLIP_STD in f32 "
        "(the generator checks the decode against the processor's output within 1e-6). Images are decoded by "
        "Pillow with EXIF orientation applied (ImageOps.exif_transpose) and converted with Image.convert('RGB').",
    }
    (OUT / "clip-reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.1f} MB), {len(mismatches)} tokenizer mismatches vs open_clip")


if __name__ == "__main__":
    main()
