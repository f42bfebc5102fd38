#!/usr/bin/env python3
"""Turns the committed tiny random-weight Qwen3-VL
(models/tests/fixtures/tiny-qwen3vl/, made by make_qwen3vl_fixtures.py) into
a model folder that `transformers serve` can load: the same weights and
tokenizer plus what a server needs and the parity fixture does not, namely a
chat template (Qwen-VL's message layout: `<|im_start|>role ... <|im_end|>`,
each image as `<|vision_start|><|image_pad|><|vision_end|>`) and the
processor's configs (`Qwen3VLProcessor` = image processor + video processor
+ tokenizer, saved by transformers itself).

Needs torch, torchvision (the processor's video half imports it) and
transformers >= 5 from PyPI. Used by tests/e2e/real_openai_server.rs
(which runs it, then `transformers serve` on loopback):

    python3 scripts/make_served_vlm.py OUT_DIR
"""
import shutil
import sys
from pathlib import Path

from transformers import AutoTokenizer, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl import Qwen3VLVideoProcessor

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "models" / "tests" / "fixtures" / "tiny-qwen3vl"

# Qwen2-VL's chat template, reduced to what Squire sends: string or
# content-part messages with text and images, and the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_served_vlm.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in ["config.json", "model.safetensors", "generation_config.json"]:
        shutil.copy(SRC / name, out / name)
    tok = AutoTokenizer.from_pretrained(str(SRC))
    image = Qwen2VLImageProcessorPil.from_pretrained(str(SRC))
    video = Qwen3VLVideoProcessor(patch_size=image.patch_size, merge_size=image.merge_size,
                                  temporal_patch_size=image.temporal_patch_size,
                                  image_mean=image.image_mean, image_std=image.image_std)
    proc = Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                            chat_template=CHAT_TEMPLATE)
    proc.save_pretrained(str(out))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    print(out)


if __name__ == "__main__":
    main()
