"""Reasoning blocks: `<think>…</think>` (or the family's own tags, engines/llm/chat_formats.py
`think_tags`: LongCat's `<longcat_think>`, `<|think:start|>`, Gemma 4's `<|channel>thought` …
`<channel|>`) split from the answer, in any chunking. gpt-oss's harmony channels are read by
server/tool_formats/harmony.py instead.

Reasoning models (Qwen3, DeepSeek-R1 distillations, …) write their thoughts between think tags
before the answer; some chat templates already open the block at the end of the prompt, so the
output starts inside it (`opened_in_prompt`: mlx-lm's rule). Invariants: the tags never reach
either field; text that might be the start of a tag is held back until it is known not to be;
feeding the same output in any chunking gives the same reasoning and the same content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.tool_calls import partial_suffix

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
NO_THINKING_EFFORTS = frozenset({"none", "minimal"})


def thinking_kwargs(template_kwargs: dict[str, Any], thinks: bool) -> dict[str, Any]:
    """The chat template's variables, with a `reasoning_effort` also set as the thinking switch
    of a model that thinks in tags (`thinks`): `enable_thinking` false for "none" or "minimal",
    true for the others, unless the request set it. Without an effort the template's own
    default stands (mlx-lm sets `enable_thinking` true there; the families' templates that
    read it default to true too)."""
    effort = template_kwargs.get("reasoning_effort")
    if not thinks or effort is None or "enable_thinking" in template_kwargs:
        return template_kwargs
    return {**template_kwargs, "enable_thinking": effort not in NO_THINKING_EFFORTS}


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


def opened_in_prompt(prompt_tail: str, tags: tuple[str, str]) -> bool:
    """Whether a prompt ending in `prompt_tail` leaves the block open: its last open tag comes
    after its last close tag (a template that opens it for the model; one that writes an empty
    block to turn thinking off does not)."""
    return prompt_tail.rfind(tags[0]) > prompt_tail.rfind(tags[1])


class ReasoningParser:
    def __init__(
        self, opened_by_prompt: bool, tags: tuple[str, str] = (THINK_OPEN, THINK_CLOSE)
    ) -> None:
        self._open, self._close = tags
        self._state = "thinking" if opened_by_prompt else "start"
        self._buffer = ""

    def feed(self, text: str) -> ReasoningDelta:
        self._buffer += text
        out = ReasoningDelta()
        while True:
            if self._state == "start":  # only leading whitespace may come before <think>
                stripped = self._buffer.lstrip()
                if stripped.startswith(self._open):
                    self._buffer = stripped[len(self._open) :]
                    self._state = "thinking"
                    continue
                if self._open.startswith(stripped):  # still ambiguous (or empty)
                    return out
                self._state = "answer"
            if self._state == "thinking":
                end = self._buffer.find(self._close)
                if end < 0:
                    keep = partial_suffix(self._buffer, self._close)
                    out.reasoning += self._buffer[: len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return out
                out.reasoning += self._buffer[:end]
                self._buffer = self._buffer[end + len(self._close) :]
                self._state = "answer_start"
            if self._state == "answer_start":  # the blank lines after </think> are no content
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    return out
                self._state = "answer"
            out.content += self._buffer
            self._buffer = ""
            return out

    def finish(self) -> ReasoningDelta:
        """End of output: what was held back goes where it was heading."""
        rest, self._buffer = self._buffer, ""
        if self._state == "thinking":
            return ReasoningDelta(reasoning=rest)
        return ReasoningDelta(content=rest)
