"""HFProcessor on real Hugging Face processors, built offline from the embedded SmolLM2 tokenizer (BLIP: a tiny
BERT vocabulary), small image processors and tiny random models whose configs match the processors."""

from __future__ import annotations

import copy
import math
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from mmpt.models.hf_processor import IGNORE_INDEX, HFProcessor

PROMPTS = ["what color is the shape?", "is there a red circle in the image at all?"]
ANSWERS = ["blue", "no"]
FAMILIES = ["llava", "idefics3", "paligemma", "florence2", "blip2", "blip", "llava_next", "llava_onevision", "internvl",
            "paligemma2", "gemma3", "qwen2_vl", "qwen2_5_vl", "mllama", "git"]
CHAT_FAMILIES = ["llava", "idefics3", "llava_next", "llava_onevision", "internvl", "gemma3", "qwen2_vl", "qwen2_5_vl",
                 "mllama"]

# llava-hf/llava-1.5-*-hf's chat template: the assistant turn ends without an end-of-turn token
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# HuggingFaceTB/SmolVLM-*-Instruct's chat template
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# llava-hf/llava-v1.6-mistral-7b-hf's chat template (no generation prompt: the prompt ends with [/INST]), its
# '</s>' written as the test tokenizer's eos
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '<|im_end|> '}}{% endif %}{% endfor %}"
)
# llava-hf/llava-onevision-qwen2-*-ov-hf's chat template: an assistant turn in the history opens with
# "assistant " + newline, the generation prompt with "assistant" + newline
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# OpenGVLab/InternVL3-*-hf's chat template (transformers' conversion script)
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
# google/gemma-3-*-it's chat template (tool/system details trimmed): assistant turns are 'model' turns
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Qwen/Qwen2-VL-*-Instruct's chat template (Qwen2.5-VL's is the same)
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# meta-llama/Llama-3.2-*-Vision-Instruct's chat template (tools and dates trimmed), one newline after a header
# instead of two: the test tokenizer splits "\n\n" + word into two newline tokens but "\n\n" at the end of a
# text into one (GPT-2 pre-tokenization), so the generation prompt would not be a token prefix of a training
# sequence (Llama 3's tokenizer keeps "\n\n" one token either way)
MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n' }}{% endif %}"
)
PINPOINTS = [[32, 32], [32, 64], [64, 32]]  # AnyRes grids of 32x32 tiles (LLaVA-NeXT, LLaVA-OneVision)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (several threads stall on a busy machine); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _llama(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)


def build_llava(tok, template=LLAVA_TEMPLATE):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok.add_tokens(["<image>"], special_tokens=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, num_additional_image_tokens=1,
                          vision_feature_select_strategy="default", chat_template=template)
    config = LlavaConfig(vision_config=dict(VISION, model_type="clip_vision_model"), text_config=_llama(tok),
                         image_token_index=proc.image_token_id, vision_feature_layer=-1)
    return LlavaForConditionalGeneration(config), proc


def build_idefics3(tok, template=SMOLVLM_TEMPLATE):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tok.add_tokens(["<global-img>"], special_tokens=True)
    images = Idefics3ImageProcessor(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                    do_image_splitting=False)
    proc = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4, chat_template=template)
    config = Idefics3Config(vision_config=VISION, text_config=_llama(tok), image_token_id=proc.image_token_id,
                            scale_factor=2)
    return Idefics3ForConditionalGeneration(config), proc


def build_paligemma(tok):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    images = SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=16)
    proc = PaliGemmaProcessor(image_processor=images, tokenizer=tok)  # adds <image>, <locXXXX>, <segXXX>
    text = GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=16, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    config = PaliGemmaConfig(vision_config=dict(VISION, projection_dim=64), text_config=text,
                             image_token_index=proc.image_token_id, projection_dim=64)
    return PaliGemmaForConditionalGeneration(config), proc


def build_llava_next(tok, template=LLAVA_NEXT_TEMPLATE):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok.add_tokens(["<image>"], special_tokens=True)
    images = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                        image_grid_pinpoints=PINPOINTS)
    proc = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=8, num_additional_image_tokens=1,
                              vision_feature_select_strategy="default", chat_template=template)
    config = LlavaNextConfig(vision_config=dict(VISION, model_type="clip_vision_model"), text_config=_llama(tok),
                             image_token_index=proc.image_token_id, vision_feature_layer=-1,
                             image_grid_pinpoints=PINPOINTS)
    return LlavaNextForConditionalGeneration(config), proc


