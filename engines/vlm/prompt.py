"""A chat prompt with images, made ready for the shared text batch (engine thread only).

`process` runs the model's own processor (mlx-vlm's `prepare_inputs`: image-token expansion,
pixel values) over the prompt text and images. The result, `VisionPrompt`, has the expanded
token ids and `key`: the same ids with each image's tokens replaced by a mark of that image's
digest (a negative number, never a token id). The key is what the scheduler and its prefix
cache see as the prompt: two prompts share a cached prefix only where their tokens and the
images at those places are the same, so a follow-up turn resending the same screenshot
reuses the cached prefix through the image.

Each contiguous run of image tokens is one image when the runs are as many as the images (Qwen,
Gemma 3, Idefics3 without splitting); otherwise (an image split into tiles) every image token is
marked with the digest of all the prompt's images together: never a wrong reuse, less reuse.

`embeddings` merges the images' features into the prompt's embeddings with the model's own
`get_input_embeddings`; the vision tower's output is cached by image digest (`VisionCache`,
`image_features`) for the families whose tower mlxd can call alone (`image_encoder`).
`rope_positions` are the prompt's mRoPE position ids and delta (Qwen families).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx

from engines.readback import host_list
from engines.types import GenerationRequest
from engines.vlm.generation import image_encoder


class VisionCache:
    """Vision-tower outputs keyed by image digests, least recently used evicted past `entries`
    or `max_bytes` (a large model's features for a large image take tens of MB)."""

    def __init__(self, entries: int = 16, max_bytes: int = 512 * 2**20) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._features: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, ...]) -> Any:
        features = self._features.get(key)
        if features is None:
            self.misses += 1
            return None
        self.hits += 1
        self._features.move_to_end(key)
        return features

    def put(self, key: tuple[str, ...], features: Any) -> None:
        if key in self._features:
            self.nbytes -= _nbytes(self._features.pop(key))
        self._features[key] = features
        self.nbytes += _nbytes(features)
        while self._features and (
            len(self._features) > self.entries or self.nbytes > self.max_bytes
        ):
            _, evicted = self._features.popitem(last=False)
            self.nbytes -= _nbytes(evicted)


def _nbytes(features: Any) -> int:
    """Bytes of an array, or of the arrays of a tuple / list of them (some towers return
    several), so the byte bound holds whatever a family's tower hands back."""
    if isinstance(features, (tuple, list)):
        return sum(_nbytes(part) for part in features)
    return int(getattr(features, "nbytes", 0))


@dataclass
class VisionPrompt:
    ids: list[int]  # the expanded prompt: image tokens included
    key: list[int]  # ids with image tokens marked by their image's digest
    image_positions: list[int]  # where the image tokens are, ascending
    pixel_values: Any
    extra: dict[str, Any]  # the processor's other outputs (grid sizes, pixel masks)
    digests: tuple[str, ...]


def image_token_id(config: Any) -> int | None:
    token = getattr(config, "image_token_index", None)
    return getattr(config, "image_token_id", None) if token is None else int(token)


def process(
    model: Any,
    processor: Any,
    request: GenerationRequest,
    decode_prompt: Callable[[list[int]], str],
) -> VisionPrompt:
    """The request's prompt through the model's processor, with its cache key."""
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens
    from PIL import Image

    images = [Image.fromarray(image.pixels) for image in request.images]
    image_token = image_token_id(model.config)
    inputs = prepare_inputs(
        processor,
        images=images,
        prompts=decode_prompt(request.prompt_tokens),
        image_token_index=image_token,
        add_special_tokens=should_add_special_tokens(model.config.model_type, processor),
    )
    ids = [int(t) for t in inputs["input_ids"].flatten().tolist()]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values")}
    digests = tuple(image.digest for image in request.images)
    positions = [i for i, token in enumerate(ids) if token == image_token]
    return VisionPrompt(
        ids,
        _key(ids, positions, digests),
        positions,
        inputs.get("pixel_values"),
        extra,
        digests,
    )


def _mark(text: str) -> int:
    """A negative number for `text` (a token id never is one)."""
    return -1 - int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def _key(ids: list[int], positions: list[int], digests: tuple[str, ...]) -> list[int]:
    runs: list[list[int]] = []
    for position in positions:
        if runs and runs[-1][-1] == position - 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    if len(runs) == len(digests):
        marks = [_mark(digest) for digest in digests]
    else:
        marks = [_mark("+".join(digests))] * len(runs)
    key = list(ids)
    for run, mark in zip(runs, marks, strict=True):
        for position in run:
            key[position] = mark
    return key


def embeddings(model: Any, prompt: VisionPrompt, cache: VisionCache) -> mx.array:
    """(1, len(prompt.ids), hidden): the prompt's input embeddings, images merged in."""
    extra = {k: v for k, v in prompt.extra.items() if k != "attention_mask"}
    features = image_features(model, prompt, cache)
    if features is not None:
        extra["cached_image_features"] = features
    output = model.get_input_embeddings(
        mx.array([prompt.ids]),
        prompt.pixel_values,
        mask=prompt.extra.get("attention_mask"),
        **extra,
    )
    return output.inputs_embeds


def image_features(model: Any, prompt: VisionPrompt, cache: VisionCache) -> Any:
    """The vision tower's output for the prompt's images as `get_input_embeddings` takes it
    back (`cached_image_features`), or None where mlxd cannot call the family's tower alone.

    Cached per image (key: its digest) where the family's pixel values split by image (Qwen:
    patch rows by each image's grid; Gemma 3: one row per image), so a turn adding a screenshot
    encodes only the new one; otherwise per set of images (key: all their digests)."""
    encoder = image_encoder(model)
    pixels = prompt.pixel_values
    if encoder is None or pixels is None:
        return None
    family = model.config.model_type
    grids = prompt.extra.get("image_grid_thw")
    if family in ("qwen2_vl", "qwen2_5_vl") and grids is not None:
        sizes = [t * h * w for t, h, w in host_list(grids)]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        parts = [
            (pixels[start : start + size], {"image_grid_thw": grids[i : i + 1]})
            for i, (start, size) in enumerate(zip(starts, sizes, strict=True))
        ]
    elif family == "gemma3" and pixels.shape[0] == len(prompt.digests):
        parts = [(pixels[i : i + 1], {}) for i in range(len(prompt.digests))]
    else:
        return _cached(cache, prompt.digests, lambda: encoder(pixels, prompt.extra))
    if len(parts) != len(prompt.digests):  # not one part per image: keep them together
        return _cached(cache, prompt.digests, lambda: encoder(pixels, prompt.extra))
    features = []
    for digest, (part, grid) in zip(prompt.digests, parts, strict=True):
        features.append(_cached(cache, (digest,), partial(encoder, part, grid)))
    return features[0] if len(features) == 1 else mx.concatenate(features, axis=0)


def _cached(cache: VisionCache, key: tuple[str, ...], encode: Callable[[], Any]) -> Any:
    features = cache.get(key)
    if features is None:
        features = encode()
        mx.eval(features)
        cache.put(key, features)
    return features


def rope_positions(model: Any, prompt: VisionPrompt) -> tuple[mx.array, int]:
    """The prompt's mRoPE position ids (3, 1, length) and the delta its text runs at after."""
    positions, deltas = model.language_model.get_rope_index(
        mx.array([prompt.ids]), prompt.extra.get("image_grid_thw")
    )
    return positions, int(host_list(mx.array(deltas).reshape(-1))[0])
