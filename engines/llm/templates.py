"""Chat templates: the model's own Jinja template, via its tokenizer.

OpenAI content may be a string, null, or a list of parts; many templates (SmolLM2's among them)
concatenate `content` as a string, so content is normalised to plain text before rendering.

Tools: a template that mentions `tools` renders them (and assistant `tool_calls`, with arguments
as objects, and `tool` results) itself. For one that does not, the tools are described in a
system message (engines/llm/tools.py's generic prompt), earlier calls are written back as the
`<tool_call>` markup that prompt asks for, and tool results become `<tool_response>` user turns.

System and developer turns after the first message (Claude Code's environment, a Responses
`developer` item mid-conversation) stay where they are when the template renders them there, so
text that changes between sessions (a working directory, the date) comes after the leading system
prompt and the tools block the template writes with it, and the prefix cache can reuse those.
Where the template refuses such a turn (Gemma 3, Mistral: roles must alternate) or drops its text,
they are merged into the leading system message instead (its text first, then theirs in order,
joined by blank lines). Invariants:
- The choice is made once per template and role (`renders_in_place`: a fixed probe conversation),
  never from the conversation at hand: a template that accepts a later system turn on the first
  turn of a conversation and refuses it once an assistant turn follows (Gemma 3) merges on every
  turn, so a history that only grows renders to a prompt that only grows.
- A conversation the template still refuses, or whose later turns it drops, with those turns in
  place (rules no probe foresees) is rendered merged rather than refused.
- A later turn holding an image is never moved (images meet their placeholders in message order).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from engines.errors import InvalidRequest, NoChatTemplate
from engines.llm.tools import CLOSE, OPEN, generic_tool_prompt

TEXT_PARTS = ("text", "input_text")


def content_to_text(content: Any) -> str:
    """Flatten OpenAI message content (str | None | list of parts) into text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if part.get("type") in TEXT_PARTS)


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


def _wrapped(before: str, content: Any, after: str) -> Any:
    """`content` (text, or a vision model's parts) between two pieces of text. No empty part
    is added: templates that read only a turn's first part (Gemma 3's system turn) read the
    content's own."""
    if isinstance(content, list):
        ends = [[{"type": "text", "text": text}] if text else [] for text in (before, after)]
        return [*ends[0], *content, *ends[1]]
    return before + content_to_text(content) + after


