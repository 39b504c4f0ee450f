"""One request's prompt through a vision-language model: processor, vision tower, decoding.

Runs on the engine thread only (every call here makes MLX arrays). The steps are mlx-vlm's own
(`prepare_inputs`, `encode_image`, `generate_step`), in the order its `stream_generate` runs
them, so mlxd's greedy output for a prompt with images is mlx-vlm's (tests/engines/test_vlm.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from engines.types import GenerationRequest


class FeatureCache(Protocol):
    def get(self, key: tuple[str, ...]) -> Any: ...

    def put(self, key: tuple[str, ...], features: Any) -> None: ...


def start_generation(
    model: Any,
    processor: Any,
    cache: FeatureCache,
    request: GenerationRequest,
    decode_prompt: Callable[[list[int]], str],
) -> tuple[list[int], Iterator[tuple[Any, Any]]]:
    """The prompt's ids after image-token expansion, and its tokens as mlx-vlm samples them."""
    import mlx.core as mx
    from mlx_vlm.generate.ar import generate_step
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens
    from PIL import Image

    images = [Image.fromarray(image.pixels) for image in request.images]
    inputs = prepare_inputs(
        processor,
        images=images or None,
        prompts=decode_prompt(request.prompt_tokens),
        image_token_index=getattr(model.config, "image_token_index", None),
        add_special_tokens=should_add_special_tokens(model.config.model_type, processor),
    )
    input_ids, pixel_values = inputs["input_ids"], inputs.get("pixel_values")
    extra = {
        key: value
        for key, value in inputs.items()
        if key not in ("input_ids", "pixel_values", "attention_mask")
    }
    encoder = image_encoder(model)
    if images and pixel_values is not None and encoder is not None:
        key = tuple(image.digest for image in request.images)
        features = cache.get(key)
        if features is None:
            features = encoder(pixel_values, extra)
            mx.eval(features)
            cache.put(key, features)
        extra["cached_image_features"] = features
    tokens = generate_step(
        input_ids,
        model,
        pixel_values,
        inputs.get("attention_mask"),
        max_tokens=request.max_tokens,
        **_sampling(request),
        **extra,
    )
    return [int(t) for t in input_ids.flatten().tolist()], tokens


def image_encoder(model: Any) -> Callable[[Any, dict[str, Any]], Any] | None:
    """The vision tower + projector of `model` as its `get_input_embeddings` runs them (what it
    accepts back as `cached_image_features`), or None: such a family re-encodes every request."""
    if hasattr(model, "encode_image"):
        return lambda pixels, _: model.encode_image(pixels)
    family = model.config.model_type
    if family in ("qwen2_vl", "qwen2_5_vl"):
        tower = model.vision_tower

        def qwen(pixels: Any, extra: dict[str, Any]) -> Any:
            dtype = tower.patch_embed.proj.weight.dtype
            return tower(pixels.astype(dtype), extra["image_grid_thw"], output_hidden_states=False)

        return qwen
    if family == "gemma3":

        def gemma(pixels: Any, _: dict[str, Any]) -> Any:
            dtype = model.language_model.model.embed_tokens.weight.dtype
            hidden, _, _ = model.vision_tower(
                pixels.transpose(0, 2, 3, 1).astype(dtype), output_hidden_states=True
            )
            return model.multi_modal_projector(hidden)

        return gemma
    return None


def _sampling(request: GenerationRequest) -> dict[str, Any]:
    """mlxd's sampling parameters as generate_step's (1.0 / 0 mean off in both)."""
    sampling = request.sampling
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "seed": sampling.seed,
        "repetition_penalty": None
        if sampling.repetition_penalty == 1.0
        else sampling.repetition_penalty,
        "presence_penalty": sampling.presence_penalty or None,
        "frequency_penalty": sampling.frequency_penalty or None,
        "logit_bias": dict(sampling.logit_bias) or None,
    }
