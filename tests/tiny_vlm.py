"""Tiny random vision-language checkpoints, built with mlx-vlm's own model classes.

No VLM weights ship offline, so each family here is a directory mlx-vlm's `load` (and mlxd's
vision engine) can read: config.json with a 2-layer language model and a 1–2 layer vision tower,
random float32 weights, a byte-level BPE tokenizer with the family's image tokens, the family's
image processor config and a small ChatML template that renders `{"type": "image"}` parts the way
the family's own template does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from engines.weights.gguf import build_tokenizer
from engines.weights.store import COMPLETE_MARKER
from tests.tiny import MERGES, SPECIALS, _bytes_to_unicode

FAMILY_SPECIALS = {
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "qwen2_5_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "gemma3": ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<bos>", "<pad>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"],
}
# What one `{"type": "image"}` part becomes in the family's prompt (its processor expands it).
IMAGE_TEXT = {
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "gemma3": "<start_of_image>",
    "idefics3": "<image>",
}
FAMILIES = tuple(FAMILY_SPECIALS)
QWEN = ("qwen2_vl", "qwen2_5_vl")


def chat_template(family: str) -> str:
    image = IMAGE_TEXT[family]
    return (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for part in m['content'] %}{% if part['type'] == 'image' %}" + image + "{% else %}"
        "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def _tokens(family: str) -> list[str]:
    return (
        SPECIALS
        + FAMILY_SPECIALS[family]
        + _bytes_to_unicode()
        + [m.replace(" ", "") for m in MERGES]
    )


def _token_id(family: str, token: str) -> int:
    return _tokens(family).index(token)


def _text_config(family: str, vocab: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
    }
    if family in QWEN:
        config.update(model_type=family, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    if family == "gemma3":
        config.update(
            model_type="gemma3_text",
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,
            sliding_window_pattern=2,
            mm_tokens_per_image=4,
        )
    if family == "idefics3":
        config.update(model_type="llama", head_dim=16)
    return config


def _vision_config(family: str) -> dict[str, Any]:
    if family == "qwen2_5_vl":  # window attention but in its last block
        return {
            "model_type": "qwen2_5_vl",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "in_channels": 3,
        }
    if family == "qwen2_vl":
        return {
            "model_type": "qwen2_vl",
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        }
    return {
        "model_type": "siglip_vision_model" if family == "gemma3" else "idefics3_vision",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 14,
        "image_size": 56,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
    }


def tiny_vlm_config(family: str) -> dict[str, Any]:
    vocab = len(_tokens(family))
    config: dict[str, Any] = {
        "model_type": family,
        "text_config": _text_config(family, vocab),
        "vision_config": _vision_config(family),
        "vocab_size": vocab,
        "eos_token_id": [2],
    }
    if family in QWEN:
        config.update(config["text_config"])
        config.update(
            image_token_id=_token_id(family, "<|image_pad|>"),
            video_token_id=_token_id(family, "<|video_pad|>"),
            vision_start_token_id=_token_id(family, "<|vision_start|>"),
        )
    elif family == "gemma3":
        config.update(
            image_token_index=_token_id(family, "<image_soft_token>"),
            mm_tokens_per_image=4,
            boi_token_index=_token_id(family, "<start_of_image>"),
            eoi_token_index=_token_id(family, "<end_of_image>"),
        )
    else:
        config.update(image_token_id=_token_id(family, "<image>"), scale_factor=2)
    return config


def _processor_files(family: str, directory: Path, overrides: dict[str, Any]) -> None:
    if family in QWEN:
        image = {
            "image_processor_type": "Qwen2VLImageProcessor",
            "min_pixels": 56 * 56,
            "max_pixels": 28 * 28 * 16,
            "patch_size": 14,
            "merge_size": 2,
            "temporal_patch_size": 2,
        }
        processor = {
            "processor_class": "Qwen2VLProcessor" if family == "qwen2_vl" else "Qwen2_5_VLProcessor"
        }
    elif family == "gemma3":
        image = {
            "image_processor_type": "Gemma3ImageProcessor",
            "size": {"height": 56, "width": 56},
            "do_pan_and_scan": False,
        }
        processor = {"processor_class": "Gemma3Processor", "image_seq_length": 4}
    else:
        image = {
            "image_processor_type": "Idefics3ImageProcessor",
            "size": {"longest_edge": 112},
            "max_image_size": {"longest_edge": 56},
            "do_image_splitting": False,
        }
        processor = {"processor_class": "Idefics3Processor", "image_seq_len": 4}
    image.update(overrides)
    (directory / "preprocessor_config.json").write_text(json.dumps(image))
    (directory / "processor_config.json").write_text(json.dumps(processor))


def _printable(token: str) -> bool:
    return not token.startswith("<") and all(33 <= ord(c) <= 126 for c in token)


def save_tiny_vlm(
    family: str,
    directory: Path,
    seed: int = 0,
    shape: dict[str, dict[str, Any]] | None = None,
    dtype: mx.Dtype = mx.float32,
    never_stop: bool = False,
) -> Path:
    """A tiny random checkpoint of `family` at `directory` (created). `shape` overrides parts
    of the config ("text", "vision", "processor" — bench/vision.py builds real-sized models so);
    a text vocabulary larger than the tokenizer's gets rows it never produces. `never_stop`
    (benchmarks): only tokens of printable ASCII keep their embedding rows; the others (EOS,
    special tokens, other bytes, ids past the tokenizer) are zero, so with tied embeddings their
    logits are 0 and greedy decoding (of random logits whose maximum is positive) never picks
    them: every run generates exactly max_tokens tokens, each one visible text."""
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_vlm_config(family)
    shape = shape or {}
    config["text_config"].update(shape.get("text", {}))
    config["vision_config"].update(shape.get("vision", {}))
    if family in QWEN:
        config.update(config["text_config"])
    config["vocab_size"] = config["text_config"]["vocab_size"]
    module, _ = get_model_and_args(dict(config))
    model_config = module.ModelConfig.from_dict(json.loads(json.dumps(config)))
    model_config = update_module_configs(model_config, module, config, ["text", "vision"])
    mx.random.seed(seed)
    model = module.Model(model_config)
    weights = dict(tree_flatten(model.parameters()))
    for name in [k for k in weights if k.endswith("mm_input_projection_weight")]:
        # mlx-vlm starts Gemma 3's projector at all ones: summed over channels, the tower's
        # zero-mean (layer-normed) features would come out as rounding noise, and the image
        # would not count in the output at all.
        rows = weights[name].shape[0]
        weights[name] = mx.random.normal(weights[name].shape) / rows**0.5
    weights = {k: v.astype(dtype) for k, v in weights.items()}
    if never_stop:
        for name in [k for k in weights if k.endswith("embed_tokens.weight")]:
            visible = [i for i, token in enumerate(_tokens(family)) if _printable(token)]
            keep = mx.zeros((weights[name].shape[0], 1), mx.bool_)
            keep[mx.array(visible)] = True
            weights[name] = mx.where(keep, weights[name], 0).astype(dtype)
    mx.save_safetensors(str(directory / "model.safetensors"), weights)
    (directory / "config.json").write_text(json.dumps(config))
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": _tokens(family),
        "tokenizer.ggml.token_type": [3] * (len(SPECIALS) + len(FAMILY_SPECIALS[family]))
        + [1] * (len(_tokens(family)) - len(SPECIALS) - len(FAMILY_SPECIALS[family])),
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": chat_template(family),
    }
    tokenizer, tokenizer_config = build_tokenizer(metadata, 4096)
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config["pad_token"] = "<|endoftext|>"
    if family == "gemma3":  # Gemma3Processor reads these off the tokenizer
        tokenizer_config["extra_special_tokens"] = {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (directory / "chat_template.jinja").write_text(chat_template(family))
    _processor_files(family, directory, shape.get("processor", {}))
    (directory / COMPLETE_MARKER).write_text("tiny test model\n")
    return directory