def _qwen2(tok):
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)


def _without_video_processor(cls, **kwargs):
    """``cls(**kwargs)`` with no video processor: transformers checks the class of even a missing one, and the video
    processor base class does not exist without torchvision (not installed here); mmpt feeds images only."""
    check = cls.check_argument_for_proper_class

    def lenient(self, name, argument):
        return None if argument is None else check(self, name, argument)

    with mock.patch.object(cls, "check_argument_for_proper_class", lenient):
        return cls(**kwargs, video_processor=None)


def build_llava_onevision(tok, template=ONEVISION_TEMPLATE):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tok.add_tokens(["<image>", "<video>"], special_tokens=True)
    images = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS)
    proc = _without_video_processor(LlavaOnevisionProcessor, image_processor=images, tokenizer=tok,
                                    num_image_tokens=16, vision_feature_select_strategy="full",
                                    chat_template=template)
    config = LlavaOnevisionConfig(vision_config=dict(VISION, model_type="siglip_vision_model"), text_config=_qwen2(tok),
                                  image_token_index=proc.image_token_id, video_token_index=proc.video_token_id,
                                  vision_feature_layer=-1, image_grid_pinpoints=PINPOINTS)
    return LlavaOnevisionForConditionalGeneration(config), proc


def build_internvl(tok, template=INTERNVL_TEMPLATE):
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}
    tok.add_tokens(list(specials.values()), special_tokens=True)
    tok._set_model_specific_special_tokens(special_tokens=specials)  # tokenizer.context_image_token etc.
    # 2 tiles of 32x32 and a thumbnail per image: pixel_values hold 3 tiles per sample, 12 context tokens each
    images = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=2,
                                      max_patches=2)
    proc = _without_video_processor(InternVLProcessor, image_processor=images, tokenizer=tok, image_seq_length=4,
                                    chat_template=template)
    vision = dict(VISION, image_size=[32, 32], patch_size=[8, 8])
    config = InternVLConfig(vision_config=vision, text_config=_qwen2(tok), image_token_id=proc.image_token_id,
                            image_seq_length=4, downsample_ratio=0.5, vision_feature_layer=-1)
    return InternVLForConditionalGeneration(config), proc


def build_paligemma2(tok):
    from transformers import (
        Gemma2Config,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    images = SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=16)
    proc = PaliGemmaProcessor(image_processor=images, tokenizer=tok)
    text = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, vocab_size=len(tok),
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                        sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    config = PaliGemmaConfig(vision_config=dict(VISION, projection_dim=64), text_config=text,
                             image_token_index=proc.image_token_id, projection_dim=64)
    config.text_config._attn_implementation = "eager"  # Gemma 2 has no SDPA path
    return PaliGemmaForConditionalGeneration(config), proc


