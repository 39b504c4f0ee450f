"""VisionScheduler: engines/llm's continuous-batching scheduler, with image rows.

A request with images arrives already processed (`VisionPrompt`, registered by uid after
`insert`); its request's `prompt_tokens` are the prompt's cache key (engines/vlm/prompt.py), so
admission, the prefix cache and usage all count the expanded prompt, image tokens included.
When it starts prefilling, the prefix cache has been looked up with that key; what is left of
the prompt is fed with its real token ids, and — only where image tokens are left to feed —
with the prompt's input embeddings (the vision tower runs then, or its cached output is used).
Qwen families also get the prompt's mRoPE position ids and its cache the prompt's position
delta (engines/vlm/text_model.py). Such a prefill runs alone (`Prefill.shareable`); its row then
decodes in the same batch as every other row. Text-only requests are the text scheduler's own.

Invariant: engine thread only. A registered prompt is dropped when its request starts
prefilling or leaves while waiting.
"""

from __future__ import annotations

from typing import Any

from engines.llm.prefill import Prefill
from engines.llm.scheduler import Scheduler
from engines.vlm.prompt import VisionCache, VisionPrompt, embeddings, rope_positions
from engines.vlm.text_model import TextModel, set_position_delta


class VisionScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vlm: Any = None  # mlx-vlm's whole model (vision tower, projector, language model)
        self.vision_cache = VisionCache()
        self.prompts: dict[int, VisionPrompt] = {}

    def register(self, uid: int, prompt: VisionPrompt) -> None:
        """The processed prompt of the request just inserted as `uid`."""
        self.prompts[uid] = prompt

    def step(self) -> float:
        wait_s = super().step()
        if self.prompts:  # requests that left while waiting (cancelled) drop theirs
            waiting = {w.uid for w in self._waiting}
            for uid in [uid for uid in self.prompts if uid not in waiting]:
                del self.prompts[uid]
        return wait_s

    def fail_all(self, error: Exception) -> None:
        super().fail_all(error)
        self.prompts.clear()

    def _start_prefill(self, waiting: Any) -> Prefill:
        prefill = super()._start_prefill(waiting)
        prompt = self.prompts.pop(waiting.uid, None)
        model: TextModel = self.model
        if prompt is None:
            if model.mrope:  # a cache reused from an image prompt keeps that prompt's delta
                set_position_delta(prefill.cache, 0)
            return prefill
        start = prefill.cached_tokens
        prefill.to_prefill = prompt.ids[start:]
        if prompt.image_positions and prompt.image_positions[-1] >= start:
            prefill.embeddings = embeddings(self.vlm, prompt, self.vision_cache)[:, start:]
        if model.mrope:
            positions, delta = rope_positions(self.vlm, prompt)
            prefill.positions = positions[..., start:]
            set_position_delta(prefill.cache, delta)
        return prefill