def _generic_tool_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content")
        if role == "assistant" and message.get("tool_calls"):
            content = content_to_text(content)
            calls = "\n".join(
                f"{OPEN}\n"
                + json.dumps(
                    {
                        "name": call.get("function", {}).get("name"),
                        "arguments": _arguments_object(call.get("function", {}).get("arguments")),
                    },
                    ensure_ascii=False,  # as the model wrote it: the prompt's prefix stays its own
                )
                + f"\n{CLOSE}"
                for call in message["tool_calls"]
            )
            out.append({"role": "assistant", "content": (content + "\n" + calls).strip()})
        elif role == "tool":
            wrapped = _wrapped("<tool_response>\n", content, "\n</tool_response>")
            out.append({"role": "user", "content": wrapped})
        else:
            out.append({"role": role, "content": content})
    if tools:
        prompt = generic_tool_prompt(tools)
        if out and out[0]["role"] in ("system", "developer"):
            lead = _wrapped("", out[0]["content"], "\n\n" + prompt)
            out[0] = {"role": out[0]["role"], "content": lead}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def template_variables(template_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Extra template variables (`enable_thinking`, `reasoning_effort`, …), without the names
    the rendering itself sets."""
    return {
        key: value
        for key, value in (template_kwargs or {}).items()
        if key not in ("conversation", "tools", "tokenize", "add_generation_prompt")
    }


# A template variable with a meaning of its own (transformers' name, as vLLM's request field): the
# prompt ends inside the final assistant message, which the model continues (Anthropic's prefill).
CONTINUE_FINAL = "continue_final_message"


def apply_template(tokenizer: Any, messages: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    """The template's prompt, ending with the assistant's turn opened (or, with
    `extra[CONTINUE_FINAL]`, inside the final assistant message); InvalidRequest (a 400 naming
    `messages`) where the template refuses the messages."""
    opened = not extra.get(CONTINUE_FINAL)
    try:
        return str(
            tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=opened, **extra
            )
        )
    except Exception as exc:  # the template's own `raise_exception`, or a Jinja error
        raise InvalidRequest(
            f"the model's chat template rejected the messages: {exc}", "messages"
        ) from exc


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    keep_images: bool = False,
) -> str:
    """The prompt text for `messages` (and `tools`), ending with the assistant's turn opened.
    `template_kwargs` are extra template variables (`enable_thinking`, `reasoning_effort`), and
    `CONTINUE_FINAL` (the prompt ends inside the final assistant message instead).
    `keep_images`: content holding `{"type": "image"}` parts stays a list of parts, for a vision
    model's template to place its image markers (other content is text either way)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise NoChatTemplate()
    normalised = [
        {**message, "content": _text_parts_named_text(message["content"])}
        if keep_images and not text_only(message.get("content"))
        else {**message, "content": content_to_text(message.get("content"))}
        for message in messages
    ]
    extra = template_variables(template_kwargs)
    native = supports_tools(tokenizer)
    if native and tools:
        extra["tools"] = tools

    def render(conversation: list[dict[str, Any]]) -> str:
        if native:
            return apply_template(tokenizer, _native_tool_messages(conversation), extra)
        return apply_template(tokenizer, _generic_tool_messages(conversation, tools or []), extra)

    return render_placed(tokenizer, normalised, render)


# -- system and developer turns after the first message (see the module docstring) -------------
LATER_ROLES = ("system", "developer")
# (template, role) → whether the template renders a later turn of that role in place. Templates
# are few (one per loaded model) and the answer never changes, so it is kept for the process.
_IN_PLACE: dict[tuple[str, str], bool] = {}


def renders_in_place(tokenizer: Any, role: str) -> bool:
    """Whether the tokenizer's template renders a `role` turn after the first message where it
    is: a probe conversation with one after the first user turn (before an assistant turn, as
    Claude Code places its environment) and one last renders without error and shows both."""
    key = (str(tokenizer.chat_template), role)
    if key not in _IN_PLACE:
        marks = [f"mlxd probe: later {role} turn {n}" for n in (1, 2)]
        probe = [
            {"role": "system", "content": "mlxd probe: leading system turn"},
            {"role": "user", "content": "mlxd probe: user turn 1"},
            {"role": role, "content": marks[0]},
            {"role": "assistant", "content": "mlxd probe: assistant turn"},
            {"role": "user", "content": "mlxd probe: user turn 2"},
            {"role": role, "content": marks[1]},
        ]
        try:
            prompt = apply_template(tokenizer, probe, {})
        except InvalidRequest:
            _IN_PLACE[key] = False
        else:
            _IN_PLACE[key] = all(mark in prompt for mark in marks)
    return _IN_PLACE[key]


def render_placed(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    render: Callable[[list[dict[str, Any]]], str],
) -> str:
    """`render(messages)` with the later system and developer turns in place where the template
    renders them there, else merged into the leading system message."""
    later = [
        i
        for i, message in enumerate(messages)
        if i and message["role"] in LATER_ROLES and text_only(message.get("content"))
    ]
    merge = [i for i in later if not renders_in_place(tokenizer, messages[i]["role"])]
    if len(merge) < len(later):
        kept = [messages[i] for i in later if i not in merge]
        try:
            prompt = render(_merged(messages, merge))
        except InvalidRequest:
            pass  # refused here though the probe passed: merged below rather than a 400
        else:
            if all(_shown(message.get("content"), prompt) for message in kept):
                return prompt
        merge = later
    return render(_merged(messages, merge))


def _text_parts_named_text(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`parts` with each text part (`input_text` too: clients of both APIs send it) as
    `{"type": "text", ...}`, the only name templates look for beside their image parts."""
    return [
        {"type": "text", "text": str(part.get("text", ""))}
        if part.get("type") in TEXT_PARTS
        else part
        for part in parts
    ]


def text_only(content: Any) -> bool:
    """Content without images: a turn with one is never moved (images are decoded in the order
    of the messages and must meet their placeholders in that order)."""
    return not isinstance(content, list) or all(part.get("type") in TEXT_PARTS for part in content)


def _shown(content: Any, prompt: str) -> bool:
    """Whether a turn's text is in the prompt (templates may trim it)."""
    return content_to_text(content).strip() in prompt


def _merged(messages: list[dict[str, Any]], indices: list[int]) -> list[dict[str, Any]]:
    """`messages` with the turns at `indices` merged into the leading system message (made
    first where the conversation has none): its text first, then theirs in order."""
    if not indices:
        return messages
    moved = [messages[i] for i in indices]
    rest = [message for i, message in enumerate(messages) if i not in indices]
    if rest and rest[0]["role"] in LATER_ROLES:
        lead, rest = rest[0], rest[1:]
    else:
        lead = {"role": "system", "content": ""}
    contents = [lead.get("content"), *(message.get("content") for message in moved)]
    return [{**lead, "content": _joined(contents)}, *rest]


def _joined(contents: list[Any]) -> Any:
    """Contents joined by blank lines: text, or parts where the first (the leading message's)
    holds an image, its parts first then the text."""
    if all(text_only(content) for content in contents):
        return "\n\n".join(text for text in map(content_to_text, contents) if text)
    text = "\n\n".join(text for text in map(content_to_text, contents[1:]) if text)
    return [*contents[0], {"type": "text", "text": "\n\n" + text}]