def build_gemma3(tok, template=GEMMA3_TEMPLATE):
    """Gemma 3 as families/gemma3.py builds it, its image ids the tokenizer's last three (boi, eoi, image as
    997, 998, 999 of the family's 1000-token vocabulary)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from mmpt.models.families import gemma3

    specials = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok.add_tokens(["<start_of_turn>", "<end_of_turn>", *specials.values()], special_tokens=True)
    tok._set_model_specific_special_tokens(special_tokens=specials)  # tokenizer.boi_token etc.
    images = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=gemma3.NUM_IMAGE_TOKENS,
                           chat_template=template)
    text = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=16, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                            sliding_window=gemma3.SLIDING_WINDOW, max_position_embeddings=256,
                            layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    config = Gemma3Config(vision_config=dict(VISION, model_type="siglip_vision_model"), text_config=text,
                          mm_tokens_per_image=gemma3.NUM_IMAGE_TOKENS, image_token_index=tok.image_token_id,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # zero-initialized by transformers: images would change nothing
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return model, proc


def build_qwen2_vl(tok, template=QWEN2_VL_TEMPLATE, model_type="qwen2_vl"):
    """Qwen2-VL (or Qwen2.5-VL) as families/qwen2_vl.py builds it, its vision ids the tokenizer's last three
    (start, end, image as 997, 998, 999). Images become 24x32 / 32x24 (at most 32x32 pixels): 12 tokens each."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmpt.models.families import qwen2_vl

    tok.add_tokens(["<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"], special_tokens=True)
    images = Qwen2VLImageProcessorPil(patch_size=qwen2_vl.PATCH, merge_size=qwen2_vl.MERGE,
                                      temporal_patch_size=qwen2_vl.TEMPORAL,
                                      size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})
    name = "Qwen2VL" if model_type == "qwen2_vl" else "Qwen2_5_VL"
    proc = _without_video_processor(getattr(transformers, f"{name}Processor"), image_processor=images, tokenizer=tok,
                                    chat_template=template)
    settings = qwen2_vl._config()
    settings["text_config"].update(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id)
    settings.update(image_token_id=proc.image_token_id, video_token_id=proc.video_token_id,
                    vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                    vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    if model_type == "qwen2_5_vl":  # as families/qwen2_5_vl.py
        settings["vision_config"] = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64,
                                         num_heads=4, patch_size=qwen2_vl.PATCH, spatial_merge_size=qwen2_vl.MERGE,
                                         temporal_patch_size=qwen2_vl.TEMPORAL, in_channels=3, window_size=8,
                                         fullatt_block_indexes=[1])
    config = getattr(transformers, f"{name}Config")(**settings)
    return getattr(transformers, f"{name}ForConditionalGeneration")(config), proc


def build_qwen2_5_vl(tok, template=QWEN2_VL_TEMPLATE):
    return build_qwen2_vl(tok, template, model_type="qwen2_5_vl")


