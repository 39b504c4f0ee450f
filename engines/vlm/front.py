"""VisionFront: the event-loop half of a vision-language engine (no MLX).

It is a `ChatFront` (tokenizer, fit checks, counts) whose chat rendering keeps image parts:
`{"type": "image"}` parts reach the chat template as they are, and the family's template writes
its image placeholder there (the processor expands it on the engine thread); everything else is
rendered as on the text path (engines/llm/templates.py): system turns after the first message
placed, tool calls' arguments as objects for a template with tools, and for one without, the
generic tool prompt (tool results as `<tool_response>` user turns, an image in one kept
there). The token ids returned count each image as its placeholder only; the engine reports the
expanded count in usage and refuses, with an in-stream error, a prompt whose images overflow the
context.

What the one-at-a-time path (`SoloVLMEngine`) does not do is refused here, before anything is
queued: n > 1, logprobs, grammars (constrained output), prompt scoring. The batched
`VLMEngine` does them all but prompt scoring with images.
"""

from __future__ import annotations

from typing import Any

from engines.errors import InvalidRequest
from engines.llm.front import ChatFront
from engines.types import GenerationRequest


class VisionFront(ChatFront):
    # The prompt is rendered as for a text model (later system turns placed, tools in the
    # template's own way or, where it has none, the generic tool prompt), image parts kept.
    keeps_images = True

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Render the chat template with image parts kept and tokenize; pure Python (no MLX),
        any thread. Special-token strings in the messages are text (as on text models) where
        the prompt's ids are what the model reads; where the engine's processor tokenizes the
        prompt's text again (`reprocessed`) they cannot be kept as text, and are left as the
        template wrote them."""
        if self.reprocessed(messages):
            return list(
                self.tokenizer.encode(
                    self.render(messages, tools, template_kwargs), add_special_tokens=False
                )
            )
        return super().encode_chat(messages, tools, template_kwargs)

    def reprocessed(self, messages: list[dict[str, Any]]) -> bool:
        """Whether the engine gives this conversation's prompt text to the model's processor
        (which parses special-token strings again): always, one request at a time
        (`SoloVLMEngine`); the batched engine says where it does not."""
        return True

    def check_grammar(self, grammar: str, param: str) -> None:
        raise InvalidRequest(
            "constrained output is not supported on vision-language models yet", param=param
        )

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse what the vision path cannot serve (InvalidRequest naming the parameter)."""
        refusals = {
            "prompt": (not request.prompt_tokens, "the prompt is empty"),
            "n": (request.n != 1, "n > 1 is not supported on vision-language models yet"),
            "logprobs": (
                request.logprobs is not None or request.prompt_logprobs,
                "logprobs are not supported on vision-language models yet",
            ),
            "response_format": (
                request.grammar is not None,
                "constrained output is not supported on vision-language models yet",
            ),
        }
        for param, (refused, message) in refusals.items():
            if refused:
                raise InvalidRequest(message, param=param)
