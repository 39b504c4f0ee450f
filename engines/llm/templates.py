"""Chat templates: the model's own Jinja template, via its tokenizer.

OpenAI content may be a string, null, or a list of parts; many templates (SmolLM2's among them)
concatenate `content` as a string, so content is normalised to plain text before rendering.

Tools: a template that mentions `tools` renders them (and assistant `tool_calls`, with arguments
as objects, and `tool` results) itself. For one that does not, the tools are described in a
system message (engines/llm/tools.py's generic prompt), earlier calls are written back as the
`<tool_call>` markup that prompt asks for, and tool results become `<tool_response>` user turns.
"""

from __future__ import annotations

import json
from typing import Any

from engines.errors import InvalidRequest, NoChatTemplate
from engines.llm.tools import CLOSE, OPEN, generic_tool_prompt


def content_to_text(content: Any) -> str:
    """Flatten OpenAI message content (str | None | list of parts) into text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        str(part.get("text", "")) for part in content if part.get("type") in ("text", "input_text")
    )


def supports_tools(tokenizer: Any) -> bool:
    return "tools" in str(getattr(tokenizer, "chat_template", None) or "")


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _native_tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {
                **message,
                "tool_calls": [
                    {
                        **call,
                        "function": {
                            **call.get("function", {}),
                            "arguments": _arguments_object(
                                call.get("function", {}).get("arguments")
                            ),
                        },
                    }
                    for call in calls
                ],
            }
        out.append(message)
    return out


def _generic_tool_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(
                f"{OPEN}\n"
                + json.dumps(
                    {
                        "name": call.get("function", {}).get("name"),
                        "arguments": _arguments_object(call.get("function", {}).get("arguments")),
                    }
                )
                + f"\n{CLOSE}"
                for call in message["tool_calls"]
            )
            out.append({"role": "assistant", "content": (content + "\n" + calls).strip()})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        prompt = generic_tool_prompt(tools)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {"role": out[0]["role"], "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt text for `messages` (and `tools`), ending with the assistant's turn opened.
    `template_kwargs` are extra template variables (`enable_thinking`, `reasoning_effort`)."""
    normalised = [
        {**message, "content": content_to_text(message.get("content"))} for message in messages
    ]
    if getattr(tokenizer, "chat_template", None) is None:
        raise NoChatTemplate()
    extra: dict[str, Any] = {
        key: value
        for key, value in (template_kwargs or {}).items()
        if key not in ("conversation", "tools", "tokenize", "add_generation_prompt")
    }
    if supports_tools(tokenizer):
        normalised = _native_tool_messages(normalised)
        if tools:
            extra["tools"] = tools
    else:
        normalised = _generic_tool_messages(normalised, tools or [])
    try:
        return str(
            tokenizer.apply_chat_template(
                normalised, tokenize=False, add_generation_prompt=True, **extra
            )
        )
    except Exception as exc:  # the template's own `raise_exception`, or a Jinja error
        raise InvalidRequest(
            f"the model's chat template rejected the messages: {exc}", "messages"
        ) from exc
