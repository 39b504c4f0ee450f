"""Special-token strings inside message text are text, not control tokens.

A chat template writes the control tokens that structure a conversation (`<|im_start|>`,
`<|eot_id|>`, `<start_of_turn>`), and the tokenizer turns every such string in the rendered
prompt into that token, including strings that came from a message: a user pasting a transcript,
a tool result holding a tokenizer config that a coding agent read. Parsed as tokens they would
end the turn or open another inside the prompt. The same holds for the arguments of the
assistant's earlier tool calls (a file it wrote) and for tool definitions. So `encode_chat` here:
1. replaces each special-token string in a message's text, its tool calls' arguments and the
   tools' definitions with a sentinel (a private-use character, a per-call nonce of digits,
   its index);
2. renders the template over those messages and tools;
3. replaces each sentinel in the rendered prompt (as written, or as JSON with ASCII escapes
   writes it: `\\ue000…`) with a marker: a special token that the prompt does not otherwise
   hold and that the tokenizer matches exactly (no stripping of neighbouring spaces);
4. tokenizes the prompt once, specials parsed (the text around a marker splits there, as it
   did around the special token it stands for), and puts in place of each marker token the
   plain-text tokens of the string it stands for.

Invariants: a conversation with no special-token string in its messages' text, tool-call
arguments or tools is tokenized exactly as without this module (one `encode` of the rendered
prompt); only added tokens the tokenizer marks special are escaped (added tokens that are not,
such as Qwen's `<tool_call>` and `<think>`, are markup the model writes in its own turns and
stay tokens). Templates serialise arguments and tools as JSON: a sentinel holds no character
JSON must escape, and one written with ASCII escapes (engines/llm/tools.py's generic prompt)
is found in that form.

Threads: `encode_chat` runs in several threads at once on the front's tokenizer, which others
(`ChatFront.encode_text`) use too. Asking a fast tokenizer to split special tokens switches a
flag on its shared Rust tokenizer (transformers sets `encode_special_tokens` per call), so a
prompt encoded meanwhile in another thread would have its template's control tokens split into
text. The escaped strings are therefore encoded by a copy of the tokenizer, switched once
before any thread uses it; the front's tokenizer is never switched.

An escaped string is encoded alone, as the text after a marker is: split from its neighbours
(as the special token was) and, for a Metaspace tokenizer that prefixes only the first word,
without that prefix.

Why not transformers' own `apply_chat_template(..., tokenize=True, sanitize_control_tokens=True)`
(5.x; the same idea with markers): it works only inside transformers' rendering, and mlxd renders
the prompt to text itself first (engines/llm/templates.py decides where later system turns go by
looking at rendered text, writes the generic tool prompt, ends prefills inside the assistant's
turn); and it also escapes added tokens that are not special wherever the template's text names
them, which changes how assistant turns the model wrote are tokenized back.
"""

from __future__ import annotations

import copy
import logging
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Tools = list[dict[str, Any]] | None