def build_mllama(tok, template=MLLAMA_TEMPLATE):
    """Mllama as families/mllama.py builds it but with up to 2 tiles of 16x16 per image (the test images get 1x2
    and 2x1 tiles); ``<|image|>`` is the tokenizer's last token (as 999)."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tok.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>"], special_tokens=True)
    images = MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=2)
    proc = MllamaProcessor(image_processor=images, tokenizer=tok, chat_template=template)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                  num_attention_heads=4, image_size=16, patch_size=8, max_num_tiles=2, vision_output_dim=64,
                  intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tok), cross_attention_layers=[1], max_position_embeddings=256,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = MllamaForConditionalGeneration(
        MllamaConfig(vision_config=vision, text_config=text, image_token_index=proc.image_token_id)
    )
    with torch.no_grad():  # tanh gates start at 0: open them so that images matter
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(1.0)
    return model, proc


def build_git(_tok):
    """GIT as families/git.py builds it (eager attention only) over a tiny BERT vocabulary; bos/eos are [CLS]/[SEP]
    as in microsoft/git-* checkpoints."""
    from transformers import BertTokenizer, GitConfig, GitForCausalLM, GitProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *" ".join([*PROMPTS, *ANSWERS]).split()]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(words))})
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = GitProcessor(image_processor=images, tokenizer=tok)
    config = GitConfig(vision_config=dict(VISION, model_type="clip_vision_model"), hidden_size=64,
                       intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=len(tok),
                       max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                       eos_token_id=tok.sep_token_id)
    config._attn_implementation = "eager"  # transformers' GIT refuses SDPA
    return GitForCausalLM(config), proc


def build_florence2(tok):
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    from mmpt.models.families import florence2

    tok.add_tokens(["<image>"], special_tokens=True)
    tok._set_model_specific_special_tokens(special_tokens={"image_token": "<image>"})  # tokenizer.image_token
    text = dict(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                decoder_start_token_id=tok.eos_token_id)
    vision = dict(embed_dim=[16, 32], depths=[1, 1], num_heads=[2, 4], num_groups=[2, 4], patch_size=[7, 3],
                  patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], projection_dim=64,
                  window_size=2)
    model = Florence2ForConditionalGeneration(
        Florence2Config(text_config=text, vision_config=vision, image_token_id=tok.image_token_id)
    )
    images = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                                image_seq_length=florence2.num_image_tokens(model))
    return model, Florence2Processor(image_processor=images, tokenizer=tok)


def build_blip2(tok):
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    proc = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                          num_query_tokens=4)  # adds <image>
    text = OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, vocab_size=len(tok),
                     word_embed_proj_dim=64, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   encoder_hidden_size=32, vocab_size=100)
    config = Blip2Config(vision_config=VISION, qformer_config=qformer, text_config=text, num_query_tokens=4,
                         image_token_index=tok.convert_tokens_to_ids("<image>"))
    return Blip2ForConditionalGeneration(config), proc


def build_blip(_tok):
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "?", *" ".join([*PROMPTS, *ANSWERS]).split()]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}, bos_token="[DEC]")
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=len(tok), encoder_hidden_size=32, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    return BlipForConditionalGeneration(BlipConfig(vision_config=VISION, text_config=text)), proc


BUILDERS = {"llava": build_llava, "idefics3": build_idefics3, "paligemma": build_paligemma,
            "florence2": build_florence2, "blip2": build_blip2, "blip": build_blip, "llava_next": build_llava_next,
            "llava_onevision": build_llava_onevision, "internvl": build_internvl, "paligemma2": build_paligemma2,
            "gemma3": build_gemma3, "qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl,
            "mllama": build_mllama, "git": build_git}


def build(base_tokenizer, family, seed=0, **kw):
    """(model, HFProcessor) for a tiny random ``family`` model, on a fresh copy of the tokenizer."""
    torch.manual_seed(seed)
    model, proc = BUILDERS[family](copy.deepcopy(base_tokenizer), **kw)
    return model.eval(), HFProcessor(proc, family)


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, base_tokenizer):
    model, hp = build(base_tokenizer, request.param)
    return request.param, model, hp


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)),
            rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)]


def _ids(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def expected_labels(family, tok, answer):
    """The ids each family labels for ``answer``: answer tokens + end token (Florence-2: ``<s>`` first)."""
    if family == "florence2":
        return [tok.bos_token_id, *_ids(tok, answer), tok.eos_token_id]
    if family in ("paligemma", "paligemma2"):
        return [*_ids(tok, answer), tok.eos_token_id]
    if family in ("blip", "git"):
        return [*_ids(tok, answer), tok.sep_token_id]
    if family in ("llava_onevision", "internvl", "qwen2_vl", "qwen2_5_vl"):  # a line after "<|im_start|>assistant"
        return [*_ids(tok, answer), tok.eos_token_id]
    if family == "gemma3":  # a line after "<start_of_turn>model"
        return [*_ids(tok, answer), tok.convert_tokens_to_ids("<end_of_turn>")]
    if family == "mllama":  # a line after "<|start_header_id|>assistant<|end_header_id|>"
        return [*_ids(tok, answer), tok.convert_tokens_to_ids("<|eot_id|>")]
    end = tok.convert_tokens_to_ids("<end_of_utterance>") if family == "idefics3" else tok.eos_token_id
    return [*_ids(tok, " " + answer), end]


def test_labels_are_answer_tokens_and_end_token(built, images):
    family, _, hp = built
    batch = hp(images, PROMPTS, ANSWERS)
    for i, answer in enumerate(ANSWERS):
        row = batch["labels"][i]
        assert row[row != IGNORE_INDEX].tolist() == expected_labels(family, hp.tokenizer, answer)
    if not hp.is_encoder_decoder:  # aligned with input_ids, the answer ends each sequence
        assert batch["labels"].shape == batch["input_ids"].shape
        labelled = batch["labels"] != IGNORE_INDEX
        assert torch.equal(batch["labels"][labelled], batch["input_ids"][labelled])
        for i, answer in enumerate(ANSWERS):
            n = len(expected_labels(family, hp.tokenizer, answer))
            assert labelled[i, -n:].all() and not labelled[i, :-n].any()


def test_batches_are_padded_on_the_family_side(built, images):
    family, _, hp = built
    assert hp.padding_side == ("right" if family == "florence2" else "left")
    for answers in (ANSWERS, None):
        batch = hp(images, PROMPTS, answers)
        mask = batch["attention_mask"]
        lengths = mask.sum(1)
        assert lengths[0] < lengths[1]  # different prompt lengths in one batch
        for i, n in enumerate(lengths.tolist()):
            real = slice(-n, None) if hp.padding_side == "left" else slice(None, n)
            pad = slice(None, -n) if hp.padding_side == "left" else slice(n, None)
            assert mask[i, real].all() and not mask[i, pad].any()
            assert (batch["input_ids"][i, pad] == hp.pad_token_id).all()
            if answers is not None and not hp.is_encoder_decoder:
                assert (batch["labels"][i, pad] == IGNORE_INDEX).all()
        assert ("labels" in batch) == (answers is not None)
        assert "pixel_values" in batch
    if family in ("paligemma", "paligemma2"):
        assert "token_type_ids" in batch
    if family in ("llava_next", "llava_onevision"):
        assert batch["image_sizes"].tolist() == [[40, 48], [48, 40]]
    if family == "gemma3":  # 4 image tokens per image, marked for bidirectional attention
        assert batch["token_type_ids"].sum(1).tolist() == [4, 4]
    if family in ("qwen2_vl", "qwen2_5_vl"):  # packed patches of 24x32 and 32x24 images, M-RoPE by the model
        assert batch["image_grid_thw"].tolist() == [[1, 6, 8], [1, 8, 6]]
        assert batch["pixel_values"].shape == (2 * 48, 3 * 2 * 4 * 4)
        assert batch["mm_token_type_ids"].sum(1).tolist() == [12, 12] and "position_ids" not in batch
    if family == "mllama":  # 1x2 and 2x1 tiles; text from <|image|> on reads the image's tiles
        assert batch["aspect_ratio_ids"].tolist() == [[2], [3]]
        cross = batch["cross_attention_mask"]
        assert cross.shape == (*batch["input_ids"].shape, 1, 2)
        image = (batch["input_ids"] == hp.hf.image_token_id).int().cumsum(1).bool()
        assert torch.equal(cross[..., 0, 0].bool(), image & batch["attention_mask"].bool())
    if family == "git":  # image tokens are the model's own; its forward takes no token_type_ids
        assert "token_type_ids" not in batch and "position_ids" in batch


def test_florence2_outputs_do_not_depend_on_the_batch(base_tokenizer, images):
    # BART's learned absolute positions: left padding would shift the shorter prompt's positions
    model, hp = build(base_tokenizer, "florence2")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
        both = model(**hp(images, PROMPTS, ANSWERS)).logits[0]
        alone = model(**hp(images[:1], PROMPTS[:1], ANSWERS[:1])).logits[0]
    assert torch.allclose(both, alone, atol=1e-4)


def test_loss_ranking_and_generation(built, images):
    _, model, hp = built
    batch = hp(images, PROMPTS, ANSWERS)
    with torch.no_grad():
        loss = model(**batch, use_cache=False).loss
        assert math.isfinite(loss.item())
        # the scores rank_candidates computes: decoder-only logits[:, :-1] vs labels[:, 1:]; encoder-decoder
        # models need the labels in the forward (decoder inputs) and score logits vs labels unshifted
        labels = batch.pop("labels")
        if hp.is_encoder_decoder:
            logp = torch.log_softmax(model(**batch, labels=labels, use_cache=False).logits.float(), -1)
            target = labels
        else:  # the text's logits: GIT's also cover the image tokens it puts in front
            logits = model(**batch, use_cache=False).logits[:, -batch["input_ids"].shape[1] :]
            logp = torch.log_softmax(logits.float()[:, :-1], -1)
            target = labels[:, 1:]
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (target >= 0)
        assert torch.allclose(-picked.sum() / (target >= 0).sum(), loss, atol=1e-4)
        prompt = hp(images, PROMPTS)
        ids = model.generate(**prompt, max_new_tokens=3, do_sample=False, num_beams=1, **hp.generation_kwargs)
    new = hp.generated_tokens(ids, prompt["input_ids"])
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 3 + (1 if hp.is_encoder_decoder else 0)
    texts = hp.decode(new)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_decode_round_trips_an_answer(built):
    family, _, hp = built
    ids = torch.tensor([expected_labels(family, hp.tokenizer, a) for a in ["blue", "no"]])
    assert hp.decode(ids) == ["blue", "no"]


def test_generation_stops_where_labels_end(built):
    family, _, hp = built
    end = expected_labels(family, hp.tokenizer, "x")[-1]
    if family == "blip":  # BLIP's generate sets pad/eos (sep) itself and refuses them as arguments
        assert hp.generation_kwargs == {}
    else:
        assert end in hp.generation_kwargs["eos_token_id"]
        if hp.tokenizer.eos_token_id is not None:  # BERT tokenizers (GIT) have none: sep ends answers
            assert hp.tokenizer.eos_token_id in hp.generation_kwargs["eos_token_id"]


@pytest.mark.parametrize("family, template", [("llava", LLAVA_TEMPLATE), ("llava", None),
                                              ("idefics3", SMOLVLM_TEMPLATE), ("llava_next", LLAVA_NEXT_TEMPLATE),
                                              ("llava_onevision", ONEVISION_TEMPLATE),
                                              ("internvl", INTERNVL_TEMPLATE), ("gemma3", GEMMA3_TEMPLATE),
                                              ("qwen2_vl", QWEN2_VL_TEMPLATE), ("qwen2_5_vl", QWEN2_VL_TEMPLATE),
                                              ("mllama", MLLAMA_TEMPLATE)])
def test_multi_turn_contexts_label_every_answer(base_tokenizer, images, family, template):
    model, hp = build(base_tokenizer, family, template=template)
    contexts = [[("how many shapes?", "two"), ("big?", "yes it is")], []]
    batch = hp(images, PROMPTS, ANSWERS, contexts)
    tok = hp.tokenizer
    labelled = batch["labels"][0] != IGNORE_INDEX
    spans = torch.diff(labelled.int(), prepend=torch.zeros(1, dtype=torch.int)).eq(1).sum()
    assert int(spans) == 3  # two context answers and the final one, separately
    end = expected_labels(family, tok, "x")[-1]
    assert batch["labels"][0][labelled].tolist() == [
        *expected_labels(family, tok, "two"), *expected_labels(family, tok, "yes it is"),
        *expected_labels(family, tok, "blue")]
    text = tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text.count(tok.convert_ids_to_tokens(end)) >= 3
    image = hp.hf.image_token  # <image>, InternVL's <IMG_CONTEXT>
    assert text.index(image) < text.index("how many shapes?")  # the image is in the first user turn
    assert image not in text[text.index("big?") :]
    with torch.no_grad():
        assert math.isfinite(model(**batch, use_cache=False).loss.item())


def test_llava_without_chat_template_uses_plain_format(base_tokenizer, images):
    _, hp = build(base_tokenizer, "llava", template=None)
    batch = hp(images[:1], PROMPTS[:1])
    text = hp.tokenizer.decode(batch["input_ids"][0]).replace("<image>", "")
    assert text == f"USER: \n{PROMPTS[0]} ASSISTANT:"


def test_chat_family_without_template_raises_clearly(base_tokenizer, images):
    _, hp = build(base_tokenizer, "idefics3", template=None)
    with pytest.raises(ValueError, match="no chat template"):
        hp(images, PROMPTS)


def test_contexts_are_for_chat_families_only(built, images):
    family, _, hp = built
    contexts = [[("how many shapes?", "two")], []]
    if family in CHAT_FAMILIES:
        assert "labels" in hp(images, PROMPTS, ANSWERS, contexts)
    else:
        with pytest.raises(ValueError, match="no multi-turn format"):
            hp(images, PROMPTS, ANSWERS, contexts)


def test_unknown_family_is_rejected(base_tokenizer):
    _, hp = build(base_tokenizer, "llava")
    with pytest.raises(ValueError, match="does not know family"):
        HFProcessor(hp.hf, "ofa")


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_tuning_end_to_end(base_tokenizer, images, family):
    from mmpt import methods
    from mmpt.models import LoadedModel
    from mmpt.models.families import FAMILY_MODULES

    model, hp = build(base_tokenizer, family, seed=1)
    loaded = LoadedModel(f"{family}-hf-test", model, hp, FAMILY_MODULES[family].FAMILY)
    method = methods.apply(loaded, methods.PrefixConfig(length=2))
    trainable = {id(p) for p in method.parameters()}
    assert trainable
    optimizer = torch.optim.AdamW(method.parameters(), lr=5e-2)
    batch = hp(images, PROMPTS, ANSWERS)
    model.train()
    losses = []
    for _ in range(2):
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == (id(p) in trainable), name
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    if family == "llava":  # one AdamW step on the prefix lowers the loss (other tiny models: not asserted)
        assert losses[1] < losses[0]
    model.eval()
    with torch.no_grad():
        prompt = hp(images, PROMPTS)
        ids = model.generate(**prompt, max_new_tokens=2, do_sample=False, **hp.generation_kwargs)
    assert len(hp.decode(hp.generated_tokens(ids, prompt["input_ids"]))) == 2


# LLaVA-OneVision's, InternVL's and Qwen2-VL's processors cannot be saved without their video processor (needs
# torchvision)
@pytest.mark.parametrize(("family", "loads_as"), [("llava", "llava"), ("llava_next", "llava_next"),
                                                  ("paligemma2", "paligemma"), ("gemma3", "gemma3"),
                                                  ("mllama", "mllama"), ("git", "git")])
def test_load_pretrained_wraps_the_auto_processor(base_tokenizer, images, tmp_path, family, loads_as):
    from mmpt import models

    model, hp = build(base_tokenizer, family)
    model.save_pretrained(tmp_path)
    hp.hf.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path))
    assert loaded.family.name == loads_as  # real PaliGemma 2 checkpoints are model type 'paligemma'
    assert isinstance(loaded.processor, HFProcessor) and loaded.processor.family == loads_as
    batch = loaded.processor(images, PROMPTS, ANSWERS)
    assert torch.equal(batch["labels"], hp(images, PROMPTS, ANSWERS)["labels"])


@pytest.mark.parametrize("family", ["llava", "idefics3", "paligemma", "blip2", "llava_next", "llava_onevision",
                                    "internvl", "paligemma2", "gemma3", "qwen2_vl", "qwen2_5_vl", "mllama", "git"])
def test_forward_sees_the_positions_generation_sees(family, base_tokenizer, images):
    """With a prefix (keys without positions) the next-token scores of a plain forward over a padded batch equal
    generate()'s first-step scores: the batch's position ids count as generate() does (PaliGemma from 1)."""
    from mmpt import methods
    from mmpt.methods import PrefixConfig
    from mmpt.models import LoadedModel
    from mmpt.models.families import FAMILY_MODULES

    model, hp = build(base_tokenizer, family)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    method = methods.apply(LoadedModel(family, model, hp, FAMILY_MODULES[family].FAMILY), PrefixConfig(length=3))
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        batch = hp(images, PROMPTS)
        assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # row 0 is padded
        forward = torch.log_softmax(model(**batch, use_cache=False).logits[:, -1].float(), -1)
        generation = {k: v for k, v in batch.items() if k != "position_ids"}  # as evaluate.predict passes it
        out = model.generate(**generation, max_new_tokens=1, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, **hp.generation_kwargs)
        generated = torch.log_softmax(out.scores[0].float(), -1)
    assert torch.allclose(forward, generated, atol=1e-4), (forward - generated).abs().max()


@pytest.mark.parametrize("family", ["llava", "paligemma", "llava_next", "paligemma2", "gemma3", "qwen2_vl",
                                    "qwen2_5_vl", "mllama", "git"])
def test_answer_head_mean_pooling_ignores_padding(family, base_tokenizer, images):
    """PaliGemma hands its LM a 4D mask: the head takes the padding mask from the outer call instead."""
    from mmpt import methods
    from mmpt.methods import AnswerHeadConfig
    from mmpt.models import LoadedModel
    from mmpt.models.families import FAMILY_MODULES

    model, hp = build(base_tokenizer, family)
    head = methods.apply(LoadedModel(family, model, hp, FAMILY_MODULES[family].FAMILY),
                         AnswerHeadConfig(answers=["yes", "no"], pooling="mean"))
    with torch.no_grad():
        model(**hp(images, PROMPTS), use_cache=False)
        both = head.logits()
        model(**hp(images[:1], PROMPTS[:1]), use_cache=False)
        alone = head.logits()
    assert torch.allclose(both[0], alone[0], atol=1e-5)
