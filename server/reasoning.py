"""Reasoning blocks: `<think>…</think>` split from the answer, in any chunking.

Reasoning models (Qwen3, DeepSeek-R1 distillations, …) write their thoughts between think tags
before the answer; some chat templates already open `<think>` at the end of the prompt, so the
output starts inside the block. Invariants: the tags never reach either field; text that might
be the start of a tag is held back until it is known not to be; feeding the same output in any
chunking gives the same reasoning and the same content.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.tool_calls import partial_suffix

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    def __init__(self, opened_by_prompt: bool) -> None:
        self._state = "thinking" if opened_by_prompt else "start"
        self._buffer = ""

    def feed(self, text: str) -> ReasoningDelta:
        self._buffer += text
        out = ReasoningDelta()
        while True:
            if self._state == "start":  # only leading whitespace may come before <think>
                stripped = self._buffer.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._buffer = stripped[len(THINK_OPEN) :]
                    self._state = "thinking"
                    continue
                if THINK_OPEN.startswith(stripped):  # still ambiguous (or empty)
                    return out
                self._state = "answer"
            if self._state == "thinking":
                end = self._buffer.find(THINK_CLOSE)
                if end < 0:
                    keep = partial_suffix(self._buffer, THINK_CLOSE)
                    out.reasoning += self._buffer[: len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return out
                out.reasoning += self._buffer[:end]
                self._buffer = self._buffer[end + len(THINK_CLOSE) :]
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