def _trie_pattern(words: list[str]) -> str:
    """A regex matching any of `words`, longest first, branching a character at a time (an
    alternation of thousands of words — Gemma's unused tokens — would try each at every '<')."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(node[char]) for char in sorted(node) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


class SpecialText:
    """One tokenizer's special-token strings, and its chat encoding that keeps them as text
    where messages hold them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        added = dict(getattr(tokenizer, "added_tokens_decoder", None) or {})
        specials = {int(i): token for i, token in added.items() if token.special and token.content}
        self._pattern = (
            re.compile(_trie_pattern(sorted({t.content for t in specials.values()})))
            if specials
            else None
        )
        # Markers: matched as themselves wherever they stand, leaving the text around them as
        # it is (no stripping of spaces, no word boundaries, no normalisation first).
        self._markers = [
            (token.content, token_id)
            for token_id, token in sorted(specials.items())
            if not (token.lstrip or token.rstrip or token.single_word or token.normalized)
        ]
        self._as_text: Any = None  # the copy that splits special tokens; made at first use
        self._as_text_lock = threading.Lock()

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        render: Callable[[list[dict[str, Any]], Tools], str],
        tools: Tools = None,
    ) -> list[int]:
        """The token ids of `render(messages, tools)`, special-token strings of the messages'
        text, tool-call arguments and of the tools tokenized as text."""
        nonce = str(secrets.randbelow(10**9))
        ours = re.compile(rf"(?:\ue000|\\u[eE]000){nonce}:([0-9]+)(?:\ue001|\\u[eE]001)")
        escaped: list[str] = []

        def sentinel(match: re.Match[str]) -> str:
            escaped.append(match.group(0))
            return f"\ue000{nonce}:{len(escaped) - 1}\ue001"

        masked = [self._masked(message, sentinel) for message in messages]
        masked_tools = self._masked_json(tools, sentinel)
        if not escaped:
            return self._encode(render(messages, tools))
        prompt = render(masked, masked_tools)
        marker = next(((s, i) for s, i in self._markers if s not in prompt), None)
        if marker is None:  # every special token is in the prompt: none can stand in
            logger.warning("no free special token to stand in for escaped text; left as is")
            return self._encode(render(messages, tools))
        # The template may drop a message's text or repeat it: sentinels in the prompt's order.
        stand_ins = iter([int(m.group(1)) for m in ours.finditer(prompt)])
        out: list[int] = []
        for token in self._encode(ours.sub(lambda _: marker[0], prompt)):
            if token == marker[1]:
                text = escaped[next(stand_ins)]
                out += self._text_encoder().encode(
                    text, add_special_tokens=False, split_special_tokens=True
                )
            else:
                out.append(token)
        return out

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _text_encoder(self) -> Any:
        """A copy of the tokenizer that tokenizes special-token strings as text, already
        switched to do so (its first encode sets the flag), so calls from several threads only
        read it. It encodes an escaped string as the text after a marker is encoded: a
        Metaspace pre-tokenizer that prepends '▁' to the first word only (Llama 2, Mistral)
        would prepend it to a string encoded alone, a space the message did not hold."""
        with self._as_text_lock:
            if self._as_text is None:
                as_text = copy.deepcopy(self.tokenizer)
                pre: Any = getattr(
                    getattr(as_text, "backend_tokenizer", None), "pre_tokenizer", None
                )
                if getattr(pre, "prepend_scheme", None) == "first":
                    pre.prepend_scheme = "never"  # the copy's own pre-tokenizer
                as_text.encode("", add_special_tokens=False, split_special_tokens=True)
                self._as_text = as_text
            return self._as_text

    def _masked(
        self, message: dict[str, Any], sentinel: Callable[[re.Match[str]], str]
    ) -> dict[str, Any]:
        """`message` with the special-token strings of its text and of its tool calls'
        arguments replaced by sentinels."""
        if self._pattern is None:
            return message
        pattern = self._pattern
        masked = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            masked["content"] = pattern.sub(sentinel, content)
        elif isinstance(content, list):
            masked["content"] = [
                {**part, "text": pattern.sub(sentinel, part["text"])}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            masked["tool_calls"] = [
                {**call, "function": self._masked_json(call["function"], sentinel)}
                if isinstance(call, dict) and isinstance(call.get("function"), dict)
                else call
                for call in calls
            ]
        return masked

    def _masked_json(self, value: Any, sentinel: Callable[[re.Match[str]], str]) -> Any:
        """`value` (JSON data, or JSON text such as a call's arguments: a sentinel holds no
        character JSON escapes) with the special-token strings of its strings replaced."""
        if self._pattern is None or value is None:
            return value
        if isinstance(value, str):
            return self._pattern.sub(sentinel, value)
        if isinstance(value, list):
            return [self._masked_json(item, sentinel) for item in value]
        if isinstance(value, dict):
            return {key: self._masked_json(item, sentinel) for key, item in value.items()}
        return value
