"""Chat templates: the model's own Jinja template, via its tokenizer.

OpenAI content may be a string, null, or a list of parts; many templates (SmolLM2's among them)
concatenate `content` as a string, so content is normalised to plain text before rendering.
"""

from __future__ import annotations

from typing import Any

from engines.errors import InvalidRequest


def content_to_text(content: Any) -> str:
    """Flatten OpenAI message content (str | None | list of parts) into text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        str(part.get("text", "")) for part in content if part.get("type") in ("text", "input_text")
    )


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The prompt text for `messages`, ending with the assistant's turn opened."""
    normalised = [
        {**message, "content": content_to_text(message.get("content"))} for message in messages
    ]
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequest("this model has no chat template; use /v1/completions", "messages")
    try:
        return str(
            tokenizer.apply_chat_template(normalised, tokenize=False, add_generation_prompt=True)
        )
    except Exception as exc:  # the template's own `raise_exception`, or a Jinja error
        raise InvalidRequest(
            f"the model's chat template rejected the messages: {exc}", "messages"
        ) from exc
