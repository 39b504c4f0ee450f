"""VLMEngine: a vision-language chat model (mlx-vlm) in mlxd's shared continuous batch.

A chat checkpoint with a vision tower is served as the "chat" kind (engines/kinds.py calls
`vision_engine`): the same routes and `GenerationRequest`, its images decoded at the edge
(`ImageInput`: pixels + digest). For the families in `BATCHED_FAMILIES` this engine is
engines/llm's `LLMEngine` on mlx-vlm's language model (`TextModel`) with `VisionScheduler`:

- A text-only request is a text row, as on any chat model.
- A request with images is processed on the engine thread when it arrives (`handle`: the
  model's processor expands the image tokens; usage and admission count them); when it is
  admitted, its prompt is prefilled from input embeddings (vision tower + merge, the tower's
  output cached by image digests), resuming from the prefix cache where its tokens and images
  were seen before (`cached_tokens`); then its row decodes in the same batch as the text rows.

Other families (their language model takes more than input embeddings, or is not checked
here) are served one request at a time by `SoloVLMEngine` (engines/vlm/solo.py), with a log
line; never refused.

Image rows take n > 1, logprobs and grammars like text rows (their samplers see the prompt's
real token ids). What the batched path does not carry yet: quantized KV caches (`kv_bits`),
speculative decoding and the prefix cache's disk spill are turned off for vision models (a log
line says so); prompt scoring of a prompt with images is refused (only /v1/completions scores
prompts, and it takes no images).

Invariants: every MLX call is on the engine thread; only plain values cross threads (the
event loop renders with its own tokenizer copy; the processor's stays on the engine thread).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from engines.bridge import RequestStream
from engines.errors import ContextTooLong, InvalidRequest, KVBudgetExceeded
from engines.llm.caches import CacheProfile
from engines.llm.engine import LLMEngine
from engines.llm.front import ChatFront
from engines.llm.sampling import TokenSampler
from engines.llm.scheduler import Scheduler
from engines.llm.templates import supports_tools, text_only
from engines.types import ChatLimits, ErrorEvent, GenerationRequest
from engines.vlm.front import VisionFront
from engines.vlm.prompt import VisionCache, image_token_id, process
from engines.vlm.scheduler import VisionScheduler
from engines.vlm.solo import SoloVLMEngine
from engines.vlm.text_model import TextModel

logger = logging.getLogger(__name__)

# Families whose language model is fed exactly by input embeddings (+ mRoPE position ids for
# the Qwen families) and checked against mlx-vlm's generate in tests/engines/test_vlm.py (smolvlm is
# idefics3's model).
BATCHED_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl", "gemma3", "idefics3", "smolvlm"})


def vision_engine(
    name: str, path: Path, limits: ChatLimits | None = None
) -> VLMEngine | SoloVLMEngine:
    """The engine for a vision-language checkpoint: batched where its family allows."""
    try:
        family = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        family = None  # the engine's load reports the unreadable config
    if family in BATCHED_FAMILIES:
        return VLMEngine(name, path, limits)
    logger.info(
        "engine %s: vision family %r is not batched by mlxd; serving it one request at a time",
        name,
        family,
    )
    return SoloVLMEngine(name, path, limits)


class VLMEngine(LLMEngine, VisionFront):
    scheduler_class = VisionScheduler

    def __init__(self, name: str, path: Path, limits: ChatLimits | None = None) -> None:
        limits = limits or ChatLimits()
        off = {"kv_bits": None, "speculative": None, "prefix_disk_dir": None}
        dropped = [key for key in off if getattr(limits, key)]
        if dropped:
            logger.info("engine %s: %s not supported on vision models; off", name, dropped)
        LLMEngine.__init__(self, name, path, limits=dataclasses.replace(limits, **off))  # type: ignore[arg-type]
        self.vlm: Any = None
        self.processor: Any = None
        self.image_token: int | None = None

    # -- event loop side ---------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestStream:
        if request.images and request.prompt_logprobs:
            raise InvalidRequest("prompt scoring does not take images", param="logprobs")
        return super().submit(request)

    def check_grammar(self, grammar: str, param: str) -> None:
        """Grammars are enforced here as on text models (not refused, as on SoloVLMEngine)."""
        ChatFront.check_grammar(self, grammar, param)

    def reprocessed(self, messages: list[dict[str, Any]]) -> bool:
        """Only a prompt with images goes through the processor (`handle`); a text-only one is
        a text row on the ids the front encoded."""
        return not all(text_only(message.get("content")) for message in messages)

    @property
    def vision_cache(self) -> VisionCache | None:
        scheduler = self.scheduler
        return scheduler.vision_cache if isinstance(scheduler, VisionScheduler) else None

    # -- engine thread -----------------------------------------------------------------------

    def load_checkpoint(self) -> tuple[Any, Any, dict[str, Any]]:
        from mlx_lm.tokenizer_utils import TokenizerWrapper
        from mlx_vlm.utils import load

        try:
            self.vlm, self.processor = load(str(self.path))
        except (ValueError, FileNotFoundError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"mlx-vlm cannot load {self.path}: {detail}") from exc
        own = self._processor_tokenizer()
        eos = self.vlm.config.eos_token_id or getattr(own, "eos_token_id", None) or []
        eos = eos if isinstance(eos, list) else [eos]
        # The front's tokenizer is a copy: the processor's stays on this thread.
        tokenizer = TokenizerWrapper(copy.deepcopy(own), eos_token_ids=[int(t) for t in eos])
        text = self.vlm.config.text_config
        config = {
            "vocab_size": getattr(text, "vocab_size", None),
            "max_position_embeddings": getattr(text, "max_position_embeddings", None),
        }
        self.image_token = image_token_id(self.vlm.config)
        model = TextModel(self.vlm)
        logger.info(
            "engine %s: vision family %s; image and text rows decode in one batch%s",
            self.name,
            model.family,
            " (mRoPE positions per row)" if model.mrope else "",
        )
        return model, tokenizer, config

    def _processor_tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def _read_tokenizer(self, tokenizer: Any, config: dict[str, Any]) -> None:
        super()._read_tokenizer(tokenizer, config)
        assert self.info is not None
        self.info = dataclasses.replace(
            self.info, vision=True, tool_images=not supports_tools(tokenizer)
        )

    def _new_scheduler(self, model: Any, tokenizer: Any, profile: CacheProfile) -> Scheduler:
        scheduler = super()._new_scheduler(model, tokenizer, profile)
        assert isinstance(scheduler, VisionScheduler)
        scheduler.vlm = self.vlm
        return scheduler

    def _new_sampler(self, request: GenerationRequest) -> TokenSampler:
        """The text scheduler's sampler, over the prompt's real ids (penalties see the image
        tokens as the model's image token, not as the cache key's marks)."""
        if self.image_token is not None and any(t < 0 for t in request.prompt_tokens):
            real = [t if t >= 0 else self.image_token for t in request.prompt_tokens]
            request = dataclasses.replace(request, prompt_tokens=real)
        return super()._new_sampler(request)

    def unload(self) -> None:
        super().unload()
        self.vlm = self.processor = None

    def handle(self, message: Any) -> None:
        request, stream = message
        if not request.images:
            super().handle(message)
            return
        scheduler = self.scheduler
        assert isinstance(scheduler, VisionScheduler)
        try:
            prompt = process(self.vlm, self.processor, request, self._prompt_text)
            assert self.info is not None
            request = request.within(self.info.context_length, len(prompt.ids))
            self._check_prompt(prompt.ids, prompt.image_positions, request)
        except (InvalidRequest, ContextTooLong, KVBudgetExceeded) as exc:
            self.release(-request.n, -1)
            stream.push(ErrorEvent(exc))
            return
        except Exception as exc:  # the processor's own refusal of these images
            logger.info("request %s: the processor failed: %r", request.request_id, exc)
            self.release(-request.n, -1)
            error = f"the model's processor cannot take these images: {exc}"
            stream.push(ErrorEvent(InvalidRequest(error, param="messages")))
            return
        expanded = dataclasses.replace(request, prompt_tokens=prompt.key, images=())
        scheduler.register(scheduler.insert(expanded, stream), prompt)

    def _check_prompt(self, ids: list[int], images: list[int], request: GenerationRequest) -> None:
        assert self.info is not None
        context = self.info.context_length
        if len(ids) + request.max_tokens > context:
            raise ContextTooLong(
                f"This model's maximum context length is {context} tokens; the prompt with its "
                f"images is {len(ids)} tokens and max_tokens is {request.max_tokens}",
                param="messages",
            )
        # Admission (ChatFront.admit) saw one placeholder per image: project the expanded
        # prompt, or a lone request with large images would pass the KV budget unchecked.
        tokens = len(ids) + request.max_tokens
        need = self.kv_bytes(request.n, tokens)
        if need > self.kv_budget_bytes:
            raise KVBudgetExceeded(
                f"This request needs {need / 2**20:.0f} MiB of KV cache ({request.n} × "
                f"{tokens} tokens, its images included), more than the engine's budget of "
                f"{self.kv_budget_bytes / 2**20:.0f} MiB; lower max_tokens or n, or send fewer "
                "or smaller images",
                param="messages",
            )
        if images and images[-1] == len(ids) - 1:
            # The last prompt token is fed as a token (the scheduler's first decode pass).
            raise InvalidRequest(
                "a prompt that ends with an image is not supported; add text after it",
                param="messages",
            )

    def _prompt_text(self, tokens: list[int]) -> str:
        """The prompt text back from its ids (special tokens kept), with this thread's
        tokenizer: the processor's input."""
        return str(
            self._processor_tokenizer().decode(
                tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )
