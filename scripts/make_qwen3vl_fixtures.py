#!/usr/bin/env python3
"""A tiny random-weight Qwen3-VL and its reference outputs, for the parity
test of Squire's local VLM backend (models/tests/parity/qwen3vl_parity.rs).

Run by hand, never in CI (needs torch, transformers >= 5, tokenizers and
Pillow from PyPI):

    python3 scripts/make_qwen3vl_fixtures.py

Writes models/tests/fixtures/tiny-qwen3vl/ in the Hugging Face layout
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
preprocessor_config.json, generation_config.json) and
models/tests/fixtures/qwen3vl-reference.{json,safetensors}: for an image
prompt and a text-only prompt, the token ids, the processor's pixel values
and grid, the logits of the whole prompt, and the greedy continuation of
`Qwen3VLForConditionalGeneration.generate`.

Qwen's own tokenizer cannot be downloaded here, so the tokenizer is a small
byte-level BPE trained on a few sentences, with Qwen's special tokens.
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "models" / "tests" / "fixtures"
OUT = FIX / "tiny-qwen3vl"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
CORPUS = [
    "A dog runs across the grass.", "Two children play football on the beach at sunset.",
    "Make it red and sleeveless.", "The target image shows a red sleeveless dress.",
    "Rank the candidate images from best to worst match.", "Image 3 is best, then 7, then 1.",
    "[3, 1, 2, 4]", "{\"ranking\": [2, 1]}", "Describe the target image in one sentence.",
    "a cyclist rides a mountain bike; boats float in a harbour; a black car parks near a tree",
]


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    return tok


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    tok.save(str(OUT / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>"}, open(OUT / "tokenizer_config.json", "w"), indent=1)

    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           num_position_embeddings=16, deepstack_visual_indexes=[0, 1],
                           hidden_act="gelu_pytorch_tanh"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    # The default init (std 0.02, unit norms, zero biases) leaves attention
    # almost uniform, where positions barely matter: draw matrices with std
    # 1/sqrt(fan-in) (unit-scale activations, sharp attention), the position
    # table with std 1, and perturb norms and biases, so a wrong position
    # scheme, weight name or dropped bias shows in the outputs.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "pos_embed" in name or "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
    model.save_pretrained(OUT, safe_serialization=True)
    json.dump({"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"]},
              open(OUT / "generation_config.json", "w"), indent=1)

    proc = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 16 * 16 * 4, "longest_edge": 16 * 16 * 48},
                                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc.save_pretrained(OUT)

    image = Image.open(FIX / "images" / "chelsea-420.jpg").convert("RGB")
    px = proc(images=[image], return_tensors="pt")
    grid = px["image_grid_thw"][0].tolist()
    n_img = grid[0] * grid[1] * grid[2] // 4
    cases = {
        "image": "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n_img
                 + "<|vision_end|>Describe the target image in one sentence.<|im_end|>\n<|im_start|>assistant\n",
        "text": "<|im_start|>system\nRank the candidate images.<|im_end|>\n<|im_start|>user\nMake it red and "
                "sleeveless.<|im_end|>\n<|im_start|>assistant\n",
    }
    tensors, meta = {}, {"image": "images/chelsea-420.jpg", "image_grid_thw": grid, "cases": {}}
    for name, prompt in cases.items():
        input_ids = torch.tensor([fast(prompt)["input_ids"]])
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if name == "image":
            kwargs["pixel_values"] = px["pixel_values"]
            kwargs["image_grid_thw"] = px["image_grid_thw"]
            kwargs["mm_token_type_ids"] = (input_ids == ids["<|image_pad|>"]).int()
        with torch.no_grad():
            logits = model(**kwargs).logits[0]
            gen = model.generate(**kwargs, max_new_tokens=12, do_sample=False,
                                 eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
        new = gen[0, input_ids.shape[1]:].tolist()
        tensors[f"{name}.logits"] = logits.float().contiguous()
        meta["cases"][name] = {"prompt": prompt, "input_ids": input_ids[0].tolist(), "generated": new,
                               "generated_text": fast.decode(new)}
    tensors["image.pixel_values"] = px["pixel_values"].float().contiguous()
    with torch.no_grad():
        vis = model.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"])
    tensors["vision.merged"] = vis.pooler_output.float().contiguous()
    for i, d in enumerate(vis.deepstack_features):
        tensors[f"vision.deepstack.{i}"] = d.float().contiguous()
    save_file(tensors, str(FIX / "qwen3vl-reference.safetensors"))
    json.dump(meta, open(FIX / "qwen3vl-reference.json", "w"), indent=1)
    sizes = sum(f.stat().st_size for f in OUT.iterdir()) + (FIX / "qwen3vl-reference.safetensors").stat().st_size
    print(f"wrote {OUT} and the reference ({sizes / 1e6:.2f} MB); grid {grid}, {n_img} image tokens;",
          {k: v["generated"] for k, v in meta["cases"].items()})


if __name__ == "__main__":
    main()
