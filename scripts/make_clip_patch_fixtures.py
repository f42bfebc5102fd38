#!/usr/bin/env python3
"""Reference CLIP ViT patch tokens for the patch-grid pooling test: the tiny
random-weight checkpoint in models/tests/fixtures/tiny-clip, run by Hugging
Face transformers on the `pixels32` batch of clip-reference.safetensors
(written by make_clip_fixtures.py). Saves the final layer's patch tokens
after the vision tower's post-layernorm, class token dropped
(batch × patches × hidden), as clip-patch-reference.safetensors.

Run by hand, never in CI (needs torch, transformers, safetensors):

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install torch transformers safetensors numpy
    /tmp/fx/bin/python scripts/make_clip_patch_fixtures.py
"""
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import CLIPModel

FIX = Path(__file__).resolve().parent.parent / "models" / "tests" / "fixtures"


def main():
    # The checkpoint is stored in f16; the reference runs in f32 on those
    # rounded weights, as make_clip_fixtures.py does.
    model = CLIPModel.from_pretrained(FIX / "tiny-clip", dtype=torch.float32).eval()
    px = torch.from_numpy(load_file(str(FIX / "clip-reference.safetensors"))["pixels32"])
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=px).last_hidden_state
        tokens = model.vision_model.post_layernorm(hidden)[:, 1:, :]
    save_file({"patch_tokens": tokens.numpy().astype(np.float32)}, str(FIX / "clip-patch-reference.safetensors"))
    print("patch tokens", tuple(tokens.shape))


if __name__ == "__main__":
    main()
